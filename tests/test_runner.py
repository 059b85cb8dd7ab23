"""The one runner of long-running loops: a real SIGTERM stops every loop, counts are logged
periodically and at the end, and a command only builds its loops."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading

import pytest
from django.core.management import call_command

from flespi_site.runner import Loop, PeriodicLoop, run_loops


def signal_soon(signum: int, after: float) -> threading.Timer:
    timer = threading.Timer(after, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


class Counting(Loop):
    name = "counting"

    def __init__(self, until: int | None = None, name: str = "counting"):
        super().__init__()
        self.n, self.until, self.name = 0, until, name

    def run(self) -> None:
        while not self.stopping.wait(0.01):
            self.n += 1
            if self.until is not None and self.n >= self.until:
                return

    def counts(self) -> dict[str, int]:
        return {"n": self.n}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_loop_and_restores_the_handlers(signum, caplog):
    before = signal.getsignal(signum)
    periodic = PeriodicLoop(name="tick", every=0.05, step=lambda: 2, what="things")
    counting = Counting()
    signal_soon(signum, 0.5)
    with caplog.at_level(logging.INFO, logger="flespi_site.runner"):
        counts = run_loops([periodic, counting], name="test", log_every=0.2)
    assert periodic.stopping.is_set() and counting.stopping.is_set()
    assert counts["tick"]["steps"] >= 3 and counts["tick"]["things"] == 2 * counts["tick"]["steps"]
    assert counts["counting"]["n"] > 0
    assert signal.getsignal(signum) is before
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("test: stopping (signal") for line in logged)
    periodic_lines = [line for line in logged if line.startswith("test: tick: steps")]
    assert len(periodic_lines) >= 2  # at least once on the way, and once at the end
    assert periodic_lines[-1].endswith("(stopped)")


def test_the_runner_returns_when_every_loop_ended_by_itself():
    counts = run_loops([Counting(until=5, name="five"), Counting(until=3, name="three")], name="test", log_every=60)
    assert counts == {"five": {"n": 5}, "three": {"n": 3}}


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_purge_command_runs_its_loops_until_sigterm(platform):
    out = io.StringIO()
    signal_soon(signal.SIGTERM, 1.0)
    call_command("purge_messages", "--every", "0.2", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines and all(" runs" in line and line.startswith("purge dc_") for line in lines), lines
    assert all(int(line.split(" in ")[1].split()[0]) >= 2 for line in lines), lines
