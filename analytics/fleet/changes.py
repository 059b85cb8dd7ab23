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
from collections.abc import Mapping, Sequence

from accounts.placement_guard import placement_guard
from analytics import blocks, storage
from analytics.fleet.batches import finite
from analytics.fleet.cache import ShardCache
from analytics.fleet.debounce import Change, DebounceTimers
from analytics.fleet.held import HeldShard, fenced, placed_elsewhere
from analytics.models import Assignment
from devices import storage as message_storage
from devices.models import Device

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
    with contextlib.ExitStack() as stack:
        for cache in {id(cache): cache for cache in caches.values()}.values():
            stack.enter_context(cache.batch())
        _cache_ranges(alias, caches, {device_id: ranges[device_id] for device_id in caches})
    with fenced(alias, [by_shard[shard] for shard in sorted(set(shard_of.values()))]):
        placement_guard(alias=alias, account_ids=accounts)
        scheduled = storage.assignments_pending_widen(alias=alias, ranges=ranges)
        message_storage.changes_delete(alias=alias, ids=[row.id for row in rows])
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
        for device_id, messages in by_device.items():
            begin, end = ranges[device_id]
            cache = caches[device_id]
            cache.messages_delete(device_id=device_id, begin=begin / 1e6, end=end / 1e6)
            if messages:
                cache.messages_put(device_id=device_id, messages=messages)


def device_fill(*, cache: ShardCache, device: Device) -> None:
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
    logger.info("calc: device %s cached, %s messages in %.1f s", device.pk, total, time.monotonic() - started)


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
