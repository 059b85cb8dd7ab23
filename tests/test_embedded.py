"""The embedded services and the supervisor's process registry.

The services are started for real, in a temporary data directory and with the service URLs
removed from their environment, so that the embedded path is exercised even where CI names real
servers. Nothing here uses Django's databases.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest
import redis

from devtools import embedded, supervisor
from devtools.embedded import EmbeddedError, EmbeddedServices
from flespi_site import topology

URL_VARS = ("DATABASE_URL", "REDIS_URL", "MQTT_URL")


# what a long-running process logs once it has frozen what it started with (flespi_site.runner)
FROZEN = "objects of its start kept out of the garbage collector's walks"


def environment_without_urls() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(URL_VARS)}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    running = EmbeddedServices(data_dir=tmp_path_factory.mktemp("embedded"), env=environment_without_urls())
    running.start()
    yield running
    running.stop()


def test_every_missing_service_is_embedded_and_its_url_exported(services):
    assert [service.name for service in services.services] == ["postgres", "redis", "mqtt"]
    for service in services.services:
        assert services.env[embedded._URL_VARS[service.name]] == service.url
        assert f"127.0.0.1:{service.port}" in service.url
        assert service.process.poll() is None


def test_postgres_runs_queries_and_creates_databases(services):
    url = services.env["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as connection:
        assert connection.execute("SELECT 1 + 1").fetchone() == (2,)
        databases = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        assert {"flespi", "flespi_eu_1", "flespi_eu_2", "flespi_ru_1"} <= databases
        name = f"test_embedded_{uuid.uuid4().hex[:8]}"
        connection.execute(f"CREATE DATABASE {name}")
        connection.execute(f"DROP DATABASE {name}")


def test_lz4_compression_is_left_out_where_the_server_lacks_it(services):
    """The embedded PostgreSQL is built without lz4: analytics migration 0011 leaves the columns
    it would compress as they were, without an error (a server with lz4: tests/analytics)."""
    from importlib import import_module

    migration = import_module("analytics.migrations.0011_lz4_toast")
    url = services.env["DATABASE_URL"]
    name = f"test_lz4_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(url.rsplit("/", 1)[0] + f"/{name}", autocommit=True) as connection:
            methods = connection.execute(
                "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'").fetchone()[0]
            assert "lz4" not in methods
            connection.execute("CREATE TABLE intervals (device_id bigint, counters json) PARTITION BY HASH (device_id);"
                               "CREATE TABLE intervals_p0 PARTITION OF intervals FOR VALUES WITH (modulus 1, remainder 0);"
                               "CREATE TABLE outbox (payload jsonb); CREATE TABLE webhook_feed (payload jsonb);")
            connection.execute(migration.compression("lz4"))
            assert connection.execute(
                "SELECT count(*) FROM pg_attribute WHERE attname IN ('counters', 'payload') AND attcompression <> ''"
            ).fetchone() == (0,)
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {name}")


def test_topology_databases_are_created_once(services):
    assert topology.create_missing_databases(topology.database_urls(services.env)) == []


def test_redis_answers_ping_set_and_get(services):
    client = redis.Redis.from_url(services.env["REDIS_URL"])
    try:
        assert client.ping() is True
        assert client.set("embedded:key", "value") is True
        assert client.get("embedded:key") == b"value"
    finally:
        client.close()


def test_mqtt_subscriber_receives_a_qos1_message(services):
    port = int(services.env["MQTT_URL"].rsplit(":", 1)[1])
    topic = f"test/embedded/{uuid.uuid4().hex}"
    subscribed, received = threading.Event(), []
    arrived = threading.Event()

    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="embedded-sub")
    subscriber.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
    subscriber.on_subscribe = lambda *_: subscribed.set()

    def on_message(client, userdata, message):
        received.append((message.topic, message.payload, message.qos))
        arrived.set()

    subscriber.on_message = on_message
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="embedded-pub")
    # the embedded broker lets in tokens and the platform's own login (docs/mqtt.md)
    for client in (subscriber, publisher):
        client.username_pw_set("flespi-platform", services.env["MQTT_PLATFORM_PASSWORD"])
    subscriber.connect("127.0.0.1", port)
    subscriber.loop_start()
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    try:
        assert subscribed.wait(10)
        publisher.publish(topic, b'{"hello": 1}', qos=1).wait_for_publish(10)
        assert arrived.wait(10)
    finally:
        for client in (publisher, subscriber):
            client.disconnect()
            client.loop_stop()
    assert received == [(topic, b'{"hello": 1}', 1)]


def test_the_broker_keeps_what_it_started_with_out_of_the_garbage_collectors_walks(services):
    log = services.data_dir / "mqtt.log"
    deadline = time.monotonic() + 15
    while FROZEN not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert FROZEN in log.read_text(), log.read_text()[-2000:]


def test_a_busy_data_directory_is_refused_or_replaced(services):
    env = environment_without_urls()
    with pytest.raises(EmbeddedError, match=f"is in use by pid {os.getpid()}"):
        EmbeddedServices(data_dir=services.data_dir, env=env).start()
    assert "DATABASE_URL" not in env

    with EmbeddedServices(data_dir=services.data_dir, env=env, temporary_if_busy=True) as second:
        temporary = second.data_dir
        assert temporary.parent == services.data_dir.parent
        assert temporary.name.startswith(embedded.TEMPORARY_PREFIX)
        assert env["DATABASE_URL"] != services.env["DATABASE_URL"]
    assert not temporary.exists()
    assert second.data_dir == services.data_dir


def test_services_named_in_the_environment_are_not_started(tmp_path):
    env = {"DATABASE_URL": "postgres://db.invalid/x", "REDIS_URL": "redis://r.invalid/0", "MQTT_URL": "mqtt://m.invalid"}
    running = EmbeddedServices(data_dir=tmp_path, env=env)
    assert running.start() == {}
    assert running.services == []
    assert not (tmp_path / "postgres").exists()


def test_stop_closes_every_port_and_ends_every_process(tmp_path):
    running = EmbeddedServices(data_dir=tmp_path, env=environment_without_urls(), publish=True)
    running.start()
    published = embedded.published_urls(tmp_path)
    # the platform's login on the broker it started, and the broker's WebSocket URL, are published
    # with the URLs
    mqtt_vars = ["MQTT_PLATFORM_PASSWORD", "MQTT_WS_URL"]
    assert published == {var: running.env[var] for var in (*URL_VARS, "SECRET_KEY", *mqtt_vars)}
    assert (tmp_path / embedded.PUBLISHED_FILE).stat().st_mode & 0o077 == 0

    attached = {"FLESPI_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://elsewhere:1/0"}
    assert embedded.attach_environment(attached) == {
        "DATABASE_URL": published["DATABASE_URL"], "MQTT_URL": published["MQTT_URL"],
        "SECRET_KEY": published["SECRET_KEY"], **{var: published[var] for var in mqtt_vars},
    }
    assert attached["REDIS_URL"] == "redis://elsewhere:1/0"
    ports = [service.port for service in running.services]
    processes = []
    for service in running.services:
        parent = psutil.Process(service.process.pid)
        processes += [parent, *parent.children(recursive=True)]
    assert len(processes) > 3  # PostgreSQL's background workers are among them

    began = time.monotonic()
    running.stop()
    assert time.monotonic() - began < 10
    assert [port for port in ports if embedded.port_is_open(port)] == []
    assert [process.pid for process in processes if process.is_running() and process.status() != "zombie"] == []
    assert not any(var in running.env for var in URL_VARS)
    assert embedded.published_urls(tmp_path) == {}

    # a second start reuses the data directory: no initdb, the databases are still there
    again = EmbeddedServices(data_dir=tmp_path, env=environment_without_urls())
    again.start()
    try:
        assert topology.create_missing_databases(topology.database_urls(again.env)) == []
    finally:
        again.stop()


def test_urls_left_by_a_dead_supervisor_are_ignored(tmp_path):
    (tmp_path / ".lock").write_text("12345")
    (tmp_path / embedded.PUBLISHED_FILE).write_text("DATABASE_URL=postgres://gone/flespi\n")
    env = {"FLESPI_DATA_DIR": str(tmp_path)}
    assert embedded.attach_environment(env) == {}
    assert env == {"FLESPI_DATA_DIR": str(tmp_path)}


def test_exec_runs_the_command_with_the_urls_and_returns_its_status(tmp_path):
    env = environment_without_urls() | {"FLESPI_DATA_DIR": str(tmp_path)}
    check = "import os, sys; sys.exit(7 if all(os.environ.get(v) for v in sys.argv[1:]) else 1)"
    result = subprocess.run(
        [sys.executable, "-m", "devtools.embedded", "exec", "--", sys.executable, "-c", check, *URL_VARS],
        env=env, cwd=embedded.REPO_DIR, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 7, result.stderr
    assert "postgres: embedded" in result.stderr
    assert "postgres: stopped" in result.stderr


# -- the supervisor's process registry --------------------------------------------------------


def test_processes_needing_a_missing_command_are_skipped():
    web = supervisor.Process("web", ("{python}", "-m", "gunicorn"))
    pump = supervisor.Process.manage("pump", "pump")
    relay = supervisor.Process.manage("relay", "outbox_relay", "--batch", "100")

    assert supervisor.runnable([web, pump, relay], {"outbox_relay", "migrate"}) == [web, relay]
    assert relay.resolve({"python": "py", "manage": "m.py", "port": "1"}) == [
        "py", "m.py", "outbox_relay", "--batch", "100",
    ]


def test_the_development_secret_key_is_kept_in_the_data_directory(tmp_path):
    """Generated on the first start, its owner's only, the same at the next start; one given in the
    environment wins (and is not written)."""
    key = embedded.development_secret_key(tmp_path)
    path = tmp_path / embedded.SECRET_KEY_FILE
    assert len(key) >= 50 and path.read_text().strip() == key
    assert path.stat().st_mode & 0o077 == 0
    assert embedded.development_secret_key(tmp_path) == key
    other = tmp_path / "other"
    services = EmbeddedServices(data_dir=other, env={"SECRET_KEY": "given", **{var: "x://external" for var in URL_VARS}})
    assert services.start() == {}
    assert services.env["SECRET_KEY"] == "given" and not (other / embedded.SECRET_KEY_FILE).exists()


def test_the_web_process_serves_the_wsgi_app_on_the_port():
    """`make run` starts the web as a deployment does (`flespi web`): gunicorn on PORT."""
    from flespi_site.cli import web_argv

    (web,) = [process for process in supervisor.PROCESSES if process.name == "web"]
    assert web.resolve({"python": "py", "manage": "m.py", "port": "8123"}) == ["py", "-m", "flespi_site.cli", "web"]
    assert web.essential
    argv = web_argv({"PORT": "8123", "WEB_WORKERS": "3"})
    assert "flespi_site.wsgi:application" in argv
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:8123"
    assert argv[argv.index("--workers") + 1] == "3"
    assert "--reload" not in argv


def test_child_output_is_prefixed_with_its_name():
    out = io.StringIO()
    child = supervisor.spawn("calc", [sys.executable, "-c", "print('one'); print('two')"], width=6, out=out)
    assert child.popen.wait(10) == 0
    child.reader.join(5)
    assert out.getvalue() == "calc   | one\ncalc   | two\n"


def test_the_embedded_broker_lets_in_only_the_platform_and_tokens(tmp_path):
    env = {**environment_without_urls(),
           "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flespi"),
           "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")}
    with EmbeddedServices(data_dir=tmp_path, env=env) as running:
        assert [service.name for service in running.services] == ["mqtt"]
        port = int(env["MQTT_URL"].rsplit(":", 1)[1])
        ws_port = int(env["MQTT_WS_URL"].rsplit(":", 1)[1].split("/")[0])
        answers = {}
        logins = {"anonymous": None, "platform": ("flespi-platform", env["MQTT_PLATFORM_PASSWORD"])}
        for (name, login), transport in itertools.product(logins.items(), ["tcp", "websockets"]):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{name}", transport=transport)
            if login:
                client.username_pw_set(*login)
            answered = threading.Event()
            client.on_connect = lambda c, u, f, rc, p, key=(name, transport), answered=answered: (
                answers.__setitem__(key, rc.is_failure), answered.set())
            client.connect("127.0.0.1", port if transport == "tcp" else ws_port)
            client.loop_start()
            answered.wait(10)
            client.disconnect()
            client.loop_stop()
    assert answers == {("anonymous", "tcp"): True, ("anonymous", "websockets"): True,
                       ("platform", "tcp"): False, ("platform", "websockets"): False}
