"""Bringing a worker's caches in step with PostgreSQL (docs/analytics.md, "New messages" and
"The shard cache"):

- ``changes_drain``: consume the change log of held shards: bring the changed ranges of cached
  devices into the cache (the only messages ever read from PostgreSQL besides filling a device),
  widen the durable pending range of every enabled assignment of the changed devices, and arm
  their debounce timers, counted from when each change was written;
- ``device_fill``: copy a device's stored messages into the cache (from its message blocks, and
  its rows where no block covers them);
- ``assignment_cached``: before a run, the device's messages and the assignment's stored
  intervals in the cache.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from accounts.placement_guard import placement_guard
from analytics import blocks, storage
from analytics.fleet.batches import finite
from analytics.fleet.cache import ShardCache
from analytics.fleet.debounce import Change, DebounceTimers
from analytics.fleet.held import HeldShard, fenced, placed_elsewhere
from analytics.models import Assignment
from devices import storage as message_storage
from devices.models import Device
from flespi_site import metrics

logger = logging.getLogger(__name__)

# Change-log rows consumed per transaction.
CHANGES_BATCH = 10_000
# Changed ranges of several devices starting within this many µs of each other are read from
# PostgreSQL with one statement.
RANGE_GROUP_SPAN = 600 * 1_000_000
# Messages per part (one read, one cache transaction) when filling a device into the cache.
FILL_CHUNK = 262_144
# The greatest timestamp a message can have (µs, bigint).
LAST_TS = 2**63 - 1


def changes_drain(*, alias: str, held_shards: Sequence[HeldShard], timers: DebounceTimers) -> int:
    """Consume the change log of ``held_shards`` in ``alias`` until it is empty; returns how many rows
    were taken."""
    taken = 0
    while True:
        count = _changes_batch(alias, held_shards, timers)
        taken += count
        if count < CHANGES_BATCH:
            return taken


def _changes_batch(alias: str, held_shards: Sequence[HeldShard], timers: DebounceTimers) -> int:
    by_shard = {held.shard: held for held in held_shards}
    read = message_storage.changes_read(alias=alias, shards=list(by_shard), limit=CHANGES_BATCH)
    if not read:
        return 0
    # Changes of an account moving away stay for the move, which takes them along.
    elsewhere = placed_elsewhere(alias, {row.account_id for row in read if row.account_id is not None})
    rows = [row for row in read if row.account_id not in elsewhere]
    if not rows:
        return 0
    accounts = {row.account_id for row in rows if row.account_id is not None}
    ranges: dict[int, tuple[int, int]] = {}
    shard_of: dict[int, int] = {}
    # How long ago the device's first change of the batch was written: its timer is armed that
    # much sooner, so that waiting in the log does not lengthen the debounce.
    waited: dict[int, float] = {}
    for row in rows:
        low, high = ranges.get(row.device_id, (row.begin, row.end))
        ranges[row.device_id] = (min(low, row.begin), max(high, row.end))
        shard_of[row.device_id] = row.shard
        waited[row.device_id] = max(waited.get(row.device_id, 0.0), row.age)
    cached = {shard: set(by_shard[shard].cache.devices()) for shard in set(shard_of.values())}
    caches = {
        device_id: by_shard[shard_of[device_id]].cache
        for device_id in ranges
        if device_id in cached[shard_of[device_id]]
    }
    drained: dict[int, dict[int, tuple[int, int]]] = {}
    for device_id, shard in shard_of.items():
        drained.setdefault(shard, {})[device_id] = ranges[device_id]
    # One transaction per cache for the ranges and the position that follows them (committed
    # once the database's is: a failure there leaves the caches as they were, the rows in the log).
    with contextlib.ExitStack() as stack:
        for shard in sorted(drained):
            stack.enter_context(by_shard[shard].cache.batch())
        _cache_ranges(alias, caches, {device_id: ranges[device_id] for device_id in caches})
        with fenced(alias, [by_shard[shard] for shard in sorted(drained)]):
            placement_guard(alias=alias, account_ids=accounts)
            scheduled = storage.assignments_pending_widen(alias=alias, ranges=ranges)
            message_storage.changes_delete(alias=alias, ids=[row.id for row in rows])
            numbers = message_storage.drains_record(alias=alias, ranges=drained)
        # The caches hold these ranges: their positions follow. A cache whose position was not the
        # drain before (a write of it lost to a crash) catches up first.
        for shard, drain in numbers.items():
            held = by_shard[shard]
            if not held.cache.position_set(alias=alias, seq=drain.seq, stamp=drain.stamp, after=drain.seq - 1):
                cache_catch_up(aliases=[alias], held=held)
    # The timers are armed after commit: a run they start finds the pending range stored.
    changes: dict[int, list[Change]] = {}
    for widened in scheduled:
        begin, end = finite(ranges[widened.device_id][0] / 1e6, ranges[widened.device_id][1] / 1e6)
        delay = max(0.0, widened.update_delay - waited[widened.device_id])
        changes.setdefault(shard_of[widened.device_id], []).append(
            Change(widened.calc_id, widened.device_id, begin, end, delay)
        )
    timers.schedule_many(changes)
    return len(read)


def _cache_ranges(alias: str, caches: Mapping[int, ShardCache], ranges: Mapping[int, tuple[int, int]]) -> None:
    """Make each device's cache (``caches``) hold exactly what PostgreSQL holds for the device in
    its range (µs). Devices whose ranges lie close together (the usual case: new messages) are
    read with one statement; a range far from the others (a late upload) on its own."""
    order = sorted(ranges, key=lambda device_id: ranges[device_id][0])
    groups: list[list[int]] = []
    for device_id in order:
        if (
            groups
            and ranges[device_id][0] - ranges[groups[-1][0]][0] <= RANGE_GROUP_SPAN
            and len(groups[-1]) < 500
        ):
            groups[-1].append(device_id)
        else:
            groups.append([device_id])
    for group in groups:
        low = min(ranges[device_id][0] for device_id in group)
        high = max(ranges[device_id][1] for device_id in group)
        by_device: dict[int, list[dict]] = {device_id: [] for device_id in group}
        for message in message_storage.messages_read(alias=alias, device_ids=group, begin=low, end=high):
            owner = message.get("device.id")  # the platform stamps it on every stored message
            if not isinstance(owner, int) or owner not in by_device:
                continue
            begin, end = ranges[owner]
            if begin <= round(message["timestamp"] * 1_000_000) <= end:
                by_device[owner].append(message)
        # One write per cache for the devices of the group it holds.
        by_cache: dict[int, dict[int, tuple[float, float, list[dict]]]] = {}
        for device_id, messages in by_device.items():
            begin, end = ranges[device_id]
            by_cache.setdefault(id(caches[device_id]), {})[device_id] = (begin / 1e6, end / 1e6, messages)
        for replaced in by_cache.values():
            caches[next(iter(replaced))].messages_replace_many(replaced)


@dataclass(frozen=True)
class CatchUp:
    """What bringing a cache in step with the drains it missed did: the devices whose changed
    ranges it read again, and the devices it dropped (refilled when next used) because the kept
    drains no longer reach back to its position, or because the device is gone."""

    shard: int
    drains: int = 0
    ranged: int = 0
    dropped: int = 0
    whole: bool = False  # every device was dropped: it could not say what it missed

    @property
    def behind(self) -> bool:
        return bool(self.drains or self.ranged or self.dropped)


def cache_catch_up(*, aliases: Sequence[str], held: HeldShard,
                   heads: Mapping[str, message_storage.Drain] | None = None) -> CatchUp:
    """Make a cache hold every change of its shard's devices that the change log's drains took
    (docs/analytics.md, "Cache validity"): call it once the shard's fence is raised, so that no
    other worker drains the shard meanwhile, and before the cache serves a run (``heads``: the
    shard's last drain per datacenter, when the caller read them for many shards at once).

    Per datacenter, the cache's position (the last drain it applied, by number and time) is
    compared with the shard's last drain. Behind, it reads again, from where each device lives now, the ranges the
    drains it missed changed, for the devices it holds; if the kept drains do not reach back to
    its position (it was away longer than ``CALC_CATCHUP_WINDOW``, or the file does not know), it
    drops every device, each refilled from PostgreSQL when next used; so it does when its drain
    is ahead of the database's or is another drain there now (the database was restored to an
    earlier point: what it holds may be gone). Devices it does not hold
    need nothing: they are filled whole when first used."""
    cache, shard = held.cache, held.shard
    if heads is None:
        heads = {alias: message_storage.drains_head(alias=alias, shard=shard) for alias in aliases}
    positions = cache.positions()
    cached = set(cache.devices())
    stale: dict[int, tuple[int, int]] = {}
    drains = 0
    whole = False
    for alias, head in heads.items():
        if not cached:
            continue  # holds nothing: every device is filled whole when first used
        seq, stamp = positions.get(alias, (0, 0) if head.seq == 0 else (None, None))
        if seq == head.seq and stamp in (None, head.stamp):
            continue  # in step (or nothing was ever drained there)
        if seq is None or seq >= head.seq:
            whole = True  # a file that cannot say, or a database restored to an earlier point
            break
        # The drains it missed. The first must follow the one it applied: after a restore to an
        # earlier point the same numbers name other drains, and what it applied is gone from the
        # database (each drain keeps the time of the one before it).
        missed = message_storage.drains_since(alias=alias, shard=shard, after=seq)
        if [item.drain.seq for item in missed] != list(range(seq + 1, head.seq + 1)):
            whole = True  # the drains it missed are no longer kept
            break
        if seq > 0 and None not in (stamp, missed[0].prev) and missed[0].prev != stamp:
            whole = True  # its drain is not the database's drain of that number
            break
        drains += len(missed)
        for item in missed:
            for device_id, begin, end in item.ranges:
                if device_id in cached:
                    low, high = stale.get(device_id, (begin, end))
                    stale[device_id] = (min(low, begin), max(high, end))
    dropped = sorted(cached) if whole else []
    if stale and not whole:
        located = _devices_located(aliases, stale)
        dropped = sorted(set(stale) - {device_id for devices in located.values() for device_id in devices})
        with cache.batch():
            for alias, devices in located.items():
                _cache_ranges(alias, {device_id: cache for device_id in devices},
                              {device_id: stale[device_id] for device_id in devices})
    with cache.batch():
        for device_id in dropped:
            cache.device_drop(device_id=device_id)
        for alias, head in heads.items():
            cache.position_set(alias=alias, seq=head.seq, stamp=head.stamp)
    done = CatchUp(shard=shard, drains=drains, ranged=len(stale) - len(dropped) if not whole else 0,
                   dropped=len(dropped), whole=whole)
    metrics.cache_caught_up(region=metrics.place_of(aliases[0])[0], ranged=done.ranged, dropped=done.dropped)
    if done.behind:
        logger.warning("calc: cache of shard %s was behind by %s drains: %s devices read again, %s dropped",
                       shard, "unknown" if whole else drains, done.ranged, done.dropped)
    return done


def _devices_located(aliases: Sequence[str], device_ids: Iterable[int]) -> dict[str, list[int]]:
    """The datacenter each device lives in now (by its account's placement); a deleted device is
    in none."""
    wanted = list(device_ids)
    located: dict[str, list[int]] = {}
    for alias in aliases:
        rows = list(Device.objects.using(alias).filter(pk__in=wanted).values_list("pk", "account_id"))
        elsewhere = placed_elsewhere(alias, {account_id for _pk, account_id in rows})
        here = [pk for pk, account_id in rows if account_id not in elsewhere]
        if here:
            located[alias] = here
    return located


def devices_unfilled(*, aliases: Sequence[str], held: HeldShard) -> list[Device]:
    """The devices of the shard with an enabled assignment that its cache does not hold, where
    they live now, in id order."""
    cached = set(held.cache.devices())
    found: list[Device] = []
    for alias in aliases:
        ids = set(Assignment.objects.using(alias).filter(shard=held.shard, enabled=True)
                  .values_list("device_id", flat=True)) - cached
        if not ids:
            continue
        devices = list(Device.objects.using(alias).filter(pk__in=ids))
        elsewhere = placed_elsewhere(alias, {device.account_id for device in devices})
        found += [device for device in devices if device.account_id not in elsewhere]
    return sorted(found, key=lambda device: device.pk)


def device_fill(*, cache: ShardCache, device: Device) -> int:
    """Copy a device's stored messages into the cache (it was not cached); returns how many."""
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
    metrics.device_filled(alias=alias, messages=total)
    logger.info("calc: device %s cached, %s messages in %.1f s", device.pk, total, time.monotonic() - started)
    return total


def assignment_cached(*, cache: ShardCache, assignment: Assignment) -> None:
    """Bring the cache in step with PostgreSQL for this assignment: the device's messages (a device
    not cached is filled) and the assignment's stored intervals (reloaded when the cache's copy is
    not of the last stored run)."""
    if not cache.is_cached(device_id=assignment.device_id):
        device_fill(cache=cache, device=assignment.device)
    marker = cache.assignment_marker(calc_id=assignment.calculator_id, device_id=assignment.device_id)
    if marker != assignment.calculated:
        stored = storage.intervals_read(
            alias=assignment.database, pairs=[(assignment.calculator_id, assignment.device_id)]
        )
        cache.intervals_replace(
            calc_id=assignment.calculator_id,
            device_id=assignment.device_id,
            intervals=stored,
            marker=assignment.calculated,
        )
