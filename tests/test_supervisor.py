"""`make run`'s supervisor, run as a real process on the test databases: each child killed with
SIGKILL comes back serving while the others keep running; a child that always dies ends it."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
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
from tests.support.waiting import poll

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
doomed = supervisor.Process("doomed", ("{python}", "-c", "print('cannot open /nonexistent/config'); raise SystemExit(3)"),
                            essential=True)
steady = supervisor.Process("steady", ("{python}", "-c", "import time; time.sleep(120)"))
sys.exit(supervisor.main([steady, doomed]))
"""


@live_databases
def test_an_essential_child_that_always_dies_makes_the_supervisor_give_up(tmp_path):
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
        "doomed keeps dying: 4 deaths within 60 s, the last one exited with status 3. "
        "Look at its log: the lines prefixed 'doomed |' above, the last ones being:\n"
        "    cannot open /nonexistent/config\n"
        "To see it fail on its own, run: python -c print('cannot open /nonexistent/config'); raise SystemExit(3)\n"
        "Without doomed the platform cannot serve: giving up."
    ) in text
    assert text.count("steady: started") == 1  # never restarted: it never died
    assert "steady: stopped (killed by signal SIGTERM)" in text


def test_a_crash_loop_of_an_essential_child_stops_every_child(caplog):
    processes = [
        Process("sleeper", ("{python}", "-c", "import time; print('up', flush=True); time.sleep(60)")),
        Process("quitter", ("{python}", "-c", "raise SystemExit(3)"), essential=True),
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


def test_a_crash_loop_of_another_role_holds_it_back_and_the_web_keeps_serving(caplog):
    """A relay (say) that cannot start must not take the web down with it: it is held back for the
    pause, then tried again, while the web keeps its pid."""
    processes = [
        Process("web", ("{python}", "-c", "import time; time.sleep(60)"), essential=True),
        Process("relay", ("{python}", "-c", "raise SystemExit(3)")),
    ]
    runner = Supervisor(processes, env={}, policy=RestartPolicy(first_delay=0.05, deaths=3, window=60, pause=1.5))
    caplog.set_level("INFO", logger="flespi.supervisor")
    runner.start(processes)
    web = runner.children[0].popen.pid
    watcher = threading.Thread(target=runner.watch, kwargs={"poll": 0.02}, daemon=True)
    try:
        watcher.start()
        held = poll(lambda: "Holding relay back for 2 s" in caplog.text, timeout=30)
        assert held, caplog.text
        time.sleep(0.5)  # held back: not started again yet
        assert [name for name, _pid in STARTED.findall(caplog.text)].count("relay") == 3
        # after the pause it is tried again (and dies again: three more starts, held back again)
        assert poll(lambda: [name for name, _ in STARTED.findall(caplog.text)].count("relay") >= 4, timeout=30)
        assert watcher.is_alive()  # the supervisor did not give up
        assert runner.children[0].popen.pid == web and runner.children[0].popen.poll() is None
    finally:
        runner.stop()
        watcher.join(5)
    assert "relay keeps dying: 3 deaths within 60 s, the last one exited with status 3." in caplog.text


SLEEPY = """
import sys
from devtools import supervisor
steady = supervisor.Process("steady", ("{python}", "-c", "import time; print('up', flush=True); time.sleep(120)"))
sys.exit(supervisor.main([steady]))
"""


@live_databases
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_supervisor_stops_on_sigint_and_sigterm_even_when_started_in_the_background(tmp_path, signum):
    """A shell's background job (`make run &`) starts with SIGINT ignored; the supervisor still stops on it."""
    running = RunningSupervisor(
        [sys.executable, "-c", SLEEPY], preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        FLESPI_DATA_DIR=str(tmp_path), PORT=str(free_port()),
    )
    try:
        assert poll(lambda: "steady: started" in running.output.text, timeout=60), running.output.text
        steady = running.pids()["steady"]
        running.process.send_signal(signum)
        assert running.wait(30) == 0
    finally:
        running.kill()
    assert "steady: stopped" in running.output.text
    assert not alive(steady) or psutil.Process(steady).status() == "zombie"


def test_restart_policy():
    policy = RestartPolicy(first_delay=1, max_delay=30, deaths=5, window=120)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert RestartPolicy.from_env(
        {"FLESPI_RESTART_DELAY": "0.5", "FLESPI_CRASH_LOOP": "3/10"}
    ) == RestartPolicy(first_delay=0.5, max_delay=30, deaths=3, window=10)
    assert RestartPolicy.from_env({"FLESPI_CRASH_LOOP_PAUSE": "60"}).pause == 60
    assert RestartPolicy.from_env({}) == RestartPolicy()
    assert how_it_ended(-9) == "killed by signal SIGKILL"
    assert how_it_ended(2) == "exited with status 2"
