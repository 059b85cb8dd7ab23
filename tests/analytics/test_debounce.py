"""The debounce scripts against the Redis named in REDIS_URL: bursts, runs overlapping new
messages, crashes, racing claimers, merging, shard isolation and Redis losing its state.

Most tests pass ``now`` (seconds) so that due times are exact; the real-clock tests show the
scripts read Redis's own TIME. Each test works in a region of its own, so they share one Redis."""

from __future__ import annotations

import bisect
import itertools
import os
import random
import threading
import time

import pytest
import redis

from analytics.fleet import debounce
from analytics.fleet.debounce import Change, Claim, DebounceTimers, Offer
from tests.support.concurrency import on_a_barrier
from tests.support.redis import scratch_region

SLOW = bool(os.environ.get("FLESPI_SLOW"))


@pytest.fixture
def timers(region_client):
    client, region = region_client
    return DebounceTimers(client, region=region)


def change(begin, end, *, calc=1, device=7, delay=1.0):
    return Change(calc_id=calc, device_id=device, begin=begin, end=end, delay=delay)


def test_a_burst_costs_one_run(timers):
    armed = sum(
        timers.schedule(shard=0, changes=[change(100 + i, 100 + i)], now=1000 + i / 1000) for i in range(500)
    )

    assert armed == 1
    assert timers.pump(shard=0, limit=100, offer_timeout=30, now=1000.999) == []
    offers = timers.pump(shard=0, limit=100, offer_timeout=30, now=1001.0)
    assert [(o.calc_id, o.device_id, o.reason) for o in offers] == [(1, 7, "due")]
    assert timers.pump(shard=0, limit=100, offer_timeout=30, now=1002.0) == []
    [claim] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=1002.0)
    assert (claim.begin, claim.end) == (100, 599)


def test_a_device_that_never_stops_reporting_is_calculated_every_delay(timers):
    # one message every 100 ms for 5 s, update_delay 1 s: the first message of a window fixes the
    # due time, later ones never push it, so there is a run per second and none waits longer
    runs = []
    for step in range(50):
        now = 1000 + step / 10
        timers.schedule(shard=0, changes=[change(now, now)], now=now)
        for offer in timers.pump(shard=0, limit=10, offer_timeout=30, now=now):
            [claim] = timers.claim(
                shard=0, assignments=[(offer.calc_id, offer.device_id)], run_timeout=60, now=now
            )
            timers.release(shard=0, claims=[claim], ok=True, now=now)
            runs.append((now, claim.begin, claim.end))

    assert [round(at, 1) for at, _, _ in runs] == [1001.0, 1002.1, 1003.2, 1004.3]
    assert all(at - begin <= 1.0 + 1e-9 for at, begin, _ in runs)
    assert runs[0][1:] == (1000.0, 1001.0)


def test_ranges_merge_to_min_begin_and_max_end_exactly(timers):
    timers.schedule(shard=2, changes=[change(1700000000.123456, 1700000500.5)], now=10)
    timers.schedule(shard=2, changes=[change(1700000100.25, 1700000200.75)], now=10.1)
    timers.schedule(shard=2, changes=[change(1699999999.000001, 1700000300.0)], now=10.2)
    timers.schedule(shard=2, changes=[change(1700000400.0, 1700000900.999999)], now=10.3)

    [entry] = timers.entries(shard=2)
    assert (entry.state, entry.begin, entry.end, entry.due) == (
        "pending",
        1699999999.000001,
        1700000900.999999,
        11.0,
    )


def test_a_zero_delay_schedule_pulls_an_armed_timer_in_and_lag_shows_the_oldest(timers):
    timers.schedule(shard=1, changes=[change(5, 6, device=1, delay=60)], now=100)
    timers.schedule(shard=1, changes=[change(5, 6, device=2, delay=30)], now=100)
    timers.schedule(shard=1, changes=[change(1, 2, device=1, delay=0)], now=101)

    lag = timers.lag(shard=1, now=104)
    assert (lag.pending, lag.timers, lag.oldest_due, lag.lag) == (2, 2, 101.0, 3.0)
    assert [o.device_id for o in timers.pump(shard=1, limit=10, offer_timeout=30, now=101)] == [1]
    # a later, longer delay never pushes it back out
    timers.schedule(shard=2, changes=[change(1, 2, delay=0)], now=200)
    timers.schedule(shard=2, changes=[change(3, 4, delay=60)], now=200.5)
    assert timers.entries(shard=2)[0].due == 200.0


def test_the_pump_takes_at_most_limit_and_never_offers_one_twice(timers):
    timers.schedule(shard=0, changes=[change(1, 2, device=d, delay=0) for d in range(10)], now=50)

    batches = [timers.pump(shard=0, limit=3, offer_timeout=30, now=51) for _ in range(5)]

    assert [len(batch) for batch in batches] == [3, 3, 3, 1, 0]
    assert sorted(o.device_id for batch in batches for o in batch) == list(range(10))
    assert timers.lag(shard=0, now=51).pending == 10


def test_an_offer_never_claimed_is_offered_again_after_the_timeout(timers):
    timers.schedule(shard=0, changes=[change(1, 2, delay=0)], now=50)
    assert [o.reason for o in timers.pump(shard=0, limit=10, offer_timeout=30, now=50)] == ["due"]
    timers.schedule(shard=0, changes=[change(0, 3, delay=0)], now=60)

    assert timers.pump(shard=0, limit=10, offer_timeout=30, now=79.999) == []
    assert [o.reason for o in timers.pump(shard=0, limit=10, offer_timeout=30, now=80)] == ["reoffered"]
    [claim] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=81)
    assert (claim.begin, claim.end) == (0, 3)


def test_messages_during_a_run_cause_exactly_one_more_run(timers):
    timers.schedule(shard=0, changes=[change(10, 20)], now=100)
    timers.pump(shard=0, limit=10, offer_timeout=30, now=101)
    [first] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=101)
    for i in range(50):
        timers.schedule(shard=0, changes=[change(30 + i, 31 + i)], now=101.5 + i / 100)

    assert timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=102) == []
    assert timers.pump(shard=0, limit=10, offer_timeout=30, now=105) == []  # waits for the release
    assert timers.release(shard=0, claims=[first], ok=True, now=105) == {(1, 7): "again"}
    # due at the first of those messages + delay (102.5): already past, so offered at once
    assert [o.reason for o in timers.pump(shard=0, limit=10, offer_timeout=30, now=105)] == ["due"]
    [second] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=105)
    assert (second.begin, second.end) == (30, 80)
    assert second.token != first.token
    assert timers.release(shard=0, claims=[second], ok=True, now=106) == {(1, 7): "done"}
    assert timers.entries(shard=0) == []
    assert timers.pump(shard=0, limit=10, offer_timeout=30, now=1000) == []
    assert timers.lag(shard=0, now=1000).timers == 0


def test_a_failed_run_puts_its_range_back_merged_with_what_arrived(timers):
    timers.schedule(shard=0, changes=[change(10, 20)], now=100)
    [claim] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=101)
    timers.schedule(shard=0, changes=[change(25, 40)], now=102)

    assert timers.release(shard=0, claims=[claim], ok=False, retry_delay=5, now=103) == {(1, 7): "again"}
    [entry] = timers.entries(shard=0)
    assert (entry.state, entry.begin, entry.end, entry.due, entry.running_begin) == (
        "pending",
        10,
        40,
        108,
        None,
    )
    assert timers.pump(shard=0, limit=10, offer_timeout=30, now=107.9) == []
    assert len(timers.pump(shard=0, limit=10, offer_timeout=30, now=108)) == 1


def test_a_crashed_run_comes_back_merged_through_the_pump(timers):
    timers.schedule(shard=0, changes=[change(10, 20)], now=100)
    timers.pump(shard=0, limit=10, offer_timeout=30, now=101)
    [crashed] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=101)
    timers.schedule(shard=0, changes=[change(50, 60)], now=110)  # arrives while it "runs"

    assert timers.pump(shard=0, limit=10, offer_timeout=30, now=160.999) == []
    assert [o.reason for o in timers.pump(shard=0, limit=10, offer_timeout=30, now=161)] == ["crashed"]
    [retry] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=162)
    assert (retry.begin, retry.end) == (10, 60)
    # the crashed worker waking up cannot release (or undo) the new run
    assert timers.release(shard=0, claims=[crashed], ok=False, now=163) == {(1, 7): "stale"}
    assert timers.entries(shard=0)[0].running_begin == 10
    assert timers.release(shard=0, claims=[retry], ok=True, now=164) == {(1, 7): "done"}
    assert timers.entries(shard=0) == []


def test_a_claim_after_the_deadline_takes_the_crashed_range_itself(timers):
    timers.schedule(shard=0, changes=[change(10, 20)], now=100)
    [crashed] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=101)
    timers.schedule(shard=0, changes=[change(5, 15)], now=120)

    assert timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=160.9) == []
    [retry] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=161)
    assert (retry.begin, retry.end) == (5, 20)
    assert timers.release(shard=0, claims=[crashed], ok=True, now=162) == {(1, 7): "stale"}
    assert timers.entries(shard=0)[0].state == "running"


def test_claim_of_nothing_pending_or_unknown_is_empty(timers):
    assert timers.claim(shard=0, assignments=[(1, 7), (2, 8)], run_timeout=60) == []
    ghost = Claim(calc_id=1, device_id=7, begin=0, end=1, token="99")
    assert timers.release(shard=0, claims=[ghost], ok=True) == {(1, 7): "stale"}
    assert timers.entries(shard=0) == []


def test_concurrent_claimers_one_wins(client, timers):
    winners = []
    for round_ in range(20):
        timers.schedule(shard=3, changes=[change(round_, round_ + 1, delay=0)])
        claimers = [
            DebounceTimers(redis.Redis(connection_pool=client.connection_pool), region=timers.region)
            for _ in range(8)
        ]
        results = on_a_barrier(
            [lambda c=c: c.claim(shard=3, assignments=[(1, 7)], run_timeout=60) for c in claimers]
        )
        won = [claim for claims in results for claim in claims]
        winners.append(len(won))
        assert timers.release(shard=3, claims=won, ok=True) == {(1, 7): "done"}

    assert winners == [1] * 20


def test_shards_are_isolated(timers):
    for shard in range(16):
        timers.schedule(
            shard=shard, changes=[change(shard, shard + 1, device=100 + shard, delay=shard)], now=0
        )

    assert [o.device_id for o in timers.pump(shard=5, limit=100, offer_timeout=30, now=100)] == [105]
    assert timers.claim(shard=6, assignments=[(1, 105)], run_timeout=60, now=100) == []
    for shard in range(16):
        lag = timers.lag(shard=shard, now=100)
        assert (lag.pending, lag.oldest_due) == (1, float(shard))
        assert [(e.device_id, e.begin) for e in timers.entries(shard=shard)] == [(100 + shard, shard)]


def test_the_many_shard_calls_match_one_call_per_shard(timers):
    """schedule/pump/claim/release over several shards in one round trip each: per shard, what
    the one-shard calls do; shards with nothing to say are left out of the answers."""
    armed = timers.schedule_many({
        3: [change(10, 11, device=1, delay=1), change(12, 13, device=2, delay=5)],
        4: [change(20, 21, device=3, delay=1)],
        5: [],
    }, now=0)
    assert armed == 3
    now, due = timers.next_due(shards=[3, 4, 5])
    assert due == 1.0 and now > 1_000_000  # Redis's clock, seconds

    offers = timers.pump_many(shards=[3, 4, 5], limit=10, offer_timeout=30, now=2)
    assert {shard: [o.device_id for o in shard_offers] for shard, shard_offers in offers.items()} == {3: [1], 4: [3]}
    claims = timers.claim_many({3: [(1, 1), (1, 2)], 4: [(1, 3)], 5: [(1, 9)]}, run_timeout=60, now=2)
    assert {shard: [(c.device_id, c.begin, c.end) for c in shard_claims] for shard, shard_claims in claims.items()} == {
        3: [(1, 10.0, 11.0), (2, 12.0, 13.0)], 4: [(3, 20.0, 21.0)], 5: []}
    timers.schedule_many({4: [change(22, 22, device=3, delay=0)]}, now=3)  # arrives during the run
    outcomes = timers.release_many({3: claims[3], 4: claims[4]}, ok=True, now=4)
    assert outcomes == {3: {(1, 1): "done", (1, 2): "done"}, 4: {(1, 3): "again"}}
    assert [(e.device_id, e.begin, e.state) for e in timers.entries(shard=4)] == [(3, 22.0, "pending")]
    assert timers.entries(shard=3) == []
    assert timers.next_due(shards=[3, 5])[1] is None
    with pytest.raises(ValueError):
        timers.pump_many(shards=[3], limit=0, offer_timeout=30)


def test_the_scripts_read_redis_time(timers):
    clock = timers.now()
    assert abs(clock - time.time()) < 60  # Redis on this machine: the same clock, roughly
    timers.schedule(shard=0, changes=[change(1, 2, delay=0.3)])
    [entry] = timers.entries(shard=0)
    assert clock - 0.002 <= entry.due - 0.3 <= timers.now() + 0.002
    assert timers.pump(shard=0, limit=10, offer_timeout=30) == []
    while timers.now() < entry.due:
        time.sleep(0.05)
    assert len(timers.pump(shard=0, limit=10, offer_timeout=30)) == 1


def test_flushall_loses_every_timer_and_the_scripts_survive(client, timers):
    # Redis losing its state loses the pending ranges: the reconciliation sweep schedules what
    # the cache has newer than the last calculation (docs/analytics.md, "Debounce").
    timers.schedule(shard=0, changes=[change(1, 2)], now=10)
    [claim] = timers.claim(shard=0, assignments=[(1, 7)], run_timeout=60, now=11)
    timers.schedule(shard=1, changes=[change(1, 2)], now=10)

    client.flushall()
    client.script_flush()

    assert timers.release(shard=0, claims=[claim], ok=False, now=12) == {(1, 7): "stale"}
    assert timers.entries(shard=0) == timers.entries(shard=1) == []
    assert timers.pump(shard=1, limit=10, offer_timeout=30, now=100) == []
    assert timers.lag(shard=1, now=100).pending == 0
    assert timers.schedule(shard=1, changes=[change(3, 4, delay=0)], now=100) == 1
    assert len(timers.pump(shard=1, limit=10, offer_timeout=30, now=100)) == 1


def test_unheld_names_exactly_the_assignments_without_a_timer(timers):
    """What reconciliation schedules again: the requests whose assignment has no timer at all,
    pending, offered or running ones counting as held."""
    timers.schedule(shard=0, changes=[change(1, 2, device=1, delay=0), change(1, 2, device=2, delay=0),
                                      change(1, 2, device=3, delay=100)], now=10)
    [offer] = [offer for offer in timers.pump(shard=0, limit=1, offer_timeout=30, now=10)]
    running = 2 if offer.device_id == 1 else 1
    timers.claim(shard=0, assignments=[(1, running)], run_timeout=60, now=11)
    timers.schedule(shard=5, changes=[change(1, 2, device=9)], now=10)
    requests = {
        0: [change(1, 2, device=device) for device in (1, 2, 3, 4)],
        5: [change(1, 2, device=9)],
        6: [change(1, 2, device=10), change(1, 2, calc=2, device=10)],
        7: [],
    }
    assert timers.unheld(requests) == {0: [change(1, 2, device=4)],
                                      6: [change(1, 2, device=10), change(1, 2, calc=2, device=10)]}
    assert timers.unheld({}) == {}


def test_bad_arguments_are_refused_before_redis(timers):
    with pytest.raises(ValueError, match=r"begin 5\.0 is after end 4\.0"):
        timers.schedule(shard=0, changes=[change(5, 4)])
    with pytest.raises(ValueError, match="delay must be"):
        timers.schedule(shard=0, changes=[change(1, 2, delay=-1)])
    with pytest.raises(ValueError, match="begin must be a finite"):
        timers.schedule(shard=0, changes=[change(float("nan"), 2)])
    with pytest.raises(ValueError, match="limit"):
        timers.pump(shard=0, limit=0, offer_timeout=1)
    assert timers.entries(shard=0) == []


@pytest.mark.slow
def test_no_change_is_lost_while_schedulers_race_a_worker(client, timers):
    # Writers schedule ranges on a real clock while a worker pumps, claims and releases (failing one
    # run in five). Every scheduled range must end up inside a successful run claimed after the
    # schedule began. `make test` runs 2 s of it, FLESPI_SLOW=1 runs 30 s.
    seconds = 30.0 if SLOW else 2.0
    devices = 20
    stop = threading.Event()
    # Positions only grow, so a later run's range rarely spans an earlier change by chance.
    positions = itertools.count()
    scheduled: list[tuple[float, int, float, float]] = []  # (time before the schedule, device, range)
    runs: list[tuple[float, int, float, float]] = []  # (time after the claim, device, range)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed):
        rng = random.Random(seed)
        mine = DebounceTimers(redis.Redis(connection_pool=client.connection_pool), region=timers.region)
        try:
            while not stop.is_set():
                device = rng.randrange(devices)
                begin = float(next(positions))
                end = begin + rng.uniform(0, 0.5)
                at = time.monotonic()
                mine.schedule(shard=0, changes=[change(begin, end, device=device, delay=0.02)])
                with lock:
                    scheduled.append((at, device, begin, end))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def worker():
        rng = random.Random(99)
        mine = DebounceTimers(redis.Redis(connection_pool=client.connection_pool), region=timers.region)
        try:
            while not stop.is_set() or mine.lag(shard=0).timers:
                offers = mine.pump(shard=0, limit=50, offer_timeout=1)
                claims = mine.claim(
                    shard=0, assignments=[(o.calc_id, o.device_id) for o in offers], run_timeout=5
                )
                claimed = time.monotonic()
                failed = [c for c in claims if rng.random() < 0.2]
                done = [c for c in claims if c not in failed]
                mine.release(shard=0, claims=failed, ok=False, retry_delay=0.01)
                mine.release(shard=0, claims=done, ok=True)
                with lock:
                    runs.extend((claimed, c.device_id, c.begin, c.end) for c in done)
                time.sleep(0.005)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    pool = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)] + [
        threading.Thread(target=worker)
    ]
    for thread in pool:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join(timeout=30)

    assert errors == []
    assert len(scheduled) > 100
    by_device: dict[int, list[tuple[float, float, float]]] = {}
    for claimed, device, begin, end in sorted(runs):
        by_device.setdefault(device, []).append((claimed, begin, end))

    def covered(at, device, begin, end):
        mine = by_device.get(device, [])
        later = mine[bisect.bisect_left(mine, (at,)) :]
        return any(b <= begin and end <= e for _, b, e in later)

    missed = [change for change in scheduled if not covered(*change)]
    assert missed == []
    assert timers.entries(shard=0) == []
    assert len(runs) < len(scheduled)  # debounced: fewer runs than changes


def test_the_due_index_follows_every_script(timers):
    """Each script leaves its shard in the region's due index at its earliest timer, or out of it
    when it has none; ``reindex`` repairs an index Redis lost alone."""
    from flespi_site.fleet import due_index_key

    timers.schedule_many({3: [change(10, 11, device=1, delay=5)], 4: [change(20, 21, device=3, delay=1)]}, now=100)
    assert timers.due_index()[1] == {3: 105.0, 4: 101.0}
    [offer] = timers.pump(shard=4, limit=10, offer_timeout=30, now=102)
    assert timers.due_index()[1] == {3: 105.0, 4: 132.0}  # the offer's timeout
    [claim] = timers.claim(shard=4, assignments=[(offer.calc_id, offer.device_id)], run_timeout=60, now=103)
    assert timers.due_index()[1][4] == 163.0  # the run's deadline
    timers.release(shard=4, claims=[claim], ok=True, now=104)
    assert timers.due_index()[1] == {3: 105.0}
    assert timers.due_shards(shards=[3, 4]) == [3]  # Redis's clock is far past 105 s
    timers.abandon(shard=3, now=106)
    timers.client.delete(due_index_key(timers.region))
    assert timers.due_index()[1] == {}
    timers.reindex(shards=range(8))
    assert timers.due_index()[1] == {3: 105.0}


class _Scripts:
    """Counts the script calls of a ``DebounceTimers`` and the shards each one served."""

    def __init__(self, timers):
        self.calls: list[tuple[str, int]] = []
        for name in ("schedule", "pump", "claim", "release"):
            script = getattr(timers, f"_{name}")

            def counted(*, keys, args, script=script, name=name, **options):
                self.calls.append((name, (len(keys) - 1) // 4))
                return script(keys=keys, args=args, **options)

            setattr(timers, f"_{name}", counted)

    def take(self) -> list[tuple[str, int]]:
        calls, self.calls = self.calls, []
        return calls


class _OneCallPerShard:
    """The ``_many`` methods as one single-shard call per shard: the reference a call over several
    shards must match."""

    def __init__(self, timers):
        self.timers = timers

    def schedule_many(self, changes, *, now):
        return sum(self.timers.schedule(shard=shard, changes=shard_changes, now=now)
                   for shard, shard_changes in changes.items())

    def pump_many(self, *, shards, limit, offer_timeout, now):
        offers = {shard: self.timers.pump(shard=shard, limit=limit, offer_timeout=offer_timeout, now=now)
                  for shard in shards}
        return {shard: shard_offers for shard, shard_offers in offers.items() if shard_offers}

    def claim_many(self, assignments, *, run_timeout, now):
        return {shard: self.timers.claim(shard=shard, assignments=pairs, run_timeout=run_timeout, now=now)
                for shard, pairs in assignments.items() if pairs}

    def release_many(self, claims, *, ok, retry_delay=0.0, now):
        return {shard: self.timers.release(shard=shard, claims=shard_claims, ok=ok, retry_delay=retry_delay, now=now)
                for shard, shard_claims in claims.items() if shard_claims}

    def entries(self, *, shard):
        return self.timers.entries(shard=shard)

    def due_index(self):
        return self.timers.due_index()


SHARDS = (0, 3, 7, 12, 200)


def _story(timers):
    """Every answer of a story over several shards told through ``timers``' ``_many`` methods, and
    after each step every shard's entries and the due index: bursts merged within one call, the
    pump's limit per shard, claims of pending, sent, unknown and crashed entries, messages during
    runs, releases ok, failed and stale, offers never claimed offered again, a crashed run coming
    back through the pump and through a claim."""
    seen = []

    def step(answer):
        seen.append((answer, {shard: timers.entries(shard=shard) for shard in SHARDS}, timers.due_index()[1]))
        return answer

    step(timers.schedule_many({
        0: [change(10, 11, device=1), change(5, 12, device=1), change(20, 21, device=2)],
        3: [change(30, 31, device=3, delay=5), change(40, 41, device=4, delay=0)],
        7: [change(50, 51, device=5, delay=2)],
        12: [change(60, 61, device=6)],
        200: [change(70, 71, device=7, delay=0), change(80, 81, device=8, delay=60)],
    }, now=100))
    step(timers.pump_many(shards=SHARDS, limit=1, offer_timeout=30, now=102))
    first = step(timers.claim_many({
        0: [(1, 1), (1, 2)], 3: [(1, 3), (1, 4)], 7: [(1, 99)], 12: [(1, 6)], 200: [],
    }, run_timeout=60, now=103))
    step(timers.schedule_many({0: [change(90, 91, device=1)], 12: [change(55, 65, device=6)]}, now=104))
    step(timers.release_many({
        0: first[0], 3: [first[3][0], Claim(calc_id=1, device_id=4, begin=40, end=41, token="999")],
    }, ok=True, now=110))
    step(timers.release_many({12: first[12]}, ok=False, retry_delay=5, now=111))
    step(timers.pump_many(shards=SHARDS, limit=10, offer_timeout=30, now=135))  # offers of 102 unclaimed
    step(timers.schedule_many({3: [change(35, 45, device=4, delay=0)]}, now=140))  # during the forgotten run
    crashed = first[3][1]
    step(timers.pump_many(shards=[3, 7], limit=10, offer_timeout=30, now=163))  # 4 of shard 3: crashed
    step(timers.claim_many({0: [(1, 1)], 3: [(1, 4)], 12: [(1, 6)], 200: [(1, 7), (1, 8)]},
                           run_timeout=60, now=170))
    step(timers.release_many({3: [crashed]}, ok=True, now=171))  # the crashed run's late release
    overtaken = step(timers.claim_many({7: [(1, 5)]}, run_timeout=10, now=172))
    step(timers.claim_many({7: [(1, 5)]}, run_timeout=10, now=182))  # a claim takes the crashed run over
    step(timers.release_many({7: overtaken[7]}, ok=True, now=183))
    return seen


def _story_as_one_call_per_shard(timers) -> tuple[list, _Scripts]:
    """The story told through ``timers``' calls over several shards (and the script calls they
    made), after asserting that each step answers and leaves the shards and the due index as one
    call per shard does."""
    scripts = _Scripts(timers)
    with scratch_region() as (client, region):
        reference = _story(_OneCallPerShard(DebounceTimers(client, region=region)))
    told = _story(timers)
    for step, (got, expected) in enumerate(zip(told, reference, strict=True)):
        assert got == expected, f"step {step}"
    return told, scripts


def test_one_call_over_several_shards_is_one_call_per_shard(timers):
    """Each ``_many`` method is one script call whatever the number of shards, and answers and
    leaves every shard and the due index exactly as one call per shard does."""
    many, scripts = _story_as_one_call_per_shard(timers)
    assert [answer for answer, _entries, _index in many][4] == {
        0: {(1, 1): "again", (1, 2): "done"}, 3: {(1, 3): "done", (1, 4): "stale"}}
    assert {shard: [(offer.device_id, offer.reason) for offer in offers] for shard, offers in many[6][0].items()} == {
        0: [(1, "due")], 7: [(5, "reoffered")], 12: [(6, "due")], 200: [(7, "reoffered")]}
    assert many[8][0] == {3: [Offer(1, 4, "crashed")]}
    assert many[9][0][3] == [Claim(1, 4, begin=35.0, end=45.0, token="3")]  # the crashed run's 40..41 in it
    assert many[10][0] == {3: {(1, 4): "stale"}}
    assert many[13][0] == {7: {(1, 5): "stale"}}
    assert many[-1][2] == {0: 230.0, 3: 230.0, 7: 192.0, 12: 230.0, 200: 230.0}
    assert [name for name, _shards in scripts.take()] == [
        "schedule", "pump", "claim", "schedule", "release", "release", "pump", "schedule", "pump", "claim",
        "release", "claim", "claim", "release"]


def test_calls_split_between_shards_are_still_one_call_per_shard(timers, monkeypatch):
    monkeypatch.setattr(debounce, "CALL_ENTRIES", 2)
    _split, scripts = _story_as_one_call_per_shard(timers)
    # the first schedule in four calls (shards 7 and 12 together), the pump in three: after two
    # offers it leaves the shards it did not reach to the next call
    assert scripts.calls[:7] == [("schedule", 1), ("schedule", 1), ("schedule", 2), ("schedule", 1),
                                 ("pump", 5), ("pump", 3), ("pump", 1)]


def test_a_batch_over_256_shards_is_one_script_call_each(timers):
    assignments = {shard: [(1, device) for device in range(shard, 1000, 256)] for shard in range(256)}
    scripts = _Scripts(timers)

    armed = timers.schedule_many(
        {shard: [change(1, 2, device=device, delay=0) for _calc, device in pairs] for shard, pairs in assignments.items()},
        now=100)
    offers = timers.pump_many(shards=range(256), limit=50, offer_timeout=30, now=100)
    claims = timers.claim_many(
        {shard: [(offer.calc_id, offer.device_id) for offer in shard_offers] for shard, shard_offers in offers.items()},
        run_timeout=60, now=101)
    outcomes = timers.release_many(claims, ok=True, now=102)

    assert armed == 1000
    assert sum(map(len, offers.values())) == sum(map(len, claims.values())) == 1000
    assert {outcome for shard_outcomes in outcomes.values() for outcome in shard_outcomes.values()} == {"done"}
    assert scripts.take() == [("schedule", 256), ("pump", 256), ("claim", 256), ("release", 256)]
    assert timers.due_index()[1] == {}


def test_a_very_large_call_is_split_between_shards(timers, monkeypatch):
    """Past ``CALL_ENTRIES`` entries a call is cut between shards (a shard never): what is sent,
    by its size; what the pump offers, by the script itself. The outcome is the same."""
    monkeypatch.setattr(debounce, "CALL_ENTRIES", 5)
    scripts = _Scripts(timers)
    changes = {shard: [change(shard, shard + 1, device=device, delay=0) for device in range(count)]
               for shard, count in ((0, 2), (1, 3), (2, 7), (3, 1), (4, 4))}

    assert timers.schedule_many(changes, now=100) == 17
    offers = timers.pump_many(shards=range(5), limit=2, offer_timeout=30, now=100)

    # the pump stops after shard 2 (six offers) and goes on with shards 3 and 4 in a second call
    assert scripts.take() == [("schedule", 2), ("schedule", 1), ("schedule", 2), ("pump", 5), ("pump", 2)]
    assert {shard: len(shard_offers) for shard, shard_offers in offers.items()} == {0: 2, 1: 2, 2: 2, 3: 1, 4: 2}
    assert [(entry.device_id, entry.state) for entry in timers.entries(shard=2)] == [
        (0, "sent"), (1, "sent"), (2, "pending"), (3, "pending"), (4, "pending"), (5, "pending"), (6, "pending")]
    assert timers.due_index()[1] == {0: 130.0, 1: 100.0, 2: 100.0, 3: 130.0, 4: 100.0}
    claims = timers.claim_many({shard: [(1, device) for device in range(7)] for shard in range(5)}, run_timeout=60,
                               now=101)
    assert scripts.take() == [("claim", 1)] * 5
    assert {shard: len(shard_claims) for shard, shard_claims in claims.items()} == {0: 2, 1: 3, 2: 7, 3: 1, 4: 4}
