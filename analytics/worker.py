"""What a calc worker does with the shards it holds (DESIGN 3 and 8; docs/analytics.md,
"Processes" and "A recalculation").

A ``ShardWorker`` holds leases on some shards of its region (``analytics.shards``) and, for each,
the shard's cache file (``analytics.cache``). Its three jobs, each called by a thin Celery task:

* ``changes``: consume the shard's change log (``message_changes`` in every datacenter database):
  bring the changed ranges of cached devices into the cache from PostgreSQL (the only messages
  ever read from there besides filling a device), widen the durable pending range of every
  enabled assignment of the changed devices, and arm their debounce timers.
* ``run``: claim due assignments, recalculate each against the cache, and write all their diffs,
  outbox rows and state in one transaction per datacenter, fenced by the shard's epoch; then
  bring the cache's intervals in step and release the claims.
* ``purge``: ``intervals_ttl`` / ``intervals_rotate`` and the cache's message retention.

Every write to PostgreSQL runs in a transaction whose first statement checks the shard's fence,
so a worker that lost its lease (paused past its TTL, say) cannot commit anything.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connections, transaction

from accounts import placement
from accounts.fence import write_fence
from analytics import blocks, services, storage
from analytics import events as event_topics
from analytics.cache import CacheCorrupt, ShardCache
from analytics.choices import AssignmentState
from analytics.debounce import Change, Claim, DebounceTimers, Offer
from analytics.engine import Calculator, Diff, active_deadline, recalculate
from analytics.models import Assignment
from analytics.models import Calculator as StoredCalculator
from analytics.shards import Fenced, ShardLeases, fence_raise, fences_check
from devices import storage as message_storage
from devices.models import Device
from flespi_site import metrics
from flespi_site.celery import celery_app, dirty_key, redis_client, shard_queue, wake_key

logger = logging.getLogger(__name__)

# Debounce entries and the engine speak of finite timestamps; "all of history" is this range.
HISTORY_BEGIN = 0.0
HISTORY_END = float(2**40)
# Assignments one batch carries at most (one task writes them in one transaction), and the due
# assignments taken per shard for one at least, however many shards the worker holds.
BATCH = 500
MIN_SHARE = 50
# How long a batch sent to a worker keeps the pump from sending it another (unless the worker
# says sooner that it is done): a worker that died on one is sent the next after this.
BATCH_TTL = 10
# A claimed run must end within this long, or its range is offered again (a crashed run).
RUN_TIMEOUT = 300.0
# An offer the worker did not claim within this long is offered again.
OFFER_TIMEOUT = 15.0
# Messages per part (one read, one cache transaction) when filling a device into the cache.
FILL_CHUNK = 262_144
# The greatest timestamp a message can have (µs, bigint).
LAST_TS = 2**63 - 1
# Change-log rows consumed per transaction.
CHANGES_BATCH = 10_000
# Changed ranges of several devices starting within this many µs of each other are read from
# PostgreSQL with one statement.
RANGE_GROUP_SPAN = 600 * 1_000_000


def finite(begin: float, end: float) -> tuple[float, float]:
    return max(begin, HISTORY_BEGIN), min(end, HISTORY_END)


def region_aliases(region: str) -> list[str]:
    """The datacenter databases of ``region`` this process has."""
    return [dc.alias for dc in settings.TOPOLOGY.region(region).datacenters if dc.alias in settings.DATABASES]


@dataclass
class HeldShard:
    shard: int
    epoch: int
    cache: ShardCache


@dataclass
class RunStats:
    """What one ``run`` did, for logs and benchmarks."""

    assignments: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    messages_read: int = 0
    fenced: bool = False


@dataclass
class _Work:
    """One claimed assignment on its way through a run."""

    claim: Claim
    shard: int
    cache: ShardCache
    assignment: Assignment
    calculator: StoredCalculator
    begin: float
    end: float
    diff: Diff | None = None
    was_state: str = ""
    changes: storage.StoredChanges | None = None
    stamp: float = 0.0
    outbox: list[event_topics.Event] = field(default_factory=list)


class ShardWorker:
    """The shards one worker process holds in one region, and the work it does on them."""

    def __init__(self, *, region: str, worker_id: str, data_dir: str | os.PathLike, lease_ttl: float):
        self.region = region
        self.worker_id = worker_id
        self.data_dir = Path(data_dir) / "calc" / region
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.aliases = region_aliases(region)
        client = redis_client(region)
        self.leases = ShardLeases(client, region=region, shards=settings.CALC_SHARDS, worker=worker_id, ttl=lease_ttl)
        self.timers = DebounceTimers(client, region=region)
        self.held: dict[int, HeldShard] = {}
        self._lock = threading.RLock()
        self._compiled: dict[tuple[int, int], Calculator] = {}

    # -- leases ------------------------------------------------------------------------------

    def rebalance(self) -> tuple[list[int], list[int]]:
        """Heartbeat and take an even share of the shards; returns (shards gained, shards lost),
        whose queues the caller starts and stops consuming. A gained shard's fence is raised in
        every datacenter database before anything else happens on it."""
        with self._lock:
            balance = self.leases.balance()
            for shard, epoch in balance.extra.items():
                self.leases.release(shard, epoch)
            now_held = {shard: epoch for shard, epoch in balance.held.items() if shard not in balance.extra}
            lost = sorted(shard for shard, held in self.held.items() if now_held.get(shard) != held.epoch)
            for shard in lost:
                self.held.pop(shard).cache.close()
            if lost:
                logger.warning("calc %s: lost the lease of shards %s", self.region, lost)
            gained = []
            for shard, epoch in sorted(now_held.items()):
                if shard in self.held:
                    continue
                if not self._raise_fences(shard, epoch):
                    self.leases.release(shard, epoch)
                    continue
                self.held[shard] = HeldShard(shard, epoch, self._open_cache(shard))
                gained.append(shard)
                # What the previous holder was offered or running comes back now, not after its
                # timeouts.
                self.timers.abandon(shard=shard)
            # A shard lost and taken again at once (Redis lost the leases) is in both lists: its
            # queue is cancelled and added again.
            return gained, lost

    def renew(self) -> list[int]:
        """Extend every lease held (a heartbeat thread calls this while tasks run); returns the
        shards whose lease was lost. Writes of a lost shard are refused by the fence from then
        on; the next ``rebalance`` stops consuming its queue."""
        lost = []
        with self._lock:
            for shard, held in list(self.held.items()):
                if not self.leases.renew(shard, held.epoch):
                    lost.append(shard)
        for shard in lost:
            logger.warning("calc %s: lost the lease of shard %s", self.region, shard)
        return lost

    def leave(self) -> None:
        with self._lock:
            for held in self.held.values():
                held.cache.close()
            self.held.clear()
            self.leases.leave()

    def _raise_fences(self, shard: int, epoch: int) -> bool:
        for alias in self.aliases:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                stored = fence_raise(cursor, shard=shard, epoch=epoch, worker=self.worker_id)
            if stored != epoch:
                logger.warning("calc %s: shard %s moved on (fence %s > epoch %s)", self.region, shard, stored, epoch)
                return False
        return True

    def _open_cache(self, shard: int) -> ShardCache:
        path = self.data_dir / f"shard-{shard}.sqlite"
        name = f"{self.region}/{shard}"
        try:
            return ShardCache(path, shard=name)
        except CacheCorrupt as exc:
            logger.warning("calc %s: cache of shard %s is unreadable (%s); rebuilding it", self.region, shard, exc)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return ShardCache(path, shard=name)

    def holding(self, shard: int) -> HeldShard | None:
        """The held shard, with a cache that is still the file on disk (a deleted or replaced
        file is reopened empty and refilled from PostgreSQL as work needs it)."""
        with self._lock:
            held = self.held.get(shard)
            if held is not None and held.cache.replaced():
                logger.warning("calc %s: cache file of shard %s is gone; rebuilding it", self.region, shard)
                held.cache.close()
                held.cache = self._open_cache(shard)
            return held

    def _fenced(self, alias: str, helds: Sequence[HeldShard]):
        """A transaction on ``alias`` that may write for these shards (its first statement checks
        their fences)."""
        return _FencedTransaction(alias, helds)

    # -- the change log ------------------------------------------------------------------------

    def changes(self, shard: int, *, address: str | int | None = None) -> int:
        """Take the wake-up that came through ``shard``'s queue (addressed to ``address``: a worker
        id, or the shard) and consume the change log of every held shard with rows not taken yet;
        returns how many changes were taken."""
        if self.holding(shard) is None:
            raise NotHeld(shard)
        woken = self._take_dirty(shard if address is None else address)
        helds = [held for dirty in woken if (held := self.holding(dirty)) is not None]
        if not helds:
            return 0
        taken = 0
        for alias in self.aliases:
            while True:
                count = self._changes_batch(alias, helds)
                taken += count
                if count < CHANGES_BATCH:
                    break
        return taken

    def _take_dirty(self, address: str | int) -> list[int]:
        """Clear the wake-up flag of ``address`` (its message is this one) and the dirty flags of
        the held shards; returns the shards whose dirty flag was set. A writer sets the dirty flag
        after its commit, so the read that follows the clearing sees its rows; a shard whose flag
        is not set has no row that a drain after the flag's last clearing did not see."""
        with self._lock:
            shards = sorted(self.held)
        pipe = redis_client(self.region).pipeline(transaction=False)
        pipe.delete(wake_key(self.region, address))
        for held in shards:
            pipe.delete(dirty_key(self.region, held))
        return [held for held, existed in zip(shards, pipe.execute()[1:], strict=True) if existed]

    def _changes_batch(self, alias: str, helds: list[HeldShard]) -> int:
        by_shard = {held.shard: held for held in helds}
        with connections[alias].cursor() as cursor:
            cursor.execute(
                # The account by a lookup per row: a join would read the whole device table.
                "SELECT c.id, c.shard, c.device_id, c.begin_ts, c.end_ts, "
                "(SELECT d.account_id FROM devices_device d WHERE d.id = c.device_id), "
                "EXTRACT(EPOCH FROM clock_timestamp() - c.created)::float8 FROM message_changes c "
                "WHERE c.shard = ANY(%s) ORDER BY c.id LIMIT %s",
                [sorted(by_shard), CHANGES_BATCH],
            )
            read = cursor.fetchall()
        if not read:
            return 0
        # Changes of an account moving away stay for the move, which takes them along.
        elsewhere = _placed_elsewhere(alias, {row[5] for row in read if row[5] is not None})
        rows = [row for row in read if row[5] not in elsewhere]
        accounts = {row[5] for row in rows if row[5] is not None}
        if not rows:
            return 0
        ranges: dict[int, tuple[int, int]] = {}
        shard_of: dict[int, int] = {}
        # How long ago the device's first change of the batch was written: its timer is armed
        # that much sooner, so that waiting in the log does not lengthen the debounce.
        waited: dict[int, float] = {}
        for _id, shard, device_id, begin, end, _account, age in rows:
            low, high = ranges.get(device_id, (begin, end))
            ranges[device_id] = (min(low, begin), max(high, end))
            shard_of[device_id] = shard
            waited[device_id] = max(waited.get(device_id, 0.0), age or 0.0)
        cached = {shard: set(by_shard[shard].cache.devices()) for shard in set(shard_of.values())}
        caches = {d: by_shard[shard_of[d]].cache for d in ranges if d in cached[shard_of[d]]}
        with contextlib.ExitStack() as stack:
            for cache in {id(c): c for c in caches.values()}.values():
                stack.enter_context(cache.batch())
            self._cache_ranges(alias, caches, {d: ranges[d] for d in caches})
        device_ids = list(ranges)
        with self._fenced(alias, [by_shard[shard] for shard in sorted(set(shard_of.values()))]) as cursor:
            write_fence(alias=alias, account_ids=accounts)
            cursor.execute(
                """
                UPDATE analytics_assignment AS a SET
                    pending_begin = LEAST(a.pending_begin, r.b / 1e6), pending_end = GREATEST(a.pending_end, r.e / 1e6)
                FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS r(d, b, e)
                WHERE a.device_id = r.d AND a.enabled
                RETURNING a.calculator_id, a.device_id, a.pending_begin, a.pending_end,
                    (SELECT update_delay FROM analytics_calculator c WHERE c.id = a.calculator_id)
                """,
                [device_ids, [ranges[d][0] for d in device_ids], [ranges[d][1] for d in device_ids]],
            )
            scheduled = cursor.fetchall()
            cursor.execute("DELETE FROM message_changes WHERE id = ANY(%s)", [[row[0] for row in rows]])
        # The timers are armed after commit: a run they start finds the pending range stored.
        changes: dict[int, list[Change]] = {}
        for calc_id, device_id, _b, _e, delay in scheduled:
            low, high = finite(ranges[device_id][0] / 1e6, ranges[device_id][1] / 1e6)
            changes.setdefault(shard_of[device_id], []).append(
                Change(calc_id, device_id, low, high, max(0.0, float(delay) - waited[device_id]))
            )
        self.timers.schedule_many(changes)
        return len(read)

    def _cache_ranges(self, alias: str, caches: dict[int, ShardCache], ranges: dict[int, tuple[int, int]]) -> None:
        """Make each device's cache (``caches``) hold exactly what PostgreSQL holds for the device
        in its range (µs). Devices whose ranges lie close together (the usual case: new messages)
        are read with one statement; a range far from the others (a late upload) on its own."""
        order = sorted(ranges, key=lambda d: ranges[d][0])
        groups: list[list[int]] = []
        for device_id in order:
            if groups and ranges[device_id][0] - ranges[groups[-1][0]][0] <= RANGE_GROUP_SPAN and len(groups[-1]) < 500:
                groups[-1].append(device_id)
            else:
                groups.append([device_id])
        for group in groups:
            low = min(ranges[d][0] for d in group)
            high = max(ranges[d][1] for d in group)
            by_device: dict[int, list[dict]] = {d: [] for d in group}
            for message in message_storage.messages_read(alias=alias, device_ids=group, begin=low, end=high):
                owner = message.get("device.id")  # the platform stamps it on every stored message
                if not isinstance(owner, int) or owner not in by_device:
                    continue
                begin, end = ranges[owner]
                if begin <= round(message["timestamp"] * 1_000_000) <= end:
                    by_device[owner].append(message)
            for device_id, messages in by_device.items():
                begin, end = ranges[device_id]
                cache = caches[device_id]
                cache.messages_delete(device_id=device_id, begin=begin / 1e6, end=end / 1e6)
                if messages:
                    cache.messages_put(device_id=device_id, messages=messages)

    def _fill(self, cache: ShardCache, device: Device) -> None:
        """Copy a device's stored messages into the cache (it was not cached)."""
        alias = device.database
        started = time.monotonic()
        begin, total = 0, 0
        cache.device_drop(device_id=device.pk)  # what a fill cut short left
        filled_to = time.time()
        while True:
            cut = blocks.messages_split(alias=alias, device_id=device.pk, begin=begin, size=FILL_CHUNK)
            part = blocks.messages_block(
                alias=alias, device_id=device.pk, begin=begin, end=LAST_TS if cut is None else cut - 1, names=None
            )
            cache.messages_fill(device_id=device.pk, block=part, filled_to=filled_to if cut is None else None)
            total += len(part)
            if cut is None:
                break
            begin = cut
        logger.info("calc %s: device %s cached, %s messages in %.1f s", self.region, device.pk, total,
                    time.monotonic() - started)

    def requests(self, shard: int) -> int:
        """Schedule the durable recalculation requests of the shard's assignments (new, enabled
        again, a calculator change, the recalculate endpoint) right away; returns how many."""
        held = self.holding(shard)
        if held is None:
            raise NotHeld(shard)
        changes = []
        for alias in self.aliases:
            for _shard, calc_id, device_id, begin, end, state in assignment_requests(alias=alias, shard=shard):
                if begin is None or end is None or state != AssignmentState.SYNCED:
                    begin, end = -math.inf, math.inf
                changes.append(Change(calc_id, device_id, *finite(begin, end), 0.0))
        if changes:
            self.timers.schedule(shard=shard, changes=changes)
        return len(changes)

    # -- recalculation -------------------------------------------------------------------------

    def run(self, shard: int, assignments: Sequence[tuple[int, int]], *, now: float | None = None) -> RunStats:
        """Claim and recalculate these (calc_id, device_id) of the shard (``run_batch`` of one
        shard)."""
        return self.run_batch({shard: assignments}, now=now)

    def run_batch(self, batch: Mapping[int, Sequence[tuple[int, int]]], *, now: float | None = None) -> RunStats:
        """Claim and recalculate these (calc_id, device_id) of several shards (shard -> pairs),
        writing every diff of a datacenter in one transaction fenced by all their epochs. Pairs of
        a shard this worker does not hold are left alone (their offers come back to the holder
        after ``OFFER_TIMEOUT``); ``NotHeld`` when it holds none of them."""
        try:
            return self._run_batch(batch, now=now)
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        """After a batch: what fell due on the held shards meanwhile is sent to this worker at
        once, as its next batch (the pump would only at its next round); with nothing due, the
        worker is marked free, and the pump sends the next batch when there is one."""
        client = redis_client(self.region)
        try:
            with self._lock:
                shards = sorted(self.held)
            offers = self.timers.pump_many(shards=shards, limit=batch_limit(len(shards)),
                                           offer_timeout=OFFER_TIMEOUT) if shards else {}
            if not batch_send(app=celery_app(self.region), client=client, region=self.region,
                              worker_id=self.worker_id, offers=offers):
                client.delete(batch_busy_key(self.region, self.worker_id))
        except Exception:  # Redis away: the busy mark expires, the offers come back
            logger.exception("calc %s: sending the next batch failed; the pump will", self.region)

    def _run_batch(self, batch: Mapping[int, Sequence[tuple[int, int]]], *, now: float | None) -> RunStats:
        helds = {shard: held for shard in batch if (held := self.holding(shard)) is not None}
        if not helds:
            raise NotHeld(min(batch))
        if len(helds) < len(batch):
            logger.info("calc %s: shards %s are no longer held here; their assignments are offered again later",
                        self.region, sorted(set(batch) - set(helds)))
        started = time.monotonic()
        stats = RunStats()
        claimed = self.timers.claim_many({shard: batch[shard] for shard in helds}, run_timeout=RUN_TIMEOUT)
        if not any(claimed.values()):
            return stats
        ok: dict[int, list[Claim]] = {}
        failed: dict[int, list[Claim]] = {}
        try:
            by_alias = self._load(claimed, helds, ok)
            for alias, works in by_alias.items():
                try:
                    self._run_alias(alias, helds, works, stats, now=now)
                    for work in works:
                        ok.setdefault(work.shard, []).append(work.claim)
                except Fenced as exc:
                    stats.fenced = True
                    for work in works:
                        failed.setdefault(work.shard, []).append(work.claim)
                    logger.warning("calc %s: shard %s is no longer this worker's; its run is refused", self.region,
                                   exc.shard)
                except Exception:
                    for work in works:
                        failed.setdefault(work.shard, []).append(work.claim)
                    logger.exception("calc %s: a run on shards %s failed; its range is kept for the next",
                                     self.region, sorted({work.shard for work in works}))
        finally:
            self.timers.release_many(ok, ok=True)
            self.timers.release_many(failed, ok=False, retry_delay=5.0)
        if stats.assignments:
            metrics.recalculation_done(region=self.region, seconds=time.monotonic() - started,
                                       assignments=stats.assignments)
        return stats

    def _load(
        self, claimed: Mapping[int, Sequence[Claim]], helds: Mapping[int, HeldShard], gone: dict[int, list[Claim]]
    ) -> dict[str, list[_Work]]:
        """The claimed assignments that still exist and are enabled, by datacenter; the others go
        to ``gone`` (their claims end: nothing to do)."""
        by_alias: dict[str, list[_Work]] = {}
        wanted = {(c.calc_id, c.device_id): (shard, c) for shard, claims in claimed.items() for c in claims}
        found: set[tuple[int, int]] = set()
        for alias in self.aliases:
            rows = list(Assignment.objects.using(alias).filter(
                calculator_id__in={c for c, _ in wanted}, device_id__in={d for _, d in wanted}
            ).select_related("calculator", "device"))
            elsewhere = _placed_elsewhere(alias, {a.account_id for a in rows})
            for assignment in rows:
                key = (assignment.calculator_id, assignment.device_id)
                if key not in wanted or assignment.account_id in elsewhere:
                    continue  # an account that moved: its rows here are the source's copy
                shard, claim = wanted[key]
                found.add(key)
                if not assignment.enabled:
                    gone.setdefault(shard, []).append(claim)
                    continue
                begin, end = claim.begin, claim.end
                if assignment.pending_begin is not None and assignment.pending_end is not None:
                    begin, end = min(begin, assignment.pending_begin), max(end, assignment.pending_end)
                work = _Work(claim, shard, helds[shard].cache, assignment, assignment.calculator, begin, end,
                             was_state=assignment.state)
                by_alias.setdefault(alias, []).append(work)
        for key, (shard, claim) in wanted.items():
            if key not in found:
                gone.setdefault(shard, []).append(claim)
        return by_alias

    def compiled(self, calculator: StoredCalculator) -> Calculator:
        key = (calculator.pk, calculator.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = services.compiled(calculator)
            self._compiled[key] = compiled
        return compiled

    def _prepare(self, cache: ShardCache, work: _Work) -> None:
        """Bring the cache in step with PostgreSQL for this assignment: the device's messages (a
        device not cached is filled) and the assignment's stored intervals (reloaded when the
        cache's copy is not of the last stored run)."""
        assignment = work.assignment
        if not cache.is_cached(device_id=assignment.device_id):
            self._fill(cache, assignment.device)
        marker = cache.assignment_marker(calc_id=assignment.calculator_id, device_id=assignment.device_id)
        if marker != assignment.calculated:
            stored = storage.intervals_read(
                alias=assignment.database, pairs=[(assignment.calculator_id, assignment.device_id)]
            )
            cache.intervals_replace(
                calc_id=assignment.calculator_id, device_id=assignment.device_id, intervals=stored,
                marker=assignment.calculated,
            )

    def _run_alias(
        self, alias: str, helds: Mapping[int, HeldShard], works: list[_Work], stats: RunStats, *, now: float | None
    ) -> None:
        wall = time.time() if now is None else now
        for work in works:
            cache = work.cache
            self._prepare(cache, work)
            if work.was_state == AssignmentState.UNSYNCED:
                self._set_state(alias, helds[work.shard], work.assignment, AssignmentState.SYNCHRONIZING)
            calculator = self.compiled(work.calculator)
            reader = cache.reader(calc_id=work.assignment.calculator_id, device_id=work.assignment.device_id)
            full = work.was_state != AssignmentState.SYNCED
            begin, end = (-math.inf, math.inf) if full else (work.begin, work.end)
            work.diff = recalculate(
                calculator=calculator,
                read_messages=reader.read_messages,
                read_intervals=reader.read_intervals,
                interval_before=reader.interval_before,
                dirty_begin=begin if begin > HISTORY_BEGIN else -math.inf,
                dirty_end=end if end < HISTORY_END else math.inf,
                now=wall,
                frozen_before=wall - work.calculator.update_period,
                messages_begin=reader.oldest,
                newest=reader.newest,
            )
            stats.messages_read += work.diff.messages_read
        stamp = wall
        with self._fenced(alias, [helds[shard] for shard in sorted({work.shard for work in works})]):
            self._store_batch(alias, works, stamp)
        deadlines: dict[int, list[Change]] = {}
        with contextlib.ExitStack() as stack:
            for cache in {id(work.cache): work.cache for work in works}.values():
                stack.enter_context(cache.batch())
            self._apply_to_caches(works, stats, deadlines)
        self.timers.schedule_many(deadlines)

    def _apply_to_caches(self, works: list[_Work], stats: RunStats, deadlines: dict[int, list[Change]]) -> None:
        for work in works:
            assert work.changes is not None and work.diff is not None
            assignment = work.assignment
            work.cache.intervals_apply(
                calc_id=assignment.calculator_id,
                device_id=assignment.device_id,
                diff=Diff(created=[*work.changes.created, *work.changes.updated], deleted=work.changes.deleted),
                marker=work.stamp,
            )
            stats.assignments += 1
            stats.created += len(work.changes.created)
            stats.updated += len(work.changes.updated)
            stats.deleted += len(work.changes.deleted)
            deadline = self._deadline(work)
            if deadline is not None:
                deadlines.setdefault(work.shard, []).append(deadline)

    def _store_batch(self, alias: str, works: list[_Work], stamp: float) -> None:
        """Inside the fenced transaction: every diff of the batch, their events, and the state of
        their assignments, in a few statements for the whole batch. The intervals before the change
        (the open one, the newest) are read from the cache, which mirrors PostgreSQL for each
        assignment (``_prepare`` checked its mark)."""
        write_fence(alias=alias, account_ids={work.assignment.account_id for work in works})
        present = storage.assignments_lock(alias=alias, assignment_ids=[work.assignment.pk for work in works])
        events: list[event_topics.Event] = []
        rows: list[storage.AssignmentDone] = []
        for work in works:
            work.stamp = stamp
            if work.assignment.pk not in present:  # unassigned meanwhile: its intervals are gone with it
                work.changes = storage.StoredChanges()
        stored = [work for work in works if work.changes is None]
        writes = {}
        for work in stored:
            assert work.diff is not None
            writes[(work.assignment.calculator_id, work.assignment.device_id)] = (
                [*work.diff.created, *work.diff.updated], [interval["id"] for interval in work.diff.deleted]
            )
        written_by_key = storage.intervals_write_many(alias=alias, writes=writes, stamp=stamp)
        for work in stored:
            assignment = work.assignment
            assert work.diff is not None
            key = (assignment.calculator_id, assignment.device_id)
            cache = work.cache
            before_active = _cached(cache, key, assignment.active_id)
            before_last = cache.interval_before(calc_id=key[0], device_id=key[1], t=math.inf)
            written, deleted = written_by_key[key]
            created_ids = {interval["id"] for interval in work.diff.created}
            changes = storage.StoredChanges(
                created=[row for row in written if row["id"] in created_ids],
                updated=[row for row in written if row["id"] not in created_ids],
                deleted=deleted,
            )
            by_id = {row["id"]: row for row in written}
            deleted_ids = {row["id"] for row in deleted}
            active_id = work.diff.active_id if work.diff.reached_end else assignment.active_id
            active = by_id.get(active_id) if active_id is not None else None
            if active is None and active_id is not None and active_id not in deleted_ids:
                active = _cached(cache, key, active_id)
            was_active = None
            if before_active is not None:
                was_active = by_id.get(before_active["id"], before_active)
            last, last_changed = _newest(alias, key, before_last, written, deleted_ids)
            work.outbox = event_topics.interval_events(
                calc_id=key[0], device_id=key[1], created=changes.created, updated=changes.updated,
                deleted=changes.deleted, was_active=was_active, active=active,
                active_known=work.diff.reached_end, last=last, last_changed=last_changed,
            )
            synced_now = work.was_state != AssignmentState.SYNCED
            if synced_now:
                work.outbox.append(event_topics.synced_event(calc_id=key[0], device_id=key[1], synced=True))
                if last is not None and not last_changed:
                    work.outbox.append(event_topics.last_event(calc_id=key[0], device_id=key[1], last=last))
            events.extend(work.outbox)
            rows.append(storage.AssignmentDone(
                id=assignment.pk, version=work.calculator.version, calculated=stamp,
                begin=-math.inf if synced_now else work.begin, end=math.inf if synced_now else work.end,
                active_id=active_id, synced=True,
            ))
            assignment.active_id = active_id
            work.changes = changes
        storage.outbox_events(alias=alias, events=events)
        storage.assignments_done(alias=alias, rows=rows)

    def _set_state(self, alias: str, held: HeldShard, assignment: Assignment, state: str) -> None:
        with self._fenced(alias, [held]):
            write_fence(alias=alias, account_ids=[assignment.account_id])
            Assignment.objects.using(alias).filter(pk=assignment.pk).update(state=state)
            storage.outbox_events(
                alias=alias,
                events=[event_topics.synced_event(calc_id=assignment.calculator_id, device_id=assignment.device_id,
                                                  synced=False)],
            )

    def _deadline(self, work: _Work) -> Change | None:
        """An open interval that the wall clock will close (``max_inactive``, the end of a
        ``datetime`` period) gets a timer at that moment: the run then closes it."""
        assert work.diff is not None
        if not work.diff.reached_end or work.diff.active_id is None:
            return None
        newest = work.cache.newest(device_id=work.assignment.device_id)
        if newest is None:
            return None
        deadline = active_deadline(self.compiled(work.calculator), newest=newest)
        if deadline is None:
            return None
        delay = max(0.0, deadline - time.time()) + 0.05
        return Change(work.assignment.calculator_id, work.assignment.device_id, newest, newest, delay)

    # -- purges --------------------------------------------------------------------------------

    def purge(self, shard: int, *, now: float | None = None) -> int:
        """Delete intervals beyond ``intervals_ttl``/``intervals_rotate`` (with their ``deleted``
        events) and cached messages beyond each device's ``messages_ttl``; returns how many
        intervals went."""
        held = self.holding(shard)
        if held is None:
            raise NotHeld(shard)
        wall = time.time() if now is None else now
        purged = 0
        for alias in self.aliases:
            assignments = list(
                Assignment.objects.using(alias).filter(shard=shard).select_related("calculator", "device")
            )
            for assignment in assignments:
                if _placed_elsewhere(alias, [assignment.account_id]):
                    continue
                with self._fenced(alias, [held]):
                    gone = services.intervals_purge(assignment=assignment, calculator=assignment.calculator, now=wall)
                    if gone:
                        storage.outbox_events(
                            alias=alias,
                            events=event_topics.deleted_events(
                                calc_id=assignment.calculator_id, device_id=assignment.device_id, rows=gone),
                        )
                if gone:
                    held.cache.intervals_apply(
                        calc_id=assignment.calculator_id, device_id=assignment.device_id, diff=Diff(deleted=gone),
                        marker=held.cache.assignment_marker(calc_id=assignment.calculator_id,
                                                            device_id=assignment.device_id),
                    )
                    purged += len(gone)
            for device in Device.objects.using(alias).filter(shard=shard).only("id", "messages_ttl"):
                held.cache.messages_expire(device_id=device.pk, before=wall - device.messages_ttl)
        return purged


def _placed_elsewhere(alias: str, account_ids) -> set[int]:
    """The accounts whose data the placement (at most a moment old) puts in another datacenter:
    their rows here are a moving account's source copy. The write fence checks again, exactly,
    inside each write."""
    return {account_id for account_id in account_ids if placement.alias_for_account(account_id) != alias}


def _cached(cache: ShardCache, key: tuple[int, int], interval_id: int | None) -> dict | None:
    """The cached interval ``interval_id`` of an assignment (its id is its begin in µs)."""
    if interval_id is None:
        return None
    begin = interval_id / 1_000_000
    for row in cache.intervals_read(calc_id=key[0], device_id=key[1], begin=begin - 1e-3, end=begin + 1e-3):
        if row["id"] == interval_id:
            return row
    return None


def _newest(
    alias: str, key: tuple[int, int], before: dict | None, written: list[dict], deleted_ids: set[int]
) -> tuple[dict | None, bool]:
    """The newest stored interval after a change, and whether it (or which one it is) changed;
    ``before`` is the newest before it (from the cache)."""
    candidates = list(written)
    if before is not None and before["id"] not in deleted_ids:
        candidates.append(before)
    last = max(candidates, key=lambda row: row["id"]) if candidates else None
    if before is not None and before["id"] in deleted_ids and (last is None or last["id"] < before["id"]):
        # The newest went and nothing newer came: the newest left is read back (rare).
        last = next(iter(storage.intervals_read(alias=alias, pairs=[key], count=1, reverse=True)), None)
    written_ids = {row["id"] for row in written}
    before_id = None if before is None else before["id"]
    last_id = None if last is None else last["id"]
    changed = last_id != before_id or (last_id is not None and last_id in written_ids)
    return last, changed


class NotHeld(Exception):
    """This worker does not hold the shard (the task goes back to its queue for the holder)."""

    def __init__(self, shard: int):
        super().__init__(f"shard {shard} is not held by this worker")
        self.shard = shard


class _FencedTransaction:
    def __init__(self, alias: str, helds: Sequence[HeldShard]):
        self.alias = alias
        self.epochs = {held.shard: held.epoch for held in helds}
        self._atomic = transaction.atomic(using=alias)
        self._cursor = None

    def __enter__(self):
        self._atomic.__enter__()
        try:
            self._cursor = connections[self.alias].cursor()
            fences_check(self._cursor, epochs=self.epochs)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self._cursor

    def __exit__(self, *exc):
        if self._cursor is not None:
            self._cursor.close()
        return self._atomic.__exit__(*exc)


def assignment_requests(*, alias: str, shard: int | None = None):
    """(shard, calc_id, device_id, pending_begin, pending_end, state) of the enabled assignments
    with a durable request (a pending range, or not synced), of one shard or all."""
    rows = Assignment.objects.using(alias).filter(enabled=True).exclude(
        pending_begin__isnull=True, state=AssignmentState.SYNCED
    )
    if shard is not None:
        rows = rows.filter(shard=shard)
    return rows.values_list("shard", "calculator_id", "device_id", "pending_begin", "pending_end", "state").iterator()


def batch_busy_key(region: str, worker_id: str) -> str:
    """Set while a batch sent to ``worker_id`` waits or runs (with a TTL, for a worker that died
    on it); the worker clears it when the batch is done and nothing else is due."""
    return f"flespi:{region}:batch:{worker_id}"


def batch_limit(shards_held: int) -> int:
    """Due assignments taken per shard for one batch of a worker holding ``shards_held``."""
    return max(MIN_SHARE, BATCH // max(1, shards_held))


def batch_send(*, app, client, region: str, worker_id: str, offers: Mapping[int, Sequence[Offer]]) -> int:
    """Send a worker the due assignments of its shards (shard -> offers) as one batch, to the queue
    of the first of them, and mark it busy until it is done; returns how many went."""
    shards = sorted(shard for shard, pairs in offers.items() if pairs)
    if not shards:
        return 0
    assignments = [[offer.calc_id, offer.device_id, shard] for shard in shards for offer in offers[shard]]
    # Set before sending: the worker clears it when the batch is done.
    client.set(batch_busy_key(region, worker_id), 1, ex=BATCH_TTL)
    app.send_task("analytics.shard_run", args=[region, shards[0], assignments], queue=shard_queue(region, shards[0]))
    return len(assignments)


def wake_all(*, region: str, shards: Iterable[int]) -> None:
    from flespi_site.celery import shards_wake

    shards_wake(region=region, shards=shards)
