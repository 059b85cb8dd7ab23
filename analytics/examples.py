"""Calculator configurations shared by the real-track checks (tests/engine/test_tracks.py,
docs/engine.md "Real tracks, checked by eye") and the demo (``analytics.demo``). Plain data: no
Django, so that the engine's tests can use it."""

from __future__ import annotations

from typing import Any

# Trips: moving above 5 km/h, stops under a minute joined, noise under 10 s and trips under 30 s
# dropped; mileage, speeds, moving time and the route.
TRIPS: dict[str, Any] = {
    "name": "trips",
    "selectors": [
        {
            "type": "expression",
            "expression": "position.speed > 5",
            "merge_unknown": True,
            "min_active": 10,
            "max_inactive": 60,
            "min_duration": 30,
        }
    ],
    "counters": [
        {"name": "mileage", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "max_speed", "type": "parameter", "parameter": "position.speed", "method": "maximum"},
        {"name": "avg_speed", "type": "parameter", "parameter": "position.speed", "method": "average"},
        {"name": "moving", "type": "expression", "expression": "position.speed > 10", "method": "duration"},
        {"name": "route", "type": "route"},
    ],
}
