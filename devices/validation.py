"""Validation of messages, with no Django import: the ingestion service checks every message with
``message_prepare``, and the file importers read timestamps with ``parse_timestamp``.

What a stored message must be (docs/messages.md, "Ingestion"): a JSON object with a
``timestamp`` (unix seconds or ISO 8601, UTC when it names no offset; not negative, at most
``MAX_FUTURE_SECONDS`` ahead), parameter names that are non-empty, at most ``MAX_KEY_LENGTH``
characters and free of control characters, and no value that a store refuses (see
``flespi_site.jsontext.unstorable``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from devices.constants import MAX_FUTURE_SECONDS, MAX_KEY_LENGTH
from flespi_site.jsontext import has_surrogate, unstorable


class MessageError(ValueError):
    """One message of a batch is invalid; the reason names the field."""


_valid_keys: set[str] = set()


def _check_key(key: Any) -> None:
    if key in _valid_keys:
        return
    if not isinstance(key, str) or not key:
        raise MessageError("parameter names must be non-empty strings")
    if len(key) > MAX_KEY_LENGTH:
        raise MessageError(f"parameter name {key[:32]!r}… is longer than {MAX_KEY_LENGTH} characters")
    if any(ord(ch) < 32 for ch in key):
        raise MessageError(f"parameter name {key!r} contains control characters")
    if has_surrogate(key):
        raise MessageError(f"parameter name {key!r} contains a lone surrogate, which UTF-8 cannot encode")
    if len(_valid_keys) < 100_000:
        _valid_keys.add(key)


def parse_timestamp(value: Any) -> float:
    """Unix seconds from a number or an ISO 8601 string (UTC when it names no offset), not
    negative; not rounded."""
    if isinstance(value, bool):
        raise MessageError("timestamp must be unix seconds or an ISO 8601 string, not a boolean")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float, which JSON allows
            raise MessageError("timestamp is out of range") from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise MessageError(f"timestamp {value[:40]!r} is not unix seconds or ISO 8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        number = moment.timestamp()
    else:
        raise MessageError("timestamp must be unix seconds or an ISO 8601 string")
    if not math.isfinite(number) or number < 0:
        raise MessageError(f"timestamp {value!r} is out of range")
    return number


def message_prepare(raw: Any, *, now: float) -> tuple[int, dict]:
    """Validate one message; returns its time in microseconds and a body with a float
    ``timestamp`` (reception keys are stamped by the caller)."""
    if raw.__class__ is not dict and not isinstance(raw, dict):
        raise MessageError("a message must be a JSON object")
    if "timestamp" not in raw:
        raise MessageError("timestamp is required")
    seconds = raw["timestamp"]
    kind = seconds.__class__
    # Unix seconds in range, the common case, need no more than the comparison (NaN fails it).
    if not ((kind is float or kind is int) and 0 <= seconds <= now + MAX_FUTURE_SECONDS):
        seconds = parse_timestamp(seconds)
        if seconds > now + MAX_FUTURE_SECONDS:
            raise MessageError(f"timestamp {seconds:.0f} is more than {MAX_FUTURE_SECONDS} s in the future")
    ts = round(seconds * 1_000_000)
    body = dict(raw)
    body["timestamp"] = ts / 1_000_000
    if not _valid_keys.issuperset(body):  # a name not seen before: check everything in order
        _check_body(body)
        return ts, body
    for value in body.values():
        kind = type(value)
        if kind is float:
            if value - value:  # NaN or infinite
                _check_body(body)
        elif kind is str:
            if "\x00" in value or has_surrogate(value):
                _check_body(body)
        elif (kind is dict or kind is list) and unstorable(value) is not None:
            _check_body(body)
    return ts, body


def _check_body(body: dict) -> None:
    """Raise the first problem of ``body``'s names and values, in their order."""
    for key, value in body.items():
        _check_key(key)
        kind = type(value)
        if kind is str:
            if "\x00" in value:
                raise MessageError(f"{key}: string values may not contain the NUL character")
            if has_surrogate(value):
                raise MessageError(f"{key}: a lone surrogate (\\ud800-\\udfff) in the string cannot be stored")
        elif kind is float:
            if not math.isfinite(value):
                raise MessageError(f"{key} is not a finite number")
        elif (kind is dict or kind is list) and unstorable(value) is not None:
            # jsonb cannot hold NUL and UTF-8 no lone surrogate; refusing them here keeps the rest
            # of the batch storable.
            raise MessageError(
                f"{key}: nested values may not contain NUL characters, lone surrogates or non-finite numbers"
            )
