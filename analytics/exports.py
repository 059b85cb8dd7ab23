"""Intervals as CSV, GeoJSON and GPX (docs/api.md, "Exports"): writers of pages of intervals
(stored ones from ``selectors.intervals_pages``, or an on-demand calculation's) into the bytes of
a streamed answer. The shared machinery (negotiation, cells, document frames) is
``flespi_site.api.exports``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from functools import cached_property
from itertools import pairwise
from typing import Any

from analytics import selectors
from analytics.engine.geo import decode_polylines
from analytics.engine.interval_fields import ENGINE_FIELDS, OWNER_FIELDS, STAMP_FIELD
from analytics.engine.timeutil import zone
from analytics.models import Assignment
from flespi_site.api.exports import (
    CELL_TEXT,
    GPX_TAIL,
    cell,
    geojson_collection,
    gpx_head,
    iso_time,
    number,
    pages_with,
    primed,
    xml_text,
)
from flespi_site.jsontext import dumps_exact

_ID, _BEGIN, _END, _DURATION = ENGINE_FIELDS
_CALC_ID, _DEVICE_ID = OWNER_FIELDS
# Columns derived from an interval's times, in its calculator's timezone (ISO 8601 with the
# offset); a counter or user field of the same name wins.
DERIVED_TIMES = {"begin_time": _BEGIN, "end_time": _END}
# The leading columns of a CSV of stored intervals, before the counters (in the calculator's
# order) and the other fields (user fields, counters of an earlier version: by name).
STORED_LEADING = (_ID, _CALC_ID, _DEVICE_ID, _BEGIN, _END, _DURATION, *DERIVED_TIMES, STAMP_FIELD)
# ... and of an on-demand calculation's (nothing stored: no calc_id, no timestamp).
ON_DEMAND_LEADING = (_ID, _DEVICE_ID, _BEGIN, _END, _DURATION, *DERIVED_TIMES)
LATITUDE = "position.latitude"
LONGITUDE = "position.longitude"
_MISSING = object()
_ROWS_PER_CHUNK = 1_000


@dataclass(frozen=True)
class CalculatorShape:
    """What an export needs of a calculator: its timezone, its counters' names in order, and the
    name of its first ``route`` counter (the geometry of GeoJSON and GPX)."""

    name: str
    zone: tzinfo
    counters: tuple[str, ...]
    route: str | None

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> CalculatorShape:
        counters = [counter for counter in config.get("counters") or [] if isinstance(counter, dict)]
        return cls(
            name=str(config.get("name", "")),
            zone=zone(config.get("timezone") or "UTC"),
            counters=tuple(str(counter["name"]) for counter in counters if "name" in counter),
            route=next((str(counter["name"]) for counter in counters if counter.get("type") == "route"), None),
        )

    @cached_property
    def xml_name(self) -> str:
        """The GPX ``type`` element of its tracks."""
        return f"<type>{xml_text(self.name)}</type>"


def interval_columns(*, leading: Sequence[str], shapes: Iterable[CalculatorShape], found: Iterable[str]) -> list[str]:
    """The CSV columns of intervals when ``fields`` names none: ``leading``, every calculator's
    counters in its order, then the other names ``found`` in the intervals, sorted."""
    columns = list(leading)
    seen = set(columns)
    for shape in shapes:
        for name in shape.counters:
            if name not in seen:
                columns.append(name)
                seen.add(name)
    columns += sorted(set(found) - seen)
    return columns


ShapeOf = Callable[[Mapping], CalculatorShape]


def intervals_csv(pages: Iterable[list[dict]], *, columns: Sequence[str], shape_of: ShapeOf) -> Iterator[bytes]:
    """A header row of ``columns``, then a row per interval (``flespi_site.api.exports.cell``),
    a chunk of bytes per page."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    yield out.getvalue().encode()
    plan = [(column, DERIVED_TIMES.get(column)) for column in columns]
    text_of = CELL_TEXT.get
    for page in pages:
        out.seek(0)
        out.truncate()
        rows = []
        for interval in page:
            zone_ = shape_of(interval).zone
            get = interval.get
            rows.append([
                (text_of(type(value)) or cell)(value)
                if (value := get(column, _MISSING)) is not _MISSING
                else (iso_time(get(derived), zone_) if derived else "")
                for column, derived in plan
            ])
        writer.writerows(rows)
        yield out.getvalue().encode()


def _page_points(page: Sequence[Mapping], shapes: Sequence[CalculatorShape]) -> tuple[list[float], list[float], list[int]]:
    """The points of each interval of a page: its route's (latitude, longitude), or its one
    position, or none. The latitudes and longitudes of the page end to end, and where each
    interval's start (``len(page) + 1`` offsets). The routes of the page are decoded at once
    (``decode_polylines``)."""
    texts: list[str] = []
    routed: list[int] = []
    for index, (interval, shape) in enumerate(zip(page, shapes, strict=True)):
        route = interval.get(shape.route) if shape.route else None
        if isinstance(route, str) and route:
            texts.append(route)
            routed.append(index)
    lat_array, lon_array, route_offsets = decode_polylines(texts)
    lat, lon = lat_array.tolist(), lon_array.tolist()
    offsets = route_offsets.tolist()
    if len(routed) == len(page) and all(end > start for start, end in pairwise(offsets)):
        return lat, lon, offsets
    # Some intervals have no route (or one without a point): their position, if any, in order.
    page_lat: list[float] = []
    page_lon: list[float] = []
    page_offsets = [0]
    route_of = {index: which for which, index in enumerate(routed)}
    for index, interval in enumerate(page):
        which = route_of.get(index)
        if which is not None and offsets[which + 1] > offsets[which]:
            page_lat += lat[offsets[which] : offsets[which + 1]]
            page_lon += lon[offsets[which] : offsets[which + 1]]
        else:
            position = _position(interval)
            if position is not None:
                page_lat.append(position[0])
                page_lon.append(position[1])
        page_offsets.append(len(page_lat))
    return page_lat, page_lon, page_offsets


def _position(interval: Mapping) -> tuple[float, float] | None:
    """A position written by counters: ``position.latitude`` and ``position.longitude`` fields,
    or a ``message`` counter's object holding them."""
    for holder in (interval, *(value for value in interval.values() if isinstance(value, dict))):
        lat, lon = number(holder.get(LATITUDE)), number(holder.get(LONGITUDE))
        if lat is not None and lon is not None:
            return lat, lon
    return None


def _properties(interval: Mapping, shape: CalculatorShape, names: Sequence[str] | None) -> dict:
    if names is None:
        properties = {key: value for key, value in interval.items() if key != shape.route}
        wanted: Iterable[str] = DERIVED_TIMES
    else:
        properties = {name: interval[name] for name in names if name in interval}
        wanted = names
    for name in wanted:
        derived = DERIVED_TIMES.get(name)
        if derived is not None and name not in properties:
            properties[name] = iso_time(interval.get(derived), shape.zone)
    return properties


def intervals_geojson(
    pages: Iterable[list[dict]], *, names: Sequence[str] | None, shape_of: ShapeOf
) -> Iterator[bytes]:
    """A FeatureCollection: a feature per interval, its geometry the route (a LineString; a
    Point when the route has one point) or else its position (a Point), null without either;
    its properties the interval's fields (``names`` when given) but the route, with the times
    in the calculator's timezone."""

    def features() -> Iterator[bytes]:
        for page in pages:
            shapes = [shape_of(interval) for interval in page]
            lat, lon, offsets = _page_points(page, shapes)
            encoded = []
            for index, (interval, shape) in enumerate(zip(page, shapes, strict=True)):
                start, end = offsets[index], offsets[index + 1]
                geometry: dict | None = None
                if end - start > 1:
                    geometry = {"type": "LineString", "coordinates": list(zip(lon[start:end], lat[start:end], strict=True))}
                elif end > start:
                    geometry = {"type": "Point", "coordinates": (lon[start], lat[start])}
                feature = {
                    "type": "Feature",
                    "id": interval.get("id"),
                    "geometry": geometry,
                    "properties": _properties(interval, shape, names),
                }
                encoded.append(dumps_exact(feature))
            if encoded:
                yield b",".join(encoded)

    return geojson_collection(features())


def intervals_gpx(pages: Iterable[list[dict]], *, name: str, shape_of: ShapeOf) -> Iterator[bytes]:
    """A GPX 1.1 document: a ``trk`` per interval (named by its id, its times in ``desc``, its
    calculator in ``type``), its route as one ``trkseg`` of ``trkpt``s (no times: the route
    counter keeps none), or its one position; no ``trkseg`` without either."""
    yield gpx_head(name=name)
    for page in pages:
        shapes = [shape_of(interval) for interval in page]
        lat, lon, offsets = _page_points(page, shapes)
        # Every point's text at once, then each track's run of them joined.
        points = [f'<trkpt lat="{point_lat!r}" lon="{point_lon!r}"/>' for point_lat, point_lon in zip(lat, lon, strict=True)]
        parts = []
        for index, (interval, shape) in enumerate(zip(page, shapes, strict=True)):
            parts.append(
                f"<trk><name>interval {xml_text(interval.get('id'))}</name>"
                f"<desc>{iso_time(interval.get('begin'), shape.zone)} - {iso_time(interval.get('end'), shape.zone)}</desc>"
            )
            if shape.name:
                parts.append(shape.xml_name)
            start, end = offsets[index], offsets[index + 1]
            if end > start:
                parts.append("<trkseg>")
                parts.append("".join(points[start:end]))
                parts.append("</trkseg>")
            parts.append("</trk>\n")
        yield "".join(parts).encode()
    yield GPX_TAIL


def intervals_export(
    pages: Iterable[list[dict]],
    *,
    format: str,
    columns: Sequence[str],
    names: Sequence[str] | None,
    shape_of: ShapeOf,
    name: str,
) -> Iterator[bytes]:
    """The bytes of ``pages`` of intervals in ``format`` (csv, geojson or gpx)."""
    if format == "csv":
        return intervals_csv(pages, columns=columns, shape_of=shape_of)
    if format == "geojson":
        return intervals_geojson(pages, names=names, shape_of=shape_of)
    return intervals_gpx(pages, name=name, shape_of=shape_of)


def in_pages(items: Sequence[dict], size: int = _ROWS_PER_CHUNK) -> Iterator[list[dict]]:
    """Items held in memory (an on-demand calculation's) as pages."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass
class Export:
    """The bytes of an export still to write, and whether it holds any row."""

    chunks: Iterator[bytes]
    empty: bool
    filename: str


def stored_intervals_export(
    *,
    assignments: Sequence[Assignment],
    format: str,
    names: Sequence[str] | None,
    ids: Sequence[int] | None = None,
    begin: float | None = None,
    end: float | None = None,
    count: int | None = None,
    reverse: bool = False,
    condition=None,
) -> Export:
    """The stored intervals ``intervals_of`` answers for these arguments, in ``format``. The
    columns, the calculators and the first page are read now; the other pages as the answer is
    written."""
    shapes = {
        pk: CalculatorShape.of(calculator.configuration())
        for pk, calculator in selectors.calculators_of_assignments(assignments=assignments).items()
    }
    columns: list[str] = []
    if names is not None:
        columns = list(names)
    elif format == "csv":
        # Only CSV has columns: the leading ones and the counters, then the other names the
        # exported rows have. Every name the assignments' intervals ever had is on their rows
        # (``Assignment.interval_names``): when none is another, the rows have none and are not
        # read for names. Otherwise the names of the rows the export holds (all of the range when
        # a condition filters: its kept rows may come from anywhere in it).
        order = list(dict.fromkeys(assignment.calculator_id for assignment in assignments))
        calculator_shapes = [shapes[pk] for pk in order if pk in shapes]
        columns = interval_columns(leading=STORED_LEADING, shapes=calculator_shapes, found=())
        recorded = set().union(*(assignment.interval_names for assignment in assignments))
        if not recorded.issubset(columns):
            found = selectors.intervals_keys(
                assignments=assignments, ids=ids, begin=begin, end=end, count=count if condition is None else None,
                reverse=reverse,
            )
            columns = interval_columns(leading=STORED_LEADING, shapes=calculator_shapes, found=found)
    first, rest = primed(
        selectors.intervals_pages(
            assignments=assignments, ids=ids, begin=begin, end=end, count=count, reverse=reverse, condition=condition
        )
    )
    utc = CalculatorShape.of({})

    def shape_of(interval: Mapping) -> CalculatorShape:
        return shapes.get(interval["calc_id"], utc)

    if len(assignments) == 1:
        filename = f"calc-{assignments[0].calculator_id}-device-{assignments[0].device_id}-intervals"
    else:
        filename = "intervals"
    chunks = intervals_export(
        pages_with(first, rest), format=format, columns=columns, names=names, shape_of=shape_of, name=filename
    )
    return Export(chunks=chunks, empty=first is None, filename=filename)


def calculated_intervals_export(
    *, results: Sequence[tuple[int, Sequence[dict]]], config: Mapping[str, Any], format: str, names: Sequence[str] | None
) -> Export:
    """An on-demand calculation's intervals (per device id, computed in memory) in ``format``,
    each with ``device_id``."""
    shape = CalculatorShape.of(config)
    intervals = [{**interval, "device_id": device_id} for device_id, found in results for interval in found]
    if names is not None:
        columns = list(names)
    else:
        found_names = {key for interval in intervals for key in interval}
        columns = interval_columns(leading=ON_DEMAND_LEADING, shapes=[shape], found=found_names)
    filename = f"device-{results[0][0]}-calculated" if len(results) == 1 else "calculated"
    chunks = intervals_export(
        in_pages(intervals), format=format, columns=columns, names=names, shape_of=lambda _interval: shape, name=filename
    )
    return Export(chunks=chunks, empty=not intervals, filename=filename)
