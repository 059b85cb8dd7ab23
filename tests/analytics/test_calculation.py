"""On-demand calculation over stored messages (``analytics.calculation.calculate_stored``) and
the columnar reader under it (``analytics.stored_columns``), against ``analytics.engine.calculate`` over
the same messages read as dicts the way the messages API reads them."""

from __future__ import annotations

import pytest

from analytics import blocks, calculation, stored_columns
from analytics.calculation import calculate_stored
from analytics.engine import calculate, compile_calculator
from devices import importers, selectors
from devices.services import device_create, messages_ingest
from flespi_site.errors import InvalidInput, TooLarge
from tests.engine import test_tracks

pytestmark = pytest.mark.django_db(databases="__all__")

TRACKS = importers.__file__.rsplit("/devices/", 1)[0] + "/tests/data/tracks/"
T0 = 1_700_000_000.0

# The trips calculator of the real-track tests, with a gap rule.
TRIPS = {
    **test_tracks.TRIPS,
    "selectors": [{**test_tracks.TRIPS["selectors"][0], "max_messages_time_diff": 300}],
}
PARKINGS = {
    "name": "parkings",
    "selectors": [
        {
            "type": "expression",
            "expression": "position.speed < 3",
            "min_duration": 10,
            "merge_message_before": True,
        }
    ],
    "counters": [
        {"name": "lat", "type": "parameter", "parameter": "position.latitude", "method": "first"},
        {"name": "alt", "type": "parameter", "parameter": "position.altitude", "method": "difference"},
    ],
}
DAILY_BERLIN = {
    "name": "hours in Berlin",
    "timezone": "Europe/Berlin",
    "selectors": [{"type": "datetime", "split": "hour"}],
    "counters": [
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "start", "type": "datetime", "interval": "begin", "format": "%Y-%m-%d %H:%M"},
        {"name": "points", "type": "parameter", "parameter": "position.direction", "method": "last"},
    ],
}


@pytest.fixture
def make_device(account):
    made = []

    def make():
        made.append(
            device_create(
                account=account, name=f"unit {len(made)}", configuration={"ident": f"unit-{len(made)}"}
            )
        )
        return made[-1]

    return make


def store(device, messages):
    for start in range(0, len(messages), 50_000):
        result = messages_ingest(devices=[device], messages=messages[start : start + 50_000], source="rest")
        assert not result.errors, result.errors[:3]


def track(name):
    with open(TRACKS + name, "rb") as handle:
        return [
            record.message
            for record in importers.derive_motion(importers.read(handle, format="gpx", name=name))
        ]


def as_dicts(device, begin, end):
    """The messages as GET /gw/devices/{id}/messages?begin=&end= reads them."""
    return selectors.messages_of(devices=[device], begin=begin, end=end, count=None, reverse=False)


def assert_same(device, config, begin, end, now=None):
    calculator = compile_calculator(config)
    expected = calculate(as_dicts(device, begin, end), calculator, now=now)
    got = calculate_stored(device=device, calculator=calculator, begin=begin, end=end, now=now)
    assert got == expected
    assert got.active_id == expected.active_id
    return got


def seal(device, monkeypatch, size: int = 97) -> None:
    """The device's messages in message blocks of ``size`` (the real size wants thousands), the
    newest few left as rows."""
    monkeypatch.setattr(blocks, "BLOCK_SIZE", size)
    assert blocks.device_seal(alias=device.database, device_id=device.pk) > 0


@pytest.mark.parametrize("sealed", [False, True], ids=["rows", "blocks"])
@pytest.mark.parametrize("name", ["bus-304-limerick-2019-02-18.gpx", "car-around-visnjan.gpx"])
@pytest.mark.parametrize("config", [TRIPS, PARKINGS, DAILY_BERLIN], ids=lambda c: c["name"])
def test_real_tracks_give_the_intervals_of_the_engine(make_device, monkeypatch, name, config, sealed):
    device = make_device()
    messages = track(name)
    store(device, messages)
    if sealed:
        seal(device, monkeypatch)
    first, last = messages[0]["timestamp"], messages[-1]["timestamp"]
    whole = assert_same(device, config, first, last)
    assert whole  # every calculator finds intervals on both tracks
    # A range cut inside the track, and the wall clock closing the last interval.
    middle = first + (last - first) / 3
    assert_same(device, config, middle, last, now=last + 3600)


def test_chunks_and_a_track_read_in_many_queries_give_the_same(make_device, monkeypatch):
    device = make_device()
    messages = track("car-around-visnjan.gpx")
    store(device, messages)
    begin, end = messages[0]["timestamp"], messages[-1]["timestamp"]
    whole = calculate_stored(device=device, calculator=compile_calculator(TRIPS), begin=begin, end=end)
    monkeypatch.setattr(stored_columns, "CHUNK_ROWS", 7)
    assert (
        calculate_stored(device=device, calculator=compile_calculator(TRIPS), begin=begin, end=end) == whole
    )
    assert len(whole) == 2


def mixed_messages(*, nested: bool):
    """Parameters of every JSON type, missing in places, null in others, and of mixed types.
    ``nested``: every message also holds a list and an object (its body is parsed whole);
    without, bodies are flat (their values are cut out of the text) and the strings hold
    commas, colons and braces."""
    out = []
    for i in range(60):
        m = {"timestamp": T0 + i * 10 + (0.25 if i % 7 == 0 else 0.0), "speed": float(i % 13) * 4}
        if i % 5:
            m["count"] = i * 3  # ints, missing every fifth message
        m["level"] = i if i % 2 else i + 0.5  # ints and floats
        m["status"] = ["idle", "moving", "stopped"][i % 3]
        m["on"] = i % 4 != 0
        m["maybe"] = None if i % 3 == 0 else i  # null or int
        m["either"] = i if i % 2 else f"s{i}"  # int or string
        m["big"] = 2**70 + i  # beyond 64 bits: stays an exact integer
        m["empty"] = None  # only ever null
        m["flag"] = i % 6 == 0 or None  # true or null
        m["a.speed"] = -i  # a name that ends like another
        m["sp eed ü"] = i / 3
        if nested:
            m["tags"] = [i, i + 1]  # lists of equal length
            m["nested"] = {"a": i, "b": [1, {"c": "x,y}"}]}
        if i % 9 == 0:
            m["text"] = 'a "quoted", {braced} \\ string' if nested else "a, b: c} d e,"
        out.append(m)
    return out


MIXED = {
    "name": "mixed",
    "selectors": [
        {
            "type": "expression",
            "expression": "speed > 10 || on",
            "merge_unknown": True,
            "max_messages_time_diff": 25,
            "min_duration": 15,
            "merge_message_before": True,
            "merge_message_after": True,
        }
    ],
    "counters": [
        {"name": name, "type": "parameter", "parameter": name, "method": method}
        for name in (
            "speed",
            "a.speed",
            "sp eed ü",
            "count",
            "level",
            "status",
            "on",
            "maybe",
            "either",
            "big",
            "empty",
            "tags",
            "nested",
            "flag",
            "text",
        )
        for method in ("first", "last", "distinct")
    ]
    + [
        {"name": "count_sum", "type": "parameter", "parameter": "count", "method": "summary"},
        {"name": "level_avg", "type": "parameter", "parameter": "level", "method": "average"},
        {"name": "on_time", "type": "expression", "expression": "on", "method": "duration"},
        {
            "name": "moving_time",
            "type": "expression",
            "expression": "status == 'moving'",
            "method": "duration",
        },
        {"name": "row", "type": "message", "fields": ["count", "either", "big", "nested"], "method": "last"},
    ],
}


def _fix_names(config):
    # Counter names must be unique: one per (parameter, method).
    counters = []
    for k in config["counters"]:
        name = (
            f"{k['name']}_{k['method']}"
            if k["type"] == "parameter" and k["name"] == k.get("parameter")
            else k["name"]
        )
        counters.append({**k, "name": name})
    return {**config, "counters": counters}


@pytest.mark.parametrize("sealed", [False, True], ids=["rows", "blocks"])
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_parameters_of_every_type_missing_and_null_give_the_intervals_of_the_engine(
    make_device, monkeypatch, nested, sealed
):
    device = make_device()
    messages = mixed_messages(nested=nested)
    store(device, messages)
    # A resend merging new keys into stored messages: those bodies are rewritten through jsonb.
    store(device, [{"timestamp": m["timestamp"], "count": -1, "late": True} for m in messages[10:20]])
    if sealed:
        seal(device, monkeypatch, size=16)
    got = assert_same(device, _fix_names(MIXED), T0, T0 + 600)
    assert got
    trip = got[0]
    assert trip["big_first"] == 2**70 and type(trip["big_first"]) is int
    assert trip["count_first"] == -1 or type(trip["count_first"]) is int


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_reader_gives_the_types_of_the_engine_columns(make_device, nested):
    device = make_device()
    messages = mixed_messages(nested=nested)
    store(device, messages)
    # Merged through jsonb, some bodies are rewritten with a space after each colon.
    store(device, [{"timestamp": m["timestamp"], "late": True} for m in messages[:3]])
    names = ["count", "level", "status", "on", "maybe", "big", "empty", "flag", "absent", "text", "a.speed"]
    read = stored_columns.messages_columns(
        alias=device.database, device_id=device.pk, begin=0, end=2**62, parameters=names
    )
    assert read.ts.tolist() == [round(m["timestamp"] * 1e6) for m in messages]
    kinds = {
        name: (c.kind, c.ints, int(c.missing_mask().sum()), int(c.null_mask().sum()))
        for name, c in read.columns.items()
    }
    assert kinds == {
        "count": ("num", True, 12, 0),
        "level": ("num", False, 0, 0),
        "status": ("obj", False, 0, 0),
        "on": ("bool", False, 0, 0),
        "maybe": ("num", True, 0, 20),
        "big": ("num", True, 0, 0),
        "empty": ("obj", False, 0, 60),
        "flag": ("bool", False, 0, 50),
        "absent": ("obj", False, 60, 0),
        "text": ("obj", False, 53, 0),
        "a.speed": ("num", True, 0, 0),
    }
    assert read.columns["text"].values[0] == messages[0]["text"]
    assert read.columns["status"].values[:4].tolist() == ["idle", "moving", "stopped", "idle"]
    assert read.columns["a.speed"].values[:3].tolist() == [0.0, -1.0, -2.0]
    assert read.columns["level"].values[:2].tolist() == [0.5, 1.0]
    assert read.columns["big"].values[1] == float(2**70 + 1)


def test_begin_and_end_are_inclusive_as_the_messages_api_reads_them(make_device):
    device = make_device()
    messages = mixed_messages(nested=False)
    store(device, messages)
    config = {
        "name": "all",
        "selectors": [{"type": "expression", "expression": "true"}],
        "counters": [
            {"name": "n", "type": "parameter", "parameter": "level", "method": "distinct"},
            {"name": "from", "type": "parameter", "parameter": "level", "method": "first"},
        ],
    }
    begin, end = messages[7]["timestamp"], messages[21]["timestamp"]  # T0 + 70.25 and T0 + 210.0
    [interval] = assert_same(device, config, begin, end)
    assert (interval["begin"], interval["end"]) == (begin, end)
    assert interval["from"] == messages[7]["level"]
    assert (
        calculate_stored(
            device=device, calculator=compile_calculator(config), begin=begin + 1e-6, end=end - 1e-6
        )[0]["begin"]
        == messages[8]["timestamp"]
    )
    assert (
        calculate_stored(device=device, calculator=compile_calculator(config), begin=T0 - 100, end=T0 - 1)
        == []
    )


def test_every_parameter_is_read_when_the_calculator_cannot_say(make_device, monkeypatch):
    device = make_device()
    store(device, mixed_messages(nested=True))
    calculator = compile_calculator(_fix_names(MIXED))
    monkeypatch.setattr(calculator, "parameters", None)
    assert calculate_stored(device=device, calculator=calculator, begin=T0, end=T0 + 600) == calculate(
        as_dicts(device, T0, T0 + 600), calculator
    )


def test_limits_are_refused_before_anything_is_read(make_device, monkeypatch):
    device = make_device()
    store(device, mixed_messages(nested=True))
    calculator = compile_calculator(TRIPS)
    monkeypatch.setattr(calculation, "MAX_ON_DEMAND_MESSAGES", 59)

    def never(**kwargs):
        raise AssertionError("read despite the limit")

    read = stored_columns.messages_columns
    monkeypatch.setattr(stored_columns, "messages_columns", never)
    with pytest.raises(TooLarge) as caught:
        calculate_stored(device=device, calculator=calculator, begin=T0, end=T0 + 600)
    assert (caught.value.kind, caught.value.extra) == ("too_many_messages", {"limit": 59})
    assert caught.value.as_error() == {
        "code": 413,
        "reason": "more than 59 messages between begin and end: narrow begin/end and calculate the range in parts",
    }
    with pytest.raises(InvalidInput) as caught:
        calculate_stored(device=device, calculator=calculator, begin=T0, end=T0 + 366 * 86400 + 1)
    assert caught.value.kind == "range_too_long" and caught.value.field == "end"
    assert "narrow begin/end" in caught.value.reason
    with pytest.raises(InvalidInput) as caught:
        calculate_stored(device=device, calculator=calculator, begin=T0 + 1, end=T0)
    assert caught.value.reason == f"begin ({T0 + 1}) is after end ({T0})"
    for bad in (float("nan"), -1, True, "1"):
        with pytest.raises(InvalidInput):
            calculate_stored(device=device, calculator=calculator, begin=bad, end=T0)
    # Exactly the limit is allowed.
    monkeypatch.setattr(calculation, "MAX_ON_DEMAND_MESSAGES", 60)
    monkeypatch.setattr(stored_columns, "messages_columns", read)
    assert calculate_stored(device=device, calculator=calculator, begin=T0, end=T0 + 600) == calculate(
        as_dicts(device, T0, T0 + 600), calculator
    )
