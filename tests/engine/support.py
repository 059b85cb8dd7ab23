"""Helpers shared by the engine tests (no database, no Django)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from analytics.engine import calculate
from analytics.engine.geo import haversine

TRACKS = Path(__file__).resolve().parents[1] / "data" / "tracks"
_GPX = {"g": "http://www.topografix.com/GPX/1/1"}


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
    """A GPX track as messages, with speed (km/h) and direction (degrees) derived from each
    point and the one before it."""
    root = ET.parse(TRACKS / name).getroot()
    out: list[dict] = []
    for p in root.iterfind(".//g:trkpt", _GPX):
        t = datetime.fromisoformat(p.find("g:time", _GPX).text.replace("Z", "+00:00")).timestamp()
        lat, lon = float(p.get("lat")), float(p.get("lon"))
        m = {"timestamp": t, "position.latitude": lat, "position.longitude": lon}
        ele = p.find("g:ele", _GPX)
        if ele is not None:
            m["position.altitude"] = float(ele.text)
        if out and out[-1]["timestamp"] == t:
            continue
        if out:
            prev = out[-1]
            d = haversine(prev["position.latitude"], prev["position.longitude"], lat, lon)
            m["position.speed"] = d / (t - prev["timestamp"]) * 3600.0
            m["position.direction"] = _bearing(
                prev["position.latitude"], prev["position.longitude"], lat, lon
            )
        else:
            m["position.speed"] = 0.0
            m["position.direction"] = 0.0
        out.append(m)
    return out


def _bearing(lat1, lon1, lat2, lon2) -> float:
    import math

    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.degrees(math.atan2(x, y)) + 360.0) % 360.0
