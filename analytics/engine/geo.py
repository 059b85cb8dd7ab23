"""Geometry: haversine distance, geofence containment (circles, polygons, corridors), Google
encoded polylines.

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


KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180
# Widening of a circle's or corridor's bounding box, in degrees: the box only skips the exact
# test, so it errs outwards (about a millimetre).
_BOX_MARGIN = 1e-8


def _lon_reach(lat_low: float, lat_high: float, km: float) -> float | None:
    """How far in longitude (degrees) a point within ``km`` of some point with latitude in
    ``[lat_low, lat_high]`` can lie, or None when the reach passes a pole (any longitude)."""
    angle = km / EARTH_RADIUS_KM
    low = math.radians(lat_low) - angle
    high = math.radians(lat_high) + angle
    if low <= -math.pi / 2 or high >= math.pi / 2 or angle >= math.pi / 2:
        return None
    # The widest point of a small circle of angular radius ``angle`` around latitude phi is
    # asin(sin(angle) / cos(phi)) away in longitude. Taking phi at the edge of the reach nearest a
    # pole bounds it, and bounds a corridor's planar distance too (which scales longitude by the
    # cosine of the point's own latitude).
    phi = max(abs(low), abs(high))
    ratio = math.sin(angle) / math.cos(phi)
    if ratio >= 1:
        return None
    return math.degrees(math.asin(ratio))


def field_of(config: dict, name: str):
    """A field of a geofence's configuration; a dotted name walks into objects
    (``metadata.customer``)."""
    if name in config:
        return config[name]
    value = config
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class Geofence:
    """A circle (``center``, ``radius`` km), polygon (``path``) or corridor (``path``, ``width``
    km) with its configuration. The geometry is the configuration itself (a calculator's inline
    geofence) or its ``geometry`` (a geofence entity: ``id``, ``name``, ``priority``,
    ``metadata``, ``geometry``).

    ``bbox`` is ``(lat_low, lat_high, lon_low, lon_high)``, wide enough that no point outside it
    is contained; a circle or corridor whose reach passes a pole or the antimeridian has the
    whole range of longitudes.
    """

    def __init__(self, config: dict):
        self.config = config
        self.name = config.get("name")
        geometry = config.get("geometry", config)
        self.type = geometry["type"]
        if self.type == "circle":
            self.lat = float(geometry["center"]["lat"])
            self.lon = float(geometry["center"]["lon"])
            self.radius = float(geometry["radius"])
            self.bbox = _reach_box(self.lat, self.lat, self.lon, self.lon, self.radius)
            return
        points = geometry["path"]
        self.ys = np.array([float(point["lat"]) for point in points])
        self.xs = np.array([float(point["lon"]) for point in points])
        if self.type == "corridor":
            self.half_width = float(geometry["width"]) / 2
            self.bbox = _reach_box(
                float(self.ys.min()), float(self.ys.max()), float(self.xs.min()), float(self.xs.max()), self.half_width
            )
            self.segments = list(
                zip(self.ys[:-1].tolist(), self.xs[:-1].tolist(), self.ys[1:].tolist(), self.xs[1:].tolist(), strict=True)
            )
            return
        self.bbox = (float(self.ys.min()), float(self.ys.max()), float(self.xs.min()), float(self.xs.max()))
        self.edges = list(
            zip(
                self.xs.tolist(),
                self.ys.tolist(),
                np.roll(self.xs, 1).tolist(),
                np.roll(self.ys, 1).tolist(),
                strict=True,
            )
        )

    def field(self, name: str):
        return field_of(self.config, name)

    def contains(self, lat: float, lon: float) -> bool:
        if self.type == "circle":
            return haversine(self.lat, self.lon, lat, lon) <= self.radius
        y0, y1, x0, x1 = self.bbox
        if not (y0 <= lat <= y1 and x0 <= lon <= x1):
            return False
        if self.type == "corridor":
            return bool(self.contains_vec(np.array([lat]), np.array([lon]))[0])
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
        if self.type == "corridor":
            out[cand] = self._corridor_distance(py, px) <= self.half_width
            return out
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

    def _corridor_distance(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Kilometres from each point to the path: on a plane tangent at the point
        (equirectangular, x scaled by the cosine of the point's latitude), the distance to the
        nearest segment, ends included (a corridor's ends are round)."""
        scale = np.cos(np.radians(lat)) * KM_PER_DEGREE
        best = np.full(len(lat), np.inf)
        with np.errstate(all="ignore"):
            for ay, ax, by, bx in self.segments:
                # The segment's ends relative to the point, in km.
                ux = (ax - lon) * scale
                uy = (ay - lat) * KM_PER_DEGREE
                vx = (bx - ax) * scale
                vy = np.full(len(lat), (by - ay) * KM_PER_DEGREE)
                length2 = vx * vx + vy * vy
                along = np.where(length2 > 0, np.clip(-(ux * vx + uy * vy) / length2, 0.0, 1.0), 0.0)
                dx = ux + along * vx
                dy = uy + along * vy
                best = np.minimum(best, np.sqrt(dx * dx + dy * dy))
        return best


def _reach_box(lat_low: float, lat_high: float, lon_low: float, lon_high: float, km: float):
    """The bounding box of every point within ``km`` of the box given."""
    dlat = math.degrees(km / EARTH_RADIUS_KM) + _BOX_MARGIN
    dlon = _lon_reach(lat_low, lat_high, km)
    low, high = max(lat_low - dlat, -90.0), min(lat_high + dlat, 90.0)
    if dlon is None or lon_low - dlon < -180 or lon_high + dlon > 180:
        return (low, high, -180.0, 180.0)
    return (low, high, lon_low - dlon - _BOX_MARGIN, lon_high + dlon + _BOX_MARGIN)


def first_containing(geofences, lat: np.ndarray, lon: np.ndarray, valid: np.ndarray):
    """Index of the first geofence containing each point, -1 where none or no position. A
    ``GeofenceSet`` (``zones``) with a grid answers through it."""
    grid = getattr(geofences, "grid", None)
    if grid is not None:
        return grid.first(lat, lon, valid)
    found = np.full(len(lat), -1, dtype=np.int64)
    todo = valid.copy()
    for number, geofence in enumerate(geofences):
        idx = np.flatnonzero(todo)
        if not len(idx):
            break
        hit = geofence.contains_vec(lat[idx], lon[idx])
        found[idx[hit]] = number
        todo[idx[hit]] = False
    return found


def encode_polyline_continued(lat: list[float], lon: list[float], after: tuple[float, float] | None) -> str:
    """The encoded polyline (precision 5) of points that follow the point ``after`` (lat, lon) of a
    line already encoded: each point's offset from the one before, so that the line's text plus
    this is the whole line's (``after`` None: the first point is absolute). Plain Python: for the
    few points a message or two adds, cheaper than ``encode_polyline_segments``."""
    chars: list[str] = []
    previous = (0, 0) if after is None else (math.floor(after[0] * 1e5 + 0.5), math.floor(after[1] * 1e5 + 0.5))
    for point_lat, point_lon in zip(lat, lon, strict=True):
        current = (math.floor(point_lat * 1e5 + 0.5), math.floor(point_lon * 1e5 + 0.5))
        for value in (current[0] - previous[0], current[1] - previous[1]):
            value = ~(value << 1) if value < 0 else value << 1
            while value >= 0x20:
                chars.append(chr((0x20 | (value & 0x1F)) + 63))
                value >>= 5
            chars.append(chr(value + 63))
        previous = current
    return "".join(chars)


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



# The most five-bit chunks a value of ``decode_polylines`` decodes in bulk: 7 (35 bits) is beyond
# any coordinate's (180 degrees at precision 5 is below 2**25, 6 chunks) and keeps every sum of
# values within int64. A text with a longer run goes to ``decode_polyline``, whose integers have
# no bound.
_MAX_CHUNKS = 7


def decode_polylines(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``decode_polyline`` of many polylines at once: the latitudes and longitudes of all their
    points end to end, and where each text's points start (``len(texts) + 1`` offsets: text
    ``k``'s points are ``offsets[k]:offsets[k + 1]``). The same floats as ``decode_polyline``
    text by text, cut-short texts included; a text that is not ASCII or has a run of chunks
    longer than any coordinate's is decoded by it."""
    ascii_texts = [text if text.isascii() else "" for text in texts]
    lat, lon, counts, odd = _decode_ascii(ascii_texts)
    odd.update(index for index, text in enumerate(texts) if not text.isascii())
    if odd:
        lat_parts, lon_parts = [], []
        starts = np.concatenate(([0], np.cumsum(counts)))
        for index, text in enumerate(texts):
            if index in odd:
                points = decode_polyline(text)
                counts[index] = len(points)
                lat_parts.append(np.array([point[0] for point in points], dtype=np.float64))
                lon_parts.append(np.array([point[1] for point in points], dtype=np.float64))
            else:
                lat_parts.append(lat[starts[index] : starts[index + 1]])
                lon_parts.append(lon[starts[index] : starts[index + 1]])
        lat = np.concatenate(lat_parts) if lat_parts else lat
        lon = np.concatenate(lon_parts) if lon_parts else lon
    return lat, lon, np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


def _decode_ascii(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[int]]:
    """The points of ASCII polylines end to end, each text's number of points, and the texts
    with a run longer than ``_MAX_CHUNKS`` (whose points here are none)."""
    lengths = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
    empty = np.empty(0, dtype=np.float64)
    counts = np.zeros(len(texts), dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return empty, empty, counts, set()
    chunks = np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8).astype(np.int64) - 63
    text_of_char = np.repeat(np.arange(len(texts)), lengths)
    # A value ends at a chunk without the continuation bit (any character below "_", as the
    # reference reads it), or is cut short by the end of its text.
    terminal = chunks < 0x20
    text_last = np.cumsum(lengths)[lengths > 0] - 1
    boundary = terminal.copy()
    boundary[text_last] = True
    run_start = np.flatnonzero(np.concatenate(([True], boundary[:-1])))
    run_end = np.concatenate((run_start[1:], [total]))
    run_length = run_end - run_start
    run_text = text_of_char[run_start]
    odd = set(np.unique(run_text[run_length > _MAX_CHUNKS]).tolist())
    position = np.arange(total) - np.repeat(run_start, run_length)
    np.minimum(position, _MAX_CHUNKS, out=position)
    values = np.add.reduceat((chunks & 0x1F) << (5 * position), run_start)
    complete = terminal[run_end - 1]
    values, value_text = values[complete], run_text[complete]
    # A text's values pair up as (latitude, longitude); a latitude without its longitude (a cut
    # text) is no point.
    per_text = np.bincount(value_text, minlength=len(texts))
    counts = per_text // 2
    if odd:
        counts[list(odd)] = 0
    first_value = np.concatenate(([0], np.cumsum(per_text)[:-1]))
    index_in_text = np.arange(len(values)) - first_value[value_text]
    kept = index_in_text < 2 * counts[value_text]
    values = values[kept]
    deltas = np.where(values & 1, ~(values >> 1), values >> 1)
    lat_sum = np.cumsum(deltas[0::2])
    lon_sum = np.cumsum(deltas[1::2])
    # Each text's sums start again from zero: less what the texts before it added.
    point_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    lat_sum -= np.repeat(np.concatenate(([0], lat_sum))[point_start], counts)
    lon_sum -= np.repeat(np.concatenate(([0], lon_sum))[point_start], counts)
    return lat_sum / 1e5, lon_sum / 1e5, counts, odd
