"""Geometry: haversine distance, geofence containment, Google encoded polylines.

Scalar and vectorised forms use the same formulas in the same order, so they agree exactly.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2) - math.radians(lon1)
    half_chord = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(half_chord, 1.0)))


def haversine_vec(lat1, lon1, lat2, lon2) -> np.ndarray:
    phi1 = np.radians(lat1)
    phi2 = np.radians(lat2)
    dphi = phi2 - phi1
    dlambda = np.radians(lon2) - np.radians(lon1)
    half_chord = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(half_chord, 1.0)))


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
            points = config["path"]
            self.ys = np.array([float(point["lat"]) for point in points])
            self.xs = np.array([float(point["lon"]) for point in points])
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
    for index, geofence in enumerate(geofences):
        idx = np.flatnonzero(todo)
        if not len(idx):
            break
        hit = geofence.contains_vec(lat[idx], lon[idx])
        found[idx[hit]] = index
        todo[idx[hit]] = False
    return found


def encode_polyline_segments(lat: np.ndarray, lon: np.ndarray, seg_starts: np.ndarray) -> list[str]:
    """Google encoded polylines (precision 5), one per segment of the points; ``seg_starts`` are
    the offsets of each segment (sorted, first 0; empty segments allowed)."""
    point_count = len(lat)
    nseg = len(seg_starts)
    if point_count == 0:
        return [""] * nseg
    ilat = np.floor(lat * 1e5 + 0.5).astype(np.int64)
    ilon = np.floor(lon * 1e5 + 0.5).astype(np.int64)
    dlat = np.diff(ilat, prepend=0)
    dlon = np.diff(ilon, prepend=0)
    starts = seg_starts[(seg_starts < point_count)]
    dlat[starts] = ilat[starts]
    dlon[starts] = ilon[starts]
    values = np.empty(2 * point_count, dtype=np.int64)
    values[0::2] = dlat
    values[1::2] = dlon
    zigzag = np.where(values < 0, ~(values << 1), values << 1)
    # Five-bit chunks per value: one, or as many as its bit length needs (frexp is exact for
    # integers below 2**53).
    bits = np.frexp(zigzag.astype(np.float64))[1]
    count = np.maximum((bits + 4) // 5, 1).astype(np.int64)
    # Lay the chunks of all values end to end: value i owns positions start[i]..start[i]+count[i].
    char_end = np.cumsum(count)
    char_start = char_end - count
    total = int(char_end[-1])
    owner = np.repeat(np.arange(2 * point_count), count)
    chunk = np.arange(total) - np.repeat(char_start, count)
    shifted = zigzag[owner] >> (5 * chunk)
    more = chunk < (count[owner] - 1)
    flat = (((shifted & 0x1F) | np.where(more, 0x20, 0)) + 63).astype(np.uint8).tobytes()
    point_char = char_start[0::2]
    bounds = np.append(point_char, len(flat))
    seg_ends = np.append(seg_starts[1:], point_count)
    lines = []
    for start, end in zip(seg_starts.tolist(), seg_ends.tolist(), strict=True):
        if start >= end:
            lines.append("")
        else:
            lines.append(flat[bounds[start] : bounds[end]].decode("ascii"))
    return lines


def encode_polyline(points: list[tuple[float, float]]) -> str:
    """Reference encoder, one point at a time (used by tests to check the vectorised one)."""
    chars = []
    plat = plon = 0
    for lat, lon in points:
        ilat = math.floor(lat * 1e5 + 0.5)
        ilon = math.floor(lon * 1e5 + 0.5)
        for delta in (ilat - plat, ilon - plon):
            value = ~(delta << 1) if delta < 0 else delta << 1
            while value >= 0x20:
                chars.append(chr((0x20 | (value & 0x1F)) + 63))
                value >>= 5
            chars.append(chr(value + 63))
        plat, plon = ilat, ilon
    return "".join(chars)


def decode_polyline(text: str) -> list[tuple[float, float]]:
    """The (latitude, longitude) points of a Google encoded polyline (precision 5). A polyline cut
    short (not one the engine wrote) gives the points before the cut."""
    points: list[tuple[float, float]] = []
    lat = lon = 0
    index, length = 0, len(text)
    values = [0, 0]
    while index < length:
        for which in (0, 1):
            result = shift = 0
            while True:
                if index >= length:
                    return points
                byte = ord(text[index]) - 63
                index += 1
                result |= (byte & 0x1F) << shift
                shift += 5
                if byte < 0x20:
                    break
            values[which] = ~(result >> 1) if result & 1 else result >> 1
        lat += values[0]
        lon += values[1]
        points.append((lat / 1e5, lon / 1e5))
    return points
