"""The calc fleet over several hosts (docs/analytics.md, "Cache validity" and "Identity and
placement"): calc workers as processes of their own, each with its own data directory and name as
separate hosts have, hand shards to each other both ways (kill -9 and a restart under the same
name, a worker paused past its lease, a worker joining, one leaving) while random, late,
duplicated and deleted messages arrive for many devices. Once the fleet settles, every
assignment's stored intervals equal a from-scratch calculation and the MQTT events replayed from
the first give the same set.

`make test` runs one round of every move; FLESPI_SLOW=1 runs many.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.contract import Scenario
from tests.support.fleet import Fleet

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SLOW = bool(os.environ.get("FLESPI_SLOW"))
ROUNDS = 10 if SLOW else 1
DEVICES = 24 if SLOW else 8


@pytest.fixture
def hosts(tmp_path, platform):
    """Relay, pump and two calc workers, "host-a" and "host-b", sharing the shards."""
    fleet = Fleet(tmp_path)
    fleet.start_relay()
    fleet.start_pump()
    from tests.support.fleet import forget_region_state

    forget_region_state(fleet.region)
    for name in ("host-a", "host-b"):
        fleet.start_worker(name)
    fleet.wait_placed({"host-a", "host-b"})
    yield fleet
    fleet.stop()


@pytest.fixture
def devices(hosts, make_account):
    made = [Scenario(hosts, make_account, seed=100 + n) for n in range(DEVICES)]
    yield made
    for scenario in made:
        scenario.close()


def feed(devices, *, batches: int = 2, late: bool = False) -> None:
    """Random batches for every device (with ``late``, of messages older than most it holds)."""
    for scenario in devices:
        for _ in range(batches):
            if late:
                scenario.late_batch()
            else:
                scenario.batch()


def settle(devices, timeout: float = 180.0) -> None:
    for scenario in devices:
        scenario.wait_settled(timeout=timeout)


def test_a_host_that_comes_back_computes_from_what_it_missed(hosts, devices):
    """The issue's case: host-b dies, its shards go to host-a, messages keep coming and host-a
    drains them; host-b comes back with its old caches and takes its shards again; then late
    messages arrive for every device."""
    feed(devices, batches=3)
    settle(devices)
    for _ in range(ROUNDS):
        hosts.kill("host-b")
        hosts.wait_placed({"host-a"})
        # what host-a drains meanwhile lies where the late messages below will be recalculated
        feed(devices, batches=3, late=True)
        hosts.start_worker("host-b")
        placed = hosts.wait_placed({"host-a", "host-b"})
        assert any(placed[scenario.device.shard] == "host-b" for scenario in devices)
        feed(devices, batches=2, late=True)
        settle(devices)


def test_shards_move_both_ways_under_every_kind_of_handover(hosts, devices):
    feed(devices)
    settle(devices)
    for round_ in range(ROUNDS):
        # kill -9 and a restart under the same name: it takes its shards back at once
        hosts.kill("host-a")
        feed(devices)
        hosts.start_worker("host-a")
        hosts.wait_placed({"host-a", "host-b"})
        feed(devices, late=True)
        # paused past its lease: host-a takes everything; resumed, host-b is fenced out, then
        # takes its share again
        hosts.pause("host-b")
        try:
            hosts.wait_placed({"host-a"})
            feed(devices)
        finally:
            hosts.resume("host-b")
        hosts.wait_placed({"host-a", "host-b"})
        feed(devices, late=True)
        # a third host joins, then leaves cleanly
        hosts.start_worker("host-c")
        hosts.wait_placed({"host-a", "host-b", "host-c"})
        feed(devices)
        hosts.terminate("host-c")
        hosts.wait_placed({"host-a", "host-b"})
        feed(devices, late=True)
        if not SLOW or round_ % 3 == 2:
            settle(devices)
    settle(devices)
    time.sleep(1.0)
    settle(devices)  # and it stays so
