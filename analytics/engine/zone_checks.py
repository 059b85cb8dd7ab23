"""The validation of a geofence entity's geometry: every problem with its path, and the
normalised geometry the platform stores."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .checks import Checker, check_point, is_finite_number
from .errors import Problem
from .geo import EARTH_RADIUS_KM

MAX_GEOFENCE_POINTS = 1024
GEOMETRY_TYPES = ("circle", "polygon", "corridor")
# Half the Earth's circumference: a circle this wide already holds the whole globe.
MAX_RADIUS_KM = math.pi * EARTH_RADIUS_KM


def _point(checker: Checker, point: Any, path: str) -> dict | None:
    return check_point(checker, point, path, known_only=True)


def _path(checker: Checker, geometry: dict, path: str, *, least: int) -> list[dict] | None:
    points = geometry.get("path")
    if not isinstance(points, list):
        checker.add(f"{path}.path", "missing field" if points is None else "must be a list of points")
        return None
    if len(points) > MAX_GEOFENCE_POINTS:
        checker.add(f"{path}.path", f"has {len(points)} points, at most {MAX_GEOFENCE_POINTS} are allowed")
        return None
    checked = []
    for i, point in enumerate(points):
        value = _point(checker, point, f"{path}.path[{i}]")
        if value is None:
            return None
        checked.append(value)
    distinct = {(point["lat"], point["lon"]) for point in checked}
    if len(distinct) < least:
        checker.add(f"{path}.path", f"needs at least {least} distinct points, has {len(distinct)}")
        return None
    return checked


def _ring(points: list[dict]) -> list[dict]:
    """A polygon's points without repeats: consecutive equal points once, and no closing point
    equal to the first (the ring closes itself)."""
    ring: list[dict] = []
    for point in points:
        if not ring or (point["lat"], point["lon"]) != (ring[-1]["lat"], ring[-1]["lon"]):
            ring.append(point)
    while len(ring) > 1 and (ring[0]["lat"], ring[0]["lon"]) == (ring[-1]["lat"], ring[-1]["lon"]):
        ring.pop()
    return ring


def _orient(ax, ay, bx, by, cx, cy):
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def self_intersection(points: list[dict]) -> tuple[int, int] | None:
    """The first pair of edges ``(i, j)`` of the ring that cross, touch or fold back over each
    other (edge i joins point i to point i+1, the last one back to point 0), or None. Exact on
    the coordinates given (planar in lon/lat), all pairs at once."""
    xs = np.array([float(point["lon"]) for point in points])
    ys = np.array([float(point["lat"]) for point in points])
    edge_count = len(xs)
    ax, ay = xs, ys
    bx, by = np.roll(xs, -1), np.roll(ys, -1)
    i, j = np.triu_indices(edge_count, k=1)
    # Adjacent edges share a point: they may only fold back over each other (collinear, turning
    # around), which the check below of their directions finds.
    adjacent = (j == i + 1) | ((i == 0) & (j == edge_count - 1))
    o1 = _orient(ax[i], ay[i], bx[i], by[i], ax[j], ay[j])
    o2 = _orient(ax[i], ay[i], bx[i], by[i], bx[j], by[j])
    o3 = _orient(ax[j], ay[j], bx[j], by[j], ax[i], ay[i])
    o4 = _orient(ax[j], ay[j], bx[j], by[j], bx[i], by[i])
    boxes_meet = (
        (np.minimum(ax[i], bx[i]) <= np.maximum(ax[j], bx[j]))
        & (np.minimum(ax[j], bx[j]) <= np.maximum(ax[i], bx[i]))
        & (np.minimum(ay[i], by[i]) <= np.maximum(ay[j], by[j]))
        & (np.minimum(ay[j], by[j]) <= np.maximum(ay[i], by[i]))
    )
    crossing = boxes_meet & (o1 * o2 <= 0) & (o3 * o4 <= 0) & ~adjacent
    collinear = (o1 == 0) & (o2 == 0)
    dot = (bx[i] - ax[i]) * (bx[j] - ax[j]) + (by[i] - ay[i]) * (by[j] - ay[j])
    folding = adjacent & collinear & (dot < 0)
    bad = np.flatnonzero(crossing | folding)
    if not len(bad):
        return None
    return int(i[bad[0]]), int(j[bad[0]])


def check_geometry(geometry: Any, path: str = "geometry") -> tuple[dict | None, list[Problem]]:
    """A geofence entity's geometry, normalised (a polygon without repeated or closing points),
    or None and every problem with its path: a circle (``center``, ``radius`` km > 0), a polygon
    (``path`` of 3 to ``MAX_GEOFENCE_POINTS`` points, at least 3 distinct, not crossing itself)
    or a corridor (``path`` of at least 2 distinct points, ``width`` km > 0)."""
    checker = Checker()
    if not isinstance(geometry, dict):
        checker.add(path, "must be an object with a type: circle, polygon or corridor")
        return None, checker.problems
    kind = checker.string(geometry, "type", path, required=True, choices=GEOMETRY_TYPES)
    normalized: dict[str, Any] | None = None
    if kind == "circle":
        checker.unknown(geometry, ("type", "center", "radius"), path)
        center = geometry.get("center")
        if center is None:
            checker.add(f"{path}.center", "missing field")
        else:
            center = _point(checker, center, f"{path}.center")
        radius = checker.number(geometry, "radius", path, required=True, positive=True)
        if is_finite_number(radius) and radius > MAX_RADIUS_KM:
            checker.add(f"{path}.radius", f"at most {MAX_RADIUS_KM:.1f} km (half the Earth's circumference)")
        normalized = {"type": kind, "center": center, "radius": radius}
    elif kind == "polygon":
        checker.unknown(geometry, ("type", "path"), path)
        points = _path(checker, geometry, path, least=3)
        if points is not None:
            ring = _ring(points)
            crossing = self_intersection(ring)
            if crossing is not None:
                first, second = crossing
                checker.add(
                    f"{path}.path",
                    f"crosses itself: the edge from point {first} meets the edge from point {second}",
                )
            normalized = {"type": kind, "path": ring}
    elif kind == "corridor":
        checker.unknown(geometry, ("type", "path", "width"), path)
        points = _path(checker, geometry, path, least=2)
        width = checker.number(geometry, "width", path, required=True, positive=True)
        normalized = {"type": kind, "path": points, "width": width}
    if checker.problems:
        return None, checker.problems
    return normalized, []


