"""Brokers of a test's own (the embedded amqtt broker, a Mosquitto with dynamic security) and
paho clients that log in with a token."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from django.db import connections
from paho.mqtt.enums import CallbackAPIVersion

from flespi_site.embedded import REPO_DIR

PLATFORM_USER = "flespi-platform"
PLATFORM_PASSWORD = "test-platform-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the broker did not listen on {port}: {log.read_text()[-2000:]}")


def control_database_url() -> str:
    """The URL of the (test) control database this test process uses."""
    params = connections["default"].settings_dict
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    return f"postgres://{params['USER']}{password}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


class EmbeddedBroker:
    """The platform's amqtt broker in a child process, reading the test's control database."""

    def __init__(self, *, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="amqtt-"))
        self.store = self.dir / "sessions.sqlite3"
        self.log = self.dir / "broker.log"
        self.env = {
            **os.environ, "DATABASE_URL": control_database_url(), "MQTT_URL": self.url,
            "MQTT_PLATFORM_USERNAME": PLATFORM_USER, "MQTT_PLATFORM_PASSWORD": PLATFORM_PASSWORD,
            "DJANGO_SETTINGS_MODULE": "flespi_site.settings", **(extra_env or {}),
        }
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flespi_site.embedded", "mqtt-broker", "--port", str(self.port),
                 "--store", str(self.store)],
                cwd=REPO_DIR, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        wait_for_port(self.port, self.process, self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(20)
            self.process = None

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        if not os.environ.get("KEEPLOG"):
            shutil.rmtree(self.dir, ignore_errors=True)


class TokenClient:
    """A paho client logged in with a token (or anything else), recording what it receives."""

    def __init__(self, url: str, username: str | None, password: str | None = "", *, client_id: str | None = None,
                 clean_session: bool = True):
        from flespi_site.mqtt import client as mqtt

        self.host, self.port, _tls = mqtt.broker_address(url)
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"t-{uuid.uuid4().hex[:10]}", clean_session=clean_session)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: object = None
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        if not reason_code.is_failure:
            self.connected.set()
        self.answered.set()

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks[mid] = [code.value for code in reason_codes]

    def connect(self, timeout: float = 10.0) -> bool:
        """True when the broker accepted the connection."""
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        self.answered.wait(timeout)
        return self.connected.is_set()

    def subscribe(self, topic_filter: str, timeout: float = 10.0) -> int:
        """The SUBACK code for ``topic_filter`` (0 or 1 granted, 128 refused)."""
        _rc, mid = self.client.subscribe(topic_filter, qos=1)
        deadline = time.monotonic() + timeout
        while mid not in self.subacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.subacks[mid][0]

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class DynsecMosquitto:
    """A Mosquitto with the dynamic security plugin, configured as the embedded services do."""

    def __init__(self):
        from accounts.mqtt_dynsec import mosquitto_setup

        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dynsec-"))
        os.chmod(self.dir, 0o755)
        self.log = self.dir / "mosquitto.log"
        self.conf = mosquitto_setup(directory=self.dir / "broker", port=self.port, root="flespi",
                                    platform_username=PLATFORM_USER, platform_password=PLATFORM_PASSWORD)
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        from accounts.mqtt_dynsec import dynsec_plugin

        return bool((shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")) and dynsec_plugin())

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.conf)],
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_for_port(self.port, self.process, self.log)

    def cleanup(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
        if not os.environ.get("KEEPLOG"):
            shutil.rmtree(self.dir, ignore_errors=True)
