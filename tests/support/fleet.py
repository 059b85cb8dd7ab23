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

    def host_dir(self, name: str) -> str:
        """The data directory of the calc worker ``name``: one per worker, as separate hosts have."""
        return str(Path(self.data_dir) / "hosts" / name)

    def cache_path(self, name: str, shard: int) -> str:
        """The cache file of ``shard`` on the host of worker ``name``."""
        return str(Path(self.host_dir(name)) / "calc" / self.region / name / f"shard-{shard}.sqlite")

    def start_worker(self, name: str = "worker") -> None:
        """A calc worker as a host of its own would run it: its own data directory and name (a
        restart under the same name is the same host coming back)."""
        self.processes[name] = start(
            [*MANAGE, "calc_worker", "--region", self.region, "--lease-ttl", str(self.lease_ttl), "--name", name],
            **{**self.env, "CALC_DATA_DIR": self.host_dir(name)},
        )

    def start_pump(self) -> None:
        self.processes["pump"] = start([*MANAGE, "calc_pump", "--region", self.region], **self.env)

    def start_relay(self) -> None:
        self.processes["relay"] = start([*MANAGE, "outbox_relay"], **self.env)

    def start_all(self, workers: tuple[str, ...] = ("worker",)) -> Fleet:
        """Relay, pump and the calc workers ``workers`` (each a host of its own), once every
        shard is placed on them."""
        forget_region_state(self.region)
        self.start_relay()
        self.start_pump()
        for name in workers:
            self.start_worker(name)
        self.wait_placed(set(workers))
        return self

    def holders(self) -> dict[int, str | None]:
        """The worker holding each shard's lease now (None: free)."""
        import redis
        from django.conf import settings

        from flespi_site.fleet import lease_holders

        client = redis.Redis.from_url(settings.TOPOLOGY.region(self.region).redis_url)
        return lease_holders(client.pipeline(transaction=False), region=self.region,
                             shards=list(range(settings.CALC_SHARDS)))

    def wait_placed(self, names: set[str], timeout: float = 60.0) -> dict[int, str | None]:
        """Once every shard is held, and by the workers ``names`` only, each holding some."""
        from tests.support.waiting import wait_until

        def placed() -> bool:
            held = self.holders()
            return None not in held.values() and set(held.values()) == names

        wait_until(placed, timeout=timeout, every=0.2, what=f"the shards placed on {sorted(names)}")
        return self.holders()

    def output(self, name: str) -> Output:
        return self.processes[name][1]

    def wait_for(self, name: str, needle: str, timeout: float = 30.0) -> str:
        return self.output(name).wait_for(needle, timeout=timeout)

    def kill(self, name: str) -> None:
        process, _output = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def terminate(self, name: str) -> None:
        """A clean stop (SIGTERM): the worker finishes its task and releases its leases."""
        process, _output = self.processes.pop(name)
        stop(process)

    def pause(self, name: str) -> None:
        os.kill(self.processes[name][0].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.processes[name][0].pid, signal.SIGCONT)

    def stop(self) -> None:
        for name in list(self.processes):
            process, _output = self.processes.pop(name)
            with contextlib.suppress(ProcessLookupError):
                stop(process)
