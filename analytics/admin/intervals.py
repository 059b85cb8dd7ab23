"""The page of an assignment's stored intervals: newest first, a page at a time, paged by the
last interval shown rather than by an offset (docs/admin.md, "The intervals page")."""

from __future__ import annotations

import json
from typing import Any

from accounts.regional_admin import as_utc
from analytics import selectors
from analytics.engine.interval_fields import INTERVAL_FIELDS
from analytics.models import Assignment

INTERVALS_PER_PAGE = 100


def before_of(text: str | None) -> int | None:
    """The ``before`` of the page's query: the id of the last interval shown, or None for the
    first page (anything that is not an id included)."""
    return int(text) if text and text.isascii() and text.isdigit() else None


def intervals_page(*, assignment: Assignment, before: int | None) -> dict[str, Any]:
    """The intervals of ``assignment`` that begin before interval ``before`` (all when None),
    ``INTERVALS_PER_PAGE`` of them, newest first, as the page's rows: each counter of the
    calculator in a column, the other fields (user fields) as JSON; ``older``, the id to ask
    the next page with, or None on the last page."""
    # An interval's id is its begin in microseconds: the intervals before id ``before`` are
    # those that begin before it (the one at the boundary, if read, is dropped by id).
    page = selectors.intervals_of(
        assignments=[assignment],
        end=None if before is None else before / 1_000_000,
        count=INTERVALS_PER_PAGE + 2,
        reverse=True,
    )
    if before is not None:
        page = [interval for interval in page if interval["id"] < before]
    more = len(page) > INTERVALS_PER_PAGE
    page = page[:INTERVALS_PER_PAGE]
    counters = [counter["name"] for counter in assignment.calculator.counters]
    shown = {*INTERVAL_FIELDS, *counters}
    rows = [
        {
            "id": interval["id"],
            "begin": as_utc(interval["begin"]),
            "end": as_utc(interval["end"]),
            "duration": interval["duration"],
            "timestamp": as_utc(interval["timestamp"]),
            "counters": [interval.get(name) for name in counters],
            "other": json.dumps({key: value for key, value in interval.items() if key not in shown}, ensure_ascii=False)
            if set(interval) - shown
            else "",
        }
        for interval in page
    ]
    return {"counters": counters, "rows": rows, "older": page[-1]["id"] if more else None}
