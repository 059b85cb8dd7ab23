"""Strict JSON: a size limit (413), no NaN or infinities, a nesting limit, and errors that say
where the problem is."""

from __future__ import annotations

import json
import math
import zlib

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import BaseParser

from flespi_site.errors import TooLarge
from flespi_site.jsontext import has_long_number


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but reads as infinity, which no store accepts.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


_CONTAINERS = frozenset({dict, list})


def json_depth_exceeds(value, limit: int, *, text: bytes | str | None = None) -> bool:
    """Whether ``value`` (as parsed from JSON) holds a list or object nested more than ``limit``
    levels deep, walking it level by level.

    With the JSON ``text`` it was parsed from, the walk stops as soon as it has met as many
    containers as the text has ``[`` and ``{``: each container comes from one of them (the others
    are inside strings), so no deeper one is left. A batch of flat messages is then settled
    after its second level, without looking at a single parameter."""
    if text is None:
        openers = None
    elif isinstance(text, str):
        openers = text.count("[") + text.count("{")
    else:
        openers = text.count(b"[") + text.count(b"{")
    level = [value] if type(value) in _CONTAINERS else []
    seen = len(level)
    depth = 1
    while level:
        if depth > limit:
            return True
        if seen == openers:
            return False
        children: list = []
        for item in level:
            children.extend(item.values() if type(item) is dict else item)
        level = [child for child in children if type(child) in _CONTAINERS]
        seen += len(level)
        depth += 1
    return False


def loads_strict(raw: bytes | str, *, what: str = "body"):
    try:
        # orjson reads an integer beyond 64 bits as a float, losing digits: such a body (rare)
        # goes to the standard parser, which keeps it exact.
        value = orjson.loads(raw) if not has_long_number(raw) else _loads_explained(raw, what)
    except orjson.JSONDecodeError:
        # orjson is fast and strict; the standard parser says what is wrong.
        value = _loads_explained(raw, what)
    if json_depth_exceeds(value, settings.MAX_JSON_DEPTH + 1, text=raw):
        raise ParseError(f"{what} is nested deeper than {settings.MAX_JSON_DEPTH} levels")
    return value


def _loads_explained(raw: bytes | str, what: str):
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ParseError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"{what} is not valid JSON: {exc}") from None


class StrictJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        # DRF matches the parser's type against the request's as patterns: */* or application/*
        # would read as JSON. They are Accept values; a body has one concrete type.
        declared = (media_type or "").split(";", 1)[0].strip()
        if "*" in declared:
            raise UnsupportedMediaType(
                declared,
                detail=f"Content-Type {declared[:64]!r} is a pattern (for Accept), not the type of a body; "
                "send the body as JSON with Content-Type: application/json (curl: --json)",
            )
        limit = settings.MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise TooLarge(f"request body is larger than {limit} bytes")
        request = (parser_context or {}).get("request")
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower() if request is not None else ""
        if encoding == "gzip":
            raw = gunzip(raw, limit)
        elif encoding not in ("", "identity"):
            raise UnsupportedMediaType(
                encoding, detail=f"Content-Encoding {encoding[:32]!r} is not supported: send the body as gzip or plain"
            )
        if not raw or raw.isspace():
            raise ParseError("request body is empty; send JSON")
        return loads_strict(raw)


GZIP_MAGIC = b"\x1f\x8b"


def gunzip(raw: bytes, limit: int) -> bytes:
    """A gzip body, decompressed up to ``limit`` bytes (a small body must not inflate without end).

    A body of several gzip members (``gzip(A) + gzip(B)``, valid gzip) is the text ``A + B``;
    anything after the last member that is not another member is refused."""
    parts: list[bytes] = []
    size = 0
    rest = raw
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            # size <= limit here, so the bound is never 0 (which zlib reads as "no bound")
            data = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            where = f" (the member at byte {len(raw) - len(rest)})" if parts else ""
            raise ParseError(
                f"body is not valid gzip{where} ({exc}); send it compressed with gzip or drop Content-Encoding"
            ) from None
        parts.append(data)
        size += len(data)
        if size > limit:
            raise TooLarge(f"request body is larger than {limit} bytes once decompressed")
        if not inflater.eof:
            raise ParseError("gzip body ends before its end of stream: it was cut short")
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if not rest.startswith(GZIP_MAGIC):
            raise ParseError(
                f"gzip body has {len(rest)} bytes after its end of stream (from byte {len(raw) - len(rest)}) "
                "that are not another gzip member: send the compressed data alone"
            )
