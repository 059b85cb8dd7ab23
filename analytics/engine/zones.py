"""Geofence entities in the engine: their order, and an index that finds the zones containing
each point among hundreds or thousands of them (their geometry is checked in ``zone_checks``).

A zone reaches the engine as data (``{"id", "name", "priority", "metadata", "geometry"}``); the
platform's bridge reads the rows. ``GeofenceSet`` is the ordered list every geofence consumer
takes (``first_containing``, ``geofence()``, ``geofences()``): with more than
``INDEX_THRESHOLD`` zones it answers through a uniform grid over the zones' bounding boxes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .geo import Geofence, haversine_vec

# Below this many zones a sequential test (each zone's bounding box, then its shape) is as fast.
INDEX_THRESHOLD = 16


def zone_order(zones: Iterable[dict]) -> list[dict]:
    """Zones in the order they are checked: higher ``priority`` first, then lower ``id``."""
    return sorted(zones, key=lambda zone: (-int(zone.get("priority") or 0), zone.get("id") or 0))


class GeofenceSet(Sequence[Geofence]):
    """Geofences in the order they are checked, with the grid index of a large set (``grid``,
    None below ``INDEX_THRESHOLD``)."""

    def __init__(self, geofences: Iterable[Geofence | dict] = ()):
        self._items = [item if isinstance(item, Geofence) else Geofence(item) for item in geofences]
        self.grid = GridIndex(self._items) if len(self._items) > INDEX_THRESHOLD else None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Geofence]:
        return iter(self._items)

    def __getitem__(self, item):  # type: ignore[override]
        return self._items[item]

    def candidates(self, lat: float, lon: float) -> Iterable[Geofence]:
        """The geofences that may contain the point, in order."""
        if self.grid is None:
            return self._items
        return [self._items[number] for number in self.grid.candidates(lat, lon)]

    def first(self, lat: float, lon: float) -> Geofence | None:
        for geofence in self.candidates(lat, lon):
            if geofence.contains(lat, lon):
                return geofence
        return None

    def every(self, lat: float, lon: float) -> list[Geofence]:
        return [geofence for geofence in self.candidates(lat, lon) if geofence.contains(lat, lon)]

    def hits(self, lat: np.ndarray, lon: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (point, geofence number) pair where the geofence contains the point, ordered by
        point and then by number."""
        if self.grid is not None:
            points, numbers = self.grid.hits(lat, lon, valid)
        else:
            found_points, found_numbers = [], []
            where = np.flatnonzero(valid)
            for number, geofence in enumerate(self._items):
                hit = where[geofence.contains_vec(lat[where], lon[where])]
                found_points.append(hit)
                found_numbers.append(np.full(len(hit), number, dtype=np.int64))
            points = np.concatenate(found_points) if found_points else np.zeros(0, np.int64)
            numbers = np.concatenate(found_numbers) if found_numbers else np.zeros(0, np.int64)
        order = np.lexsort((numbers, points))
        return points[order], numbers[order]


class GridIndex:
    """A uniform grid over the bounding boxes of geofences: each cell lists the geofences whose
    box meets it (CSR arrays). A point's candidates are its cell's; circles among them are
    tested at once, each other shape once over its candidate points. A geofence whose box would
    cover more than ``MAX_CELLS_PER_ZONE`` cells (a country around a city) is tested against
    every point instead, after its box."""

    MAX_CELLS_PER_ZONE = 4096
    MAX_CELLS_PER_AXIS = 2048

    def __init__(self, geofences: list[Geofence]):
        self.geofences = geofences
        count = len(geofences)
        self.boxes = np.array([geofence.bbox for geofence in geofences], dtype=np.float64).reshape(count, 4)
        self.is_circle = np.array([geofence.type == "circle" for geofence in geofences], bool)
        self.circle_lat = np.array([getattr(geofence, "lat", 0.0) for geofence in geofences])
        self.circle_lon = np.array([getattr(geofence, "lon", 0.0) for geofence in geofences])
        self.circle_radius = np.array([getattr(geofence, "radius", 0.0) for geofence in geofences])
        # Every polygon's edges end to end (x0, y0 -> x1, y1, as ``Geofence.contains_vec`` walks
        # them): polygon n owns edges edge_start[n] .. edge_start[n] + edge_count[n].
        self.is_polygon = np.array([geofence.type == "polygon" for geofence in geofences], bool)
        rings = [(geofence.xs, geofence.ys) if geofence.type == "polygon" else (np.zeros(0), np.zeros(0))
                 for geofence in geofences]
        self.edge_count = np.array([len(xs) for xs, _ in rings], dtype=np.int64)
        self.edge_start = np.concatenate(([0], np.cumsum(self.edge_count)[:-1])).astype(np.int64)
        self.edge_xi = np.concatenate([xs for xs, _ in rings]) if count else np.zeros(0)
        self.edge_yi = np.concatenate([ys for _, ys in rings]) if count else np.zeros(0)
        self.edge_xj = np.concatenate([np.roll(xs, 1) for xs, _ in rings]) if count else np.zeros(0)
        self.edge_yj = np.concatenate([np.roll(ys, 1) for _, ys in rings]) if count else np.zeros(0)
        heights = self.boxes[:, 1] - self.boxes[:, 0]
        widths = self.boxes[:, 3] - self.boxes[:, 2]
        # The cell is the size of a typical zone, so that each zone meets a few cells.
        cell = float(np.median(np.maximum(heights, widths))) if count else 1.0
        lat0, lat1 = float(self.boxes[:, 0].min()), float(self.boxes[:, 1].max())
        lon0, lon1 = float(self.boxes[:, 2].min()), float(self.boxes[:, 3].max())
        cell = max(cell, (lat1 - lat0) / self.MAX_CELLS_PER_AXIS, (lon1 - lon0) / self.MAX_CELLS_PER_AXIS, 1e-9)
        self.lat0, self.lon0, self.cell = lat0, lon0, cell
        self.rows = max(1, math.ceil((lat1 - lat0) / cell) + 1)
        self.cols = max(1, math.ceil((lon1 - lon0) / cell) + 1)
        r0 = np.floor((self.boxes[:, 0] - lat0) / cell).astype(np.int64)
        r1 = np.floor((self.boxes[:, 1] - lat0) / cell).astype(np.int64)
        c0 = np.floor((self.boxes[:, 2] - lon0) / cell).astype(np.int64)
        c1 = np.floor((self.boxes[:, 3] - lon0) / cell).astype(np.int64)
        spans = (r1 - r0 + 1) * (c1 - c0 + 1)
        self.wide = np.flatnonzero(spans > self.MAX_CELLS_PER_ZONE)
        cells_of: list[np.ndarray] = []
        zones_of: list[np.ndarray] = []
        for number in np.flatnonzero(spans <= self.MAX_CELLS_PER_ZONE).tolist():
            rr, cc = np.meshgrid(np.arange(r0[number], r1[number] + 1), np.arange(c0[number], c1[number] + 1))
            cells = (rr * self.cols + cc).ravel()
            cells_of.append(cells)
            zones_of.append(np.full(len(cells), number, dtype=np.int64))
        cells = np.concatenate(cells_of) if cells_of else np.zeros(0, np.int64)
        zones = np.concatenate(zones_of) if zones_of else np.zeros(0, np.int64)
        order = np.lexsort((zones, cells))
        self.entries = zones[order]
        self.counts = np.bincount(cells, minlength=self.rows * self.cols).astype(np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)[:-1])).astype(np.int64)

    def _cells(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        row = np.floor((lat - self.lat0) / self.cell).astype(np.int64)
        col = np.floor((lon - self.lon0) / self.cell).astype(np.int64)
        inside = (row >= 0) & (row < self.rows) & (col >= 0) & (col < self.cols)
        return row * self.cols + col, inside

    def candidates(self, lat: float, lon: float) -> list[int]:
        cells, inside = self._cells(np.array([lat]), np.array([lon]))
        numbers = set(self.wide.tolist())
        if inside[0]:
            start = int(self.starts[cells[0]])
            numbers.update(self.entries[start : start + int(self.counts[cells[0]])].tolist())
        return sorted(numbers)

    def hits(self, lat: np.ndarray, lon: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        where = np.flatnonzero(valid)
        cells, inside = self._cells(lat[where], lon[where])
        where, cells = where[inside], cells[inside]
        counts = self.counts[cells]
        total = int(counts.sum())
        points = np.repeat(where, counts)
        ends = np.cumsum(counts)
        offsets = np.arange(total) - np.repeat(ends - counts, counts)
        numbers = self.entries[np.repeat(self.starts[cells], counts) + offsets]
        if len(self.wide):
            every = np.flatnonzero(valid)
            points = np.concatenate([points, np.tile(every, len(self.wide))])
            numbers = np.concatenate([numbers, np.repeat(self.wide, len(every))])
        plat, plon = lat[points], lon[points]
        box = self.boxes[numbers]
        keep = (plat >= box[:, 0]) & (plat <= box[:, 1]) & (plon >= box[:, 2]) & (plon <= box[:, 3])
        points, numbers, plat, plon = points[keep], numbers[keep], plat[keep], plon[keep]
        circle = self.is_circle[numbers]
        found_points = []
        found_numbers = []
        if circle.any():
            cp, cn = points[circle], numbers[circle]
            inside_circle = haversine_vec(self.circle_lat[cn], self.circle_lon[cn], plat[circle], plon[circle]) <= (
                self.circle_radius[cn]
            )
            found_points.append(cp[inside_circle])
            found_numbers.append(cn[inside_circle])
        polygon = self.is_polygon[numbers]
        if polygon.any():
            pp, pn = points[polygon], numbers[polygon]
            inside_polygon = self._in_polygons(plat[polygon], plon[polygon], pn)
            found_points.append(pp[inside_polygon])
            found_numbers.append(pn[inside_polygon])
        shaped = ~circle & ~polygon
        if shaped.any():
            sp, sn = points[shaped], numbers[shaped]
            order = np.argsort(sn, kind="stable")
            sp, sn = sp[order], sn[order]
            bounds = np.flatnonzero(np.diff(sn)) + 1
            for group_points, group_numbers in zip(np.split(sp, bounds), np.split(sn, bounds), strict=True):
                number = int(group_numbers[0])
                hit = self.geofences[number].contains_vec(lat[group_points], lon[group_points])
                found_points.append(group_points[hit])
                found_numbers.append(group_numbers[hit])
        if not found_points:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(found_points), np.concatenate(found_numbers)

    def _in_polygons(self, lat: np.ndarray, lon: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Whether each point is inside the polygon numbered beside it: the even-odd rule of
        ``Geofence.contains_vec``, every (point, edge) pair at once."""
        counts = self.edge_count[numbers]
        total = int(counts.sum())
        pair = np.repeat(np.arange(len(numbers)), counts)
        ends = np.cumsum(counts)
        edge = np.repeat(self.edge_start[numbers], counts) + (np.arange(total) - np.repeat(ends - counts, counts))
        py, px = lat[pair], lon[pair]
        xi, yi, xj, yj = self.edge_xi[edge], self.edge_yi[edge], self.edge_xj[edge], self.edge_yj[edge]
        cross = (yi > py) != (yj > py)
        with np.errstate(all="ignore"):
            xint = (xj - xi) * (py - yi) / (yj - yi) + xi
        flips = cross & (px < xint)
        return (np.bincount(pair[flips], minlength=len(numbers)) % 2).astype(bool)

    def first(self, lat: np.ndarray, lon: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The number of the first geofence containing each point, -1 where none."""
        points, numbers = self.hits(lat, lon, valid)
        none = len(self.geofences)
        found = np.full(len(lat), none, dtype=np.int64)
        np.minimum.at(found, points, numbers)
        found[found == none] = -1
        return found
