"""Geometry: haversine distance, geofence containment, Google encoded polylines.

Scalar and vectorised forms use the same formulas in the same order, so they agree exactly.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2) - math.radians(lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(h, 1.0)))


def haversine_vec(lat1, lon1, lat2, lon2) -> np.ndarray:
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(lon2) - np.radians(lon1)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


class Geofence:
    """A circle (``center``, ``radius`` km) or polygon (``path``) with its configuration."""

    def __init__(self, config: dict):
        self.config = config
        self.name = config.get("name")
        self.type = config["type"]
        if self.type == "circle":
            self.lat = float(config["center"]["lat"])
            self.lon = float(config["center"]["lon"])
            self.radius = float(config["radius"])
        else:
            pts = config["path"]
            self.ys = np.array([float(p["lat"]) for p in pts])
            self.xs = np.array([float(p["lon"]) for p in pts])
            self.bbox = (self.ys.min(), self.ys.max(), self.xs.min(), self.xs.max())
            self.edges = list(
                zip(
                    self.xs.tolist(),
                    self.ys.tolist(),
                    np.roll(self.xs, 1).tolist(),
                    np.roll(self.ys, 1).tolist(),
                    strict=True,
                )
            )

    def contains(self, lat: float, lon: float) -> bool:
        if self.type == "circle":
            return haversine(self.lat, self.lon, lat, lon) <= self.radius
        y0, y1, x0, x1 = self.bbox
        if not (y0 <= lat <= y1 and x0 <= lon <= x1):
            return False
        inside = False
        for xi, yi, xj, yj in self.edges:
            if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
                inside = not inside
        return inside

    def contains_vec(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        if self.type == "circle":
            return haversine_vec(self.lat, self.lon, lat, lon) <= self.radius
        y0, y1, x0, x1 = self.bbox
        cand = np.flatnonzero((lat >= y0) & (lat <= y1) & (lon >= x0) & (lon <= x1))
        out = np.zeros(len(lat), bool)
        if not len(cand):
            return out
        py = lat[cand]
        px = lon[cand]
        inside = np.zeros(len(cand), bool)
        with np.errstate(all="ignore"):
            for xi, yi, xj, yj in self.edges:
                cross = (yi > py) != (yj > py)
                if not cross.any():
                    continue
                xint = (xj - xi) * (py - yi) / (yj - yi) + xi
                inside ^= cross & (px < xint)
        out[cand] = inside
        return out


def first_containing(geofences: list[Geofence], lat: np.ndarray, lon: np.ndarray, valid: np.ndarray):
    """Index of the first geofence containing each point, -1 where none or no position."""
    found = np.full(len(lat), -1, dtype=np.int64)
    todo = valid.copy()
    for k, g in enumerate(geofences):
        idx = np.flatnonzero(todo)
        if not len(idx):
            break
        hit = g.contains_vec(lat[idx], lon[idx])
        found[idx[hit]] = k
        todo[idx[hit]] = False
    return found


def encode_polyline_segments(lat: np.ndarray, lon: np.ndarray, seg_starts: np.ndarray) -> list[str]:
    """Google encoded polylines (precision 5), one per segment of the points; ``seg_starts`` are
    the offsets of each segment (sorted, first 0; empty segments allowed)."""
    n = len(lat)
    nseg = len(seg_starts)
    if n == 0:
        return [""] * nseg
    ilat = np.floor(lat * 1e5 + 0.5).astype(np.int64)
    ilon = np.floor(lon * 1e5 + 0.5).astype(np.int64)
    dlat = np.diff(ilat, prepend=0)
    dlon = np.diff(ilon, prepend=0)
    starts = seg_starts[(seg_starts < n)]
    dlat[starts] = ilat[starts]
    dlon[starts] = ilon[starts]
    vals = np.empty(2 * n, dtype=np.int64)
    vals[0::2] = dlat
    vals[1::2] = dlon
    z = np.where(vals < 0, ~(vals << 1), vals << 1)
    # Five-bit chunks per value: one, or as many as its bit length needs (frexp is exact for
    # integers below 2**53).
    bits = np.frexp(z.astype(np.float64))[1]
    count = np.maximum((bits + 4) // 5, 1).astype(np.int64)
    # Lay the chunks of all values end to end: value i owns positions start[i]..start[i]+count[i].
    char_end = np.cumsum(count)
    char_start = char_end - count
    total = int(char_end[-1])
    owner = np.repeat(np.arange(2 * n), count)
    k = np.arange(total) - np.repeat(char_start, count)
    zz = z[owner] >> (5 * k)
    more = k < (count[owner] - 1)
    flat = (((zz & 0x1F) | np.where(more, 0x20, 0)) + 63).astype(np.uint8).tobytes()
    point_char = char_start[0::2]
    bounds = np.append(point_char, len(flat))
    seg_ends = np.append(seg_starts[1:], n)
    out = []
    for s, e in zip(seg_starts.tolist(), seg_ends.tolist(), strict=True):
        if s >= e:
            out.append("")
        else:
            out.append(flat[bounds[s] : bounds[e]].decode("ascii"))
    return out


def encode_polyline(points: list[tuple[float, float]]) -> str:
    """Reference encoder, one point at a time (used by tests to check the vectorised one)."""
    out = []
    plat = plon = 0
    for lat, lon in points:
        ilat = math.floor(lat * 1e5 + 0.5)
        ilon = math.floor(lon * 1e5 + 0.5)
        for d in (ilat - plat, ilon - plon):
            v = ~(d << 1) if d < 0 else d << 1
            while v >= 0x20:
                out.append(chr((0x20 | (v & 0x1F)) + 63))
                v >>= 5
            out.append(chr(v + 63))
        plat, plon = ilat, ilon
    return "".join(out)
