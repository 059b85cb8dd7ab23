"""Rollups: counters over stored intervals per calendar period (docs/analytics.md, "Rollups").

A rollup is configured like a calculator's slice of one: one ``datetime`` selector (its
``split``), a ``timezone``, and ``counters``, each ``{"name", "type", "field"}`` reducing one
field of the intervals of a period. This module validates that configuration (``compile_rollup``,
every problem with its path) and computes the calendar periods of a range (``period_bounds``),
cut exactly where the ``datetime`` selector cuts (``timeutil.period_keys``). The reduction itself
runs where the intervals are (``analytics.storage.intervals_rollup``). No Django here.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from .calculator import SPLITS
from .checks import Checker
from .counters import METHOD_ALIASES
from .errors import CalculatorError, Problem
from .interval_fields import ENGINE_FIELDS, OWNER_FIELDS
from .timeutil import MAX_TS, MIN_TS, period_keys, zone

# Reductions of a field over the intervals of a period: the calculator's method names (and their
# aliases, ``sum``, ``min``, ``max``, ``avg``) and ``count``. ``average`` weighs each interval by
# its duration. Only ``count`` may go without a field (then it counts intervals).
ROLLUP_TYPES = ("summary", "minimum", "maximum", "average", "first", "last", "count")
# The interval fields a rollup may read besides the calculator's counters: the stored columns of
# the engine's fields after the id (begin, end, duration).
ROLLUP_COLUMNS = ENGINE_FIELDS[1:]
# Names a rollup counter may not take: the fields of each answered period.
ROLLUP_RESERVED = ("begin", "end", *OWNER_FIELDS)
MAX_ROLLUP_COUNTERS = 64
# The longest a period of each split can be (a DST change lengthens a local day by an hour).
_LONGEST = {"hour": 3600, "day": 25 * 3600, "week": 7 * 86400 + 3600, "month": 31 * 86400 + 3600,
            "year": 366 * 86400 + 3600}
# Every UTC offset in use is a whole number of quarter hours, and so is every instant at which one
# changes: local hours begin on this grid.
_GRID = 900


class RollupError(CalculatorError):
    """A rollup configuration with problems; ``problems`` lists every one of them."""


@dataclass(frozen=True)
class RollupCounter:
    name: str
    type: str  # one of ROLLUP_TYPES
    field: str | None  # None: count the intervals


@dataclass(frozen=True)
class Rollup:
    """A validated rollup: ``split`` (one of ``SPLITS``), ``timezone`` (None: each calculator's
    own) and the counters."""

    split: str
    timezone: str | None
    counters: tuple[RollupCounter, ...]

    @property
    def fields(self) -> list[str]:
        """The interval fields the counters read, each once, in order of first use."""
        return list(dict.fromkeys(counter.field for counter in self.counters if counter.field is not None))

    def unknown_fields(self, known: Collection[str]) -> list[Problem]:
        """A problem for each counter reading a field that neither the stored columns nor
        ``known`` (a calculator's counter names) hold."""
        return [
            Problem(f"counters[{index}].field", f"unknown interval field {counter.field!r}: "
                    f"use begin, end, duration or a counter of the calculator")
            for index, counter in enumerate(self.counters)
            if counter.field is not None and counter.field not in ROLLUP_COLUMNS and counter.field not in known
        ]


def _check_selectors(checker: Checker, selectors) -> str:
    if not isinstance(selectors, list) or len(selectors) != 1:
        checker.add("selectors", 'give one selector: [{"type": "datetime", "split": "day"}]')
        return "day"
    selector = selectors[0]
    if not isinstance(selector, dict):
        checker.add("selectors[0]", "must be an object")
        return "day"
    checker.unknown(selector, ("type", "name", "split"), "selectors[0]")
    kind = checker.string(selector, "type", "selectors[0]", required=True)
    if kind is not None and kind != "datetime":
        checker.add("selectors[0].type", "a rollup splits by time only: must be datetime")
    checker.string(selector, "name", "selectors[0]")
    return checker.string(selector, "split", "selectors[0]", required=True, choices=SPLITS) or "day"


def _check_counter(checker: Checker, counter, path: str, names: set[str]) -> RollupCounter | None:
    if not isinstance(counter, dict):
        checker.add(path, "must be an object")
        return None
    before = len(checker.problems)
    checker.unknown(counter, ("name", "type", "field"), path)
    name = checker.string(counter, "name", path, required=True)
    if name is not None:
        if name in ROLLUP_RESERVED:
            checker.add(f"{path}.name", f"{name!r} is a field of every period: choose another name")
        elif name in names:
            checker.add(f"{path}.name", f"another counter is named {name!r}")
        names.add(name)
    raw = counter.get("type")
    kind = checker.string({"type": METHOD_ALIASES.get(raw, raw) if isinstance(raw, str) else raw}, "type", path,
                          required=True, choices=ROLLUP_TYPES)
    field = checker.string(counter, "field", path, required=kind != "count")
    if field is not None and field in (*ENGINE_FIELDS, *OWNER_FIELDS) and field not in ROLLUP_COLUMNS:
        checker.add(f"{path}.field", f"{field!r} is not a value to reduce: use begin, end, duration or a counter")
    if len(checker.problems) > before or name is None or kind is None:
        return None
    return RollupCounter(name, kind, field)


def compile_rollup(config: dict) -> Rollup:
    """The rollup of ``config`` (``selectors``, ``counters``, optional ``timezone``); a
    ``RollupError`` naming every problem at its path otherwise."""
    checker = Checker()
    split = _check_selectors(checker, config.get("selectors"))
    timezone = checker.string(config, "timezone", "")
    if timezone is not None:
        try:
            zone(timezone)
        except Exception:
            checker.add("timezone", f"unknown timezone {timezone!r}")
    raw = config.get("counters")
    counters: list[RollupCounter] = []
    if not isinstance(raw, list) or not raw:
        checker.add("counters", 'give at least one counter: {"name": "km", "type": "summary", "field": "km"}')
    elif len(raw) > MAX_ROLLUP_COUNTERS:
        checker.add("counters", f"at most {MAX_ROLLUP_COUNTERS} counters")
    else:
        names: set[str] = set()
        for index, counter in enumerate(raw):
            compiled = _check_counter(checker, counter, f"counters[{index}]", names)
            if compiled is not None:
                counters.append(compiled)
    if checker.problems:
        raise RollupError(checker.problems)
    return Rollup(split=split, timezone=timezone, counters=tuple(counters))


def range_problems(begin: float, end: float) -> list[Problem]:
    """What is wrong with ``begin``..``end`` as the range of a rollup (``end`` excluded)."""
    problems = []
    for name, moment in (("from", begin), ("to", end)):
        if not (MIN_TS <= moment <= MAX_TS):
            problems.append(Problem(name, "beyond the calendar (year 9998)"))
    if not problems and begin >= end:
        problems.append(Problem("from", "must be before to"))
    return problems


def period_bounds(*, begin: float, end: float, timezone: str, split: str, limit: int) -> list[float] | None:
    """The calendar periods of ``split`` in ``timezone`` that hold ``[begin, end)``, as their
    boundaries ``b[0] <= begin < b[1] < ... < b[n]`` with ``b[n-1] < end <= b[n]`` (unix seconds;
    period ``i`` is ``[b[i], b[i+1])``). The periods are the ``datetime`` selector's: a timestamp
    is in period ``i`` exactly when ``period_keys`` gives it the key of ``b[i]``. None when there
    are more than ``limit`` periods."""
    if (end - begin) / _LONGEST[split] > limit:
        return None
    tz = zone(timezone)
    bounds: list[float] | None
    if split == "hour":
        bounds = _hour_bounds(begin, end, tz)
    else:
        bounds = _calendar_bounds(begin, end, tz, split, limit)
    if bounds is None or len(bounds) - 1 > limit:
        return None
    return bounds


def _calendar_bounds(begin: float, end: float, tz, split: str, limit: int) -> list[float] | None:
    day = datetime.fromtimestamp(begin, tz).date()
    if split == "week":
        day -= timedelta(days=day.weekday())  # ISO weeks, from Monday, as period_keys counts them
    elif split == "month":
        day = day.replace(day=1)
    elif split == "year":
        day = date(day.year, 1, 1)
    bounds = [_midnight(day, tz)]
    while bounds[-1] < end:
        if len(bounds) > limit + 1:
            return None
        following = _next(day, split)
        if following is None:
            bounds.append(math.inf)
            break
        day = following
        bounds.append(_midnight(day, tz))
    return bounds


def _next(day: date, split: str) -> date | None:
    try:
        if split == "day":
            return day + timedelta(days=1)
        if split == "week":
            return day + timedelta(days=7)
        if split == "month":
            return date(day.year + day.month // 12, day.month % 12 + 1, 1)
        return date(day.year + 1, 1, 1)
    except (OverflowError, ValueError):  # past year 9999: the last period has no end
        return None


def _midnight(day: date, tz) -> float:
    # fold=0: a midnight that the clocks skip is the instant they skip it at (the first instant of
    # that date), one they pass twice is the first time.
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def _hour_bounds(begin: float, end: float, tz) -> list[float]:
    # The local hour changes only on the quarter-hour grid: the instants of the grid around the
    # range where period_keys changes are the boundaries (a DST fall-back's repeated hour is two).
    first = math.floor(begin / _GRID) * _GRID - 2 * 3600
    grid = np.arange(first, end + 2 * 3600 + _GRID, _GRID, dtype=np.float64)
    keys = period_keys(grid, tz, "hour")
    starts = grid[1:][keys[1:] != keys[:-1]]
    low = int(np.searchsorted(starts, begin, side="right")) - 1
    high = int(np.searchsorted(starts, end, side="left"))
    return starts[low:high + 1].tolist()
