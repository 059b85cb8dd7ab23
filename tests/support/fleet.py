"""The calc fleet for real: a calc worker, the pump and the outbox relay as processes of their
own on the platform's databases, Redis and MQTT broker, as `make run` starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from pathlib import Path

from flespi_site.fleet import region_prefix
from tests.support.processes import MANAGE, Output, start, stop


def forget_region_state(region: str = "eu") -> None:
    """Remove what earlier runs left of the region's fleet in Redis (leases of killed workers,
    timers of assignments whose databases were flushed)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.TOPOLOGY.region(region).redis_url)
    for key in client.scan_iter(f"{region_prefix(region)}*", count=1000):
        client.delete(key)


class Fleet:
    """Processes of one region's fleet, started and stopped by a test, by name."""

    def __init__(self, tmp_path: Path, *, region: str = "eu", topic_root: str | None = None, lease_ttl: float = 3.0,
                 mqtt_url: str | None = None):
        self.region = region
        self.data_dir = str(tmp_path / "calc")
        self.topic_root = topic_root or f"t{uuid.uuid4().hex[:8]}"
        self.lease_ttl = lease_ttl
        self.env = {"CALC_DATA_DIR": self.data_dir, "MQTT_TOPIC_ROOT": self.topic_root, "LOG_LEVEL": "INFO"}
        if mqtt_url is not None:
            self.env["MQTT_URL"] = mqtt_url
        self.processes: dict[str, tuple[subprocess.Popen, Output]] = {}

    def start_worker(self, name: str = "worker") -> None:
        self.processes[name] = start(
            [*MANAGE, "calc_worker", "--region", self.region, "--lease-ttl", str(self.lease_ttl)], **self.env
        )

    def start_pump(self) -> None:
        self.processes["pump"] = start([*MANAGE, "calc_pump", "--region", self.region], **self.env)

    def start_relay(self) -> None:
        self.processes["relay"] = start([*MANAGE, "outbox_relay"], **self.env)

    def start_all(self) -> Fleet:
        forget_region_state(self.region)
        self.start_relay()
        self.start_pump()
        self.start_worker()
        self.wait_for("worker", "holds shards", timeout=60)
        return self

    def output(self, name: str) -> Output:
        return self.processes[name][1]

    def wait_for(self, name: str, needle: str, timeout: float = 30.0) -> str:
        return self.output(name).wait_for(needle, timeout=timeout)

    def kill(self, name: str) -> None:
        process, _output = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for name in list(self.processes):
            process, _output = self.processes.pop(name)
            with contextlib.suppress(ProcessLookupError):
                stop(process)
