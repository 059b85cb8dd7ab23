"""Benchmark of the shard cache's storage options (DESIGN 8, issue 9). Prints tables:

* append throughput (messages/s) in batches of 1, 100 and 10,000 onto a device holding 10^5;
* the cost of one late message in the middle of 10^5 (median ms);
* reading the newest 10^4, 10^5, 10^6 messages of a device into engine ``Messages`` (messages/s);
* a whole-history recalculation from the file to intervals: read every message of the device
  and ``analytics.engine.calculate`` with the trips calculator of DESIGN 9 (messages/s, best of
  3), next to the engine alone on the same messages already in memory (the difference is the
  read).

Options: ``sqlite-json`` (SQLite rows, one JSON body per message), ``sqlite-chunks`` (the chosen
``analytics.fleet.cache.ShardCache``: SQLite with columnar chunk blobs and a JSON tail) and ``npz``
(one numpy ``.npz`` file per device, rewritten whole on every change, by atomic rename).

Run: ``.venv/bin/python bench/cache.py`` (``--quick`` stops at 10^5 messages). Needs no service.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.columnar import Block as _Block
from analytics.engine import Messages, calculate, compile_calculator
from analytics.engine.columns import Column as _Column
from analytics.engine.columns import ColumnKind as _ColumnKind
from analytics.fleet import cache as shard_cache
from analytics.fleet.cache import ShardCache, _merged_batch
from bench.engine import CALCULATORS, synthetic
from flespi_site.jsontext import loads_exact

TRIPS = compile_calculator(CALCULATORS["trips (DESIGN 9)"])


class SqliteJson:
    """One row per message: (device, ts) primary key, the body as JSON; a message at an
    existing timestamp is merged in Python."""

    name = "sqlite-json"

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS m (device INTEGER, ts REAL, body BLOB, PRIMARY KEY (device, ts))"
            " WITHOUT ROWID"
        )

    def put(self, device: int, messages: list[dict]) -> None:
        batch = _merged_batch(messages)
        self.db.execute("BEGIN IMMEDIATE")
        old = dict(
            self.db.execute(
                "SELECT ts, body FROM m WHERE device = ? AND ts >= ? AND ts <= ?",
                (device, batch[0]["timestamp"], batch[-1]["timestamp"]),
            ).fetchall()
        )
        rows = []
        for msg in batch:
            body = {key: value for key, value in msg.items() if key != "timestamp"}
            if msg["timestamp"] in old:
                body = {**loads_exact(old[msg["timestamp"]]), **body}
            rows.append((device, msg["timestamp"], orjson.dumps(body)))
        self.db.executemany("INSERT OR REPLACE INTO m VALUES (?, ?, ?)", rows)
        self.db.execute("COMMIT")

    def read(self, device: int, begin: float, end: float) -> Messages:
        rows = self.db.execute(
            "SELECT ts, body FROM m WHERE device = ? AND ts >= ? AND ts < ? ORDER BY ts", (device, begin, end)
        ).fetchall()
        out = []
        for timestamp, body in rows:
            msg = orjson.loads(body)
            msg["timestamp"] = timestamp
            out.append(msg)
        return Messages.from_dicts(out)

    def close(self) -> None:
        self.db.close()


class SqliteChunks:
    name = "sqlite-chunks"

    def __init__(self, path: Path):
        self.cache = ShardCache(path, shard="bench/0")

    def put(self, device: int, messages: list[dict]) -> None:
        self.cache.messages_put(device_id=device, messages=messages)

    def read(self, device: int, begin: float, end: float) -> Messages:
        return self.cache.messages_read(device_id=device, begin=begin, end=end)

    def close(self) -> None:
        self.cache.close()


class Npz:
    """One ``.npz`` per device holding every column; any change rewrites the file."""

    name = "npz"

    def __init__(self, path: Path):
        self.dir = path
        self.dir.mkdir(exist_ok=True)

    def _file(self, device: int) -> Path:
        return self.dir / f"{device}.npz"

    def _load(self, device: int) -> _Block:
        path = self._file(device)
        if not path.exists():
            return _Block(np.zeros(0), {})
        with np.load(path, allow_pickle=False) as archive:
            kinds = orjson.loads(archive["kinds"].tobytes())
            cols = {}
            for i, (name, kind) in enumerate(kinds):
                if kind == _ColumnKind.OBJ:
                    items = orjson.loads(archive[f"{i}v"].tobytes())
                    values = np.fromiter(items, object, len(items))
                else:
                    values = archive[f"{i}v"]
                cols[name] = _Column(
                    kind,
                    values,
                    archive[f"{i}m"],
                    archive[f"{i}z"],
                    isint=archive[f"{i}i"] if kind == _ColumnKind.NUM else None,
                )
            return _Block(archive["ts"], cols)

    def _save(self, device: int, block: _Block) -> None:
        arrays = {
            "ts": block.ts,
            "kinds": np.frombuffer(
                orjson.dumps([[name, col.kind] for name, col in block.cols.items()]), np.uint8
            ),
        }
        for i, col in enumerate(block.cols.values()):
            if col.kind == _ColumnKind.OBJ:
                arrays[f"{i}v"] = np.frombuffer(orjson.dumps(col.values.tolist()), np.uint8)
            else:
                arrays[f"{i}v"] = col.values
            arrays[f"{i}m"], arrays[f"{i}z"] = col.missing_mask(), col.null_mask()
            if col.kind == _ColumnKind.NUM:
                arrays[f"{i}i"] = col.isint
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        tmp = self._file(device).with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(buf.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._file(device))

    def put(self, device: int, messages: list[dict]) -> None:
        block = self._load(device)
        new = _Block.from_dicts(_merged_batch(messages))
        self._save(device, block.merge(new) if len(block) else new)

    def read(self, device: int, begin: float, end: float) -> Messages:
        block = self._load(device)
        start, stop = np.searchsorted(block.ts, [begin, end])
        return block.take(slice(int(start), int(stop))).to_messages()

    def close(self) -> None:
        pass


OPTIONS = [SqliteJson, SqliteChunks, Npz]


def fill(store, device: int, dicts: list[dict]) -> None:
    for start in range(0, len(dicts), 100_000):
        store.put(device, dicts[start : start + 100_000])


def append_rate(store, base: list[dict], extra: list[dict], batch: int, budget: float) -> float:
    """Messages/s appending ``extra`` in batches onto a device holding ``base`` (stops after
    ``budget`` seconds)."""
    device = 1000 + batch
    fill(store, device, base)
    started = time.perf_counter()
    done = 0
    for start in range(0, len(extra), batch):
        store.put(device, extra[start : start + batch])
        done += len(extra[start : start + batch])
        if time.perf_counter() - started > budget:
            break
    return done / (time.perf_counter() - started)


def late_cost(store, base: list[dict], repeat: int) -> float:
    device = 2000
    fill(store, device, base)
    times = []
    for attempt in range(repeat):
        mid = base[len(base) // 4 + attempt * (len(base) // (2 * repeat))]["timestamp"] + 0.5
        started = time.perf_counter()
        store.put(device, [{"timestamp": mid, "position.speed": 120.0, "position.latitude": 50.0}])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def best(fn, repeat: int) -> float:
    out = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - started)
    return out


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(heading), *(len(row[column]) for row in rows)) for column, heading in enumerate(head)]
    lines = [
        "| " + " | ".join(heading.ljust(width) for heading, width in zip(head, widths, strict=True)) + " |"
    ]
    lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        cells = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="stop at 10^5 messages")
    args = parser.parse_args()
    sizes = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6]
    total = max(sizes)
    history = synthetic(total + 200_000)
    dicts = history.to_dicts()
    base, extra = dicts[:100_000], dicts[100_000:200_000]
    big = dicts[200_000 : 200_000 + total]

    write_rows, read_rows, recalc_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for option in OPTIONS:
            path = Path(tmp) / option.name
            store = option(path)
            row = [option.name]
            for batch in (1, 100, 10_000):
                row.append(f"{append_rate(store, base, extra, batch, budget=5.0):,.0f}")
            row.append(f"{late_cost(store, base, 9) * 1e3:.2f}")
            write_rows.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)

            started = time.perf_counter()
            fill(store, 1, big)
            fill_rate = len(big) / (time.perf_counter() - started)
            newest = big[-1]["timestamp"]
            rrow = [option.name]
            for size in sizes:
                begin = big[-size]["timestamp"]
                got = store.read(1, begin, math.inf)
                assert len(got) == size
                rrow.append(
                    f"{size / best(lambda begin=begin, store=store: store.read(1, begin, math.inf), 3):,.0f}"
                )
            rrow.append(f"{fill_rate:,.0f}")
            read_rows.append(rrow)
            print(" | ".join(rrow), file=sys.stderr, flush=True)

            want = list(calculate(Messages.from_dicts(big), TRIPS))
            read = store.read(1, -math.inf, newest + 1)
            assert list(calculate(read, TRIPS)) == want
            # Interleaved, best of 5 each: the machine's load changes from second to second.
            seconds = engine = math.inf
            for _ in range(5):
                seconds = min(
                    seconds, best(lambda store=store: calculate(store.read(1, -math.inf, math.inf), TRIPS), 1)
                )
                engine = min(engine, best(lambda messages=read: calculate(messages, TRIPS), 1))
            recalc_rows.append(
                [
                    option.name,
                    f"{len(big):,}",
                    f"{len(want):,}",
                    f"{len(big) / seconds:,.0f}",
                    f"{len(big) / engine:,.0f}",
                    f"{(seconds - engine) * 1e3:,.0f}",
                ]
            )
            store.close()

    print(f"\nAppend onto a device holding {len(base):,} messages (messages/s), late message into it (ms):\n")
    print(table(["option", "batch 1", "batch 100", "batch 10,000", "late message ms"], write_rows))
    print("\nRead the newest n messages of a device into engine Messages (messages/s); fill rate:\n")
    print(table(["option", *[f"read 10^{int(np.log10(size))}" for size in sizes], "fill msg/s"], read_rows))
    print("\nWhole-history recalculation, cache file -> intervals (trips calculator of DESIGN 9):\n")
    head = ["option", "messages", "intervals", "file -> intervals msg/s", "engine alone msg/s", "read ms"]
    print(table(head, recalc_rows))
    print(f"\n(chunks of {shard_cache.CHUNK_SIZE}, tail of {shard_cache.TAIL_MAX})")


if __name__ == "__main__":
    main()
