"""Rollup configurations and calendar periods: the periods split timestamps exactly as the datetime
selector does (``timeutil.period_keys``), DST included; every problem of a configuration is named
at its path."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.engine.rollups import RollupError, compile_rollup, period_bounds, range_problems
from analytics.engine.timeutil import period_keys, zone

CASES = [
    ("UTC", "day", 1_699_920_000.0, 40),
    ("Europe/Berlin", "day", 1_711_000_000.0, 60),  # over the spring change
    ("Europe/Berlin", "hour", 1_729_980_000.0, 1),  # the repeated hour of the autumn change
    ("America/Santiago", "day", 1_712_000_000.0, 20),  # a change at midnight
    ("Asia/Kathmandu", "hour", 1_700_000_000.0, 2),  # +05:45
    ("Australia/Lord_Howe", "hour", 1_712_400_000.0, 1),  # a half-hour change
    ("Europe/Berlin", "week", 1_700_000_000.0, 200),
    ("Pacific/Auckland", "month", 1_690_000_000.0, 400),
    ("America/New_York", "year", 1_600_000_000.0, 1500),
]


@pytest.mark.parametrize(("timezone", "split", "begin", "days"), CASES)
def test_periods_split_as_the_datetime_selector(timezone, split, begin, days):
    end = begin + days * 86400
    bounds = period_bounds(begin=begin, end=end, timezone=timezone, split=split, limit=10_000)
    assert bounds is not None
    assert bounds[0] <= begin < bounds[1] and bounds[-2] < end <= bounds[-1]
    edges = np.array(bounds)
    rng = np.random.default_rng(1)
    stamps = np.sort(np.concatenate([rng.uniform(begin, end, 5000), edges[:-1], edges[1:] - 0.001]))
    stamps = stamps[(stamps >= begin) & (stamps < end)]
    period = np.searchsorted(edges, stamps, side="right") - 1
    keys = period_keys(stamps, zone(timezone), split)
    # The same partition: one key per period, one period per key.
    assert len(set(zip(period.tolist(), keys.tolist(), strict=True))) == len(set(period.tolist())) == len(set(keys.tolist()))


def test_hand_computed_periods():
    # 2024-03-31 in Berlin lasts 23 hours; 2024-10-27 has 02:00 twice, two hour periods.
    march_31 = 1_711_839_600.0
    assert period_bounds(begin=march_31, end=march_31 + 1, timezone="Europe/Berlin", split="day", limit=10) == [
        march_31, march_31 + 23 * 3600
    ]
    fall = 1_729_987_200.0  # 02:00 CEST
    assert period_bounds(begin=fall, end=fall + 7200, timezone="Europe/Berlin", split="hour", limit=10) == [
        fall, fall + 3600, fall + 7200
    ]
    monday = 1_699_833_600.0  # 2023-11-13 00:00 UTC, a Monday
    assert period_bounds(begin=monday + 3 * 86400, end=monday + 8 * 86400, timezone="UTC", split="week",
                         limit=10) == [monday, monday + 7 * 86400, monday + 14 * 86400]
    assert period_bounds(begin=monday, end=monday + 100 * 86400, timezone="UTC", split="day", limit=99) is None


def _problems(config):
    with pytest.raises(RollupError) as caught:
        compile_rollup(config)
    return {(problem.path, problem.message) for problem in caught.value.problems}


def test_configuration_problems_at_their_paths():
    problems = _problems({
        "selectors": [{"type": "datetime", "split": "fortnight", "max_inactive": 5}],
        "timezone": "Mars/Olympus",
        "counters": [
            {"name": "a", "type": "median", "field": "km"},
            {"name": "a", "type": "sum"},
            {"name": "end", "type": "count"},
            {"name": "b", "type": "first", "field": "id", "method": "x"},
            "km",
        ],
    })
    assert {path for path, _ in problems} == {
        "selectors[0].split", "selectors[0].max_inactive", "timezone", "counters[0].type", "counters[1].name",
        "counters[1].field", "counters[2].name", "counters[3].field", "counters[3].method", "counters[4]",
    }
    assert ("counters[0].type", "must be one of summary, minimum, maximum, average, first, last, count") in problems
    assert {path for path, _ in _problems({"selectors": [], "counters": []})} == {"selectors", "counters"}


def test_aliases_and_fields():
    rollup = compile_rollup({"selectors": [{"type": "datetime", "split": "week"}], "counters": [
        {"name": "km", "type": "sum", "field": "km"}, {"name": "n", "type": "count"},
        {"name": "top", "type": "max", "field": "speed"}, {"name": "d", "type": "avg", "field": "duration"},
    ]})
    assert [(c.type, c.field) for c in rollup.counters] == [
        ("summary", "km"), ("count", None), ("maximum", "speed"), ("average", "duration")
    ]
    assert rollup.split == "week" and rollup.timezone is None and rollup.fields == ["km", "speed", "duration"]
    assert [problem.path for problem in rollup.unknown_fields(["km"])] == ["counters[2].field"]


def test_range_problems():
    assert range_problems(10.0, 20.0) == []
    assert [problem.path for problem in range_problems(20.0, 10.0)] == ["from"]
    assert [problem.path for problem in range_problems(10.0, 1e12)] == ["to"]
