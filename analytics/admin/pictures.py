"""What an assignment's page draws: the intervals of every assignment of its device on a
timeline, and a chosen interval with its route on a map (docs/admin.md, "Pictures")."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from accounts.regional_admin import as_utc
from analytics import selectors
from analytics.admin.common import DAY, MAX_TIMELINE_INTERVALS
from analytics.engine.interval_fields import INTERVAL_FIELDS
from analytics.models import Assignment
from devices import selectors as device_selectors
from devices.admin import HasPosition

TIMELINE_DAYS = 7  # the default range of the timeline: the week ending with the newest interval
MAX_TIMELINE_DAYS = 62
MAX_ROUTE_POINTS = 50_000  # positions of an interval drawn from its messages
BASE_FIELDS = frozenset(INTERVAL_FIELDS)


def _day(text: str, *, field: str) -> float:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a date (2019-02-18)") from None


def timeline_range(query, *, newest: float | None) -> tuple[float, float]:
    """The days a timeline shows, [begin, end) in unix seconds: ``from``..``to`` (UTC dates,
    inclusive), by default the ``TIMELINE_DAYS`` ending with the day of ``newest``; ``ValueError``
    naming the field that is wrong."""
    begin = _day(query["from"], field="from") if query.get("from") else None
    if query.get("to"):
        end = _day(query["to"], field="to") + DAY
    elif begin is not None:
        end = begin + TIMELINE_DAYS * DAY
    else:
        newest = dt.datetime.now(dt.UTC).timestamp() if newest is None else newest
        end = (newest // DAY + 1) * DAY
    if begin is None:
        begin = end - TIMELINE_DAYS * DAY
    if begin >= end:
        raise ValueError(f"from: {as_utc(begin)[:10]} is after to {as_utc(end - DAY)[:10]}")
    if end - begin > MAX_TIMELINE_DAYS * DAY:
        raise ValueError(f"to: the timeline shows at most {MAX_TIMELINE_DAYS} days")
    return begin, end


def device_timeline(*, assignment: Assignment, begin: float, end: float) -> dict[str, Any]:
    """The intervals of every assignment of the assignment's device between ``begin`` and
    ``end``, as timeline bars: one lane per assignment, the calculator's name on it."""
    siblings = list(
        Assignment.objects.using(assignment.database)
        .filter(device_id=assignment.device_id)
        .select_related("calculator")
        .order_by("calculator_id")
    )
    lane_of = {(sibling.calculator_id, sibling.device_id): sibling.pk for sibling in siblings}
    intervals = selectors.intervals_of(
        assignments=siblings, begin=begin, end=end - 1e-6, count=MAX_TIMELINE_INTERVALS
    )
    shown = Counter(interval["calc_id"] for interval in intervals)
    return {
        "lanes": [
            {
                "key": sibling.pk,
                "name": f"{sibling.calculator}{' (this assignment)' if sibling.pk == assignment.pk else ''}",
                "calculator": sibling.calculator_id,
            }
            for sibling in siblings
        ],
        "bars": [
            {
                "id": interval["id"],
                "begin": interval["begin"],
                "end": interval["end"],
                "lane": lane_of[(interval["calc_id"], interval["device_id"])],
            }
            for interval in intervals
        ],
        "full": [sibling.pk for sibling in siblings if shown[sibling.calculator_id] >= MAX_TIMELINE_INTERVALS],
    }


def interval_picture(*, assignment: Assignment, interval: dict) -> dict[str, Any]:
    """A stored interval as its assignment's page shows it: counters, user fields, and its route
    (the encoded polyline of the calculator's ``route`` counter, else the positions of its
    messages)."""
    counters = assignment.calculator.counters
    names = [counter["name"] for counter in counters]
    route_names = [counter["name"] for counter in counters if counter["type"] == "route"]
    route = next(
        (interval[name] for name in route_names if isinstance(interval.get(name), str) and interval[name]), None
    )
    points = None
    if route is None:
        messages = device_selectors.messages_matching(
            devices=[assignment.device],
            begin=interval["begin"],
            end=interval["end"],
            count=MAX_ROUTE_POINTS,
            reverse=False,
            condition=HasPosition(),
        )
        points = [[message["position.latitude"], message["position.longitude"]] for message in messages]
    return {
        "id": interval["id"],
        "assignment": assignment.pk,
        "calculator": str(assignment.calculator),
        "begin": interval["begin"],
        "end": interval["end"],
        "duration": interval["duration"],
        "timestamp": interval.get("timestamp"),
        "counters": [[name, interval.get(name)] for name in names if name not in route_names],
        "user": [[key, value] for key, value in interval.items() if key not in BASE_FIELDS and key not in names],
        "route": route,
        "route_counter": route_names[0] if route is not None else None,
        "points": points,
    }
