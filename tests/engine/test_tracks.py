"""Real tracks (tests/data/tracks): speeds derived by the importer (each point takes the segment
to the next one), then a trips calculator and a parkings calculator. The figures asserted here
were checked against the point listings by eye (docs/engine.md, "Real tracks")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from analytics.engine import MemoryStore, calculate, compile_calculator
from analytics.examples import TRIPS
from tests.support.engine import load_gpx

PARKINGS = {
    "name": "parkings",
    # The point where a vehicle stops holds the standing speed until the point where it moves
    # off, which only merge_message_after brings into the parking.
    "selectors": [
        {
            "type": "expression",
            "expression": "position.speed < 3",
            "merge_message_after": True,
            "min_duration": 10,
        }
    ],
    "counters": [
        {"name": "lat", "type": "parameter", "parameter": "position.latitude", "method": "first"},
        {"name": "lon", "type": "parameter", "parameter": "position.longitude", "method": "first"},
    ],
}


def hms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def test_bus_stops_at_many_stops():
    bus = load_gpx("bus-304-limerick-2019-02-18.gpx")
    assert len(bus) == 2144
    parkings = calculate(bus, PARKINGS)
    assert len(parkings) == 41
    # The wait at the first stop before departure, and the longest stops on the way.
    assert (hms(parkings[0]["begin"]), round(parkings[0]["duration"])) == ("07:45:57", 247)
    longest = sorted(parkings, key=lambda p: -p["duration"])[:4]
    assert [(hms(p["begin"]), round(p["duration"])) for p in longest] == [
        ("07:45:57", 247),
        ("08:35:29", 205),
        ("08:40:16", 164),
        ("08:13:16", 136),
    ]
    # Every stop is on the route, inside the bounding box of the track.
    lats = [m["position.latitude"] for m in bus]
    lons = [m["position.longitude"] for m in bus]
    assert all(min(lats) <= p["lat"] <= max(lats) and min(lons) <= p["lon"] <= max(lons) for p in parkings)
    # Without merge_message_after a stop where the logger recorded one point is a single message.
    plain = {**PARKINGS, "selectors": [{**PARKINGS["selectors"][0], "merge_message_after": False}]}
    assert len(calculate(bus, plain)) == 22


@pytest.mark.parametrize(
    ("track", "standing"), [("bus-304-limerick-2019-02-18.gpx", 2180.0), ("car-around-visnjan.gpx", 264.0)]
)
def test_parkings_and_duration_counters_agree(track, standing):
    """The speeds and the counters tell the same story: the parkings (every length) cover
    exactly the time a duration counter counts as standing."""
    messages = load_gpx(track)
    whole = {
        "name": "whole",
        "selectors": [{"type": "expression", "expression": "true"}],
        "counters": [
            {
                "name": "standing",
                "type": "expression",
                "expression": "position.speed < 3",
                "method": "duration",
            }
        ],
    }
    (everything,) = calculate(messages, whole)
    assert everything["standing"] == standing
    every_length = {**PARKINGS, "selectors": [{**PARKINGS["selectors"][0], "min_duration": 0}]}
    assert sum(p["duration"] for p in calculate(messages, every_length)) == standing


def test_bus_journey_is_one_trip_of_about_14_km():
    bus = load_gpx("bus-304-limerick-2019-02-18.gpx")
    trips = calculate(bus, {**TRIPS, "selectors": [{**TRIPS["selectors"][0], "max_inactive": 300}]})
    assert len(trips) == 1
    (trip,) = trips
    # Leaves when the 247 s wait at the first stop (07:45:57-07:50:04) ends; the track ends
    # on the move at 09:00:26.
    assert (hms(trip["begin"]), hms(trip["end"])) == ("07:50:04", "09:00:26")
    assert trip["mileage"] == pytest.approx(14.14, abs=0.01)  # of 14.19 km for the whole track
    assert trip["max_speed"] == pytest.approx(59.4, abs=0.1)
    # Standing gaps the logger did not record count as standing, not as moving.
    assert trip["moving"] == pytest.approx(1954, abs=1)
    assert len(trip["route"]) == 4317
    # Without joining across stops, the journey is cut at every stop longer than a minute.
    legs = calculate(bus, TRIPS)
    assert len(legs) == 12
    assert (hms(legs[-3]["end"]), hms(legs[-2]["begin"])) == (
        "08:40:14",
        "08:43:00",
    )  # the 164 s stop from 08:40:16
    assert sum(t["mileage"] for t in legs) == pytest.approx(13.81, abs=0.01)


def test_car_two_trips_around_a_two_minute_halt():
    car = load_gpx("car-around-visnjan.gpx")
    assert len(car) == 104
    trips = calculate(car, TRIPS)
    assert [(hms(t["begin"]), hms(t["end"])) for t in trips] == [
        ("06:16:43", "06:19:37"),
        ("06:21:37", "06:22:40"),
    ]
    assert [round(t["mileage"], 2) for t in trips] == [2.06, 0.61]  # of 2.73 km for the whole track
    assert [round(t["max_speed"], 1) for t in trips] == [93.6, 45.3]
    parkings = calculate(car, PARKINGS)
    assert [(hms(p["begin"]), round(p["duration"])) for p in parkings] == [
        ("06:16:00", 43),
        ("06:19:39", 118),
        ("06:22:41", 103),
    ]


def test_track_replayed_message_by_message_matches_full():
    """The car track arriving one message at a time, recalculated by windows, ends where the full
    calculation is, with the last interval active only while it reaches the newest message."""
    car = load_gpx("car-around-visnjan.gpx")
    calc = compile_calculator({**TRIPS, "counters": [*TRIPS["counters"], {"name": "open", "type": "active"}]})
    store = MemoryStore([], [])
    for k in range(len(car)):
        store.set_messages(car[: k + 1])
        t = car[k]["timestamp"]
        store.apply(store.recalculate(calc, dirty_begin=t, dirty_end=t))
    assert store.intervals == list(calculate(car, calc))
