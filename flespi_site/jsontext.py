"""Fast JSON encoding and decoding that keep integers beyond 64 bits exact, and what in JSON no
store accepts: the one exact JSON codec of stored data (messages, intervals, the outbox, the
shard caches).

orjson is several times faster than the standard module but refuses to encode an integer beyond
64 bits and reads one as a float, losing digits. Encoding falls back to the standard module for
such a value. Such an integer has at least 20 digits (2**64 has 20), so a text without a run of
20 digits is safe for orjson to decode; the rare text with one goes to the standard parser.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# Bytes to "0" for digits and " " for the rest: a run of 20 zeros in the translation is a number
# of 20 or more digits.
_DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_NUMBER = b"0" * 20


def has_long_number(text: bytes | str) -> bool:
    data = text.encode() if isinstance(text, str) else text
    return data.translate(_DIGITS).find(_LONG_NUMBER) >= 0


def dumps_exact(value: Any) -> bytes:
    """Compact JSON (UTF-8, no spaces: the form ``devices.storage``'s merge reads stamps from) of a
    value without NaN or infinity (``unstorable`` refuses them on input). A value with an integer
    beyond 64 bits goes to the standard encoder, which then raises ValueError for a NaN or
    infinity beside it rather than write text no store accepts."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def loads_exact(text: bytes | str) -> Any:
    """Decode JSON that is known to be valid (stored by the platform)."""
    if len(text) >= 20 and has_long_number(text):
        return json.loads(text)
    return orjson.loads(text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (JSON's ``\\ud800`` escapes make them), which UTF-8
    cannot encode."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def unstorable(value: Any) -> str | None:
    """What in a JSON value, at any depth, no store accepts, or None: PostgreSQL's jsonb and text
    refuse NUL characters, UTF-8 cannot encode a lone surrogate (in strings and in object keys),
    and JSON has no NaN or infinity. The one walker for every input that is stored."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "NUL characters (\\u0000)"
            if not item.isascii():
                surrogate = _SURROGATE.search(item)
                if surrogate is not None:
                    return f"surrogate characters (U+{ord(surrogate.group()):04X})"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "non-finite numbers"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None
