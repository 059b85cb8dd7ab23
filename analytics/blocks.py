"""Message blocks: a columnar copy of each device's stored messages in PostgreSQL (the table is
described in ``analytics/migrations/0004_message_blocks.py``; why in docs/analytics.md,
"Message blocks").

* ``messages_block`` reads a device's messages in a time range by column: the blocks that cover
  it (only the columns asked for), the rows of what no block covers (the newest messages, and
  ranges whose blocks a late message or a deletion removed), from one snapshot.
* ``device_seal`` builds the blocks a device lacks, one block per short transaction under the
  device's block lock: the ranges between blocks that hold rows, then the newest messages in
  blocks of ``BLOCK_SIZE`` once there are that many. ``Sealer`` runs it for every device noted in
  ``message_block_work`` (by the trigger that removes blocks, and by a sweep of every device
  now and then), in the region's pump process.

Blocks vouch for their range: the messages of a device with ``lo <= ts <= hi`` are exactly the
block's. A purge by ``messages_ttl`` deletes the oldest rows without touching blocks, so a
reader ignores what a block holds before the device's oldest row (the sealer drops such blocks
later).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Sequence

import numpy as np
import orjson
import psycopg
from django.db import connections, transaction

from analytics import stored_columns
from analytics.columnar import Block, column_decode, column_encode
from analytics.engine.columns import Column
from devices import storage as message_storage
from flespi_site.constants import LockSpace, lock_id
from flespi_site.runner import Loop

logger = logging.getLogger(__name__)

# Messages per block: the shard cache's chunk size, so that a fill lands blocks as chunks.
BLOCK_SIZE = 4096
# The sealer's period, and how often it notes every device of its datacenters (a backstop for
# devices whose messages arrived without a change-log row: a datacenter move, a restore).
SEAL_EVERY = float(os.environ.get("FLESPI_SEAL_EVERY") or 30.0)
SWEEP_EVERY = 3600.0
# How long a device with fewer than a block's worth of unsealed messages waits to be looked at
# again.
TAIL_RECHECK = 60.0
_TS = ""  # the name of a block's timestamps row


def messages_block(
    *, alias: str, device_id: int, begin: int, end: int, names: Collection[str] | None
) -> Block:
    """The device's stored messages with ``begin <= ts <= end`` (microseconds) by column, holding
    the parameters ``names`` (every parameter when ``None``; a name no message has is left out).
    Equal to ``Block.from_dicts`` of the rows ``devices.storage.messages_read`` returns."""
    connection = connections[alias]
    outer = connection.in_atomic_block
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        if not outer:  # one snapshot for the blocks and the rows between them
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cursor.execute("SELECT min(ts) FROM messages WHERE device_id = %s", [device_id])
        oldest = cursor.fetchone()[0]
        if oldest is None or max(begin, oldest) > end:
            return Block(np.zeros(0), {})
        low = max(begin, oldest)
        spans = _spans(cursor, device_id, low, end)
        parts = _read_blocks(connection.connection, device_id, low, end, spans, names)
        for gap_lo, gap_hi in _gaps(spans, low, end):
            rows = _read_rows(alias, device_id, gap_lo, gap_hi, names)
            if len(rows):
                parts.append((gap_lo, rows))
    parts.sort(key=lambda part: part[0])
    return Block.concat([block for _, block in parts])


def messages_split(*, alias: str, device_id: int, begin: int, size: int) -> int | None:
    """The timestamp of the device's ``size``-th message after the first at or after ``begin``
    (so that ``begin..result-1`` holds ``size`` of them), or ``None`` when fewer follow: where to
    cut a long history into parts of ``size``. An index-only scan."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT ts FROM messages WHERE device_id = %s AND ts >= %s ORDER BY ts OFFSET %s LIMIT 1",
            [device_id, begin, size],
        )
        row = cursor.fetchone()
        return None if row is None else row[0]


def _spans(cursor, device_id: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """(lo, hi, n) of the device's blocks overlapping ``low..high``, in order."""
    cursor.execute(
        "SELECT lo, hi, n FROM message_blocks WHERE device_id = %s AND name = %s AND hi >= %s AND lo <= %s ORDER BY lo",
        [device_id, _TS, low, high],
    )
    return cursor.fetchall()


def _gaps(spans: Sequence[tuple[int, int, int]], low: int, high: int) -> list[tuple[int, int]]:
    """The parts of ``low..high`` that no span covers."""
    gaps, at = [], low
    for lo, hi, _n in spans:
        if lo > at:
            gaps.append((at, lo - 1))
        at = max(at, hi + 1)
    if at <= high:
        gaps.append((at, high))
    return gaps


def _read_blocks(raw_connection, device_id, low, high, spans, names) -> list[tuple[int, Block]]:
    if not spans:
        return []
    wanted = "" if names is None else " AND (name = %s OR name = ANY(%s))"
    params = [device_id, spans[0][0], spans[-1][0]] + ([] if names is None else [_TS, list(names)])
    sql = (
        f"SELECT lo, n, name, entry, data FROM message_blocks WHERE device_id = %s AND lo >= %s AND lo <= %s{wanted}"
        " ORDER BY lo, name"
    )
    # A cursor of the same connection (and transaction) asking for binary results: the arrays
    # come as they are stored, not as hex text.
    with psycopg.Cursor(raw_connection) as raw:
        raw.execute(sql, params, binary=True)
        found = raw.fetchall()
    blocks: dict[int, tuple[int, np.ndarray | None, dict[str, Column]]] = {}
    for lo, count, name, entry, data in found:
        _count, ts, cols = blocks.setdefault(lo, (count, None, {}))
        if name == _TS:
            blocks[lo] = (count, np.frombuffer(bytes(data), "<f8"), cols)
        else:
            cols[name] = column_decode(orjson.loads(entry), memoryview(data), count)
    parts = []
    for lo, (count, ts, cols) in blocks.items():
        if ts is None or len(ts) != count:
            raise ValueError(f"message block {device_id}/{lo} has no timestamps of its {count} messages")
        block = Block(ts, cols)
        stamps = np.rint(ts * 1_000_000)
        if count and (stamps[0] < low or stamps[-1] > high):
            inside = np.flatnonzero((stamps >= low) & (stamps <= high))
            block = block.take(slice(inside[0], inside[-1] + 1)) if len(inside) else Block(np.zeros(0), {})
        if len(block):
            parts.append((lo, block))
    return parts


def _read_rows(alias: str, device_id: int, begin: int, end: int, names: Collection[str] | None) -> Block:
    """Messages no block covers, from their rows: whole bodies for every parameter; for some,
    the parameters cut out of the bodies by PostgreSQL (``analytics.stored_columns``), no dict per row."""
    if names is None:
        return Block.from_dicts(
            message_storage.messages_read(alias=alias, device_ids=[device_id], begin=begin, end=end)
        )
    read = stored_columns.messages_columns(
        alias=alias, device_id=device_id, begin=begin, end=end, parameters=names
    )
    cols = {name: column for name, column in read.columns.items() if not column.absent_everywhere()}
    # Bodies carry timestamp = ts / 10**6 (devices.services.message_prepare), the same double.
    return Block(read.ts / 1_000_000, cols)


# ---- sealing ---------------------------------------------------------------------------------


def device_seal(*, alias: str, device_id: int, limit: int | None = None) -> int:
    """Build the blocks the device lacks (at most ``limit``); returns how many messages they
    hold. Drops the blocks wholly older than the device's oldest message (purged by TTL)."""
    return _seal(alias, device_id, limit)[0]


def _seal(alias: str, device_id: int, limit: int | None = None) -> tuple[int, int]:
    """(messages sealed, how many of the newest are left as rows, not a block's worth yet)."""
    sealed = built = 0
    while limit is None or built < limit:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LockSpace.DEVICE_BLOCKS, lock_id(device_id)])
            cursor.execute("SELECT min(ts), max(ts) FROM messages WHERE device_id = %s", [device_id])
            oldest, newest = cursor.fetchone()
            if oldest is None:
                cursor.execute("DELETE FROM message_blocks WHERE device_id = %s", [device_id])
                return sealed, 0
            cursor.execute("DELETE FROM message_blocks WHERE device_id = %s AND hi < %s", [device_id, oldest])
            task = _next_block(cursor, device_id, oldest, newest)
            if task is None:
                return sealed, 0
            lo, hi_limit, closed = task
            if not closed:
                cursor.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM messages WHERE device_id = %s AND ts >= %s LIMIT %s) AS m",
                    [device_id, lo, BLOCK_SIZE],
                )
                tail = cursor.fetchone()[0]
                if tail < BLOCK_SIZE:
                    return sealed, tail  # the newest messages: not a block's worth yet
            rows = message_storage.messages_read(
                alias=alias, device_ids=[device_id], begin=lo, end=hi_limit, count=BLOCK_SIZE
            )
            last = round(rows[-1]["timestamp"] * 1_000_000) if rows else lo
            # A range between blocks is covered to its end by its last block.
            hi = hi_limit if closed and len(rows) < BLOCK_SIZE else max(last, lo)
            _insert(cursor, device_id, lo, hi, Block.from_dicts(rows))
            sealed += len(rows)
            built += 1
    return sealed, -1  # stopped by the limit: more to do


def _next_block(cursor, device_id: int, oldest: int, newest: int) -> tuple[int, int, bool] | None:
    """Where the next block goes: (lo, the most its range may reach, whether that range is
    closed: between blocks, so that the block covers it however few rows it has)."""
    cursor.execute(
        "SELECT lo, hi FROM message_blocks WHERE device_id = %s AND name = %s ORDER BY lo", [device_id, _TS]
    )
    at = oldest
    for lo, hi in cursor.fetchall():
        if lo > at:
            return at, lo - 1, True
        at = max(at, hi + 1)
    if at > newest:
        return None
    return at, newest, False


def _insert(cursor, device_id: int, lo: int, hi: int, block: Block) -> None:
    count = len(block)
    rows: list[tuple[int, int, int, int, str, str | None, bytes]] = [
        (device_id, lo, hi, count, _TS, None, block.ts.astype("<f8").tobytes())
    ]
    for name, col in block.cols.items():
        entry, data = column_encode(col)
        rows.append((device_id, lo, hi, count, name, orjson.dumps(entry).decode(), data))
    cursor.executemany(
        "INSERT INTO message_blocks (device_id, lo, hi, n, name, entry, data) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        rows,
    )


def seal_pending(*, alias: str, now: float | None = None) -> int:
    """Seal every device of the datacenter's ``message_block_work`` that is due; returns how
    many messages the new blocks hold. A device left with fewer than a block's worth of new
    messages is looked at again ``TAIL_RECHECK`` seconds later (appending to it notes nothing
    while it is noted: the hot path stays free of writes), one with nothing left unsealed is
    taken off. Both only if no write noted it again meanwhile (the row's ``xmin``)."""
    now = time.time() if now is None else now
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT device_id, xmin::text FROM message_block_work WHERE due <= %s ORDER BY due, device_id",
            [now],
        )
        due = cursor.fetchall()
    sealed = 0
    for device_id, version in due:
        try:
            done, tail = _seal(alias, device_id)
        except Exception:  # this device again later; the others now
            logger.exception(
                "sealer: %s: sealing device %s failed; retrying in %.0f s", alias, device_id, TAIL_RECHECK
            )
            done, tail = 0, -1
        sealed += done
        with connections[alias].cursor() as cursor:
            if tail == 0:
                cursor.execute(
                    "DELETE FROM message_block_work WHERE device_id = %s AND xmin::text = %s",
                    [device_id, version],
                )
            else:
                cursor.execute(
                    "UPDATE message_block_work SET due = %s WHERE device_id = %s AND xmin::text = %s",
                    [now + TAIL_RECHECK, device_id, version],
                )
    blocks_orphaned_drop(alias=alias)
    return sealed


def seal_sweep(*, alias: str) -> int:
    """Note every device of the datacenter for sealing; returns how many."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "INSERT INTO message_block_work (device_id) SELECT id FROM devices_device "
            "ON CONFLICT (device_id) DO UPDATE SET due = 0"
        )
        return cursor.rowcount


def blocks_orphaned_drop(*, alias: str) -> None:
    """Drop the blocks of devices that no longer exist."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "DELETE FROM message_blocks b WHERE b.name = %s AND NOT EXISTS "
            "(SELECT 1 FROM devices_device d WHERE d.id = b.device_id)",
            [_TS],
        )


class Sealer(Loop):
    """Seals the message blocks of one datacenter every ``every`` seconds, and notes every
    device of it for sealing every ``sweep_every`` seconds."""

    def __init__(self, *, alias: str, every: float = SEAL_EVERY, sweep_every: float = SWEEP_EVERY):
        super().__init__()
        self.name = f"sealer {alias}"
        self.alias = alias
        self.every = every
        self.sweep_every = sweep_every
        self.sealed = 0
        self._next_sweep = 0.0

    def counts(self) -> dict[str, int]:
        return {"messages sealed": self.sealed}

    def step(self) -> float:
        if time.monotonic() >= self._next_sweep:
            noted = seal_sweep(alias=self.alias)
            logger.info("%s: %d device(s) noted by the sweep", self.name, noted)
            self._next_sweep = time.monotonic() + self.sweep_every
        started = time.monotonic()
        sealed = seal_pending(alias=self.alias)
        self.sealed += sealed
        if sealed:
            logger.info("%s: %d message(s) sealed in blocks in %.1f s", self.name, sealed, time.monotonic() - started)
        return self.every
