"""Columnar messages: construction, merging equal timestamps, and the same results as dicts."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.engine import Messages, calculate


def test_from_dicts_sorts_and_merges_equal_timestamps():
    m = Messages.from_dicts(
        [
            {"timestamp": 2, "a": 1},
            {"timestamp": 1, "a": 5, "b": "x"},
            {"timestamp": 2, "b": "y"},
        ]
    )
    assert m.to_dicts() == [{"timestamp": 1.0, "a": 5, "b": "x"}, {"timestamp": 2.0, "a": 1, "b": "y"}]


def test_from_dicts_refuses_bad_timestamps():
    with pytest.raises(ValueError):
        Messages.from_dicts([{"timestamp": "2024-01-01"}])
    with pytest.raises(ValueError):
        Messages.from_dicts([{"v": 1}])


def test_from_columns_masks_and_types():
    m = Messages.from_columns(
        [1.0, 2.0, 3.0],
        {
            "speed": np.array([1.0, np.nan, 3.0]),
            "ign": np.array([True, False, True]),
            "n": (np.array([1, 2, 3]), np.array([True, True, False])),
            "name": np.array(["a", "b", "c"], dtype=object),
        },
    )
    assert m.to_dicts() == [
        {"timestamp": 1.0, "speed": 1.0, "ign": True, "n": 1, "name": "a"},
        {"timestamp": 2.0, "ign": False, "n": 2, "name": "b"},
        {"timestamp": 3.0, "speed": 3.0, "ign": True, "name": "c"},
    ]
    with pytest.raises(ValueError):
        Messages.from_columns([2.0, 1.0], {})


def test_columnar_and_dict_input_give_the_same_intervals():
    rng = np.random.default_rng(2)
    n = 2000
    ts = 1.7e9 + np.cumsum(rng.integers(1, 60, n)).astype(float)
    speed = rng.choice([0.0, 2.0, 20.0, 50.0, np.nan], n)
    m = Messages.from_columns(
        ts,
        {
            "speed": speed,
            "position.latitude": 50 + rng.random(n) * 0.1,
            "position.longitude": 10 + rng.random(n) * 0.1,
        },
    )
    calc = {
        "name": "t",
        "selectors": [
            {"type": "expression", "expression": "speed > 5", "merge_unknown": True, "max_inactive": 120}
        ],
        "counters": [
            {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
            {"name": "route", "type": "route"},
            {"name": "vmax", "type": "parameter", "parameter": "speed", "method": "maximum"},
        ],
    }
    assert list(calculate(m, calc)) == list(calculate(m.to_dicts(), calc))
