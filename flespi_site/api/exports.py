"""Exports: a GET's items as CSV, GeoJSON or GPX, streamed (docs/api.md, "Exports").

The format comes from ``format=`` or the ``Accept`` header (``export_format``). What an export
writes is the app's (``analytics.exports``, ``devices.exports``); what every export shares is
here: the negotiation, the streamed answer with its file name, and the text of one CSV cell,
one GeoJSON document's frame and one GPX document's frame.

Everything that can refuse a request (parameters, access, the first page of rows) runs before the
answer starts: a refusal is a normal 4xx in the envelope. Once the first byte is out, a failure
can only cut the stream short (the client sees an incomplete body: no closing bracket, no
``</gpx>``), and is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, tzinfo
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from django.http import StreamingHttpResponse
from rest_framework.exceptions import NotAcceptable
from rest_framework.request import Request

from flespi_site.api.params import QueryParameters
from flespi_site.errors import InvalidInput
from flespi_site.jsontext import dumps_exact

logger = logging.getLogger(__name__)

JSON = "json"
CSV = "csv"
GEOJSON = "geojson"
GPX = "gpx"
FORMATS = (JSON, CSV, GEOJSON, GPX)
MEDIA_TYPES = {CSV: "text/csv", GEOJSON: "application/geo+json", GPX: "application/gpx+xml"}
_FORMAT_OF_MEDIA_TYPE = {media_type: name for name, media_type in MEDIA_TYPES.items()}

GPX_NAMESPACE = "http://www.topografix.com/GPX/1/1"
# Garmin's TrackPointExtension v2: speed (m/s) and course of a trkpt, which GPX 1.1 itself lacks.
GPX_TPX_NAMESPACE = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"


def accepted_exports(request: Request) -> set[str]:
    """The export formats the ``Accept`` header names (with a q above 0)."""
    found = set()
    for part in request.META.get("HTTP_ACCEPT", "").split(","):
        media_type, *params = (piece.strip() for piece in part.split(";"))
        quality = next((param[2:] for param in params if param.replace(" ", "").startswith("q=")), "1")
        if media_type.lower() in _FORMAT_OF_MEDIA_TYPE and not re.fullmatch(r"0(\.0*)?", quality.strip()):
            found.add(_FORMAT_OF_MEDIA_TYPE[media_type.lower()])
    return found


def export_format(request: Request, *, accepted: tuple[str, ...] = FORMATS) -> str:
    """The format the request asks for: ``format=`` (one of ``accepted``), else the one export
    format ``Accept`` names, else JSON. ``format=`` and an ``Accept`` that names another export
    format is a 400; an ``Accept`` naming several export formats is a 406."""
    given = QueryParameters.of(request).merged().get("format")
    asked = accepted_exports(request)
    if given is not None:
        if not isinstance(given, str) or given not in accepted:
            shown = given[:32] if isinstance(given, str) else given
            raise InvalidInput(f"format {shown!r} is not one of {', '.join(accepted)}", field="format")
        if asked and asked != {given}:
            raise InvalidInput(
                f"format={given} but the Accept header asks for {', '.join(MEDIA_TYPES[name] for name in sorted(asked))}: "
                "ask for one format",
                field="format",
            )
        return given
    if len(asked) > 1:
        raise NotAcceptable(
            f"the Accept header names several export formats ({', '.join(MEDIA_TYPES[name] for name in sorted(asked))}); "
            "name one, or give format=" + "|".join(accepted)
        )
    if asked and next(iter(asked)) not in accepted:
        raise NotAcceptable(
            f"this endpoint does not answer {MEDIA_TYPES[next(iter(asked))]}; formats: {', '.join(accepted)}"
        )
    return asked.pop() if asked else JSON


def streamed(chunks: Iterator[bytes], *, format: str, filename: str) -> StreamingHttpResponse:
    """The streamed answer of an export, offered for download as ``filename``.<extension>."""
    response = StreamingHttpResponse(_logged(chunks, filename), content_type=f"{MEDIA_TYPES[format]}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}.{format}"'
    response["Cache-Control"] = "no-store"
    return response


def _logged(chunks: Iterator[bytes], filename: str) -> Iterator[bytes]:
    try:
        yield from chunks
    except Exception:
        # The status line is out: the stream ends short, and the log says why.
        logger.exception("export %s cut short", filename)
        raise


def primed(pages: Iterator[list[dict]]) -> tuple[list[dict] | None, Iterator[list[dict]]]:
    """The first page read now (a failure is then a normal error answer) and the pages after it
    still to read; None when there is no row at all."""
    first = next(pages, None)
    return first, pages


def pages_with(first: list[dict] | None, rest: Iterator[list[dict]]) -> Iterator[list[dict]]:
    if first is not None:
        yield first
    yield from rest


# --- cells and times ------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    return dumps_exact(value).decode()


# The text of a cell by the type of its value (``cell``); any other type is JSON text.
CELL_TEXT: dict[type, Any] = {
    str: str,
    float: float.__repr__,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _value: "",
}


def cell(value: Any) -> str:
    """The text of a CSV cell: numbers as JSON writes them, ``true``/``false``, strings as they
    are, nothing for null or a missing value, JSON text for arrays and objects. The message
    importer (``devices.importers.csv_value``) reads numbers and booleans back as such."""
    return (CELL_TEXT.get(type(value)) or _json_text)(value)


def number(value: Any) -> float | None:
    """``value`` when it is a JSON number (not a boolean), else None."""
    return float(value) if type(value) in (int, float) else None


def iso_time(seconds: float | None, zone: tzinfo) -> str:
    """``seconds`` (unix time) as ISO 8601 in ``zone``, with its offset; microseconds only when
    there are some. Whole seconds (what intervals and most messages hold) are put together from
    texts cached per day and per hour of the zone: the text ``datetime.isoformat`` writes,
    without a datetime per time (an export writes two per interval)."""
    if seconds is None or type(seconds) not in (int, float):
        return ""
    if isinstance(seconds, int) or seconds.is_integer():
        whole = int(seconds)
        if _WHOLE_LOW <= whole < _WHOLE_HIGH:
            return _whole_seconds_text(whole, zone)
    return datetime.fromtimestamp(seconds, zone).isoformat()


# The whole seconds ``iso_time`` writes from cached texts: 1970 to 9000 (the others, datetime).
_WHOLE_LOW, _WHOLE_HIGH = 0, 221_845_392_000
# "THH:MM:" of each minute of a day, and "SS" of each second of a minute.
_MINUTE_TEXT = tuple(f"T{minute // 60:02d}:{minute % 60:02d}:" for minute in range(1440))
_SECOND_TEXT = tuple(f"{second:02d}" for second in range(60))
_EPOCH = datetime(1970, 1, 1)
# Per zone, each UTC hour seen: its offset in seconds and as text ("+01:00"), or None for an
# hour in which the offset changes (written by datetime). The date text of each local day seen.
# Both cleared when they reach a year of hours (8,760; about 2 MB): an export of years of
# intervals fills them again as it goes, two datetimes an hour.
_HOURS: dict[tzinfo, dict[int, tuple[int, str] | None]] = {}
_DAYS: dict[int, str] = {}
_MAX_CACHED = 10_000


def _whole_seconds_text(seconds: int, zone: tzinfo) -> str:
    hours = _HOURS.get(zone)
    if hours is None or len(hours) > _MAX_CACHED:
        hours = _HOURS[zone] = {}
    hour = seconds // 3600
    if hour in hours:
        offset = hours[hour]
    else:
        start = datetime.fromtimestamp(hour * 3600, zone)
        last = datetime.fromtimestamp(hour * 3600 + 3599, zone)
        start_offset = start.utcoffset()
        offset = None
        if start_offset is not None and start_offset == last.utcoffset():
            offset = (int(start_offset.total_seconds()), start.isoformat()[19:])
        hours[hour] = offset
    if offset is None:
        return datetime.fromtimestamp(seconds, zone).isoformat()
    day, second_of_day = divmod(seconds + offset[0], 86400)
    date_text = _DAYS.get(day)
    if date_text is None:
        if len(_DAYS) > _MAX_CACHED:
            _DAYS.clear()
        date_text = _DAYS[day] = (_EPOCH + timedelta(days=day)).date().isoformat()
    minute, second = divmod(second_of_day, 60)
    return date_text + _MINUTE_TEXT[minute] + _SECOND_TEXT[second] + offset[1]


# --- document frames ------------------------------------------------------------------------


def geojson_collection(features: Iterable[bytes]) -> Iterator[bytes]:
    """A FeatureCollection around features (each one feature's JSON), streamed."""
    yield b'{"type":"FeatureCollection","features":['
    first = True
    for feature in features:
        yield feature if first else b"," + feature
        first = False
    yield b"]}\n"


def gpx_head(*, creator: str = "telematics platform", name: str | None = None) -> bytes:
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<gpx version="1.1" creator={quoteattr(creator)} xmlns="{GPX_NAMESPACE}" '
        f'xmlns:gpxtpx="{GPX_TPX_NAMESPACE}">\n'
    )
    if name is not None:
        head += f"<metadata><name>{escape(name)}</name></metadata>\n"
    return head.encode()


GPX_TAIL = b"</gpx>\n"


def xml_text(value: Any) -> str:
    if type(value) is int:
        return int.__repr__(value)
    return escape(cell(value))
