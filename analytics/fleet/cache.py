"""The local cache of a calc shard (DESIGN 8): one SQLite file (WAL) per shard holding, per device,
the messages within retention, and per assignment (calc id, device id) the stored intervals.

Calculations read messages only from here. The file is derived data: a missing file opens
empty, a corrupt or foreign one raises ``CacheCorrupt`` (the caller deletes it and refills it
from PostgreSQL). Every write is one transaction, so a process killed mid-write leaves the
previous state; readers in other processes see consistent snapshots while one process writes.

Write-behind (``write_behind=True``, as the calc worker opens its caches): writes go into one
transaction that stays open until ``flush`` (the worker flushes each cache every
``FLUSH_EVERY`` seconds), each batch of writes a savepoint in it. The process that writes reads
its own writes at once; the file gets them at the flush, in one commit per shard instead of one
per drain and per run. A process killed before a flush leaves the file at its last flush: an
older drain position and older interval markers, which the worker's catch-up and
``assignment_cached`` repair from PostgreSQL as after any crash between the two commits.

Layout (docs/analytics.md, "Shard cache", has the measurements behind it):

* ``chunks``: a device's messages in chunks of up to a few thousand, each a blob of columns
  (float64 timestamps, then per parameter a typed array with missing/null masks). Reading a
  window decodes whole arrays with ``numpy.frombuffer``; no per-message Python.
* ``tail``: messages newer than the device's last chunk, one JSON row each, so that appending a
  few messages costs a few small rows; the tail is folded into chunks once it holds
  ``TAIL_MAX`` rows, and a batch of ``DIRECT_MIN`` or more goes straight into chunks.
  A late message (not newer than the last chunk) rewrites only the chunk it falls in.
* ``intervals``: one JSON row per stored interval.

Beside the file, in memory only: the engine's tail of each assignment's active interval (``Tails``),
which the next recalculation extends when messages are appended; any other change of the
device's messages or of the assignment's intervals through the cache lets it go.

Values are kept as the engine sees them (``Messages.from_dicts``): numbers as float64 with a
per-row "was an int" flag, booleans, everything else (strings, lists, objects, numbers of a
parameter whose messages disagree on the type) as JSON. An integer beyond the float range makes
its parameter's column an object column and stays exact.
"""

from __future__ import annotations

import itertools
import math
import os
import sqlite3
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from analytics.columnar import Block, GrowingBlock
from analytics.engine import Diff, Messages, Tail
from analytics.engine.values import is_number
from flespi_site.jsontext import dumps_exact, loads_exact

# 3: ``meta`` records, per datacenter, the last drain of the change log the cache holds; a file
# of version 2 cannot say what it missed and is rebuilt.
FORMAT_VERSION = 3
APPLICATION_ID = 0x666C6361  # "flca": tells our files from any other SQLite database
CHUNK_SIZE = 4096  # messages per chunk when folding appended messages
CHUNK_MAX = 2 * CHUNK_SIZE  # a chunk grown past this by late messages is split in two
TAIL_MAX = 256  # tail rows per device before they are folded into chunks
DIRECT_MIN = 32  # a batch of at least this many new messages goes straight into chunks
TAILS_KEPT = 20_000  # devices whose tail is kept decoded in memory
# Seconds a write-behind cache holds writes before its worker flushes them to the file.
FLUSH_EVERY = 5.0
# Messages of active intervals a process keeps for extending them (``Tails``): about 60 bytes each
# for a trips calculator's five parameters, so some 120 MB at most.
CALC_TAIL_ROWS = 2_000_000

_F = TypeVar("_F", bound=Callable[..., Any])

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (device_id INTEGER PRIMARY KEY, filled_to REAL);
CREATE TABLE chunks (
    device_id INTEGER NOT NULL, first REAL NOT NULL, last REAL NOT NULL, n INTEGER NOT NULL,
    crc INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (device_id, first));
CREATE TABLE tail (
    device_id INTEGER NOT NULL, ts REAL NOT NULL, body BLOB NOT NULL, PRIMARY KEY (device_id, ts)
) WITHOUT ROWID;
CREATE TABLE intervals (
    calc_id INTEGER NOT NULL, device_id INTEGER NOT NULL, id INTEGER NOT NULL, begin REAL NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (calc_id, device_id, id)) WITHOUT ROWID;
CREATE INDEX intervals_begin ON intervals (calc_id, device_id, begin, id);
CREATE TABLE assignments (
    calc_id INTEGER NOT NULL, device_id INTEGER NOT NULL, marker REAL, PRIMARY KEY (calc_id, device_id)
) WITHOUT ROWID;
"""


class CacheCorrupt(Exception):
    """The file is not a readable cache of this shard (damaged, foreign, another format version
    or another shard's): delete it and rebuild it from the primary database."""


@dataclass(frozen=True)
class DeviceState:
    """A cached device: up to which point it was filled from the primary database (the caller's
    mark, ``None`` when never set), how many messages it holds, and their time range."""

    device_id: int
    filled_to: float | None
    messages: int
    oldest: float | None
    newest: float | None


def _is_sqlite_corruption(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or type(exc) is sqlite3.DatabaseError


def _guard(method: _F) -> _F:
    """SQLite's corruption errors (and a chunk that fails to decode) become ``CacheCorrupt``."""

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if _is_sqlite_corruption(exc):
                raise CacheCorrupt(f"{self.path}: {exc}") from exc
            raise

    return wrapper  # type: ignore[return-value]


def _merged_batch(messages: Iterable[Mapping]) -> list[dict]:
    """Sorted by timestamp, equal timestamps merged (later keys overwrite)."""
    by_ts: dict[float, dict] = {}
    for position, message in enumerate(messages):
        timestamp = message.get("timestamp")
        if not is_number(timestamp) or not math.isfinite(timestamp):
            raise ValueError(f"message {position}: timestamp must be a finite number")
        timestamp = float(timestamp)
        have = by_ts.get(timestamp)
        by_ts[timestamp] = (
            {**have, **message, "timestamp": timestamp}
            if have is not None
            else {**message, "timestamp": timestamp}
        )
    return [by_ts[timestamp] for timestamp in sorted(by_ts)]


# ---- the engine's tails of active intervals ----------------------------------------------------


class Tails:
    """The engine's ``Tail`` of each assignment's active interval (``analytics.engine.recalculate``),
    per cache and device, for every cache of a process: the least recently used go once they hold
    more than ``max_rows`` messages. A tail is only a shortcut (the engine checks it against the
    stored intervals and the messages), so letting one go costs one window recalculation."""

    def __init__(self, max_rows: int = CALC_TAIL_ROWS):
        self.max_rows = max_rows
        self.rows = 0
        self._by_device: OrderedDict[tuple[int, int], dict[int, Tail]] = OrderedDict()

    def get(self, owner: int, device_id: int, calc_id: int) -> Tail | None:
        tails = self._by_device.get((owner, device_id))
        if tails is None:
            return None
        self._by_device.move_to_end((owner, device_id))
        return tails.get(calc_id)

    def put(self, owner: int, device_id: int, calc_id: int, tail: Tail | None) -> None:
        key = (owner, device_id)
        tails = self._by_device.get(key)
        if tails is not None:
            old = tails.pop(calc_id, None)
            if old is not None:
                self.rows -= old.rows
        if tail is None:
            if tails == {}:
                del self._by_device[key]
            return
        if tails is None:
            tails = self._by_device[key] = {}
        tails[calc_id] = tail
        self.rows += tail.rows
        self._by_device.move_to_end(key)
        while self.rows > self.max_rows and self._by_device:
            _key, evicted = self._by_device.popitem(last=False)
            self.rows -= sum(item.rows for item in evicted.values())

    def drop_device(self, owner: int, device_id: int) -> None:
        tails = self._by_device.pop((owner, device_id), None)
        if tails:
            self.rows -= sum(item.rows for item in tails.values())

    def drop_owner(self, owner: int) -> None:
        for key in [key for key in self._by_device if key[0] == owner]:
            self.drop_device(*key)

    def __len__(self) -> int:
        return sum(len(tails) for tails in self._by_device.values())


# Every cache of the process shares one budget; ``ShardCache(tails=...)`` gives another (tests).
PROCESS_TAILS = Tails()
_OWNERS = itertools.count(1)


# ---- the cache -------------------------------------------------------------------------------


@dataclass
class _Known:
    """What a write-behind cache knows of its file without reading it, while its own write
    transaction is open (no other connection can write the file then): filled in as reads find
    it, kept in step by its own writes, dropped when a write rolls back or when another connection
    wrote the file before the transaction began."""

    devices: set[int] | None = None  # the cached devices (None: not read yet)
    # device -> (oldest message, its chunks' newest, its tail's newest); None where there is none
    ends: dict[int, tuple[float | None, float | None, float | None]] = field(default_factory=dict)
    positions: dict[str, str] | None = None  # meta's drain positions, as stored
    markers: dict[tuple[int, int], float | None] = field(default_factory=dict)  # absent: not read


class ShardCache:
    """The cache file of one shard. Open one per process; several processes may read the same
    file while one writes. ``shard`` names the shard (for example ``"eu/3"``) and is checked
    against the file, so a file of another shard is never read by mistake."""

    def __init__(self, path: str | os.PathLike, *, shard: str, timeout: float = 30.0, tails: Tails | None = None,
                 write_behind: bool = False):
        self.path = Path(path)
        self.shard = shard
        self.write_behind = write_behind
        self._unflushed_since: float | None = None  # when the write-behind transaction began (monotonic)
        self._batches = 0  # ``batch`` blocks open
        self._closed = False
        self._timeout = timeout
        self._calc_tails = PROCESS_TAILS if tails is None else tails
        self._owner = next(_OWNERS)
        self._conn = self._open()
        self._inode = os.stat(self.path).st_ino
        # Each device's tail decoded, as the file holds it: every write of a tail through this
        # object updates or drops its entry, a rollback drops all, and a write by any other
        # connection (SQLite's data_version) drops all before the next read.
        self._tails: dict[int, GrowingBlock] = {}
        self._tails_version = -1
        self._known = _Known()
        self._known_version = -1  # the file's data_version ``_known`` is of

    def _open(self) -> sqlite3.Connection:
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if fresh:
            # A write-ahead log left by a deleted file must not be replayed into the new one.
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA mmap_size=268435456")
            if conn.execute("PRAGMA application_id").fetchone()[0] == 0 and self._empty(conn):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._empty(conn):  # another process may have created it meanwhile
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.executemany(
                            "INSERT INTO meta VALUES (?, ?)",
                            [("format", str(FORMAT_VERSION)), ("shard", self.shard)],
                        )
                        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            self._check(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_sqlite_corruption(exc):
                raise CacheCorrupt(f"{self.path}: {exc}") from exc
            raise
        except CacheCorrupt:
            conn.close()
            raise
        return conn

    @staticmethod
    def _empty(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0

    def _check(self, conn: sqlite3.Connection) -> None:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            raise CacheCorrupt(f"{self.path}: not a shard cache (application_id {app:#x})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != FORMAT_VERSION:
            raise CacheCorrupt(f"{self.path}: format version {version}, this code reads {FORMAT_VERSION}")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("shard") != self.shard or meta.get("format") != str(FORMAT_VERSION):
            raise CacheCorrupt(f"{self.path}: holds shard {meta.get('shard')!r}, not {self.shard!r}")

    def close(self, *, flush: bool = True) -> None:
        """Close the file; what write-behind holds is flushed first unless ``flush`` is false (a
        file deleted or replaced meanwhile: its writes go with it)."""
        self._calc_tails.drop_owner(self._owner)
        if self._closed:
            return
        self._closed = True
        try:
            if flush:
                self.flush()
        finally:
            self._conn.close()

    @_guard
    def flush(self) -> bool:
        """Commit the writes write-behind holds (not inside a ``batch``); returns whether there
        were any."""
        if self._batches:
            return False
        if not self._conn.in_transaction:  # none, or SQLite rolled it back on an error
            if self._unflushed_since is not None:
                self._known = _Known()
            self._unflushed_since = None
            return False
        self._conn.execute("COMMIT")
        self._unflushed_since = None
        return True

    def unflushed_for(self, now: float | None = None) -> float:
        """Seconds since write-behind began holding writes not in the file yet (0: none)."""
        if self._unflushed_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self._unflushed_since

    def _behind(self) -> None:
        """The write-behind transaction, begun if none is open; what the cache knew of the file
        stays only if no other connection wrote it since (SQLite's data_version, read once the
        write lock is held)."""
        if not self._conn.in_transaction:
            if self._unflushed_since is not None:  # SQLite rolled the last one back on an error
                self._known = _Known()
            self._conn.execute("BEGIN IMMEDIATE")
            self._unflushed_since = time.monotonic()
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._known_version:
                self._known = _Known()
                self._known_version = version

    def _known_now(self) -> _Known | None:
        """What the cache knows of its file, while its write-behind transaction is open (else
        None: read the file)."""
        return self._known if self.write_behind and self._conn.in_transaction else None

    def _known_devices(self, known: _Known) -> set[int]:
        if known.devices is None:
            known.devices = {row[0] for row in self._conn.execute("SELECT device_id FROM devices")}
        return known.devices

    def _ends(self, device_id: int) -> tuple[float | None, float | None, float | None]:
        """The device's (oldest message, chunks' newest, tail's newest), None where there is none."""
        known = self._known_now()
        if known is not None and device_id in known.ends:
            return known.ends[device_id]
        chunk_first, chunk_last, tail_first, tail_last = self._conn.execute(
            "SELECT (SELECT min(first) FROM chunks WHERE device_id = ?1), (SELECT max(last) FROM chunks WHERE"
            " device_id = ?1), (SELECT min(ts) FROM tail WHERE device_id = ?1), (SELECT max(ts) FROM tail"
            " WHERE device_id = ?1)",
            (device_id,),
        ).fetchone()
        firsts = [value for value in (chunk_first, tail_first) if value is not None]
        ends = (min(firsts) if firsts else None, chunk_last, tail_last)
        if known is not None:
            known.ends[device_id] = ends
        return ends

    def _forget_all(self) -> None:
        """What this object holds in memory of the file (a rollback, or another connection's write)."""
        self._tails.clear()
        self._known = _Known()
        self._calc_tails.drop_owner(self._owner)

    def calc_tail(self, *, calc_id: int, device_id: int) -> Tail | None:
        """The engine's tail of the assignment's active interval, as its last recalculation here left it."""
        return self._calc_tails.get(self._owner, device_id, calc_id)

    def calc_tail_keep(self, *, calc_id: int, device_id: int, tail: Tail | None) -> None:
        self._calc_tails.put(self._owner, device_id, calc_id, tail)

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def replaced(self) -> bool:
        """Whether the path no longer names the open file (deleted or replaced): the caller
        then reopens, and refills what the new file lacks."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One write transaction for every call inside (one commit instead of one per call, for a
        worker's batch of devices); each call stays atomic on its own (a savepoint). Under
        write-behind, a savepoint of the open transaction: a failure undoes the batch's writes,
        and the flush commits them."""
        if self._batches or (self._conn.in_transaction and not self.write_behind):
            yield
            return
        if self.write_behind:
            self._behind()
            self._batches += 1
            self._conn.execute("SAVEPOINT batch")
            try:
                yield
            except BaseException:
                self._forget_all()
                self._conn.execute("ROLLBACK TO batch")
                self._conn.execute("RELEASE batch")
                raise
            finally:
                self._batches -= 1
            self._conn.execute("RELEASE batch")
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._batches += 1
        try:
            yield
        except BaseException:
            self._forget_all()
            self._conn.execute("ROLLBACK")
            raise
        finally:
            self._batches -= 1
        self._conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.write_behind:
            self._behind()
        if self._conn.in_transaction:  # inside ``batch``, or write-behind's transaction
            self._conn.execute("SAVEPOINT write")
            try:
                yield self._conn
            except BaseException:
                self._forget_all()
                self._conn.execute("ROLLBACK TO write")
                self._conn.execute("RELEASE write")
                raise
            self._conn.execute("RELEASE write")
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._forget_all()
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for the several statements of a read."""
        if self._conn.in_transaction:  # inside ``batch``: its transaction is the snapshot
            yield self._conn
            return
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    # ---- devices ----

    @_guard
    def device_state(self, *, device_id: int) -> DeviceState | None:
        """The device's state, or ``None`` when it is not cached."""
        with self._read() as db:
            row = db.execute("SELECT filled_to FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                return None
            chunk_stats = db.execute(
                "SELECT coalesce(sum(n), 0), min(first), max(last) FROM chunks WHERE device_id = ?",
                (device_id,),
            ).fetchone()
            tail_stats = db.execute(
                "SELECT count(*), min(ts), max(ts) FROM tail WHERE device_id = ?", (device_id,)
            ).fetchone()
        lows = [value for value in (chunk_stats[1], tail_stats[1]) if value is not None]
        highs = [value for value in (chunk_stats[2], tail_stats[2]) if value is not None]
        return DeviceState(
            device_id,
            row[0],
            chunk_stats[0] + tail_stats[0],
            min(lows) if lows else None,
            max(highs) if highs else None,
        )

    @_guard
    def is_cached(self, *, device_id: int) -> bool:
        """Whether the device is cached (``device_state`` is not None), in one lookup."""
        known = self._known_now()
        if known is not None:
            return device_id in self._known_devices(known)
        return self._conn.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone() is not None

    @_guard
    def devices(self) -> list[int]:
        """The ids of every cached device."""
        known = self._known_now()
        if known is not None:
            return sorted(self._known_devices(known))
        return [row[0] for row in self._conn.execute("SELECT device_id FROM devices ORDER BY device_id")]

    @_guard
    def device_drop(self, *, device_id: int) -> None:
        """Forget the device's messages and that it was cached (its assignments' intervals stay:
        ``assignment_drop`` removes those)."""
        with self._write() as db:
            self._tails.pop(device_id, None)
            self._calc_tails.drop_device(self._owner, device_id)
            for table in ("devices", "chunks", "tail"):
                db.execute(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))
            self._known_drop(device_id)

    def _known_drop(self, device_id: int) -> None:
        """The device is no longer cached."""
        self._known.ends.pop(device_id, None)
        if self._known.devices is not None:
            self._known.devices.discard(device_id)

    def _known_add(self, device_id: int) -> None:
        """The device is cached."""
        if self._known.devices is not None:
            self._known.devices.add(device_id)

    # ---- what the cache has seen of the change log ----

    @_guard
    def positions(self) -> dict[str, tuple[int, int | None]]:
        """Datacenter alias -> the last drain of this shard's change log there whose ranges the
        cache holds (``devices.storage.drains_record``): its number and its time (None in a file
        written before drains had one)."""
        found: dict[str, tuple[int, int | None]] = {}
        for key, value in self._drained().items():
            seq, _, stamp = str(value).partition(":")
            found[key.removeprefix("drained:")] = (int(seq), int(stamp) if stamp else None)
        return found

    @_guard
    def position_set(self, *, alias: str, seq: int, stamp: int, after: int | None = None) -> bool:
        """Record that the cache holds the ranges of drain ``seq`` (taken at ``stamp``) of ``alias``
        and of every drain before it. With ``after``, only if the position was drain number
        ``after`` (the one just before): returns whether it was recorded."""
        key = f"drained:{alias}"
        with self._write() as db:
            if after is not None:
                value = self._drained().get(key)
                if value is None or int(str(value).partition(":")[0]) != after:
                    return False
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, f"{seq}:{stamp}"))
            known = self._known_now()
            if known is not None and known.positions is not None:
                known.positions[key] = f"{seq}:{stamp}"
        return True

    def _drained(self) -> dict[str, str]:
        """meta's drain positions (key -> value, as stored)."""
        known = self._known_now()
        if known is not None and known.positions is not None:
            return known.positions
        rows = dict(self._conn.execute("SELECT key, value FROM meta WHERE key LIKE 'drained:%'").fetchall())
        if known is not None:
            known.positions = rows
        return rows

    # ---- messages ----

    @_guard
    def messages_put(
        self, *, device_id: int, messages: Iterable[Mapping], filled_to: float | None = None
    ) -> None:
        """Store messages (dicts as stored: ``timestamp`` float seconds plus dotted keys). A
        message at a cached timestamp is merged into it; resending changes nothing. ``filled_to``,
        when given, records in the same transaction up to where the device is now filled from
        the primary database. The device counts as cached from then on."""
        batch = _merged_batch(messages)
        with self._write() as db:
            db.execute(
                "INSERT INTO devices (device_id, filled_to) VALUES (?, ?) ON CONFLICT (device_id) DO UPDATE "
                "SET filled_to = coalesce(excluded.filled_to, devices.filled_to)",
                (device_id, filled_to),
            )
            self._known_add(device_id)
            if batch:
                self._put(db, device_id, batch)

    @_guard
    def messages_fill(self, *, device_id: int, block: Block, filled_to: float | None) -> None:
        """Store a part of a device's fill from the primary database: messages newer than those
        of the earlier parts, by column. The last part gives ``filled_to``: the device counts as
        cached from then on, not before, so a fill cut short (a killed process) is started
        again, after ``device_drop``."""
        self._calc_tails.drop_device(self._owner, device_id)
        with self._write() as db:
            if len(block):
                row = db.execute("SELECT max(last) FROM chunks WHERE device_id = ?", (device_id,)).fetchone()
                if row[0] is not None and block.ts[0] <= row[0]:
                    raise ValueError("messages_fill takes messages newer than those already filled")
                self._fold_tail(db, device_id, block)
            if filled_to is not None:
                db.execute(
                    "INSERT INTO devices (device_id, filled_to) VALUES (?, ?) ON CONFLICT (device_id) DO UPDATE "
                    "SET filled_to = excluded.filled_to",
                    (device_id, filled_to),
                )
                self._known_add(device_id)

    @_guard
    def messages_replace(self, *, device_id: int, begin: float, end: float, messages: Iterable[Mapping]) -> None:
        """Make the cached device's messages with ``begin <= timestamp <= end`` exactly
        ``messages`` (what a drain read of a changed range): ``messages_delete`` then
        ``messages_put``, without the delete when the range lies after every cached message
        (new messages: the usual case)."""
        self.messages_replace_many({device_id: (begin, end, messages)})

    def messages_replace_many(self, ranges: Mapping[int, tuple[float, float, Iterable[Mapping]]]) -> None:
        """``messages_replace`` of several devices (device -> (begin, end, messages)) in one write:
        where each device's messages end is read for all of them at once."""
        batches = {device_id: (begin, end, _merged_batch(messages)) for device_id, (begin, end, messages) in ranges.items()}
        with self._write() as db:
            known = self._known_now()
            ends = {} if known is None else {
                device_id: known.ends[device_id][1:] for device_id in batches if device_id in known.ends
            }
            unknown = [device_id for device_id in batches if device_id not in ends]
            if len(unknown) == 1:
                ends[unknown[0]] = self._ends(unknown[0])[1:]
            elif unknown:
                ends.update(
                    (device_id, (chunk_last, tail_last))
                    for device_id, chunk_last, tail_last in db.execute(
                        "SELECT d.value, (SELECT max(last) FROM chunks WHERE device_id = d.value),"
                        " (SELECT max(ts) FROM tail WHERE device_id = d.value) FROM json_each(?) AS d",
                        (orjson.dumps(unknown).decode(),),
                    )
                )
            for device_id, (begin, end, batch) in batches.items():
                chunk_last, tail_last = ends[device_id]
                chunk_end = -math.inf if chunk_last is None else chunk_last
                tail_end = -math.inf if tail_last is None else tail_last
                if begin <= max(chunk_end, tail_end):
                    self._remove(db, device_id, begin, end)
                    if batch:  # the removal may have changed the chunks and the tail: read them again
                        self._put(db, device_id, batch)
                elif batch:
                    self._put(db, device_id, batch, boundary=chunk_end, tail_last=tail_end)

    def _put(self, db: sqlite3.Connection, device_id: int, batch: list[dict], boundary: float | None = None,
             tail_last: float | None = None) -> None:
        """``boundary``: the device's last chunk's newest timestamp, and ``tail_last`` its tail's
        (-inf: no tail), when the caller read them (a message after ``tail_last`` has no row to
        merge with)."""
        if boundary is None:
            row = db.execute("SELECT max(last) FROM chunks WHERE device_id = ?", (device_id,)).fetchone()
            boundary = row[0]
        if boundary is None:
            boundary = -math.inf
        late = [message for message in batch if message["timestamp"] <= boundary]
        newer = [message for message in batch if message["timestamp"] > boundary]
        if late:
            self._calc_tails.drop_device(self._owner, device_id)
            self._merge_into_chunks(db, device_id, late)
        if len(newer) >= min(DIRECT_MIN, TAIL_MAX):  # cheaper than a JSON row per message
            self._fold_tail(db, device_id, Block.from_dicts(newer))
        elif newer:
            old = {} if tail_last is not None and newer[0]["timestamp"] > tail_last else {
                timestamp: body
                for timestamp, body in db.execute(
                    "SELECT ts, body FROM tail WHERE device_id = ? AND ts >= ?",
                    (device_id, newer[0]["timestamp"]),
                )
            }
            rows = []
            for message in newer:
                timestamp = message["timestamp"]
                body = {key: value for key, value in message.items() if key != "timestamp"}
                text = dumps_exact({**loads_exact(old[timestamp]), **body} if timestamp in old else body)
                if text != old.get(timestamp):  # a resent message changes nothing
                    rows.append((device_id, timestamp, text))
            db.executemany("INSERT OR REPLACE INTO tail (device_id, ts, body) VALUES (?, ?, ?)", rows)
            ends = self._known.ends.get(device_id)
            if ends is not None:
                oldest, chunk_last, tail_last = ends
                first, last = newer[0]["timestamp"], newer[-1]["timestamp"]
                self._known.ends[device_id] = (first if oldest is None else min(oldest, first), chunk_last,
                                               last if tail_last is None else max(tail_last, last))
            decoded = self._tails.get(device_id)
            if decoded is not None and rows:
                if old or decoded.last >= newer[0]["timestamp"]:
                    del self._tails[device_id]  # merged into stored rows: read them again
                    decoded = None
                    self._calc_tails.drop_device(self._owner, device_id)
                else:  # appended: as the rows will read back
                    decoded.append([{**loads_exact(text), "timestamp": timestamp} for _, timestamp, text in rows])
            count = (
                len(decoded) if decoded is not None
                else db.execute("SELECT count(*) FROM tail WHERE device_id = ?", (device_id,)).fetchone()[0]
            )
            if count >= TAIL_MAX:
                self._fold_tail(db, device_id)

    def _tail_block(self, db: sqlite3.Connection, device_id: int, begin: float, end: float,
                    names: Collection[str] | None = None) -> Block:
        """The device's tail messages with ``begin <= ts < end`` (a copy: callers may own it), of
        the parameters ``names`` (all: None)."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._tails_version:  # another connection wrote the file meanwhile
            self._forget_all()
            self._tails_version = version
        decoded = self._tails.get(device_id)
        if decoded is None:
            rows = db.execute("SELECT ts, body FROM tail WHERE device_id = ? ORDER BY ts", (device_id,)).fetchall()
            decoded = GrowingBlock(Block.from_dicts(
                [{**loads_exact(body), "timestamp": timestamp} for timestamp, body in rows]
            ))
            if len(self._tails) >= TAILS_KEPT:
                del self._tails[next(iter(self._tails))]
            self._tails[device_id] = decoded
        return decoded.window(begin, end, names)

    def _fold_tail(self, db: sqlite3.Connection, device_id: int, newer: Block | None = None) -> None:
        """Move the tail (with ``newer`` merged in) into chunks: the last chunk is filled up to
        ``CHUNK_SIZE``, the rest makes new chunks."""
        tail = self._tail_block(db, device_id, -math.inf, math.inf)
        if newer is not None:
            tail = tail.merge(newer) if len(tail) else newer
        db.execute("DELETE FROM tail WHERE device_id = ?", (device_id,))
        self._tails.pop(device_id, None)
        self._known.ends.pop(device_id, None)
        last = db.execute(
            "SELECT first, n, crc, data FROM chunks WHERE device_id = ? ORDER BY first DESC LIMIT 1",
            (device_id,),
        ).fetchone()
        start = 0
        if last is not None and last[1] < CHUNK_SIZE:
            room = CHUNK_SIZE - last[1]
            block = self._decode(last[2], last[3]).merge(tail.take(slice(0, room)))
            self._store_chunk(db, device_id, block, replaces=last[0])
            start = room
        for offset in range(start, len(tail), CHUNK_SIZE):
            self._store_chunk(db, device_id, tail.take(slice(offset, offset + CHUNK_SIZE)))

    def _store_chunk(self, db: sqlite3.Connection, device_id: int, block: Block, replaces=None) -> None:
        self._known.ends.pop(device_id, None)
        if replaces is not None:
            db.execute("DELETE FROM chunks WHERE device_id = ? AND first = ?", (device_id, replaces))
        if not len(block):
            return
        data = block.encode()
        db.execute(
            "INSERT INTO chunks (device_id, first, last, n, crc, data) VALUES (?, ?, ?, ?, ?, ?)",
            (device_id, float(block.ts[0]), float(block.ts[-1]), len(block), zlib.crc32(data), data),
        )

    def _decode(self, crc: int, data: bytes, names: Collection[str] | None = None) -> Block:
        if zlib.crc32(data) != crc:
            raise CacheCorrupt(f"{self.path}: a chunk fails its checksum")
        try:
            return Block.decode(data, names)
        except (ValueError, KeyError, TypeError, struct.error, orjson.JSONDecodeError) as exc:
            raise CacheCorrupt(f"{self.path}: a chunk does not decode ({exc})") from exc

    def _merge_into_chunks(self, db: sqlite3.Connection, device_id: int, late: list[dict]) -> None:
        """Merge messages that are not newer than the last chunk into the chunks they fall in
        (one before the first chunk joins the first)."""
        chunks = db.execute(
            "SELECT first FROM chunks WHERE device_id = ? ORDER BY first", (device_id,)
        ).fetchall()
        firsts = np.array([row[0] for row in chunks])
        where = np.maximum(
            np.searchsorted(firsts, [message["timestamp"] for message in late], "right") - 1, 0
        )
        for chunk_index in np.unique(where).tolist():
            group = [
                message for message, target in zip(late, where.tolist(), strict=True) if target == chunk_index
            ]
            first, crc, data = db.execute(
                "SELECT first, crc, data FROM chunks WHERE device_id = ? AND first = ?",
                (device_id, float(firsts[chunk_index])),
            ).fetchone()
            block = self._decode(crc, data).merge(Block.from_dicts(group))
            if len(block) <= CHUNK_MAX:
                self._store_chunk(db, device_id, block, replaces=first)
            else:
                half = len(block) // 2
                self._store_chunk(db, device_id, block.take(slice(0, half)), replaces=first)
                self._store_chunk(db, device_id, block.take(slice(half, None)))

    def _remove(self, db: sqlite3.Connection, device_id: int, lo: float, hi: float) -> int:
        """Delete messages with ``lo <= ts <= hi``; a chunk wholly inside goes without decoding."""
        removed = db.execute(
            "DELETE FROM tail WHERE device_id = ? AND ts >= ? AND ts <= ?", (device_id, lo, hi)
        ).rowcount
        if removed:
            self._tails.pop(device_id, None)
        self._known.ends.pop(device_id, None)
        self._calc_tails.drop_device(self._owner, device_id)  # its messages change other than by appending
        for first, last, count, crc, data in db.execute(
            "SELECT first, last, n, crc, data FROM chunks WHERE device_id = ? AND first <= ? AND last >= ?",
            (device_id, hi, lo),
        ).fetchall():
            if first >= lo and last <= hi:
                db.execute("DELETE FROM chunks WHERE device_id = ? AND first = ?", (device_id, first))
                removed += count
                continue
            block = self._decode(crc, data)
            inside = (block.ts >= lo) & (block.ts <= hi)
            if inside.any():
                removed += int(inside.sum())
                self._store_chunk(db, device_id, block.take(~inside), replaces=first)
        return removed

    @_guard
    def messages_delete(self, *, device_id: int, begin: float | None = None, end: float | None = None) -> int:
        """Delete the device's messages with ``begin <= timestamp <= end`` (``None``: unbounded);
        returns how many were deleted."""
        lo = -math.inf if begin is None else float(begin)
        hi = math.inf if end is None else float(end)
        with self._write() as db:
            return self._remove(db, device_id, lo, hi)

    @_guard
    def messages_expire(self, *, before: float, device_id: int | None = None) -> int:
        """Delete messages older than ``before`` (of one device, or of every cached device);
        returns how many were deleted."""
        with self._write() as db:
            ids = (
                [device_id]
                if device_id is not None
                else [row[0] for row in db.execute("SELECT device_id FROM devices")]
            )
            return sum(
                self._remove(db, expiring_id, -math.inf, math.nextafter(before, -math.inf))
                for expiring_id in ids
            )

    @_guard
    def messages_read(self, *, device_id: int, begin: float = -math.inf, end: float = math.inf,
                      names: Collection[str] | None = None) -> Messages:
        """The device's messages with ``begin <= timestamp < end`` as engine ``Messages``, equal
        to ``Messages.from_dicts`` of the same messages (``end=math.nextafter(t, math.inf)``
        includes ``t``), with the parameters ``names`` only (None: every one; a calculator's
        ``parameters``: what it reads, the other columns never decoded)."""
        with self._read() as db:
            rows = db.execute(
                # The chunks that start before ``end``, from the last one starting at or before
                # ``begin``, less those that end before ``begin`` (the last such one, usually: a
                # window of new messages decodes no chunk at all).
                "SELECT crc, data FROM chunks WHERE device_id = ? AND first < ? AND last >= ? AND first >= coalesce("
                "(SELECT first FROM chunks WHERE device_id = ? AND first <= ? ORDER BY first DESC LIMIT 1), ?)"
                " ORDER BY first",
                (device_id, end, begin, device_id, begin, begin),
            ).fetchall()
            tail = self._tail_block(db, device_id, begin, end, names)
        blocks = [self._decode(crc, data, names) for crc, data in rows]
        if blocks:
            ts = blocks[0].ts
            start = int(np.searchsorted(ts, begin, "left"))
            if start:
                blocks[0] = blocks[0].take(slice(start, None))
            ts = blocks[-1].ts
            stop = int(np.searchsorted(ts, end, "left"))
            if stop < len(ts):
                blocks[-1] = blocks[-1].take(slice(0, stop))
        block = Block.concat([*blocks, tail])
        if not block.ts.flags.writeable:
            block = block.take(np.arange(len(block)))  # own the arrays rather than view the blob
        return block.to_messages()

    @_guard
    def newest(self, *, device_id: int) -> float | None:
        """The device's newest message timestamp, ``None`` when it has none."""
        return self.bounds(device_id=device_id)[1]

    @_guard
    def bounds(self, *, device_id: int) -> tuple[float | None, float | None]:
        """``oldest`` and ``newest`` in one lookup."""
        oldest, chunk_last, tail_last = self._ends(device_id)
        lasts = [value for value in (chunk_last, tail_last) if value is not None]
        return oldest, max(lasts) if lasts else None

    @_guard
    def oldest(self, *, device_id: int) -> float | None:
        """The device's oldest message timestamp (what ``recalculate`` calls ``messages_begin``
        once older messages expired)."""
        return self.bounds(device_id=device_id)[0]

    # ---- intervals ----

    @_guard
    def intervals_apply(self, *, calc_id: int, device_id: int, diff: Diff, marker: float | None = None) -> None:
        """Apply a recalculation's diff to the stored intervals of the assignment: fields the
        engine does not write (user fields, ``timestamp``) stay with an updated interval.
        ``marker`` records, in the same transaction, which stored run the intervals now mirror."""
        key = (calc_id, device_id)
        with self._write() as db:
            self._mark(db, key, marker)
            db.executemany(
                "DELETE FROM intervals WHERE calc_id = ? AND device_id = ? AND id = ?",
                [(*key, interval["id"]) for interval in diff.deleted],
            )
            rows = []
            engine_keys = set(diff.engine_keys)
            for interval in diff.updated:
                old = db.execute(
                    "SELECT body FROM intervals WHERE calc_id = ? AND device_id = ? AND id = ?",
                    (*key, interval["id"]),
                ).fetchone()
                user = (
                    {field: value for field, value in loads_exact(old[0]).items() if field not in engine_keys}
                    if old
                    else {}
                )
                rows.append({**user, **interval})
            rows.extend(diff.created)
            self._put_intervals(db, key, rows)

    @staticmethod
    def _put_intervals(db: sqlite3.Connection, key: tuple[int, int], intervals: Iterable[Mapping]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO intervals (calc_id, device_id, id, begin, body) VALUES (?, ?, ?, ?, ?)",
            [(*key, iv["id"], float(iv["begin"]), dumps_exact(dict(iv))) for iv in intervals],
        )

    @_guard
    def intervals_replace(
        self, *, calc_id: int, device_id: int, intervals: Iterable[Mapping], marker: float | None = None
    ) -> None:
        """Make the assignment's stored intervals exactly ``intervals`` (a rebuild from the
        primary database, or a first calculation)."""
        key = (calc_id, device_id)
        self._calc_tails.put(self._owner, device_id, calc_id, None)
        with self._write() as db:
            db.execute("DELETE FROM intervals WHERE calc_id = ? AND device_id = ?", key)
            self._put_intervals(db, key, intervals)
            self._mark(db, key, marker)

    def _mark(self, db: sqlite3.Connection, key: tuple[int, int], marker: float | None) -> None:
        db.execute(
            "INSERT INTO assignments (calc_id, device_id, marker) VALUES (?, ?, ?) "
            "ON CONFLICT (calc_id, device_id) DO UPDATE SET marker = excluded.marker",
            (*key, marker),
        )
        self._known.markers[key] = marker

    @_guard
    def assignment_marker(self, *, calc_id: int, device_id: int) -> float | None:
        """The marker of the stored run the assignment's cached intervals mirror (None: none, or
        never cached: the caller reloads them from the primary database)."""
        known = self._known_now()
        if known is not None and (calc_id, device_id) in known.markers:
            return known.markers[(calc_id, device_id)]
        row = self._conn.execute(
            "SELECT marker FROM assignments WHERE calc_id = ? AND device_id = ?", (calc_id, device_id)
        ).fetchone()
        marker = None if row is None else row[0]
        if known is not None:
            known.markers[(calc_id, device_id)] = marker
        return marker

    @_guard
    def intervals_read(
        self, *, calc_id: int, device_id: int, begin: float = -math.inf, end: float = math.inf
    ) -> list[dict]:
        """Stored intervals with ``begin <= interval begin < end``, sorted by begin."""
        return [
            loads_exact(body)
            for (body,) in self._conn.execute(
                "SELECT body FROM intervals WHERE calc_id = ? AND device_id = ? AND begin >= ? AND begin < ?"
                " ORDER BY begin, id",
                (calc_id, device_id, begin, end),
            )
        ]

    @_guard
    def interval_before(self, *, calc_id: int, device_id: int, moment: float) -> dict | None:
        """The stored interval with the largest begin before ``moment``, or ``None``."""
        row = self._conn.execute(
            "SELECT body FROM intervals WHERE calc_id = ? AND device_id = ? AND begin < ?"
            " ORDER BY begin DESC, id DESC LIMIT 1",
            (calc_id, device_id, moment),
        ).fetchone()
        return loads_exact(row[0]) if row else None

    @_guard
    def intervals_outlived(self, *, calc_id: int, device_id: int, ended_before: float, keep: int) -> bool:
        """Whether the cached intervals hold one that ended before ``ended_before`` (its begin is
        then before it too) or, with ``keep`` > 0, more than ``keep``: what a purge would delete."""
        count, first = self._conn.execute(
            "SELECT count(*), min(begin) FROM intervals WHERE calc_id = ? AND device_id = ?", (calc_id, device_id)
        ).fetchone()
        return (keep > 0 and count > keep) or (first is not None and first < ended_before)

    @_guard
    def assignment_drop(self, *, calc_id: int, device_id: int) -> None:
        self._calc_tails.put(self._owner, device_id, calc_id, None)
        with self._write() as db:
            db.execute("DELETE FROM intervals WHERE calc_id = ? AND device_id = ?", (calc_id, device_id))
            db.execute("DELETE FROM assignments WHERE calc_id = ? AND device_id = ?", (calc_id, device_id))
            self._known.markers[(calc_id, device_id)] = None

    def reader(self, *, calc_id: int, device_id: int, names: Collection[str] | None = None) -> AssignmentReader:
        """The read callables ``analytics.engine.recalculate`` takes, for one assignment, reading
        the parameters ``names`` (the calculator's ``parameters``; None: every one)."""
        return AssignmentReader(self, calc_id, device_id, names)


_UNREAD = object()


class AssignmentReader:
    """``read_messages``, ``read_intervals`` and ``interval_before`` exactly as
    ``analytics.engine.recalculate`` calls them, over one assignment of a ``ShardCache``; also
    ``bounds`` (the oldest and newest message) for its ``messages_begin`` and ``newest`` arguments.
    A reader lives for one run: the newest stored interval is read once (``newest_interval``) and
    kept, for the run's events, until ``forget`` (the intervals written)."""

    __slots__ = ("_newest_interval", "cache", "calc_id", "device_id", "names")

    def __init__(self, cache: ShardCache, calc_id: int, device_id: int, names: Collection[str] | None = None):
        self.cache = cache
        self.calc_id = calc_id
        self.device_id = device_id
        self.names = names
        self._newest_interval: dict | object | None = _UNREAD

    def read_messages(self, begin: float, end: float) -> Messages:
        return self.cache.messages_read(device_id=self.device_id, begin=begin, end=end, names=self.names)

    def read_intervals(self, begin: float, end: float) -> list[dict]:
        return self.cache.intervals_read(calc_id=self.calc_id, device_id=self.device_id, begin=begin, end=end)

    def interval_before(self, moment: float) -> dict | None:
        if moment == math.inf:
            return self.newest_interval()
        return self.cache.interval_before(calc_id=self.calc_id, device_id=self.device_id, moment=moment)

    def newest_interval(self) -> dict | None:
        """The newest stored interval (read once; callers must not change it)."""
        if self._newest_interval is _UNREAD:
            self._newest_interval = self.cache.interval_before(
                calc_id=self.calc_id, device_id=self.device_id, moment=math.inf
            )
        return self._newest_interval  # type: ignore[return-value]

    def interval(self, interval_id: int) -> dict | None:
        """The stored interval with this id (an id is its begin in µs)."""
        newest = self._newest_interval
        if isinstance(newest, dict) and newest["id"] == interval_id:
            return newest
        begin = interval_id / 1_000_000
        for row in self.read_intervals(begin - 1e-3, begin + 1e-3):
            if row["id"] == interval_id:
                return row
        return None

    def forget(self) -> None:
        """The assignment's intervals were written: read them again."""
        self._newest_interval = _UNREAD

    @property
    def newest(self) -> float | None:
        return self.cache.newest(device_id=self.device_id)

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """``oldest`` and ``newest`` in one lookup."""
        return self.cache.bounds(device_id=self.device_id)

    @property
    def tail(self) -> Tail | None:
        """``recalculate``'s ``tail``: what the assignment's last recalculation here left."""
        return self.cache.calc_tail(calc_id=self.calc_id, device_id=self.device_id)

    @tail.setter
    def tail(self, tail: Tail | None) -> None:
        self.cache.calc_tail_keep(calc_id=self.calc_id, device_id=self.device_id, tail=tail)
