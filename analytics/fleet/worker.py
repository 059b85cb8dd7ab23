"""What a calc worker holds, and the steps it delegates (DESIGN 3 and 8; docs/analytics.md,
"Processes" and "A recalculation").

A ``ShardWorker`` holds leases on some shards of its region (``analytics.fleet.leases``) and,
for each, the shard's cache file (``analytics.fleet.cache``). Its jobs, each called by a thin
Celery task (``analytics.fleet.tasks``):

* ``changes_drain``: the change log of every dirty held shard (``analytics.fleet.changes``);
* ``requests_schedule``: a shard's durable requests (``analytics.fleet.requests``);
* ``batch_run``: claim due assignments, recalculate them against the cache and store their
  results (``analytics.calculation``) in one transaction per datacenter fenced by the shards'
  epochs; then bring the cache's intervals in step, release the claims and send itself its next
  batch (``analytics.fleet.batches``);
* ``shard_purge``: retention (``analytics.fleet.purge``).

Every write to PostgreSQL runs in a transaction whose first statement checks the shard's fence
(``analytics.fleet.held.fenced``), so a worker that lost its lease cannot commit anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connections, transaction

from analytics import calculation, services
from analytics.calculation import Run, RunStats
from analytics.choices import AssignmentState
from analytics.engine import Calculator
from analytics.fleet import batches
from analytics.fleet.batches import OFFER_TIMEOUT, RUN_TIMEOUT
from analytics.fleet.cache import FLUSH_EVERY, CacheCorrupt, ShardCache
from analytics.fleet.changes import (
    assignment_cached,
    cache_catch_up,
    changes_drain,
    device_fill,
    devices_unfilled,
)
from analytics.fleet.debounce import Change, Claim, DebounceTimers
from analytics.fleet.held import HeldShard, NotHeld, fenced, placed_elsewhere
from analytics.fleet.home import worker_home
from analytics.fleet.leases import Fenced, ShardLeases, fences_raise
from analytics.fleet.purge import shard_purge
from analytics.fleet.requests import requests_read
from analytics.models import Assignment
from analytics.models import Calculator as StoredCalculator
from devices import storage as message_storage
from devices.models import Device
from flespi_site import metrics
from flespi_site.celery import celery_app, redis_client, shards_request, shards_wake
from flespi_site.fleet import ShardFill, dirty_key, wake_key, worker_reports_key
from flespi_site.jsontext import dumps_exact

logger = logging.getLogger(__name__)

__all__ = ["NotHeld", "RunStats", "ShardWorker"]

# Seconds of filling a shard's cache per task, between which the worker's other tasks run.
FILL_SLICE = 1.0
# Seconds between two looks at whether a held shard's cache file is still on disk (a stat each).
FILE_CHECK_EVERY = 1.0
# Compilations of calculators reading device metadata kept, one per version and metadata.
FOR_DEVICES_KEPT = 10_000


@dataclass
class FillProgress:
    """A shard's fill since it was taken: when it began, devices and messages filled so far, and
    how many devices it had to fill."""

    started: float
    total: int
    devices: int = 0
    messages: int = 0


class ShardWorker:
    """The shards one worker process holds in one region, and the work it does on them."""

    def __init__(self, *, region: str, data_dir: str | os.PathLike, lease_ttl: float, worker_id: str | None = None):
        """A worker of ``region`` whose caches live under ``data_dir`` (``analytics.fleet.home``: a
        directory of its own there, and the stable name that goes with it; ``worker_id`` names it
        and its directory, else the first free slot does)."""
        self.region = region
        self.home = worker_home(data_dir=data_dir, region=region, name=worker_id)
        self.worker_id = self.home.name
        self.data_dir = self.home.directory
        self.aliases = batches.region_aliases(region)
        client = redis_client(region)
        self.leases = ShardLeases(client, region=region, shards=settings.CALC_SHARDS, worker=self.worker_id,
                                  ttl=lease_ttl)
        self.timers = DebounceTimers(client, region=region)
        # What an earlier process under this name left: a busy mark for a batch it died on, a
        # wake-up flag for a message it took with it. This process is free and wants wake-ups.
        batches.batch_done(client, region=region, worker_id=self.worker_id)
        client.delete(wake_key(region, self.worker_id))
        self.held: dict[int, HeldShard] = {}
        self._fills: dict[int, FillProgress] = {}
        self._started = time.time()
        self._gained = 0  # shards taken since the start
        self._caught_up_devices = 0  # devices read again or dropped by catch-ups since the start
        self._lock = threading.RLock()
        self._compiled: dict[tuple[int, int], Calculator] = {}
        self._file_checked: dict[int, float] = {}  # shard -> when its cache file was last looked at (monotonic)
        self._for_devices: dict[tuple[int, int, bytes], Calculator] = {}  # oldest use first

    # -- leases ------------------------------------------------------------------------------

    def rebalance(self) -> tuple[list[int], list[int]]:
        """Heartbeat and take this worker's shards (``ShardLeases.balance``); returns (shards
        gained, shards lost). A gained shard's fence is raised in every datacenter database, and
        its cache brought in step with the drains other workers made of its change log, before
        anything else happens on it."""
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
            taken = {shard: epoch for shard, epoch in sorted(now_held.items()) if shard not in self.held}
            fenced_out = self._fences_raise(taken)
            for shard in fenced_out:
                self.leases.release(shard, taken.pop(shard))
            heads = {alias: message_storage.drains_heads(alias=alias, shards=list(taken)) for alias in self.aliases}
            gained = []
            for shard, epoch in taken.items():
                held = HeldShard(shard, epoch, self._cache_open(shard))
                try:
                    done = cache_catch_up(aliases=self.aliases, held=held,
                                          heads={alias: heads[alias].get(shard, message_storage.NO_DRAIN)
                                                 for alias in self.aliases})
                except Exception:
                    # Not taken after all (a database away): released, taken again at a next step;
                    # the shards taken before it are handed on as gained.
                    logger.exception("calc %s: could not bring the cache of shard %s in step; releasing it",
                                     self.region, shard)
                    held.cache.close()
                    self.leases.release(shard, epoch)
                    continue
                self._caught_up_devices += done.ranged + done.dropped
                metrics.shard_handed_over(region=self.region, behind=done.behind, refilled=done.whole)
                self.held[shard] = held
                gained.append(shard)
                # What the previous holder was offered or running comes back now, not after its
                # timeouts.
                self.timers.abandon(shard=shard)
            metrics.shards_gained(region=self.region, worker=self.worker_id, count=len(gained))
            # lost to another worker: not the extras this worker handed on to a newcomer on purpose
            metrics.shards_lost(region=self.region, worker=self.worker_id,
                                count=len([shard for shard in lost if shard not in balance.extra]))
            self._gained += len(gained)
            return gained, lost

    def taken_over(self, shards: Sequence[int]) -> None:
        """What the previous holders of ``shards`` (just gained) left undone, through this worker's
        own queue (the leases name it now): their change logs drained, their durable requests
        scheduled. Their timers came back in ``rebalance``."""
        shards_wake(region=self.region, shards=shards, force=True)
        shards_request(region=self.region, shards=shards)
        app = celery_app(self.region)
        for shard in shards:
            ShardFill(region=self.region, shard=shard).send(app, self.worker_id)

    def renew(self) -> list[int]:
        """Extend every lease held (a heartbeat thread calls this while tasks run); returns the
        shards whose lease was lost. Writes of a lost shard are refused by the fence from then
        on; the next ``rebalance`` stops consuming its queue."""
        with self._lock:
            epochs = {shard: held.epoch for shard, held in self.held.items()}
            lost = self.leases.renew_all(epochs)
        for shard in lost:
            logger.warning("calc %s: lost the lease of shard %s", self.region, shard)
        return lost

    def leave(self, *, keep_place: bool = False) -> None:
        """Close the caches and release every lease (``ShardLeases.leave``: ``keep_place`` for a
        clean shutdown that may be a restart); ``close`` also gives the directory up."""
        with self._lock:
            for held in self.held.values():
                held.cache.close()
            self.held.clear()
            self._fills.clear()
            self.leases.leave(keep_place=keep_place)

    def caches_flush(self, *, older_than: float = FLUSH_EVERY, at_most: int | None = None) -> int:
        """Flush the write-behind caches holding writes for ``older_than`` seconds or more, the
        oldest first, ``at_most`` of them (a flush of every shard at once would hold up the next
        task); returns how many were flushed."""
        now = time.monotonic()
        with self._lock:
            ages = sorted(((held.cache.unflushed_for(now), shard) for shard, held in self.held.items()), reverse=True)
            due = [shard for age, shard in ages if age > 0 and age >= older_than][:at_most]
            for shard in due:
                try:
                    self.held[shard].cache.flush()
                except Exception:  # the file went bad: the next task on the shard rebuilds it
                    logger.exception("calc %s: flushing the cache of shard %s failed", self.region, shard)
        return len(due)

    def close(self, *, keep_place: bool = True) -> None:
        self.leave(keep_place=keep_place)
        self.home.close()

    def _fences_raise(self, epochs: Mapping[int, int]) -> set[int]:
        """Raise the fences of shards just taken (shard -> epoch) in every datacenter database, one
        transaction per database; returns the shards whose fence already holds a newer epoch
        (they moved on: this worker must not write for them)."""
        behind: set[int] = set()
        if not epochs:
            return behind
        for alias in self.aliases:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                stored = fences_raise(cursor, epochs=epochs, worker=self.worker_id)
            for shard, epoch in epochs.items():
                if stored[shard] != epoch:
                    logger.warning("calc %s: shard %s moved on (fence %s > epoch %s)", self.region, shard,
                                   stored[shard], epoch)
                    behind.add(shard)
        return behind

    def _caught_up(self, held: HeldShard) -> None:
        """The cache of a shard just taken (or reopened) in step with the drains other workers
        made of its change log meanwhile (the fence is raised: nobody else drains it now)."""
        cache_catch_up(aliases=self.aliases, held=held)

    def _cache_open(self, shard: int) -> ShardCache:
        path = self.data_dir / f"shard-{shard}.sqlite"
        name = f"{self.region}/{shard}"
        try:
            return ShardCache(path, shard=name, write_behind=True)
        except CacheCorrupt as exc:
            logger.warning("calc %s: cache of shard %s is unreadable (%s); rebuilding it", self.region, shard, exc)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return ShardCache(path, shard=name, write_behind=True)

    def holding(self, shard: int) -> HeldShard | None:
        """The held shard, with a cache that is still the file on disk (a deleted or replaced
        file is reopened empty and refilled from PostgreSQL as work needs it; the file is looked
        at once per ``FILE_CHECK_EVERY`` seconds at most, not at every task)."""
        with self._lock:
            held = self.held.get(shard)
            if held is None:
                return None
            now = time.monotonic()
            if now - self._file_checked.get(shard, -math.inf) < FILE_CHECK_EVERY:
                return held
            self._file_checked[shard] = now
            if held.cache.replaced():
                logger.warning("calc %s: cache file of shard %s is gone; rebuilding it", self.region, shard)
                held.cache.close(flush=False)
                held.cache = self._cache_open(shard)
                self._caught_up(held)
            return held

    def _held_or_raise(self, shard: int) -> HeldShard:
        held = self.holding(shard)
        if held is None:
            raise NotHeld(shard)
        return held

    def compiled(self, calculator: StoredCalculator, device_metadata: dict | None = None) -> Calculator:
        """The engine's calculator of a stored one, compiled once per version; one that reads
        ``device.metadata`` once more per version and metadata of a device (the values are
        compiled in: a device whose metadata changed gets a new object, so no tail of the old one
        is extended with it)."""
        compiled = self._compiled_version(calculator)
        if "device" not in compiled.reads_metadata:
            return compiled
        metadata_key = (calculator.pk, calculator.version, dumps_exact(device_metadata or {}))
        for_device = self._for_devices.pop(metadata_key, None)
        if for_device is None:
            for_device = compiled.for_device(device_metadata)
            while len(self._for_devices) >= FOR_DEVICES_KEPT:
                self._for_devices.pop(next(iter(self._for_devices)))
        self._for_devices[metadata_key] = for_device  # the newest use last
        return for_device

    def _compiled_version(self, calculator: StoredCalculator) -> Calculator:
        key = (calculator.pk, calculator.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = services.compiled(calculator)
            self._compiled[key] = compiled
        return compiled

    def _devices_metadata(self, alias: str, runs: Sequence[Run]) -> None:
        """The device metadata of the runs whose calculators read it, read at once."""
        reading = [run for run in runs if "device" in self._compiled_version(run.calculator).reads_metadata]
        if not reading:
            return
        found = dict(Device.objects.using(alias).filter(pk__in={run.assignment.device_id for run in reading})
                     .values_list("pk", "metadata"))
        for run in reading:
            run.device_metadata = found.get(run.assignment.device_id, {})

    # -- the change log and requests -------------------------------------------------------------

    def changes_drain(self, shard: int | None = None) -> int:
        """Take the wake-up that came through this worker's queue and consume the change log of
        every held shard its dirty set names (``shard``: drain that one whatever the set says);
        returns how many changes were taken."""
        woken = set(self._dirty_take())
        if shard is not None:
            woken.add(shard)
        dirty = [held for shard in sorted(woken) if (held := self.holding(shard)) is not None]
        if not dirty:
            return 0
        return sum(changes_drain(alias=alias, held_shards=dirty, timers=self.timers) for alias in self.aliases)

    def _dirty_take(self) -> list[int]:
        """Clear this worker's wake-up flag (its message is this one) and empty its dirty set;
        returns the shards the set named. A writer adds to the set after its commit, so the read
        that follows sees its rows; a shard not in the set has no row that a drain after the last
        emptying did not see (or was taken since, and its taker drained it)."""
        client = redis_client(self.region)
        pipe = client.pipeline(transaction=True)
        pipe.delete(wake_key(self.region, self.worker_id))
        pipe.smembers(dirty_key(self.region, self.worker_id))
        pipe.delete(dirty_key(self.region, self.worker_id))
        _woken, members, _deleted = pipe.execute()
        return sorted(int(member) for member in members)

    def requests_schedule(self, shard: int) -> int:
        """Schedule the durable recalculation requests of the shard's assignments (new, enabled
        again, a calculator change, the recalculate endpoint) right away; returns how many."""
        self._held_or_raise(shard)
        changes = requests_read(aliases=self.aliases, shard=shard).get(shard, [])
        if changes:
            self.timers.schedule(shard=shard, changes=changes)
        return len(changes)

    def shard_fill(self, shard: int, *, budget: float = FILL_SLICE) -> int:
        """Fill the held shard's cache with its assigned devices not cached yet, for about
        ``budget`` seconds (device after device, so that runs of this worker's other shards go on
        between slices); returns how many devices are left (the caller sends itself the rest)."""
        held = self._held_or_raise(shard)
        devices = devices_unfilled(aliases=self.aliases, held=held)
        started, messages, done = time.monotonic(), 0, 0
        progress = self._fills.setdefault(shard, FillProgress(started=started, total=len(devices)))
        for device in devices:
            if done and time.monotonic() - started >= budget:
                break
            messages += device_fill(cache=held.cache, device=device)
            done += 1
        progress.devices += done
        progress.messages += messages
        left = len(devices) - done
        if done:
            logger.info("calc %s: shard %s filling: %s of %s devices, %s messages in %.1f s%s", self.region, shard,
                        progress.devices, progress.devices + left, progress.messages,
                        time.monotonic() - progress.started, "" if left else "; done")
        if not left:
            self._fills.pop(shard, None)
        return left

    def filling(self) -> dict[int, FillProgress]:
        """The shards whose cache is being filled, with their progress."""
        return dict(self._fills)

    def report(self) -> dict:
        """What the status page shows of this worker (``report_publish``)."""
        with self._lock:
            fills = {str(shard): [fill.devices, fill.total, fill.messages] for shard, fill in self._fills.items()}
            return {"host": socket.gethostname(), "pid": os.getpid(), "started": self._started,
                    "directory": str(self.data_dir), "shards": len(self.held), "filling": fills,
                    "gained": self._gained, "caught_up": self._caught_up_devices}

    def report_publish(self) -> None:
        redis_client(self.region).hset(worker_reports_key(self.region), self.worker_id, json.dumps(self.report()))

    def shard_purge(self, shard: int, *, now: float | None = None) -> int:
        """Retention on the shard (``analytics.fleet.purge``); returns how many intervals went."""
        held = self._held_or_raise(shard)
        return shard_purge(held=held, aliases=self.aliases, now=time.time() if now is None else now)

    # -- recalculation -------------------------------------------------------------------------

    def batch_run(self, batch: Mapping[int, Sequence[tuple[int, int]]], *, now: float | None = None) -> RunStats:
        """Claim and recalculate these (calc_id, device_id) of several shards (shard -> pairs),
        writing every diff of a datacenter in one transaction fenced by all their epochs. Pairs of
        a shard this worker does not hold are left alone (their offers come back to the holder
        after ``OFFER_TIMEOUT``); ``NotHeld`` when it holds none of them. Then the next batch.

        The change logs woken meanwhile are drained first, so that a run takes every message
        written before it starts: whether a device's next message joins its run does not depend
        on how late the worker is (docs/analytics.md, "A recalculation")."""
        try:
            self.changes_drain()
            return self._batch_claimed(batch, now=now)
        finally:
            self._next_batch_send()

    def _next_batch_send(self) -> None:
        """After a batch: what fell due on the held shards meanwhile is sent to this worker at
        once, as its next batch (the pump would only at its next round); with nothing due, the
        worker is marked free, and the pump sends the next batch when there is one."""
        client = redis_client(self.region)
        try:
            with self._lock:
                shards = sorted(self.held)
            due = self.timers.due_shards(shards=shards)
            offers = self.timers.pump_many(shards=due, limit=batches.batch_limit(len(due)),
                                           offer_timeout=OFFER_TIMEOUT) if due else {}
            if not batches.batch_send(app=celery_app(self.region), client=client, region=self.region,
                                      worker_id=self.worker_id, offers=offers):
                batches.batch_done(client, region=self.region, worker_id=self.worker_id)
        except Exception:  # Redis away: the busy mark expires, the offers come back
            logger.exception("calc %s: sending the next batch failed; the pump will", self.region)

    def _batch_claimed(self, batch: Mapping[int, Sequence[tuple[int, int]]], *, now: float | None) -> RunStats:
        held_shards = {shard: held for shard in batch if (held := self.holding(shard)) is not None}
        if not held_shards:
            raise NotHeld(min(batch))
        if len(held_shards) < len(batch):
            logger.info("calc %s: shards %s are no longer held here; their assignments are offered again later",
                        self.region, sorted(set(batch) - set(held_shards)))
        started = time.monotonic()
        stats = RunStats()
        claimed = self.timers.claim_many({shard: batch[shard] for shard in held_shards}, run_timeout=RUN_TIMEOUT)
        if not any(claimed.values()):
            return stats
        done: dict[int, list[Claim]] = {}
        failed: dict[int, list[Claim]] = {}
        try:
            try:
                by_alias = self._runs_load(claimed, held_shards, done)
            except Exception:
                # nothing ran: every claim goes back, due again soon, rather than waiting out its timeout
                done.clear()
                for claimed_shard, shard_claims in claimed.items():
                    failed.setdefault(claimed_shard, []).extend(shard_claims)
                raise
            for alias, runs in by_alias.items():
                claims = [(shard, claim) for shard, claim, _run in runs]
                try:
                    self._runs_in(alias, held_shards, {run.key: shard for shard, _claim, run in runs},
                                  [run for _shard, _claim, run in runs], stats, now=now)
                    for shard, claim in claims:
                        done.setdefault(shard, []).append(claim)
                except Fenced as exc:
                    stats.fenced = True
                    for shard, claim in claims:
                        failed.setdefault(shard, []).append(claim)
                    logger.warning("calc %s: shard %s is no longer this worker's; its run is refused", self.region,
                                   exc.shard)
                except Exception:
                    for shard, claim in claims:
                        failed.setdefault(shard, []).append(claim)
                    logger.exception("calc %s: a run on shards %s failed; its range is kept for the next",
                                     self.region, sorted({shard for shard, _claim in claims}))
        finally:
            self.timers.release_many(done, ok=True)
            self.timers.release_many(failed, ok=False, retry_delay=5.0)
        if stats.assignments:
            metrics.recalculation_done(region=self.region, seconds=time.monotonic() - started,
                                       assignments=stats.assignments, extended=stats.extended)
        return stats

    def _runs_load(
        self, claimed: Mapping[int, Sequence[Claim]], held_shards: Mapping[int, HeldShard], gone: dict[int, list[Claim]]
    ) -> dict[str, list[tuple[int, Claim, Run]]]:
        """The claimed assignments that still exist and are enabled, by datacenter, as runs with
        their shard and claim; the others go to ``gone`` (their claims end: nothing to do)."""
        by_alias: dict[str, list[tuple[int, Claim, Run]]] = {}
        wanted = {(claim.calc_id, claim.device_id): (shard, claim) for shard, claims in claimed.items() for claim in claims}
        found: set[tuple[int, int]] = set()
        for alias in self.aliases:
            rows = list(Assignment.objects.using(alias).filter(
                calculator_id__in={calc_id for calc_id, _ in wanted},
                device_id__in={device_id for _, device_id in wanted},
            ))
            elsewhere = placed_elsewhere(alias, {assignment.account_id for assignment in rows})
            # An account that moves (or moved): its rows here are the source's copy, or the
            # target's copy under way, where its calculators may not be yet.
            rows = [row for row in rows if (row.calculator_id, row.device_id) in wanted and row.account_id not in elsewhere]
            # each calculator once (a batch's assignments share a few), not a copy per row; the
            # devices only where a cache has to be filled (``_runs_in``)
            calculators = StoredCalculator.objects.using(alias).in_bulk({row.calculator_id for row in rows})
            for assignment in rows:
                key = (assignment.calculator_id, assignment.device_id)
                if assignment.calculator_id not in calculators:
                    continue  # gone with its calculator meanwhile (the row is about to go too)
                assignment.calculator = calculators[assignment.calculator_id]
                shard, claim = wanted[key]
                found.add(key)
                if not assignment.enabled:
                    gone.setdefault(shard, []).append(claim)
                    continue
                begin, end = claim.begin, claim.end
                if assignment.pending_begin is not None and assignment.pending_end is not None:
                    begin, end = min(begin, assignment.pending_begin), max(end, assignment.pending_end)
                run = Run(assignment=assignment, calculator=assignment.calculator, begin=begin, end=end,
                          was_state=assignment.state, cache=held_shards[shard].cache)
                by_alias.setdefault(alias, []).append((shard, claim, run))
        for key, (shard, claim) in wanted.items():
            if key not in found:
                gone.setdefault(shard, []).append(claim)
        return by_alias

    def _sources_cached(self, alias: str, runs: Sequence[Run], caches: Mapping[tuple[int, int], ShardCache]) -> None:
        """For the runs of calculators that chain others: the source assignments of their devices
        (same device, so same shard and cache) brought in step with PostgreSQL in the cache, and
        named on the run with the fields their intervals show (a source the device is not
        assigned to has no intervals)."""
        wanted = {}
        for run in runs:
            calculator = self._compiled_version(run.calculator)
            if calculator.chained:
                wanted[run.key] = {calc_id for _path, calc_id in calculator.references}
        if not wanted:
            return
        sources = Assignment.objects.using(alias).filter(
            calculator_id__in=set().union(*wanted.values()), device_id__in={key[1] for key in wanted}
        ).select_related("calculator")
        found = {(source.calculator_id, source.device_id): source for source in sources}
        for run in runs:
            for calc_id in sorted(wanted.get(run.key, ())):
                source = found.get((calc_id, run.key[1]))
                if source is None or source.account_id != run.assignment.account_id:
                    continue
                assignment_cached(cache=caches[run.key], assignment=source)
                run.sources[calc_id] = calculation.source_fields(source.calculator)

    def _runs_in(
        self,
        alias: str,
        held_shards: Mapping[int, HeldShard],
        shard_of: Mapping[tuple[int, int], int],
        runs: list[Run],
        stats: RunStats,
        *,
        now: float | None,
    ) -> None:
        """The runs of one datacenter (``shard_of``: the shard of each run's assignment): caches in
        step, the engine, one fenced transaction for every result, then the caches' intervals and
        the timers of open intervals the clock will close."""
        wall = time.time() if now is None else now
        caches = {run.key: held_shards[shard_of[run.key]].cache for run in runs}
        unfilled = [run.assignment for run in runs if not caches[run.key].is_cached(device_id=run.assignment.device_id)]
        if unfilled:  # their devices, read at once, for the fills
            devices = Device.objects.using(alias).in_bulk({assignment.device_id for assignment in unfilled})
            for assignment in unfilled:
                if assignment.device_id in devices:  # else deleted meanwhile: the fill reads it and fails
                    assignment.device = devices[assignment.device_id]
        for run in runs:
            assignment_cached(cache=caches[run.key], assignment=run.assignment)
            if run.was_state == AssignmentState.UNSYNCED:
                with fenced(alias, [held_shards[shard_of[run.key]]]):
                    calculation.assignment_synchronizing(alias=alias, assignment=run.assignment)
        self._devices_metadata(alias, runs)
        self._sources_cached(alias, runs, caches)
        calculation.runs_calculate(runs=runs, compiled=self.compiled, now=wall, stats=stats)
        with fenced(alias, [held_shards[shard] for shard in sorted(set(shard_of.values()))]):
            dependents = calculation.runs_store(alias=alias, runs=runs, stamp=wall,
                                                before=calculation.CachedBefore.of)
        # The assignments chaining what changed recalculate it, through the same debounce.
        chained: dict[int, list[Change]] = {}
        for dependent in dependents:
            chained.setdefault(dependent.shard, []).append(
                Change(dependent.calc_id, dependent.device_id, dependent.begin, dependent.end, dependent.update_delay)
            )
        if chained:
            self.timers.schedule_many(chained)
        deadlines: dict[int, list[Change]] = {}
        with contextlib.ExitStack() as stack:
            for cache in {id(cache): cache for cache in caches.values()}.values():
                stack.enter_context(cache.batch())
            calculation.runs_cached(runs=runs, stats=stats)
        for run in runs:
            closing = calculation.run_deadline(run=run, compiled=self.compiled, now=wall)
            if closing is not None:
                deadline, newest = closing
                delay = max(0.0, deadline - time.time()) + 0.05
                # Only the clock changes: the range starts just after the newest message, so that a
                # message appended meanwhile extends the open interval without the newest counting
                # as changed (``recalculate``'s wall-clock sweep).
                after = math.nextafter(newest, math.inf)
                deadlines.setdefault(shard_of[run.key], []).append(
                    Change(run.assignment.calculator_id, run.assignment.device_id, after, after, delay)
                )
        self.timers.schedule_many(deadlines)
