"""Readers of track files into messages, and the derivation of speed and direction.

Pure Python with no Django import: ``manage.py import_messages`` reads a file with these and
writes the messages with ``devices.services.messages_ingest``.

Every reader yields ``Record(line, message)`` in file order: the line where the record starts
(so that a message the ingestion service refuses can be traced back to the file) and a message
dict with a float ``timestamp`` (unix seconds, rounded to the microsecond) and dotted parameter
names. The formats and how their fields map to parameters:

GPX 1.0 and 1.1 (also without a namespace): every ``trkpt``, ``rtept`` and ``wpt``, in document
order. ``lat``/``lon`` -> ``position.latitude``/``position.longitude``, ``<time>`` ->
``timestamp`` (required), ``<ele>`` -> ``position.altitude``, ``<sat>`` ->
``position.satellites``, ``<hdop>``/``<vdop>``/``<pdop>`` -> ``position.hdop`` etc.,
``<course>`` -> ``position.direction`` and ``<speed>`` (m/s, GPX 1.0 or a Garmin
TrackPointExtension) -> ``position.speed`` in km/h.

CSV: a header row, then one message per row; the delimiter (``,``, ``;`` or tab) is taken from the
header. A column's name is the parameter name as written, except for these aliases (matched
without regard to case): ``CSV_ALIASES`` below (``lat`` and ``latitude`` -> ``position.latitude``,
``lon``/``lng``/``long``/``longitude`` -> ``position.longitude``, ``time``/``ts``/``datetime`` ->
``timestamp``, ``speed`` -> ``position.speed``, taken to be km/h, ...). A ``timestamp`` column
is required, in unix seconds or ISO 8601 (UTC when it names no offset). Cells are JSON literals
when they are one (``12`` -> 12, ``1.5`` -> 1.5, ``true`` -> true), strings otherwise (``007``
stays "007"); an empty cell means "no value".

JSON lines: one message object per line; blank lines are skipped; ``timestamp`` is required.

A problem with one record (a bad line, a point without time) is a ``ParseError`` naming the file,
the line and the reason. Readers given an ``errors`` list append such problems to it and go on
with the next record; without one they raise the first. A problem with the document itself (XML
that is not well formed, a CSV without a timestamp column) always raises, since nothing after it
can be trusted.

``derive_motion`` then adds ``position.speed`` and ``position.direction`` where a message has a
position but not these (see its docstring for the rules).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any, NamedTuple
from xml.parsers import expat

from devices import validation
from devices.validation import MessageError

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
STOP_SPEED_KMH = 1.0
MAX_GAP_S = 300.0

LATITUDE = "position.latitude"
LONGITUDE = "position.longitude"
SPEED = "position.speed"
DIRECTION = "position.direction"


class Record(NamedTuple):
    """One message read from a file, and the line where it starts."""

    line: int
    message: dict[str, Any]


class ParseError(ValueError):
    """A file, or one record of it, cannot be read; says where and why."""

    def __init__(self, name: str, line: int, reason: str):
        super().__init__(f"{name}:{line}: {reason}")
        self.name = name
        self.line = line
        self.reason = reason


class _RecordProblem(MessageError):
    """A record is invalid; the reader adds where it is."""


def _report(problem: ParseError, errors: list[ParseError] | None) -> None:
    if errors is None:
        raise problem
    errors.append(problem)


# --- values --------------------------------------------------------------------------------


def parse_timestamp(value: Any) -> float:
    """Unix seconds from a number, a numeric string or an ISO 8601 string (UTC when it names no
    offset), rounded to the microsecond: the ingestion's rules (``devices.validation``), which
    take numbers as numbers, applied to the text of a file's field."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            value = text
    return round(validation.parse_timestamp(value), 6)


def _number(name: str, text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _RecordProblem(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _RecordProblem(f"{name} {text!r} is not a finite number")
    return value


def _check_coordinates(message: dict[str, Any]) -> None:
    for name, limit in ((LATITUDE, 90.0), (LONGITUDE, 180.0)):
        if name not in message:
            continue
        value = message[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _RecordProblem(f"{name} {value!r} is not a number")
        if not -limit <= value <= limit:
            raise _RecordProblem(f"{name} {value} is outside [-{limit:g}, {limit:g}]")


# --- GPX -----------------------------------------------------------------------------------

GPX_NAMESPACES = frozenset({"http://www.topografix.com/GPX/1/0", "http://www.topografix.com/GPX/1/1", ""})
GPX_POINTS = frozenset({"trkpt", "rtept", "wpt"})
# Child elements of a point (any namespace, so Garmin's TrackPointExtension speed and course
# count too): parameter name and conversion of the text.
GPX_FIELDS: dict[str, tuple[str, Any]] = {
    "time": ("timestamp", parse_timestamp),
    "ele": ("position.altitude", lambda text: _number("ele", text)),
    "sat": ("position.satellites", lambda text: int(_number("sat", text))),
    "hdop": ("position.hdop", lambda text: _number("hdop", text)),
    "vdop": ("position.vdop", lambda text: _number("vdop", text)),
    "pdop": ("position.pdop", lambda text: _number("pdop", text)),
    "course": (DIRECTION, lambda text: _number("course", text)),
    "speed": (SPEED, lambda text: round(_number("speed", text) * 3.6, 3)),
}
_GPX_CHUNK = 1 << 16


def read_gpx(
    stream: IO[bytes] | IO[str], *, name: str = "<gpx>", errors: list[ParseError] | None = None
) -> Iterator[Record]:
    """The points of a GPX 1.0 or 1.1 document, streamed."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    done: list[Record] = []
    state: dict[str, Any] = {"depth": 0, "point": None, "field": None, "text": [], "seen": set()}

    def split(tag: str) -> tuple[str, str]:
        namespace, _, local = tag.rpartition(" ")
        return namespace, local

    def start(tag: str, attributes: dict[str, str]) -> None:
        namespace, local = split(tag)
        state["depth"] += 1
        if state["depth"] == 1:
            if local != "gpx" or namespace not in GPX_NAMESPACES:
                raise ParseError(
                    name, parser.CurrentLineNumber, f"not a GPX 1.0 or 1.1 document (root element {tag!r})"
                )
            return
        point = state["point"]
        if point is None:
            if local in GPX_POINTS and namespace in GPX_NAMESPACES:
                state["point"] = {
                    "line": parser.CurrentLineNumber,
                    "column": parser.CurrentColumnNumber + 1,
                    "tag": local,
                    "depth": state["depth"],
                    "attributes": attributes,
                    "values": {},
                }
                state["seen"] = set()
            return
        if local in GPX_FIELDS and local not in state["seen"]:
            state["field"], state["text"] = local, []

    def text(data: str) -> None:
        if state["field"] is not None:
            state["text"].append(data)

    def end(tag: str) -> None:
        depth = state["depth"]
        state["depth"] -= 1
        point = state["point"]
        if point is None:
            return
        local = split(tag)[1]
        if local == state["field"]:
            point["values"][local] = "".join(state["text"]).strip()
            state["seen"].add(local)
            state["field"] = None
        elif depth == point["depth"]:
            state["point"] = None
            try:
                done.append(Record(point["line"], _gpx_message(point)))
            except MessageError as exc:
                _report(ParseError(name, point["line"], f"{exc} (column {point['column']})"), errors)

    parser.StartElementHandler = start
    parser.CharacterDataHandler = text
    parser.EndElementHandler = end

    final = False
    while not final:
        chunk = stream.read(_GPX_CHUNK)
        final = not chunk
        try:
            parser.Parse(chunk, final)
        except (expat.ExpatError, ParseError) as exc:
            yield from done  # the points before the problem are good
            if isinstance(exc, ParseError):
                raise
            reason = f"not well-formed XML: {expat.ErrorString(exc.code)} (column {exc.offset + 1})"
            raise ParseError(name, exc.lineno, reason) from None
        yield from done
        done.clear()


def _gpx_message(point: dict) -> dict[str, Any]:
    attributes, values = point["attributes"], point["values"]
    if "time" not in values or not values["time"]:
        raise _RecordProblem(f"<{point['tag']}> has no <time>; every message needs a timestamp")
    message: dict[str, Any] = {}
    for local, (parameter, convert) in GPX_FIELDS.items():
        if values.get(local):
            message[parameter] = convert(values[local])
    for attribute, parameter in (("lat", LATITUDE), ("lon", LONGITUDE)):
        if attribute not in attributes:
            raise _RecordProblem(f"<{point['tag']}> has no {attribute} attribute")
        message[parameter] = _number(attribute, attributes[attribute])
    _check_coordinates(message)
    return message


# --- CSV -----------------------------------------------------------------------------------

CSV_ALIASES: dict[str, str] = {
    "timestamp": "timestamp",
    "time": "timestamp",
    "ts": "timestamp",
    "datetime": "timestamp",
    "lat": LATITUDE,
    "latitude": LATITUDE,
    "lon": LONGITUDE,
    "lng": LONGITUDE,
    "long": LONGITUDE,
    "longitude": LONGITUDE,
    "alt": "position.altitude",
    "altitude": "position.altitude",
    "ele": "position.altitude",
    "elevation": "position.altitude",
    "speed": SPEED,
    "course": DIRECTION,
    "heading": DIRECTION,
    "bearing": DIRECTION,
    "direction": DIRECTION,
    "sat": "position.satellites",
    "sats": "position.satellites",
    "satellites": "position.satellites",
    "hdop": "position.hdop",
    "valid": "position.valid",
}
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


def csv_column(header: str) -> str:
    """The parameter name of a CSV column (see ``CSV_ALIASES``)."""
    name = header.strip()
    return CSV_ALIASES.get(name.lower(), name)


def csv_value(text: str) -> Any:
    """A CSV cell as a JSON value: a number or boolean literal, or else the string."""
    match = _JSON_NUMBER.fullmatch(text)
    if match:
        value = float(text) if match.group(1) or match.group(2) else int(text)
        if isinstance(value, float) and not math.isfinite(value):
            return text
        return value
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def read_csv(
    lines: Iterable[str], *, name: str = "<csv>", errors: list[ParseError] | None = None
) -> Iterator[Record]:
    """The rows of a CSV file with a header row; ``lines`` is a text file or any iterable of
    lines."""
    lines = iter(lines)
    header_line = next(lines, "").removeprefix("\ufeff")
    if not header_line.strip():
        raise ParseError(name, 1, "no header row")
    delimiter = max(",;\t", key=header_line.count)
    reader = csv.reader(_chain(header_line, lines), delimiter=delimiter)
    try:
        headers = next(reader)
    except csv.Error as exc:
        raise ParseError(name, 1, f"header row: {exc}") from None
    columns = [csv_column(header) for header in headers]
    seen: dict[str, str] = {}
    for header, column in zip(headers, columns, strict=True):
        if not column:
            raise ParseError(name, 1, f"column {len(seen) + 1} has no name")
        if column in seen:
            raise ParseError(name, 1, f"columns {seen[column]!r} and {header.strip()!r} both mean {column!r}")
        seen[column] = header.strip()
    if "timestamp" not in seen:
        raise ParseError(name, 1, "no timestamp column (timestamp, time, ts or datetime)")
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            raise ParseError(name, start, str(exc)) from None
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        try:
            if len(row) != len(columns):
                raise _RecordProblem(f"{len(row)} fields where the header has {len(columns)}")
            message = {
                column: csv_value(cell.strip())
                for column, cell in zip(columns, row, strict=True)
                if cell.strip()
            }
            if "timestamp" not in message:
                raise _RecordProblem("the timestamp is empty")
            message["timestamp"] = parse_timestamp(str(message["timestamp"]))
            _check_coordinates(message)
        except MessageError as exc:
            _report(ParseError(name, start, str(exc)), errors)
            continue
        yield Record(start, message)


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


# --- JSON lines ----------------------------------------------------------------------------


_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _reject_constant(name: str) -> Any:
    raise _RecordProblem(f"{name} is not a valid JSON number")


def read_jsonl(
    lines: Iterable[str], *, name: str = "<jsonl>", errors: list[ParseError] | None = None
) -> Iterator[Record]:
    """One message object per line; ``lines`` is a text file or any iterable of lines."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            try:
                message = json.loads(text.rstrip(), parse_constant=_reject_constant)
            except json.JSONDecodeError as exc:
                raise _RecordProblem(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(message, dict):
                raise _RecordProblem(f"expected a message object, got a JSON {_JSON_TYPES[type(message)]}")
            if "timestamp" not in message:
                raise _RecordProblem("timestamp is required")
            message["timestamp"] = parse_timestamp(message["timestamp"])
        except MessageError as exc:
            _report(ParseError(name, number, str(exc)), errors)
            continue
        yield Record(number, message)


# --- dispatch ------------------------------------------------------------------------------

FORMATS = ("gpx", "csv", "jsonl")
EXTENSIONS = {".gpx": "gpx", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".ldjson": "jsonl"}


def format_of(filename: str) -> str | None:
    """The format named by a file's extension (``.gz`` is looked through), or None."""
    lowered = filename.lower().removesuffix(".gz")
    for extension, format_name in EXTENSIONS.items():
        if lowered.endswith(extension):
            return format_name
    return None


def read(
    stream: IO[bytes], *, format: str, name: str, errors: list[ParseError] | None = None
) -> Iterator[Record]:
    """The records of a binary stream in ``format`` (one of ``FORMATS``). Text formats are read
    as UTF-8 (a byte order mark is skipped); GPX follows its XML declaration."""
    if format == "gpx":
        return read_gpx(stream, name=name, errors=errors)
    if format == "csv":
        return read_csv(_text_lines(stream, name), name=name, errors=errors)
    if format == "jsonl":
        return read_jsonl(_text_lines(stream, name), name=name, errors=errors)
    raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")


def _text_lines(stream: IO[bytes], name: str) -> Iterator[str]:
    # Decoded line by line, so that a bad byte is reported on its own line.
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(
                name, number, f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line)"
            ) from None
        yield line.removeprefix("\ufeff") if number == 1 else line


# --- derived speed and direction -----------------------------------------------------------


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(half)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from the first point to the second, degrees clockwise from north in [0, 360)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    delta = math.radians(lon2 - lon1)
    east = math.sin(delta) * math.cos(phi2)
    north = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(delta)
    return math.degrees(math.atan2(east, north)) % 360.0


class _Point(NamedTuple):
    timestamp: float
    lat: float
    lon: float


def _point_of(message: dict[str, Any]) -> _Point | None:
    timestamp, lat, lon = message.get("timestamp"), message.get(LATITUDE), message.get(LONGITUDE)
    for value in (timestamp, lat, lon):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):  # type: ignore[operator]
        return None
    return _Point(float(timestamp), float(lat), float(lon))  # type: ignore[arg-type]


def _segment(start: _Point | None, end: _Point | None, max_gap: float) -> tuple[float, float] | None:
    """Speed (km/h) and bearing of the move from ``start`` to ``end``, or None when the two points do
    not make a usable segment (missing, going back in time, or further apart than ``max_gap``)."""
    if start is None or end is None or not 0 < end.timestamp - start.timestamp <= max_gap:
        return None
    speed = haversine_m(start.lat, start.lon, end.lat, end.lon) / (end.timestamp - start.timestamp) * 3.6
    return speed, bearing_deg(start.lat, start.lon, end.lat, end.lon)


def derive_motion(
    records: Iterable[Record], *, stop_speed: float = STOP_SPEED_KMH, max_gap: float = MAX_GAP_S
) -> Iterator[Record]:
    """Add ``position.speed`` (km/h) and ``position.direction`` (degrees) to the messages that
    have a position but not these, from consecutive positions in file order.

    A point's speed is the haversine distance to the next point divided by the time between
    them, and its direction the initial bearing to the next point: the motion from this message
    until the next one, which is how long the analytics engine holds a message's state
    (``duration`` counters). So a logger that records nothing while standing gives the point
    where it stopped the standing speed of the gap after it, and the gap counts as standing. The
    last point of a run (the end of the file, or before a step back in time or a gap over
    ``max_gap`` seconds) takes the segment from the previous point instead. A speed under
    ``stop_speed`` is the jitter of a standing receiver: it is stored as 0, and the direction
    stays the last one of the run (none before the run first moves). A message with neither is
    left alone; records without a position pass through unchanged, in order.
    """
    before: _Point | None = None
    current: Record | None = None
    current_point: _Point | None = None
    waiting: list[Record] = []  # records without a position that came after ``current``
    heading: float | None = None
    try:
        for record in records:
            point = _point_of(record.message)
            if point is None:
                if current is None:
                    yield record
                else:
                    waiting.append(record)
                continue
            if current is not None:
                heading = _fill(current.message, before, current_point, point, heading, stop_speed, max_gap)
                yield current
                yield from waiting
                waiting.clear()
                before = current_point
            current, current_point = record, point
    except Exception:
        # The reader stopped at a broken document: what it read before is still good.
        if current is not None:
            _fill(current.message, before, current_point, None, heading, stop_speed, max_gap)
            yield current
            yield from waiting
        raise
    if current is not None:
        _fill(current.message, before, current_point, None, heading, stop_speed, max_gap)
        yield current
        yield from waiting


def _fill(
    message: dict[str, Any],
    before: _Point | None,
    point: _Point | None,
    after: _Point | None,
    heading: float | None,
    stop_speed: float,
    max_gap: float,
) -> float | None:
    arrival = _segment(before, point, max_gap)
    if arrival is None:
        heading = None  # a new run
    segment = _segment(point, after, max_gap) or arrival
    if segment is None:
        return heading
    speed, bearing = segment
    if speed < stop_speed:
        speed = 0.0
    else:
        heading = bearing
    message.setdefault(SPEED, round(speed, 2))
    if heading is not None:
        message.setdefault(DIRECTION, round(heading, 2) % 360.0)
    return heading
