"""Geofence entities in the engine, by hand: containment at edges, tiny and huge circles, concave
polygons, corridor ends, the antimeridian; priority order, geofence() and geofences() over
assigned zones, dotted fields, disabled zones; the grid index against the sequential test."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.engine import calculate, compile_calculator, compile_expression
from analytics.engine.geo import Geofence, first_containing
from analytics.engine.zone_checks import MAX_RADIUS_KM, check_geometry
from analytics.engine.zones import GeofenceSet

# One metre in degrees of latitude (111.195 km a degree).
METRE = 1 / 111_194.9


def _zone(geometry, **fields):
    return Geofence({"id": 1, "name": "z", "priority": 0, "metadata": {}, **fields, "geometry": geometry})


def _circle(lat, lon, radius):
    return _zone({"type": "circle", "center": {"lat": lat, "lon": lon}, "radius": radius})


def _polygon(*points):
    return _zone({"type": "polygon", "path": [{"lat": lat, "lon": lon} for lat, lon in points]})


def _both(zone, lat, lon):
    """The scalar and the vectorised answers, which must agree."""
    scalar = zone.contains(lat, lon)
    vector = bool(zone.contains_vec(np.array([lat]), np.array([lon]))[0])
    assert scalar == vector
    return scalar


def test_tiny_circle_of_one_metre():
    zone = _circle(10.0, 20.0, 0.001)
    assert _both(zone, 10.0 + 0.99 * METRE, 20.0)
    assert not _both(zone, 10.0 + 1.01 * METRE, 20.0)
    assert _both(zone, 10.0, 20.0)


def test_huge_circles():
    zone = _circle(0.0, 0.0, 10_000.0)
    assert _both(zone, 0.0, 89.0)  # 9,896 km
    assert not _both(zone, 0.0, 91.0)  # 10,119 km
    assert _both(zone, 89.0, 0.0) and _both(zone, -89.0, 0.0)
    assert not _both(zone, 90.0, 0.0)  # the pole: 10,007.5 km
    globe = _circle(0.0, 0.0, MAX_RADIUS_KM)
    assert _both(globe, 0.0, 179.9) and _both(globe, 0.0, -180.0)  # the antipode is 20,015.09 km: the radius


def test_circle_across_the_antimeridian():
    zone = _circle(0.0, 179.99, 5.0)
    assert zone.bbox[2:] == (-180.0, 180.0)  # its box takes every longitude
    assert _both(zone, 0.0, -179.99)  # 0.02 degrees: 2.22 km
    assert not _both(zone, 0.0, -179.94)  # 0.07 degrees: 7.78 km


def test_polygon_edges_and_corners():
    """The even-odd rule of the engine: a point on the south or west edge is inside, on the north
    or east edge outside (so that two zones sharing an edge never both hold a point on it)."""
    square = _polygon((0, 0), (0, 1), (1, 1), (1, 0))
    assert _both(square, 0.0, 0.5)  # south edge
    assert _both(square, 0.5, 0.0)  # west edge
    assert not _both(square, 1.0, 0.5)  # north edge
    assert not _both(square, 0.5, 1.0)  # east edge
    assert _both(square, 0.0, 0.0)  # south-west corner
    assert not _both(square, 1.0, 1.0)  # north-east corner
    assert not _both(square, -1e-12, 0.5)


def test_concave_polygon():
    # A U open to the east: lat 0..3, lon 0..3, the notch lat 1..2, lon 1..3.
    u = _polygon((0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3))
    assert _both(u, 1.5, 0.5)  # the base of the U
    assert not _both(u, 1.5, 2.0)  # in the notch
    assert _both(u, 0.5, 2.0) and _both(u, 2.5, 2.0)  # the arms
    assert not _both(u, 1.5, 3.5)


def test_polygon_across_the_antimeridian_goes_the_other_way():
    """Polygons are planar in lat/lon: one drawn over the antimeridian spans the other way round."""
    zone = _polygon((-1, 170), (-1, -170), (1, -170), (1, 170))
    assert not _both(zone, 0.0, 175.0)
    assert _both(zone, 0.0, 0.0)


def test_corridor_sides_and_round_ends():
    """Along the equator from lon 0 to lon 1, 2 km wide: 1 km either side, round ends."""
    zone = _zone({"type": "corridor", "width": 2.0, "path": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}]})
    assert _both(zone, 0.0085, 0.5)  # 0.945 km off the path
    assert not _both(zone, 0.0095, 0.5)  # 1.056 km
    assert _both(zone, 0.0, 1.008)  # 0.890 km past the end
    assert not _both(zone, 0.0, 1.0095)  # 1.056 km past the end
    assert _both(zone, 0.0063, 1.0063)  # 0.991 km from the end, diagonally
    assert not _both(zone, 0.007, 1.007)  # 1.101 km: a square end would hold it
    assert not _both(zone, 0.0, -0.0095)  # the start is round too


def test_corridor_with_a_bend():
    # East along the equator, then north: the inside of the corner is covered once.
    zone = _zone({"type": "corridor", "width": 1.0,
                  "path": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}, {"lat": 1, "lon": 1}]})
    assert _both(zone, 0.5, 1.004)  # 0.445 km east of the northward leg
    assert not _both(zone, 0.5, 1.0046)  # 0.511 km
    assert not _both(zone, 0.5, 0.5)  # the inside of the bend, far from both legs


ZONES = [
    {"id": 1, "name": "wide", "enabled": True, "priority": 10, "metadata": {"customer": "acme"},
     "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.0}, "radius": 5.0}},
    {"id": 2, "name": "yard", "enabled": True, "priority": 50, "metadata": {"customer": "beta", "gate": 3},
     "geometry": {"type": "polygon", "path": [{"lat": 49.99, "lon": 9.99}, {"lat": 49.99, "lon": 10.01},
                                              {"lat": 50.01, "lon": 10.01}, {"lat": 50.01, "lon": 9.99}]}},
    {"id": 3, "name": "off", "enabled": False, "priority": 100, "metadata": {},
     "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.0}, "radius": 50.0}},
    {"id": 4, "name": "twin", "enabled": True, "priority": 10, "metadata": {},
     "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.0}, "radius": 1.0}},
]
IN_YARD = {"timestamp": 1.0, "position.latitude": 50.0, "position.longitude": 10.0}
IN_WIDE = {"timestamp": 2.0, "position.latitude": 50.03, "position.longitude": 10.0}  # 3.3 km north
OUTSIDE = {"timestamp": 3.0, "position.latitude": 51.0, "position.longitude": 10.0}
NOWHERE = {"timestamp": 4.0}


def _expression(text):
    calc = compile_calculator({"name": "e", "selectors": [{"type": "expression", "expression": text,
                                                            "method": "change"}]}, geofences=ZONES)
    expression = calc.selectors[0].expression
    assert expression is not None
    return expression


@pytest.mark.parametrize(("text", "expected"), [
    # yard (50) first, then wide and twin (10; lower id first); "off" is disabled.
    ("geofence('name')", ["yard", "wide", None, None]),
    ("geofences('name')", [["yard", "wide", "twin"], ["wide"], [], None]),
    ("geofence('metadata.customer')", ["beta", "acme", None, None]),
    ("geofences('metadata.gate')", [[3, None, None], [None], [], None]),
    ("geofence('id')", [2, 1, None, None]),
])
def test_geofence_functions_over_assigned_zones(text, expected):
    expression = _expression(text)
    messages = [IN_YARD, IN_WIDE, OUTSIDE, NOWHERE]
    assert [expression.evaluate(message) for message in messages] == expected
    from analytics.engine import Messages
    from analytics.engine.expressions import Frame

    column = expression.evaluate_frame(Frame(Messages.from_dicts(messages)))
    values = [None if (column.null is not None and column.null[i]) else column.values[i] for i in range(4)]
    assert [value.tolist() if isinstance(value, np.ndarray) else value for value in values] == expected


def test_inline_geofences_come_before_assigned_ones():
    calc = compile_calculator({
        "name": "both",
        "selectors": [{"type": "geofence", "geofences": [
            {"type": "circle", "name": "inline", "center": {"lat": 50.03, "lon": 10.0}, "radius": 0.5}]}],
    }, geofences=ZONES)
    assert [zone.name for zone in calc.scope_geofences] == ["inline", "yard", "wide", "twin"]
    expression = compile_expression("geofences('name')", geofences=calc.scope_geofences)
    assert expression.evaluate(IN_WIDE) == ["inline", "wide"]


def test_selector_with_an_empty_list_takes_the_assigned_zones():
    config = {"name": "visits", "selectors": [{"type": "geofence", "geofences": []}],
              "counters": [{"name": "where", "type": "geofence"}]}
    messages = [IN_YARD, {**IN_YARD, "timestamp": 2.0}, {**OUTSIDE, "timestamp": 3.0}, {**IN_WIDE, "timestamp": 4.0}]
    intervals = calculate(messages, compile_calculator(config, geofences=ZONES))
    assert [(interval["begin"], interval["end"], interval["where"]) for interval in intervals] == [
        (1.0, 2.0, "yard"), (4.0, 4.0, "wide")]
    assert calculate(messages, compile_calculator(config)) == []  # nothing assigned: never inside
    without = [zone for zone in ZONES if zone["id"] != 2]
    intervals = calculate(messages, compile_calculator(config, geofences=without))
    assert [(interval["begin"], interval["where"]) for interval in intervals] == [(1.0, "wide"), (4.0, "wide")]


def test_grid_index_agrees_with_the_sequential_test():
    rng = np.random.default_rng(11)
    zones = []
    for number in range(300):
        lat, lon = rng.uniform(-1, 1), rng.uniform(-1, 1)
        kind = number % 3
        if kind == 0:
            geometry = {"type": "circle", "center": {"lat": lat, "lon": lon}, "radius": float(rng.uniform(0.5, 20))}
        elif kind == 1:
            count = int(rng.integers(3, 12))
            angles = np.sort(rng.uniform(0, 2 * np.pi, count))
            radii = rng.uniform(0.01, 0.1, count)
            geometry = {"type": "polygon", "path": [
                {"lat": lat + r * np.sin(a), "lon": lon + r * np.cos(a)} for r, a in zip(radii, angles, strict=True)]}
        else:
            geometry = {"type": "corridor", "width": float(rng.uniform(0.5, 3)),
                        "path": [{"lat": lat, "lon": lon}, {"lat": lat + 0.05, "lon": lon + 0.03}]}
        zones.append({"id": number, "name": str(number), "geometry": geometry})
    # One zone far wider than the grid's cells: tested against every point.
    zones.append({"id": 999, "name": "country", "geometry": {
        "type": "circle", "center": {"lat": 0, "lon": 0}, "radius": 1000.0}})
    indexed = GeofenceSet(zones)
    assert indexed.grid is not None and len(indexed.grid.wide) == 1
    plain = list(indexed)
    lat = rng.uniform(-1.2, 1.2, 20_000)
    lon = rng.uniform(-1.2, 1.2, 20_000)
    valid = rng.random(20_000) < 0.95
    assert np.array_equal(first_containing(indexed, lat, lon, valid), first_containing(plain, lat, lon, valid))
    points, numbers = indexed.hits(lat, lon, valid)
    brute = sorted((int(p), n) for n, zone in enumerate(plain)
                   for p in np.flatnonzero(zone.contains_vec(lat, lon) & valid))
    assert list(zip(points.tolist(), numbers.tolist(), strict=True)) == brute
    assert len(brute) > 1000  # the points do meet the zones
    for i in range(0, 20_000, 997):
        first = indexed.first(float(lat[i]), float(lon[i]))
        assert (plain.index(first) if first is not None else -1) == first_containing(
            plain, lat[i : i + 1], lon[i : i + 1], np.ones(1, bool))[0]


def test_check_geometry_normalises_and_names_paths():
    geometry, problems = check_geometry({"type": "corridor", "width": 1, "path": [{"lat": 0, "lon": 0}, {"lat": 0}]})
    assert geometry is None and [(p.path, p.message) for p in problems] == [("geometry.path[1].lon", "missing field")]
    geometry, problems = check_geometry("circle")
    assert geometry is None and problems[0].path == "geometry"
    # A bow-tie crosses itself; its closed ring with a repeated first point does not count as crossing.
    closed = [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}, {"lat": 1, "lon": 1}, {"lat": 0, "lon": 0}]
    geometry, problems = check_geometry({"type": "polygon", "path": closed})
    assert problems == [] and geometry == {"type": "polygon", "path": closed[:3]}
