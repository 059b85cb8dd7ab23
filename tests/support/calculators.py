"""Calculator configurations the tests share."""

from __future__ import annotations

TRIPS = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5", "max_inactive": 60}],
    "counters": [
        {"name": "max_speed", "type": "expression", "expression": "position.speed", "method": "maximum"},
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
    ],
}
