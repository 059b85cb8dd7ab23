"""MQTT test helpers: a subscriber that records what it receives, and a private Mosquitto
broker the tests may stop and restart."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

from flespi_site.mqtt import client as mqtt

CLEARED = "<cleared>"


class Subscriber:
    def __init__(self, url: str, topic: str, *, client_id: str | None = None, clean_session: bool = True):
        self.url = url
        self.topic = topic
        self.messages: list[tuple[str, object]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.client_for(url, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}", clean_session=clean_session)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda c, u, f, rc, p: self.subscribed.clear()

    def _on_message(self, client, userdata, message):
        with self._lock:
            # An empty payload clears a retained topic: recorded as CLEARED.
            self.messages.append((message.topic, json.loads(message.payload) if message.payload else CLEARED))

    def __enter__(self):
        self.client.connect_async(*mqtt.broker_address(self.url)[:2], keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), f"could not subscribe to {self.topic} on {self.url}"
        return self

    def __exit__(self, *exc):
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            return list(self.messages)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateBroker:
    """A Mosquitto of the test's own, with persistence, so that it can be stopped and restarted
    without disturbing the shared broker."""

    def __init__(self):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
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
        return bool(shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"))

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", self.config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
