"""Messages as CSV, GeoJSON and GPX (docs/api.md, "Exports"), written so that the message
importer (``devices.importers``, ``manage.py import_messages``) reads them back: a CSV's header
is ``timestamp`` and the parameter names as they are, its cells JSON literals or text; a GPX's
points carry what the importer maps back to parameters. The shared machinery (negotiation, cells,
document frames) is ``flespi_site.api.exports``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC

from devices import selectors
from devices.models import Device
from flespi_site.api.exports import (
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
from flespi_site.errors import InvalidInput
from flespi_site.jsontext import dumps_exact

LATITUDE = "position.latitude"
LONGITUDE = "position.longitude"
# Child elements of a GPX 1.1 trkpt, in the schema's order, and the parameter each is taken from.
GPX_POINT_FIELDS = (
    ("ele", "position.altitude"),
    ("time", "timestamp"),
    ("sat", "position.satellites"),
    ("hdop", "position.hdop"),
    ("vdop", "position.vdop"),
    ("pdop", "position.pdop"),
)
SPEED = "position.speed"  # km/h; GPX's speed is m/s
DIRECTION = "position.direction"


@dataclass
class Export:
    """The bytes of an export still to write."""

    chunks: Iterator[bytes]
    filename: str


def message_columns(found: Iterable[str]) -> list[str]:
    """The CSV columns of messages when ``fields`` names none: ``timestamp``, then every
    parameter name the messages have, sorted."""
    return ["timestamp", *sorted(set(found) - {"timestamp"})]


def messages_csv(pages: Iterable[list[dict]], *, columns: Sequence[str]) -> Iterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    yield out.getvalue().encode()
    for page in pages:
        out.seek(0)
        out.truncate()
        writer.writerows([cell(message.get(column)) for column in columns] for message in page)
        yield out.getvalue().encode()


def _position(message: dict) -> tuple[float, float] | None:
    lat, lon = number(message.get(LATITUDE)), number(message.get(LONGITUDE))
    return None if lat is None or lon is None else (lat, lon)


def messages_geojson(pages: Iterable[list[dict]], *, names: Sequence[str] | None) -> Iterator[bytes]:
    """A FeatureCollection of a Point per message with a position ([longitude, latitude]), its
    properties the message's parameters (``names`` when given)."""

    def features() -> Iterator[bytes]:
        for page in pages:
            encoded = []
            for message in page:
                position = _position(message)
                if position is None:
                    continue
                properties = message if names is None else {name: message[name] for name in names if name in message}
                encoded.append(
                    dumps_exact({
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [position[1], position[0]]},
                        "properties": properties,
                    })
                )
            if encoded:
                yield b",".join(encoded)

    return geojson_collection(features())


def _trkpt(message: dict, position: tuple[float, float]) -> str:
    parts = [f'<trkpt lat="{position[0]!r}" lon="{position[1]!r}">']
    for element, name in GPX_POINT_FIELDS:
        value = number(message.get(name))
        if element == "time":
            parts.append(f"<time>{iso_time(value, UTC).replace('+00:00', 'Z')}</time>")
        elif value is not None:
            parts.append(f"<{element}>{int(value) if element == 'sat' else value!r}</{element}>")
    speed, course = number(message.get(SPEED)), number(message.get(DIRECTION))
    extension = ""
    if speed is not None:
        extension += f"<gpxtpx:speed>{round(speed / 3.6, 6)!r}</gpxtpx:speed>"
    if course is not None and 0 <= course < 360:
        extension += f"<gpxtpx:course>{course!r}</gpxtpx:course>"
    if extension:
        parts.append(f"<extensions><gpxtpx:TrackPointExtension>{extension}</gpxtpx:TrackPointExtension></extensions>")
    parts.append("</trkpt>")
    return "".join(parts)


def messages_gpx(pages: Iterable[list[dict]], *, name: str) -> Iterator[bytes]:
    """A GPX 1.1 document of one track, one segment, a ``trkpt`` per message with a position:
    ``time`` (UTC), ``ele``, ``sat``, ``hdop``/``vdop``/``pdop``, and speed (m/s) and course in
    Garmin's TrackPointExtension, GPX 1.1 having no element for them."""
    yield gpx_head(name=name)
    yield f"<trk><name>{xml_text(name)}</name><trkseg>\n".encode()
    for page in pages:
        points = []
        for message in page:
            position = _position(message)
            if position is not None:
                points.append(_trkpt(message, position))
        if points:
            yield ("\n".join(points) + "\n").encode()
    yield b"</trkseg></trk>\n" + GPX_TAIL


def messages_export(
    *,
    devices: list[Device],
    format: str,
    names: Sequence[str] | None,
    begin: float | None,
    end: float | None,
    count: int | None,
    reverse: bool,
    condition=None,
) -> Export:
    """The messages ``GET /gw/devices/{sel}/messages`` answers for these arguments, in
    ``format`` (csv, geojson or gpx). The columns and the first page are read now, the other
    pages as the answer is written."""
    if format == "gpx" and len(devices) > 1:
        raise InvalidInput(
            f"a GPX export of messages is one device's track; the selector names {len(devices)} devices",
            field="selector",
        )
    filename = f"device-{devices[0].pk}-messages" if len(devices) == 1 else "messages"
    columns = list(names) if names is not None else []
    if format == "csv" and names is None:
        columns = message_columns(
            selectors.messages_keys(devices=devices, begin=begin, end=end, count=count, reverse=reverse)
        )
    first, rest = primed(
        selectors.messages_pages(
            devices=devices, begin=begin, end=end, count=count, reverse=reverse, condition=condition
        )
    )
    pages = pages_with(first, rest)
    if format == "csv":
        chunks = messages_csv(pages, columns=columns)
    elif format == "geojson":
        chunks = messages_geojson(pages, names=names)
    else:
        chunks = messages_gpx(pages, name=filename)
    return Export(chunks=chunks, filename=filename)
