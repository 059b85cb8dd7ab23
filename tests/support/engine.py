"""Messages and tracks for the engine tests (no database, no Django)."""

from __future__ import annotations

from pathlib import Path

from analytics.engine import calculate
from devices.importers import derive_motion, read_gpx

TRACKS = Path(__file__).resolve().parents[1] / "data" / "tracks"


def msgs(values, key="v", *, start=0.0, step=1.0, times=None):
    """Messages with ``key`` set to each value; ``...`` (Ellipsis) leaves the key out."""
    messages = []
    for index, value in enumerate(values):
        timestamp = times[index] if times is not None else start + index * step
        message = {"timestamp": float(timestamp)}
        if value is not ...:
            message[key] = value
        messages.append(message)
    return messages


def spans(messages, calculator, **options):
    """(begin, end) of every interval."""
    return [(interval["begin"], interval["end"]) for interval in calculate(messages, calculator, **options)]


def one_selector(selector, counters=(), **extra):
    """A calculator configuration with one selector."""
    return {"name": "test", "selectors": [selector], "counters": list(counters), **extra}


def load_gpx(name: str) -> list[dict]:
    """A GPX track as messages, with speed (km/h) and direction (degrees) derived by the
    importer (``devices.importers``, no Django): each point takes the segment to the next one."""
    with open(TRACKS / name, "rb") as handle:
        messages: list[dict] = []
        for record in derive_motion(read_gpx(handle, name=name)):
            if messages and messages[-1]["timestamp"] == record.message["timestamp"]:
                continue
            messages.append(record.message)
    return messages
