"""A deployment's command (``flespi``): a misconfigured role stops with one line per problem and
no traceback; the web's liveness and readiness; every other role's health server (readiness that
follows its loops, its own metrics); Celery's tools attach to a region's app; the package builds
and installs its console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import venv
from pathlib import Path

import pytest
import redis

from tests.support.fleet import Fleet
from tests.support.net import free_port
from tests.support.processes import REPO_DIR, platform_env, start, stop
from tests.support.waiting import poll

FLESPI = [sys.executable, "-m", "flespi_site.cli"]
GOOD = {
    "SECRET_KEY": "a secret for the tests",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/flespi",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "MQTT_URL": "mqtt://127.0.0.1:1883",
}


def flespi(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``flespi <args>`` with only ``env`` (and PATH) in its environment."""
    return subprocess.run([*FLESPI, *args], cwd=REPO_DIR, env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({**GOOD, "SECRET_KEY": ""}, "flespi calc: SECRET_KEY is not set: set it to a long random secret"),
        ({**GOOD, "DATABASE_URL": ""}, "flespi calc: DATABASE_URL is not set: set it to the control database"),
        ({**GOOD, "REDIS_URL": ""}, "flespi calc: REDIS_URL is not set: set the redis server, like redis://host:6379/0 "
                                    "(or REDIS_URL_EU per region)"),
        ({**GOOD, "DATABASE_URL": "mysql://db/flespi"}, "flespi calc: DATABASE_URL must be a database URL"),
        ({**GOOD, "MQTT_URL": "mqtt://broker:port"}, "flespi calc: MQTT_URL is not a valid mqtt URL"),
        ({**GOOD, "DATABASE_URL_EU_2": "postgres://db:5432"}, "flespi calc: DATABASE_URL_EU_2 names no database"),
        ({**GOOD, "REGION": "us"}, "flespi calc: --region eu but REGION=us: name one region"),
        ({**GOOD, "FLESPI_TOPOLOGY": "{not json"}, "flespi calc: FLESPI_TOPOLOGY is not valid JSON"),
        ({**GOOD, "CALC_SHARDS": "many"}, "flespi calc: CALC_SHARDS='many' is not a whole number"),
        ({**GOOD, "CALC_DATA_DIR": "/etc/hostname/calc"}, "flespi calc: CALC_DATA_DIR=/etc/hostname/calc is not a "
                                                          "writable directory"),
    ],
)
def test_a_misconfigured_role_stops_with_one_line_saying_what_to_set(env, expected):
    done = flespi("calc", "--region", "eu", **{name: value for name, value in env.items() if value})
    assert done.returncode == 2, done
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert all(line.startswith("flespi calc: ") for line in done.stderr.splitlines()), done.stderr


def test_a_regional_role_needs_its_region():
    done = flespi("pump", **GOOD)
    assert done.returncode == 2
    assert done.stderr.strip() == "flespi pump: name the region: --region <code>, or set REGION"
    done = flespi("pump", **GOOD, REGION="us")
    assert done.returncode == 2
    assert done.stderr.strip() == "flespi pump: REGION=us is not a region of the topology; set one of eu, ru"


def test_help_and_probe():
    assert "calc       a calc worker of a region" in flespi("--help").stdout
    port = free_port()
    refused = flespi("probe", f"http://127.0.0.1:{port}/health/ready", "1")
    assert refused.returncode == 1 and "Connection refused" in refused.stderr


@pytest.mark.django_db(databases="__all__")
def test_the_web_is_live_and_ready_and_says_what_it_cannot_reach(client, monkeypatch, settings, caplog):
    # A probe comes by an address ALLOWED_HOSTS need not name (a pod's, 127.0.0.1).
    settings.ALLOWED_HOSTS = ["fleet.example.com"]
    assert client.get("/health/live", HTTP_HOST="10.1.2.3:8000").json() == {"live": True}
    ready = client.get("/health/ready", HTTP_HOST="10.1.2.3:8000")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert client.get("/gw/devices/all", HTTP_HOST="10.1.2.3:8000").status_code == 400  # the rest still checks
    # Region ru's Redis is away (nobody listens on its port): a web serving every region is not
    # ready, and says what, not where (the log has the details); one serving eu is ready.
    from flespi_site import celery

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    real = celery.redis_client
    monkeypatch.setattr("flespi_site.celery.redis_client", lambda region: dead if region == "ru" else real(region))
    ready = client.get("/health/ready", HTTP_HOST="fleet.example.com")
    assert ready.status_code == 503
    assert ready.json()["problems"] == {"redis ru": "cannot be reached"}
    assert "the Redis of region ru: Error 111" in caplog.text
    settings.SERVED_REGION = "eu"
    assert client.get("/health/ready", HTTP_HOST="fleet.example.com").status_code == 200


def test_a_busy_health_port_stops_the_role_with_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = flespi("purge", **GOOD, HEALTH_PORT=str(port), METRICS_DIR="/tmp/flespi-test-metrics")
    assert done.returncode == 2, done
    assert f"HEALTH_PORT={port} cannot be listened on (Address already in use): give this process a port of its own" \
        in done.stderr
    assert "Traceback" not in done.stderr


def test_each_role_is_asked_only_for_the_services_it_uses(monkeypatch, settings):
    """A calc worker or a pump never talks to a broker: no MQTT_URL is asked of them; `--region`
    is the region the process serves."""
    import dataclasses

    from flespi_site import preflight, topology

    settings.TOPOLOGY = dataclasses.replace(settings.TOPOLOGY, regions=tuple(
        dataclasses.replace(region, mqtt_url=topology.DEFAULT_MQTT_URL, redis_url=topology.DEFAULT_REDIS_URL)
        for region in settings.TOPOLOGY.regions))
    for name in ("MQTT_URL", "MQTT_URL_EU", "MQTT_URL_RU", "REDIS_URL", "REDIS_URL_EU", "REDIS_URL_RU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", GOOD["DATABASE_URL"])
    settings.SECRET_KEY_GIVEN = True
    kinds = {role: sorted(problem.split()[0] for problem in preflight.problems(role, production=True))
             for role in ("calc", "pump", "migrate", "relay", "webhooks")}
    assert kinds == {"calc": ["REDIS_URL"], "pump": ["REDIS_URL"], "migrate": [], "relay": ["MQTT_URL", "REDIS_URL"],
                     "webhooks": []}
    settings.SERVED_REGION = "eu"
    monkeypatch.setenv("REDIS_URL_EU", "redis://redis-eu:6379/0")
    assert preflight.problems("calc", production=True) == []  # ru's Redis is not this process's business
    done = flespi("calc", "--region", "eu", **{**GOOD, "REGION": "ru"})
    assert done.returncode == 2 and "--region eu but REGION=ru: name one region" in done.stderr


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_role_serves_its_health_and_its_own_metrics(tmp_path):
    """The relay with HEALTH_PORT: ready while its loops step; with its broker away it is live but
    not ready, and says which loop fails; /metrics is its own counters."""
    port, dead_broker = free_port(), free_port()
    relay, output = start([*FLESPI, "relay"], HEALTH_PORT=str(port), METRICS_DIR=str(tmp_path / "metrics"))
    try:
        assert poll(lambda: get(f"http://127.0.0.1:{port}/health/ready")[0] == 200, timeout=60), output.text
        status, body = get(f"http://127.0.0.1:{port}/health/live")
        assert status == 200 and json.loads(body)["role"] == "outbox_relay"
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200  # nothing counted yet: an idle relay has published nothing
        # Its counters are in a directory of its own, which the web's scrape of METRICS_DIR skips.
        assert (tmp_path / "metrics" / f"port-{port}").is_dir()
    finally:
        stop(relay)
    relay, output = start([*FLESPI, "relay"], HEALTH_PORT=str(port), MQTT_URL=f"mqtt://127.0.0.1:{dead_broker}",
                          METRICS_DIR=str(tmp_path / "metrics"))
    try:
        def not_ready():
            # once its relays have started (each says "not started yet" until then)
            status, body = get(f"http://127.0.0.1:{port}/health/ready")
            answer = json.loads(body) if status == 503 else None
            return answer if answer and "not started yet" not in answer["problems"].values() else None

        answer = poll(not_ready, timeout=60)
        assert answer, output.text
        # each relay that holds its datacenter's lock says so (one still waiting for the lock of
        # the relay stopped above is a standby: ready)
        assert answer["problems"] and set(answer["problems"]) <= {"relay dc_eu_1", "relay dc_eu_2", "relay dc_ru_1"}
        assert set(answer["problems"].values()) == {f"not connected to the broker at 127.0.0.1:{dead_broker}"}, answer
        assert get(f"http://127.0.0.1:{port}/health/live")[0] == 200
    finally:
        stop(relay)


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_celery_tools_attach_to_a_regions_app(tmp_path):
    """`celery -A flespi_site.celery.eu inspect ping` reaches a running calc worker by its name."""
    fleet = Fleet(tmp_path)

    def ping() -> subprocess.CompletedProcess:
        # The worker answers between tasks (a solo pool): right after it took its shards it may be
        # filling their caches, so ask until it answers.
        return subprocess.run([sys.executable, "-m", "celery", "-A", "flespi_site.celery.eu", "inspect", "ping",
                               "--timeout", "10"], cwd=REPO_DIR, env=platform_env(), capture_output=True, text=True,
                              timeout=120)

    try:
        fleet.start_all()
        done = poll(lambda: (answer := ping()).returncode == 0 and answer, timeout=90, every=1) or ping()
    finally:
        fleet.stop()
    assert done.returncode == 0, (done.stderr, fleet.output("worker").text[-3000:])
    assert "worker@calc: OK" in done.stdout and "pong" in done.stdout


def test_the_package_installs_its_console_script(tmp_path):
    """`pip wheel .` builds the platform with its templates and static files; installed, the
    `flespi` command runs."""
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = tmp_path / "source"
    shutil.copytree(REPO_DIR, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "var", "test-output", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("flespi_site-*.whl")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check",
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    site = Path(subprocess.check_output([str(python), "-c", "import flespi_site, os; print(os.path.dirname(flespi_site.__file__))"],
                                        text=True, cwd=tmp_path).strip())
    assert (site / "templates" / "flespi_site" / "landing.html").is_file()
    assert (site.parent / "accounts" / "static" / "regional_admin" / "pictures.js").is_file()
    assert not (site.parent / "tests").exists() and not (site.parent / "devtools").exists()
    helped = subprocess.run([str(environment / "bin" / "flespi"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "migrate    migrate every database" in helped.stdout


@pytest.mark.django_db(databases="__all__")
@pytest.mark.parametrize(
    ("proxy", "status"),
    [({}, 403), ({"SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https")}, 302),
     ({"CSRF_TRUSTED_ORIGINS": ["https://fleet.example.com"]}, 302)],
)
def test_the_admin_behind_a_tls_proxy_logs_in_once_told(settings, django_user_model, proxy, status):
    """Behind a proxy that terminates TLS, the browser's Origin is https://: Django's origin check
    refuses the admin's login unless the platform is told about the proxy (SECURE_PROXY_SSL_HEADER)
    or the origin (CSRF_TRUSTED_ORIGINS)."""
    from django.test import Client

    settings.ALLOWED_HOSTS = ["fleet.example.com"]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for name, value in proxy.items():
        setattr(settings, name, value)
    django_user_model.objects.create_superuser(username="operator", email="", password="a long password 42")
    browser = Client(enforce_csrf_checks=True, HTTP_HOST="fleet.example.com", HTTP_X_FORWARDED_PROTO="https")
    browser.get("/admin/login/")
    answer = browser.post("/admin/login/?next=/admin/", {
        "username": "operator", "password": "a long password 42",
        "csrfmiddlewaretoken": browser.cookies["csrftoken"].value,
    }, HTTP_ORIGIN="https://fleet.example.com", HTTP_REFERER="https://fleet.example.com/admin/login/")
    assert answer.status_code == status, answer.content[:500]
