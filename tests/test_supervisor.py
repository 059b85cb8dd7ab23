"""`make run`'s supervisor, run as a real process on the test databases: each child killed with
SIGKILL comes back serving while the others keep running; a child that always dies ends it."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.request
import uuid

import psutil
import pytest
from django.conf import settings

from devtools.supervisor import CrashLoop, Process, RestartPolicy, Supervisor, how_it_ended
from flespi_site.mqtt import client as mqtt
from tests.support.mqtt import Subscriber
from tests.support.net import free_port
from tests.support.processes import STARTED, RunningSupervisor

# the processes read what the test writes: it must be committed
live_databases = pytest.mark.django_db(transaction=True, databases="__all__")

def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def post_messages(port: int, key: str, device_id: int, messages: list[dict], timeout: float = 30.0) -> dict:
    """POST to the web child, retrying while it is not accepting connections yet."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/gw/devices/{device_id}/messages",
        data=json.dumps(messages).encode(),
        headers={"Authorization": f"FlespiToken {key}", "Content-Type": "application/json"},
        method="POST",
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def topic_root():
    return f"test{uuid.uuid4().hex[:8]}"


@live_databases
def test_a_killed_child_comes_back_serving_and_the_others_keep_running(
    tmp_path, make_account, make_token, topic_root
):
    from devices.services import device_create

    account = make_account("fleet")
    key = make_token(account)
    device = device_create(
        account=account, name="truck", configuration={"ident": f"sup{uuid.uuid4().hex[:10]}"}
    )
    port = free_port()
    ingest_prefix = f"{topic_root}-in"
    running = RunningSupervisor(
        [sys.executable, "-m", "devtools.supervisor"],
        PORT=str(port),
        FLESPI_DATA_DIR=str(tmp_path),
        FLESPI_RESTART_DELAY="0.2",
        MQTT_TOPIC_ROOT=topic_root,
        MQTT_INGEST_TOPIC=f"{ingest_prefix}/+",
    )
    stamp = iter(range(1_700_000_000, 1_800_000_000))
    try:
        running.output.wait_for("platform running on", timeout=90)
        with Subscriber(settings.MQTT_URL, f"{topic_root}/message/gw/devices/{device.pk}") as subscriber:

            def relayed(timestamp: int, timeout: float = 30) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if any(payload.get("timestamp") == timestamp for _topic, payload in subscriber.messages):
                        return True
                    time.sleep(0.05)
                return False

            def serving() -> None:
                """The web stores a message, the relay publishes it; the ingest consumer stores one
                published to the broker, and the relay publishes that too."""
                timestamp = next(stamp)
                assert post_messages(port, key, device.pk, [{"timestamp": timestamp}]) == {"result": []}
                assert relayed(timestamp), f"message {timestamp} sent over HTTP was not relayed"
                timestamp = next(stamp)
                # the consumer subscribes a moment after it starts: publish until it is stored
                publisher = mqtt.client_for(settings.MQTT_URL, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
                publisher.connect(*mqtt.broker_address(settings.MQTT_URL)[:2])
                publisher.loop_start()
                try:
                    deadline = time.monotonic() + 30
                    while True:
                        publisher.publish(
                            f"{ingest_prefix}/{device.configuration['ident']}",
                            json.dumps({"timestamp": timestamp}),
                            qos=1,
                        ).wait_for_publish(5)
                        if relayed(timestamp, timeout=1) or time.monotonic() > deadline:
                            break
                finally:
                    publisher.disconnect()
                    publisher.loop_stop()
                assert relayed(timestamp), (
                    f"message {timestamp} published to the ingest topic was not relayed"
                )

            serving()
            first = running.pids()
            assert set(first) >= {"setup", "web", "relay", "mqtt-ingest", "purge"}
            del first["setup"]
            for name in first:
                before = running.pids()
                os.kill(before[name], signal.SIGKILL)
                running.output.wait_for(
                    f"{name} (pid {before[name]}) died: killed by signal SIGKILL; restarting it in 0.2 s"
                )
                new_pid = running.wait_restarted(name, before[name])
                serving()
                after = running.pids()
                assert after == {**before, name: new_pid}
                assert all(alive(pid) for child, pid in after.items() if child != "setup")
                assert running.process.poll() is None
        children = running.pids()
        running.process.send_signal(signal.SIGTERM)
        assert running.wait() == 0
        for name, pid in children.items():
            assert not alive(pid), f"{name} (pid {pid}) outlived the supervisor"
        for name in first:  # a child just restarted may not have its signal handler yet
            assert re.search(
                rf"{name}: stopped \((exited with status 0|killed by signal SIGTERM)\)", running.output.text
            )
    finally:
        running.kill()


DOOMED = """
import sys
from devtools import supervisor
doomed = supervisor.Process("doomed", ("{python}", "-c", "print('cannot open /nonexistent/config'); raise SystemExit(3)"))
steady = supervisor.Process("steady", ("{python}", "-c", "import time; time.sleep(120)"))
sys.exit(supervisor.main([steady, doomed]))
"""


@live_databases
def test_a_child_that_always_dies_makes_the_supervisor_give_up(tmp_path):
    running = RunningSupervisor(
        [sys.executable, "-c", DOOMED],
        FLESPI_DATA_DIR=str(tmp_path),
        PORT=str(free_port()),
        FLESPI_RESTART_DELAY="0.1",
        FLESPI_RESTART_MAX_DELAY="0.3",
        FLESPI_CRASH_LOOP="4/60",
    )
    try:
        assert running.wait(90) == 1
    finally:
        running.kill()
    text = running.output.text
    delays = re.findall(r"doomed \(pid \d+\) died: exited with status 3; restarting it in ([\d.]+) s", text)
    assert delays == ["0.1", "0.2", "0.3"]  # doubling, capped
    assert (
        "doomed keeps dying: 4 deaths within 60 s, the last one exited with status 3. Giving up. "
        "Look at its log: the lines prefixed 'doomed |' above, the last ones being:\n"
        "    cannot open /nonexistent/config\n"
        "To see it fail on its own, run: python -c print('cannot open /nonexistent/config'); raise SystemExit(3)"
    ) in text
    assert text.count("steady: started") == 1  # never restarted: it never died
    assert "steady: stopped (killed by signal SIGTERM)" in text


def test_a_crash_loop_stops_every_child(caplog):
    processes = [
        Process("sleeper", ("{python}", "-c", "import time; print('up', flush=True); time.sleep(60)")),
        Process("quitter", ("{python}", "-c", "raise SystemExit(3)")),
    ]
    runner = Supervisor(processes, env={}, policy=RestartPolicy(first_delay=0.05, deaths=3, window=60))
    caplog.set_level("INFO", logger="flespi.supervisor")
    runner.start(processes)
    sleeper = runner.children[0].popen.pid
    try:
        with pytest.raises(CrashLoop, match="quitter keeps dying: 3 deaths within 60 s"):
            runner.watch(poll=0.02)
    finally:
        runner.stop()
    started = [int(pid) for name, pid in STARTED.findall(caplog.text)]
    assert [name for name, _pid in STARTED.findall(caplog.text)] == [
        "sleeper",
        "quitter",
        "quitter",
        "quitter",
    ]
    assert started[0] == sleeper
    assert runner.children == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in started)


def test_restart_policy():
    policy = RestartPolicy(first_delay=1, max_delay=30, deaths=5, window=120)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert RestartPolicy.from_env(
        {"FLESPI_RESTART_DELAY": "0.5", "FLESPI_CRASH_LOOP": "3/10"}
    ) == RestartPolicy(first_delay=0.5, max_delay=30, deaths=3, window=10)
    assert RestartPolicy.from_env({}) == RestartPolicy()
    assert how_it_ended(-9) == "killed by signal SIGKILL"
    assert how_it_ended(2) == "exited with status 2"
