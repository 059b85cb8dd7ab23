"""Helpers shared by the engine tests (no database, no Django)."""

from __future__ import annotations

from pathlib import Path

from analytics.engine import calculate
from devices.importers import derive_motion, read_gpx

TRACKS = Path(__file__).resolve().parents[1] / "data" / "tracks"


def msgs(values, key="v", *, start=0.0, step=1.0, times=None):
    """Messages with ``key`` set to each value; ``...`` (Ellipsis) leaves the key out."""
    out = []
    for i, v in enumerate(values):
        t = times[i] if times is not None else start + i * step
        m = {"timestamp": float(t)}
        if v is not ...:
            m[key] = v
        out.append(m)
    return out


def spans(messages, calculator, **kw):
    """(begin, end) of every interval."""
    return [(i["begin"], i["end"]) for i in calculate(messages, calculator, **kw)]


def one_selector(selector, counters=(), **extra):
    return {"name": "test", "selectors": [selector], "counters": list(counters), **extra}


def load_gpx(name: str) -> list[dict]:
    """A GPX track as messages, with speed (km/h) and direction (degrees) derived by the
    importer (``devices.importers``, no Django): each point takes the segment to the next one."""
    with open(TRACKS / name, "rb") as f:
        out: list[dict] = []
        for record in derive_motion(read_gpx(f, name=name)):
            if out and out[-1]["timestamp"] == record.message["timestamp"]:
                continue
            out.append(record.message)
    return out
