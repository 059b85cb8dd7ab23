"""The bridge between stored rows and the analytics engine: the only module that turns messages
read from PostgreSQL into engine types.

On-demand calculation (``calculate_stored``) reads a device's messages for a time range by column
(``analytics.blocks``: its message blocks, and the rows no block covers), only the parameters the
calculator reads, and runs the engine over them; nothing is stored.
"""

from __future__ import annotations

import math

from analytics import blocks, stored_columns
from analytics.engine import Calculator, IntervalList, Messages, calculate
from devices.models import Device
from flespi_site.errors import ErrorKind, InvalidInput, TooLarge

# One on-demand call reads at most this many messages (about a second of work: the columnar read
# and the engine run at over a million messages a second) and spans at most this much time. A
# longer history is calculated in parts, or by an assignment that keeps its intervals stored.
MAX_ON_DEMAND_MESSAGES = 1_000_000
MAX_ON_DEMAND_SPAN = 366 * 86400  # seconds


def calculate_stored(
    *, device: Device, calculator: Calculator, begin: float, end: float, now: float | None = None
) -> IntervalList:
    """The intervals of ``calculator`` over the device's stored messages with
    ``begin <= timestamp <= end`` (unix seconds, inclusive, as the messages API reads them).
    Raises ``InvalidInput`` for a bad range and ``TooLarge`` when the range holds more than
    ``MAX_ON_DEMAND_MESSAGES`` messages."""
    low, high = _range_of(begin, end)
    found = stored_columns.messages_count(
        device=device, begin=low, end=high, limit=MAX_ON_DEMAND_MESSAGES + 1
    )
    if found > MAX_ON_DEMAND_MESSAGES:
        raise TooLarge(
            f"more than {MAX_ON_DEMAND_MESSAGES:,} messages between begin and end: narrow begin/end "
            "and calculate the range in parts",
            kind=ErrorKind.TOO_MANY_MESSAGES,
            limit=MAX_ON_DEMAND_MESSAGES,
        )
    return calculate(
        messages_stored(device=device, begin=low, end=high, parameters=calculator.parameters),
        calculator,
        now=now,
    )


def messages_stored(*, device: Device, begin: int, end: int, parameters: frozenset[str] | None) -> Messages:
    """The device's messages with ``begin <= ts <= end`` (microseconds) as engine ``Messages``
    holding ``parameters`` (``None``: every parameter): from the device's message blocks, and
    from its rows where no block covers them (``analytics.blocks``)."""
    return blocks.messages_block(
        alias=device.database, device_id=device.pk, begin=begin, end=end, names=parameters
    ).to_messages()


def _range_of(begin: float, end: float) -> tuple[int, int]:
    for name, value in (("begin", begin), ("end", end)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidInput(
                f"{name} must be unix seconds (a non-negative number), got {value!r}", field=name
            )
    if begin > end:
        raise InvalidInput(f"begin ({begin}) is after end ({end})", field="begin")
    if end - begin > MAX_ON_DEMAND_SPAN:
        raise InvalidInput(
            f"begin..end spans {end - begin:,.0f} s, more than {MAX_ON_DEMAND_SPAN:,} s ({MAX_ON_DEMAND_SPAN // 86400} days)"
            " for one on-demand calculation: narrow begin/end and calculate the range in parts",
            kind=ErrorKind.RANGE_TOO_LONG,
            field="end",
            limit=MAX_ON_DEMAND_SPAN,
        )
    return round(begin * 1_000_000), round(end * 1_000_000)
