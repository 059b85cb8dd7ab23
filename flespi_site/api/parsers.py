"""Strict JSON: a size limit (413), no NaN or infinities, a nesting limit, and errors that say
where the problem is."""

from __future__ import annotations

import json
import math

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from flespi_site.errors import TooLarge


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but reads as infinity, which no store accepts.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def json_depth_exceeds(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def loads_strict(raw: bytes | str, *, what: str = "body"):
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ParseError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"{what} is not valid JSON: {exc}") from None
    if json_depth_exceeds(value, settings.MAX_JSON_DEPTH + 1):
        raise ParseError(f"{what} is nested deeper than {settings.MAX_JSON_DEPTH} levels")
    return value


class StrictJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise TooLarge(f"request body is larger than {limit} bytes")
        if not raw.strip():
            raise ParseError("request body is empty; send JSON")
        return loads_strict(raw)
