"""``manage.py demo`` on a fresh database with no calc worker running: what it creates, the curl
commands it prints (run here with the test client), and a second run that changes nothing."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.db import connections

from accounts.models import Account, Token
from analytics import demo as demos
from analytics.models import Assignment, Calculator
from devices.models import Device
from tests.support.net import free_port
from tests.support.processes import REPO_DIR, platform_env

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "demo.token"
    monkeypatch.setattr(demos, "token_file", lambda: path)
    return path


def run_demo(*args: str) -> str:
    out = io.StringIO()
    call_command("demo", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def curl_commands(output: str) -> list[tuple[str, str]]:
    """(Authorization header, URL) of each curl command printed."""
    commands = []
    for line in output.splitlines():
        if line.strip().startswith("curl "):
            argv = shlex.split(line)
            assert argv[:2] == ["curl", "-H"], line
            commands.append((argv[2].split(": ", 1)[1], argv[3]))
    return commands


def snapshot(alias: str) -> dict:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*), md5(string_agg(body::text, ',' ORDER BY device_id, ts)) FROM messages"
        )
        messages = cursor.fetchone()
        # the message rows: a second import leaves them as they are, while the reception time's
        # telemetry (server.timestamp) moves on and is published
        cursor.execute("SELECT count(*) FROM outbox WHERE stamps IS NOT NULL")
        outbox = cursor.fetchone()[0]
    return {
        "accounts": list(Account.objects.values_list("id", "name")),
        "tokens": list(Token.objects.values_list("id", "key_hash", "access_type")),
        "devices": list(Device.objects.using(alias).values_list("id", "ident", "messages_ttl")),
        "calculators": list(Calculator.objects.using(alias).values_list("id", "name", "version")),
        "assignments": list(
            Assignment.objects.using(alias).values_list("id", "calculator_id", "device_id", "state")
        ),
        "messages": messages,
        "outbox": outbox,
    }


def test_demo_creates_imports_prints_working_commands_and_a_second_run_changes_nothing(
    api, platform, key_file
):
    started = time.monotonic()
    first = run_demo("--no-wait")
    assert time.monotonic() - started < 60
    account = Account.objects.get(name="demo", parent=None)
    devices = list(Device.objects.using("dc_eu_1").filter(account_id=account.pk).order_by("id"))
    assert [device.ident for device in devices] == ["demo-bus-304", "demo-car-visnjan"]
    calculators = list(Calculator.objects.using("dc_eu_1").filter(account_id=account.pk).order_by("id"))
    assert [calculator.name for calculator in calculators] == [
        "demo trips",
        "demo parkings",
        "demo daily mileage",
    ]
    assert calculators[1].selectors[0]["merge_message_after"] is True
    assert calculators[2].selectors == [{"type": "datetime", "split": "day"}]
    assert Assignment.objects.using("dc_eu_1").filter(account_id=account.pk).count() == 6
    # The tracks, with the speeds the importer derives.
    assert "read 2144 records, stored 2144 messages (2144 new or changed), refused 0" in first
    assert "read 104 records, stored 104 messages (104 new or changed), refused 0" in first
    key = key_file.read_text().strip()
    response = api.call("GET", f"/gw/devices/{devices[0].pk}/messages?count=3&fields=position.speed", key=key)
    assert response.status_code == 200
    speeds = [message["position.speed"] for message in response.json()["result"]]
    assert len(speeds) == 3 and all(isinstance(speed, float) for speed in speeds)  # the GPX file has none

    assert f"\n{key}\n" in first
    assert "admin: http://localhost:8000/admin/" in first
    commands = curl_commands(first)
    assert len(commands) == 4
    for header, url in commands:
        assert header == f"FlespiToken {key}"
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == "http://localhost:8000"
        response = api.call("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path, key=key)
        assert response.status_code == 200, (url, response.content)
    assignments = api.call("GET", urlsplit(commands[0][1]).path, key=key).json()["result"]
    assert sorted((a["calc_id"], a["id"]) for a in assignments) == sorted(
        (calculator.pk, device.pk) for calculator in calculators for device in devices
    )
    assert {a["state"] for a in assignments} == {"unsynced"}  # no calc worker runs here
    paths = [urlsplit(url).path for _, url in commands[1:]]
    assert paths == [
        f"/gw/calcs/{calculators[0].pk}/devices/{devices[0].pk}/intervals/all",
        f"/gw/calcs/{calculators[1].pk}/devices/{devices[1].pk}/intervals/all",
        f"/gw/calcs/{calculators[2].pk}/devices/all/intervals/all",
    ]

    before = snapshot("dc_eu_1")
    second = run_demo("--no-wait")
    assert snapshot("dc_eu_1") == before
    assert "created" not in second
    assert "(0 new or changed)" in second
    assert curl_commands(second) == commands


def test_without_calc_workers_it_says_to_start_the_platform_instead_of_waiting(
    platform, key_file, monkeypatch
):
    monkeypatch.setattr(demos, "calc_workers_running", lambda region: False)
    started = time.monotonic()
    output = run_demo()
    assert time.monotonic() - started < 60
    assert "0 of 6 assignments synced and no calc worker of region eu is running" in output
    assert "`make run`" in output


def test_with_workers_that_do_not_progress_it_gives_up_after_the_timeout(platform, key_file, monkeypatch):
    monkeypatch.setattr(demos, "calc_workers_running", lambda region: True)
    started = time.monotonic()
    output = run_demo("--timeout", "1")
    assert 1 <= time.monotonic() - started < 60
    assert re.search(
        r"0 of 6 assignments synced after 1 s: is the platform running\? Start the platform with `make run`",
        output,
    )


def test_a_database_that_cannot_be_reached_is_a_message_not_a_traceback():
    down = f"postgres://postgres@127.0.0.1:{free_port()}/flespi"
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--no-wait"],
        cwd=REPO_DIR,
        env=platform_env(DATABASE_URL=down),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot reach the database" in result.stderr
    assert "start the platform with `make run`" in result.stderr


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_with_the_fleet_running_the_demo_syncs_and_its_commands_show_the_trips(platform, key_file, tmp_path):
    """The demo against a real calc worker, pump and relay: it waits until the six assignments are
    synced, and its curl command for the bus's trips returns the 12 trips of the track (a from-scratch
    calculation gives the same: tests/engine/test_tracks.py)."""
    from rest_framework.test import APIClient

    from tests.support.fleet import Fleet

    fleet = Fleet(tmp_path).start_all()
    try:
        output = run_demo("--timeout", "240")
    finally:
        fleet.stop()
    demo = demos.demo_setup(key_file=key_file)
    assert demos.assignments_synced(demo=demo) == 6
    bus = next(device for device in demo.devices if device.ident == "demo-bus-304")
    trips = next(calculator for calculator in demo.calculators if calculator.name == "demo trips")
    url = next(url for _auth, url in curl_commands(output) if f"/gw/calcs/{trips.pk}/devices/{bus.pk}/" in url)
    parts = urlsplit(url)
    response = APIClient().get(f"{parts.path}?{parts.query}", HTTP_AUTHORIZATION=f"FlespiToken {demo.key}",
                               HTTP_HOST="localhost")
    assert response.status_code == 200, response.content
    assert len(response.json()["result"]) == 12
