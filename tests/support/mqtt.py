"""MQTT in tests: the one subscriber, which records what it receives, and brokers of a test's own (a
plain Mosquitto with persistence, the platform's broker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from flespi_site.mqtt import client as mqtt
from tests.support.net import free_port, wait_listening
from tests.support.processes import REPO_DIR, platform_env
from tests.support.waiting import poll

# What the brokers of the tests take as the platform's login.
PLATFORM_USER = "flespi-platform"
PLATFORM_PASSWORD = "test-platform-password"
CLEARED = "<cleared>"  # an empty payload, which clears a retained topic, as ``Subscriber.messages`` shows it


@dataclass(frozen=True)
class Received:
    at: float  # time.time() when it arrived
    topic: str
    payload: bytes


class Subscriber:
    """An MQTT client of the caller's own that records every message it receives.

    With ``topic``, to use as a context manager: it subscribes to ``topic`` on every
    connection (again after a broker restart) and logs in as the platform's processes do
    (``flespi_site.mqtt.client_for``). With ``login`` (user and password; user None: anonymous)
    and no topic, a client that ``connect``s and ``subscribe``s when told, to see what the broker
    lets that login do.
    """

    def __init__(self, url: str, topic: str | None = None, *, login: tuple[str | None, str | None] | None = None,
                 qos: int = 1, client_id: str | None = None, clean_session: bool = True):
        self.url, self.topic, self.qos = url, topic, qos
        self.host, self.port, _tls = mqtt.broker_address(url)
        client_id = client_id or f"test-{uuid.uuid4().hex[:10]}"
        if login is None:
            self.client = mqtt.client_for(url, client_id=client_id, clean_session=clean_session)
        else:
            self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                      clean_session=clean_session)
            username, password = login
            if username is not None:
                self.client.username_pw_set(username, password)
        self.records: list[Received] = []
        self.connack: object = None
        self.connected = threading.Event()
        self.answered = threading.Event()  # a CONNACK came, accepting or refusing
        self.subscribed = threading.Event()  # to ``topic``, on the current connection
        self.disconnected = threading.Event()
        self.subacks: dict[int, list[int]] = {}
        self._decoded: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        if not reason_code.is_failure:
            self.connected.set()
        self.answered.set()
        if self.topic is not None:
            client.subscribe(self.topic, qos=self.qos)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks[mid] = [code.value for code in reason_codes]
        self.subscribed.set()

    def _on_message(self, client, userdata, message):
        received = Received(time.time(), message.topic, message.payload)
        with self._lock:
            self.records.append(received)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.subscribed.clear()
        self.disconnected.set()

    def start(self) -> Subscriber:
        """Connected and subscribed to ``topic``; ``close`` ends it."""
        # Asynchronously: the broker may come up after the subscriber starts.
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), f"could not subscribe to {self.topic} on {self.url}"
        return self

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self, timeout: float = 10.0) -> bool:
        """True when the broker accepted the connection."""
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        self.answered.wait(timeout)
        return self.connected.is_set()

    def subscribe(self, topic_filter: str, timeout: float = 10.0) -> int:
        """The SUBACK code for ``topic_filter`` (0 or 1 granted, 128 refused)."""
        _rc, mid = self.client.subscribe(topic_filter, qos=self.qos)
        poll(lambda: mid in self.subacks, timeout=timeout, every=0.01)
        return self.subacks[mid][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def received(self) -> list[tuple[str, bytes]]:
        """(topic, payload) of every message so far."""
        with self._lock:
            return [(record.topic, record.payload) for record in self.records]

    @property
    def messages(self) -> list[tuple[str, object]]:
        """(topic, payload read as JSON, or CLEARED) of every message so far."""
        with self._lock:
            for record in self.records[len(self._decoded):]:
                self._decoded.append((record.topic, json.loads(record.payload) if record.payload else CLEARED))
            return list(self._decoded)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """``received()`` once it holds ``count`` messages, or when ``timeout`` has passed."""
        poll(lambda: len(self.records) >= count, timeout=timeout, every=0.02)
        return self.received()

    def wait_for_messages(self, count: int, timeout: float = 15.0) -> list[tuple[str, object]]:
        """``messages`` once there are ``count`` of them, or when ``timeout`` has passed."""
        poll(lambda: len(self.records) >= count, timeout=timeout, every=0.02)
        return self.messages

    def wait_for_distinct(self, count: int, timeout: float = 15.0) -> list[tuple[str, object]]:
        """``messages`` once ``count`` distinct (topic, payload) pairs have arrived, or when
        ``timeout`` has passed. QoS 1 is at least once: after a broker restart the messages it had
        sent but whose acknowledgement it had not saved come again, and counting them would stop
        the wait before the last new ones arrive."""

        def distinct() -> int:
            with self._lock:
                return len({(record.topic, record.payload) for record in self.records})

        poll(lambda: distinct() >= count, timeout=timeout, every=0.05)
        return self.messages


def mosquitto() -> str | None:
    """The Mosquitto binary, when installed."""
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return found if os.path.exists(found) else None


class PrivateBroker:
    """A Mosquitto of the test's own, with persistence, so that it can be stopped and restarted
    without disturbing the shared broker."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mosquitto-")
        # started as root, Mosquitto drops to its own user, which must be able to write its
        # persistence file here
        os.chmod(self.dir, 0o777)
        self.config = os.path.join(self.dir, "mosquitto.conf")
        with open(self.config, "w") as handle:
            handle.write(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {self.dir}/\nautosave_interval 1\n"
                # A subscriber catching up after an outage receives thousands of QoS 1 messages at
                # once; Mosquitto's default queue (1000 per client) would drop the rest.
                "max_queued_messages 0\n"
            )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @staticmethod
    def available() -> bool:
        return mosquitto() is not None

    def start(self) -> None:
        self.process = subprocess.Popen([mosquitto() or "mosquitto", "-c", self.config], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_listening(self.port, timeout=10, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class EmbeddedBroker:
    """The platform's broker (``manage.py mqtt_broker``) in a child process, reading the control
    database, as ``make run`` and a deployment run it."""

    def __init__(self, *, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.ws_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="broker-"))
        self.store = self.dir / "broker.sqlite3"
        self.log = self.dir / "broker.log"
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/mqtt"

    def start(self) -> None:
        env = platform_env(MQTT_URL=self.url, MQTT_PLATFORM_USERNAME=PLATFORM_USER,
                           MQTT_PLATFORM_PASSWORD=PLATFORM_PASSWORD, DJANGO_SETTINGS_MODULE="flespi_site.settings",
                           **self.extra_env)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "mqtt_broker", "--port", str(self.port), "--ws-port", str(self.ws_port),
                 "--store", str(self.store)],
                cwd=REPO_DIR, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        wait_listening(self.port, timeout=20, process=self.process, log=self.log)
        wait_listening(self.ws_port, timeout=20, process=self.process, log=self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(20)
            self.process = None

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        if not os.environ.get("KEEPLOG"):
            shutil.rmtree(self.dir, ignore_errors=True)
