"""Track file readers, derived speed and direction, and ``manage.py import_messages`` end to end
on the real tracks in tests/data/tracks."""

from __future__ import annotations

import io
import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from analytics.engine import calculate
from devices import importers
from devices.choices import OutboxKind
from devices.importers import ParseError, Record, derive_motion, read_csv, read_gpx, read_jsonl
from devices.validation import MessageError
from tests.support.outbox import queued_events

pytestmark = pytest.mark.django_db(databases="__all__")

REPO = Path(__file__).resolve().parents[2]
TRACKS = REPO / "tests" / "data" / "tracks"
BUS = TRACKS / "bus-304-limerick-2019-02-18.gpx"
CAR = TRACKS / "car-around-visnjan.gpx"

# 0.001 degree of arc on the mean Earth sphere (R = 6,371,008.8 m): 111.19508 m
ARC_M = 6_371_008.8 * math.pi / 180 * 0.001


def records(reader, text, **kw):
    stream = io.BytesIO(text.encode()) if reader is read_gpx else io.StringIO(text)
    return list(reader(stream, name="sample", **kw))


def messages(reader, text, **kw):
    return [record.message for record in records(reader, text, **kw)]


# --- GPX -----------------------------------------------------------------------------------

GPX_11 = """<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">
 <wpt lat="52.5" lon="-8.5"><time>2019-02-18T07:00:00Z</time><name>depot</name></wpt>
 <rte><rtept lat="52.6" lon="-8.6"><time>2019-02-18T07:30:00Z</time></rtept></rte>
 <trk><name>304</name><trkseg>
  <trkpt lat="52.6291510" lon="-8.6617460">
   <ele>19.5</ele>
   <time>2019-02-18T07:45:50Z</time>
  </trkpt>
  <trkpt lat="52.6291030" lon="-8.6617230"><ele>19.6</ele><time>2019-02-18T07:45:52.25Z</time></trkpt>
 </trkseg></trk>
</gpx>
"""

GPX_10 = """<?xml version="1.0"?>
<gpx version="1.0" creator="test" xmlns="http://www.topografix.com/GPX/1/0">
<trk><trkseg>
<trkpt lat="45.0" lon="13.0"><ele>211</ele><time>2020-12-18T06:15:50Z</time><course>271.5</course><speed>12.5</speed><sat>7</sat><hdop>0.9</hdop></trkpt>
</trkseg></trk>
</gpx>
"""


def test_gpx_11_reads_waypoints_route_and_track_points_in_document_order():
    found = records(read_gpx, GPX_11)
    assert [record.line for record in found] == [3, 4, 6, 10]
    assert [record.message for record in found] == [
        {"timestamp": 1550473200.0, "position.latitude": 52.5, "position.longitude": -8.5},
        {"timestamp": 1550475000.0, "position.latitude": 52.6, "position.longitude": -8.6},
        {
            "timestamp": 1550475950.0,
            "position.altitude": 19.5,
            "position.latitude": 52.629151,
            "position.longitude": -8.661746,
        },
        {
            "timestamp": 1550475952.25,
            "position.altitude": 19.6,
            "position.latitude": 52.629103,
            "position.longitude": -8.661723,
        },
    ]


def test_gpx_10_maps_speed_in_metres_per_second_course_and_satellites():
    [message] = messages(read_gpx, GPX_10)
    assert message == {
        "timestamp": 1608272150.0,
        "position.altitude": 211.0,
        "position.satellites": 7,
        "position.hdop": 0.9,
        "position.direction": 271.5,
        "position.speed": 45.0,
        "position.latitude": 45.0,
        "position.longitude": 13.0,
    }


def test_gpx_without_namespace_and_garmin_extension_speed():
    text = (
        '<gpx xmlns:tpx="http://www.garmin.com/xmlschemas/TrackPointExtension/v2"><trk><trkseg>'
        '<trkpt lat="1" lon="2"><time>2020-01-01T00:00:00Z</time>'
        "<extensions><tpx:TrackPointExtension><tpx:speed>10</tpx:speed></tpx:TrackPointExtension></extensions>"
        "</trkpt></trkseg></trk></gpx>"
    )
    assert messages(read_gpx, text) == [
        {
            "timestamp": 1577836800.0,
            "position.speed": 36.0,
            "position.latitude": 1.0,
            "position.longitude": 2.0,
        }
    ]


def test_gpx_point_problems_name_the_line_and_the_others_are_read():
    text = GPX_10.replace(
        "<trkseg>\n",
        '<trkseg>\n<trkpt lat="45" lon="13"><ele>1</ele></trkpt>\n<trkpt lat="95" lon="13"><time>2020-12-18T06:15:40Z</time></trkpt>\n',
    )
    errors: list[ParseError] = []
    assert [r.line for r in records(read_gpx, text, errors=errors)] == [6]
    assert [(e.name, e.line) for e in errors] == [("sample", 4), ("sample", 5)]
    assert "has no <time>" in errors[0].reason
    assert "position.latitude 95.0 is outside [-90, 90]" in errors[1].reason
    strict = read_gpx(io.BytesIO(text.encode()), name="sample")
    with pytest.raises(ParseError, match=r"^sample:4: <trkpt> has no <time>"):
        next(strict)
    points_first = GPX_10.replace("</trkseg>", '<trkpt lat="45" lon="13"></trkpt>\n</trkseg>')
    strict = read_gpx(io.BytesIO(points_first.encode()), name="sample")
    assert next(strict).line == 4  # the point before the problem is read first
    with pytest.raises(ParseError, match=r"^sample:5: <trkpt> has no <time>"):
        next(strict)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '<gpx xmlns="http://www.topografix.com/GPX/1/1">\n<trk>\n<trkpt lat="1" lon="2">\n</trk>',
            r"^sample:4: not well-formed XML: mismatched tag",
        ),
        (
            '<kml xmlns="http://www.opengis.net/kml/2.2"><Document/></kml>',
            r"^sample:1: not a GPX 1.0 or 1.1 document",
        ),
        ("", r"^sample:1: not well-formed XML: no element found"),
    ],
)
def test_gpx_document_problems_raise_with_the_line(text, message):
    with pytest.raises(ParseError, match=message):
        records(read_gpx, text, errors=[])


# --- CSV -----------------------------------------------------------------------------------


def test_csv_aliases_iso_times_and_json_literal_cells():
    text = (
        "\ufeffTime;Lat;lng;Altitude;heading;sats;engine.ignition.status;can.fuel.level;ident;note\n"
        "2020-01-01T00:00:00Z;45.5;13.25;210;90;8;true;55.5;007;\n"
        '2020-01-01 01:00:00+01:00;45.6;13.26;;;;false;55;;said "hi"\n'
        "\n"
        "1577836860.5;45.7;13.27;;;;;;;\n"
    )
    found = records(read_csv, text)
    assert [record.line for record in found] == [2, 3, 5]
    assert [record.message for record in found] == [
        {
            "timestamp": 1577836800.0,
            "position.latitude": 45.5,
            "position.longitude": 13.25,
            "position.altitude": 210,
            "position.direction": 90,
            "position.satellites": 8,
            "engine.ignition.status": True,
            "can.fuel.level": 55.5,
            "ident": "007",
        },
        {
            "timestamp": 1577836800.0,
            "position.latitude": 45.6,
            "position.longitude": 13.26,
            "engine.ignition.status": False,
            "can.fuel.level": 55,
            "note": 'said "hi"',
        },
        {"timestamp": 1577836860.5, "position.latitude": 45.7, "position.longitude": 13.27},
    ]


def test_csv_bad_rows_are_reported_by_line_and_the_others_are_read():
    text = "timestamp,latitude,longitude\n1,1,1\nyesterday,1,1\n3,1\n4,north,1\n5,1,1\n"
    errors: list[ParseError] = []
    assert [r.line for r in records(read_csv, text, errors=errors)] == [2, 6]
    assert [str(e) for e in errors] == [
        "sample:3: timestamp 'yesterday' is not unix seconds or ISO 8601",
        "sample:4: 2 fields where the header has 3",
        "sample:5: position.latitude 'north' is not a number",
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("lat,lon,speed\n", "sample:1: no timestamp column"),
        (
            "time,lat,position.latitude\n",
            "sample:1: columns 'lat' and 'position.latitude' both mean 'position.latitude'",
        ),
        ("\n", "sample:1: no header row"),
    ],
)
def test_csv_header_problems_raise(header, message):
    with pytest.raises(ParseError, match=message):
        records(read_csv, header + "1,2,3\n", errors=[])
    with pytest.raises(ParseError, match="sample:1: no header row"):
        records(read_csv, "")


# --- JSON lines ----------------------------------------------------------------------------


def test_jsonl_bad_lines_are_reported_and_the_good_ones_read():
    text = (
        '{"timestamp": 1700000000, "position.latitude": 1.5, "x": {"y": [1, 2]}}\n'
        '{"timestamp": 1700000001, "position.latitude": 1.5,\n'
        "\n"
        '{"timestamp": "2023-11-14T22:13:22Z", "a": 1}\n'
        "[1, 2]\n"
        '{"timestamp": 1700000003, "a": NaN}\n'
        '{"a": 1}\n'
    )
    errors: list[ParseError] = []
    found = records(read_jsonl, text, errors=errors)
    assert found == [
        Record(1, {"timestamp": 1700000000.0, "position.latitude": 1.5, "x": {"y": [1, 2]}}),
        Record(4, {"timestamp": 1700000002.0, "a": 1}),
    ]
    assert [str(e) for e in errors] == [
        "sample:2: invalid JSON: Expecting property name enclosed in double quotes (column 52)",
        "sample:5: expected a message object, got a JSON array",
        "sample:6: NaN is not a valid JSON number",
        "sample:7: timestamp is required",
    ]
    with pytest.raises(ParseError, match=r"^sample:2: invalid JSON"):
        records(read_jsonl, text)


def test_undecodable_text_is_a_parse_error_with_the_line():
    stream = io.BytesIO(b'{"timestamp": 1}\n{"timestamp": 2, "a": "\xff"}\n')
    with pytest.raises(ParseError, match=r"^f.jsonl:2: not UTF-8 text"):
        list(importers.read(stream, format="jsonl", name="f.jsonl"))


@pytest.mark.parametrize(
    ("filename", "format_name"),
    [
        ("a.gpx", "gpx"),
        ("A.GPX.gz", "gpx"),
        ("b.csv", "csv"),
        ("c.jsonl", "jsonl"),
        ("d.ndjson", "jsonl"),
        ("e.txt", None),
    ],
)
def test_format_of_extension(filename, format_name):
    assert importers.format_of(filename) == format_name


def test_timestamps_follow_the_ingestion_rules_with_numbers_read_from_text():
    assert importers.parse_timestamp(" 1700000000.1234567 ") == 1700000000.123457
    assert importers.parse_timestamp("2023-11-14T22:13:20+01:00") == 1699996400.0
    assert importers.parse_timestamp(1700000000) == 1700000000.0
    # The same refusals, with the same reasons, as a message sent to the API.
    for value, reason in [
        (True, "timestamp must be unix seconds or an ISO 8601 string, not a boolean"),
        ("-1", "timestamp -1.0 is out of range"),
        (10**400, "timestamp is out of range"),
        ("yesterday", "timestamp 'yesterday' is not unix seconds or ISO 8601"),
    ]:
        with pytest.raises(MessageError) as raised:
            importers.parse_timestamp(value)
        assert str(raised.value) == reason


def test_a_timestamp_beyond_any_float_is_a_bad_line_not_a_crash():
    errors: list[ParseError] = []
    found = records(read_jsonl, '{"timestamp": 1%s}\n{"timestamp": 2}\n' % ("0" * 400), errors=errors)
    assert found == [Record(2, {"timestamp": 2.0})]
    assert [str(e) for e in errors] == ["sample:1: timestamp is out of range"]


def test_the_readers_and_the_validation_import_no_django():
    code = (
        "import sys, devices.importers, devices.validation; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


# --- derived speed and direction -----------------------------------------------------------


def test_haversine_and_bearing_against_known_values():
    # Land's End (50°03'59"N 5°42'53"W) to John o'Groats (58°38'38"N 3°04'12"W): 968.9 km,
    # initial bearing 009°07'11" (Veness, movable-type.co.uk/scripts/latlong.html)
    lands_end = (50 + 3 / 60 + 59 / 3600, -(5 + 42 / 60 + 53 / 3600))
    john_o_groats = (58 + 38 / 60 + 38 / 3600, -(3 + 4 / 60 + 12 / 3600))
    assert importers.haversine_m(*lands_end, *john_o_groats) == pytest.approx(968_900, abs=100)
    assert importers.bearing_deg(*lands_end, *john_o_groats) == pytest.approx(
        9 + 7 / 60 + 11 / 3600, abs=0.001
    )
    assert importers.haversine_m(0, 0, 0, 0.001) == pytest.approx(ARC_M, rel=1e-9)
    # from (0, 0) to (1, 1): atan(cos 1°) = 44.99564°
    assert importers.bearing_deg(0, 0, 1, 1) == pytest.approx(44.99564, abs=1e-5)
    assert importers.bearing_deg(0, 0, -0.001, 0) == pytest.approx(180)
    assert importers.bearing_deg(0, 0, 0, -0.001) == pytest.approx(270)


def point(t, lat, lon, **more):
    return Record(
        int(t), {"timestamp": float(t), "position.latitude": lat, "position.longitude": lon, **more}
    )


def derived(points, **kw):
    return [
        (record.message.get("position.speed"), record.message.get("position.direction"))
        for record in derive_motion(points, **kw)
    ]


def test_derived_speed_and_direction_from_consecutive_points():
    # east 0.001° in 10 s, north 0.002° in 10 s, then 0.001° south-west-ish in 5 s
    points = [point(0, 0.0, 0.0), point(10, 0.0, 0.001), point(20, 0.002, 0.001), point(25, 0.001, 0.0)]
    east = ARC_M / 10 * 3.6  # 40.03 km/h
    north = 2 * ARC_M / 10 * 3.6
    diagonal = importers.haversine_m(0.002, 0.001, 0.001, 0.0) / 5 * 3.6
    towards = round(importers.bearing_deg(0.002, 0.001, 0.001, 0.0), 2)
    assert derived(points) == [
        (round(east, 2), 90.0),  # each point takes the segment to the next one
        (round(north, 2), 0.0),
        (round(diagonal, 2), towards),
        (round(diagonal, 2), towards),  # the last point takes the segment from the one before
    ]
    # sqrt(2) * 111.195 m in 5 s
    assert (round(east, 2), round(north, 2), round(diagonal, 2)) == (40.03, 80.06, 113.22)
    assert round(importers.bearing_deg(0.002, 0.001, 0.001, 0.0), 2) == 225.0


def test_standing_jitter_is_zero_speed_and_keeps_the_last_direction():
    jitter = 0.000002  # 0.22 m in 1 s: 0.8 km/h, under the 1 km/h stop speed
    points = [point(0, 0.0, 0.0), point(10, 0.0, 0.001), point(11, jitter, 0.001), point(12, 0.0, 0.001)]
    assert derived(points) == [(40.03, 90.0), (0.0, 90.0), (0.0, 90.0), (0.0, 90.0)]
    standing_start = [point(0, 0.0, 0.0), point(1, jitter, 0.0), point(11, jitter, 0.001)]
    assert derived(standing_start) == [(0.0, None), (40.03, 90.0), (40.03, 90.0)]


def test_a_standing_gap_takes_the_speed_of_the_gap():
    """A logger that records nothing while standing: the point where it stopped holds until the
    point where it moves off, so it gets the (standing) speed of that gap, and a duration
    counter over the speed counts the gap as standing."""
    points = [
        point(0, 0.0, 0.0),
        point(10, 0.0, 0.001),  # stops here
        point(310, 0.0, 0.001000001),  # 300 s later, 0.1 m further: moves off
        point(320, 0.0, 0.002000001),
    ]
    assert derived(points) == [(40.03, 90.0), (0.0, 90.0), (40.03, 90.0), (40.03, 90.0)]
    moving = {
        "name": "moving",
        "type": "expression",
        "expression": "position.speed > 5",
        "method": "duration",
    }
    calc = {"name": "c", "selectors": [{"type": "expression", "expression": "true"}], "counters": [moving]}
    (interval,) = calculate([r.message for r in derive_motion(points)], calc)
    assert interval["moving"] == 20.0  # 0-10 and 310-320, not the 300 s standing


def test_gaps_and_steps_back_in_time_restart_the_run():
    points = [
        point(0, 0.0, 0.0),
        point(10, 0.0, 0.001),
        point(1000, 0.0, 0.002),  # 990 s later: over max_gap, a new run
        point(1010, 0.001, 0.002),
        point(1005, 0.001, 0.003),  # back in time: a new run
        point(1015, 0.001, 0.004),
    ]
    assert derived(points, max_gap=300) == [
        (40.03, 90.0),
        (40.03, 90.0),
        (40.03, 0.0),
        (40.03, 0.0),
        (40.03, 90.0),
        (40.03, 90.0),
    ]


def test_values_in_the_file_are_kept_and_records_without_position_pass_through_in_order():
    points = [
        point(0, 0.0, 0.0, **{"position.speed": 7}),
        Record(5, {"timestamp": 5.0, "can.fuel.level": 40}),
        point(10, 0.0, 0.001, **{"position.direction": 45}),
        Record(11, {"timestamp": 11.0, "position.latitude": "n/a", "position.longitude": 0}),
    ]
    out = list(derive_motion(points))
    assert [record.line for record in out] == [0, 5, 10, 11]
    assert out[0].message["position.speed"] == 7 and out[0].message["position.direction"] == 90.0
    assert out[1].message == {"timestamp": 5.0, "can.fuel.level": 40}
    assert (out[2].message["position.speed"], out[2].message["position.direction"]) == (40.03, 45)
    assert "position.speed" not in out[3].message
    assert derived([point(0, 1.0, 1.0)]) == [(None, None)]


# --- import_messages end to end ------------------------------------------------------------


def import_file(path, device, *args):
    out = io.StringIO()
    call_command(
        "import_messages", str(path), "--device", str(device.pk), *args, stdout=out, stderr=io.StringIO()
    )
    return out.getvalue()


def read_back(api, key, device):
    response = api.call("GET", f"/gw/devices/{device.pk}/messages", key=key)
    assert response.status_code == 200, response.content
    return response.json()["result"]


def outbox_rows(device):
    """The device's queued message rows (its telemetry topics are events apart)."""
    with connections[device._state.db].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox WHERE device_id = %s AND kind = %s", [device.pk, int(OutboxKind.MESSAGE)])
        return cursor.fetchone()[0]


def telemetry_topics_queued(device) -> list[str]:
    return [topic for topic, _payload, _retain in queued_events(device._state.db, device.pk)
            if topic.startswith("state/")]


def test_import_the_bus_track(api, key, device):
    summary = import_file(BUS, device)
    assert summary.startswith(
        f"bus-304-limerick-2019-02-18.gpx (gpx) -> device {device.pk} (352625690000001): read 2144 records, "
        "stored 2144 messages (2144 new or changed), refused 0"
    ), summary
    stored = read_back(api, key, device)
    assert len(stored) == 2144
    assert (stored[0]["timestamp"], stored[-1]["timestamp"]) == (
        1550475950.0,
        1550480426.0,
    )  # 07:45:50Z, 09:00:26Z
    assert (
        stored[0]["position.latitude"],
        stored[0]["position.longitude"],
        stored[0]["position.altitude"],
    ) == (
        52.629151,
        -8.661746,
        19.5,
    )
    assert stored[0]["device.id"] == device.pk and "server.timestamp" in stored[0]
    speeds = [message["position.speed"] for message in stored]
    assert all(0 <= direction < 360 for direction in (message["position.direction"] for message in stored))
    assert 40 < max(speeds) < 100
    assert sum(1 for speed in speeds if speed == 0) >= 20  # bus stops and lights
    # about 14 km in 74.6 minutes; the speeds integrate to the distance between the points
    moved = sum(
        importers.haversine_m(
            a["position.latitude"], a["position.longitude"], b["position.latitude"], b["position.longitude"]
        )
        for a, b in itertools.pairwise(stored)
    )
    assert 13_000 < moved < 16_000
    queued = outbox_rows(device)
    assert queued > 0
    topics = telemetry_topics_queued(device)

    again = import_file(BUS, device, "--batch", "500")
    assert "stored 2144 messages (0 new or changed), refused 0" in again
    assert read_back(api, key, device) == stored
    assert outbox_rows(device) == queued
    # Only the reception time's telemetry moved on (telemetry keeps the last time a value came).
    assert {topic.rsplit("/", 1)[1] for topic in telemetry_topics_queued(device)[len(topics):]} == {"server.timestamp"}


def test_import_the_car_track_with_its_halt(api, key, device):
    import_file(CAR, device, "--format", "gpx", "--batch", "10")
    stored = read_back(api, key, device)
    assert len(stored) == 104
    assert (stored[0]["timestamp"], stored[-1]["timestamp"]) == (
        1608272150.0,
        1608272664.0,
    )  # 06:15:50Z, 06:24:24Z
    speeds = [message["position.speed"] for message in stored]
    assert max(speeds) < 130
    assert 0 in speeds
    before = outbox_rows(device)
    import_file(CAR, device)
    assert len(read_back(api, key, device)) == 104
    assert outbox_rows(device) == before


def test_import_finds_a_device_in_another_datacenter(root, make_account):
    from devices import selectors
    from devices.services import device_create

    account = make_account("ru fleet", parent=root, region="ru")
    device = device_create(account=account, configuration={"ident": "ru-1-device"})
    assert device._state.db == "dc_ru_1"
    assert "stored 104 messages" in import_file(CAR, device)
    assert (
        len(selectors.messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)) == 104
    )


def test_import_reports_bad_lines_and_refused_messages_by_line(tmp_path, api, key, device):
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"timestamp": 1700000000, "position.latitude": 45.0, "position.longitude": 13.0}\n'
        '{"timestamp": 1700000010, "position.latitude": 45.001,\n'
        '{"timestamp": 1700000020, "position.latitude": 45.002, "position.longitude": 13.0}\n'
        '{"timestamp": 4102444800, "note": "year 2100"}\n'
    )
    summary = import_file(path, device)
    assert summary.splitlines() == [
        f"log.jsonl (jsonl) -> device {device.pk} (352625690000001): read 4 records, stored 2 messages "
        "(2 new or changed), refused 2",
        "  refused log.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes (column 55)",
        "  refused log.jsonl:4: timestamp 4102444800 is more than 86400 s in the future",
    ]
    stored = read_back(api, key, device)
    assert [m["timestamp"] for m in stored] == [1700000000.0, 1700000020.0]
    # 0.002° of latitude in 20 s
    assert (
        stored[1]["position.speed"] == round(2 * ARC_M / 20 * 3.6, 2)
        and stored[1]["position.direction"] == 0.0
    )


def test_import_stops_at_a_broken_document_and_says_where(tmp_path, api, key, device):
    path = tmp_path / "broken.gpx"
    path.write_text(GPX_11.replace("</trkseg>", "</trk>"))
    out = io.StringIO()
    with pytest.raises(
        CommandError, match=r"import stopped: broken.gpx:11: not well-formed XML: mismatched tag"
    ):
        call_command("import_messages", str(path), "--device", str(device.pk), "--batch", "3", stdout=out)
    assert "read 4 records, stored 4 messages" in out.getvalue()
    assert len(read_back(api, key, device)) == 4  # the points before the problem


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "999999", "--format", "csv"], "device 999999 not found"),
        (["--format", "csv", "--batch", "0"], "--batch must be between 1 and 100000"),
        ([], "cannot tell the format of"),
    ],
)
def test_import_refuses_bad_arguments_and_writes_nothing(tmp_path, device, args, message):
    path = tmp_path / "track.txt"
    path.write_text("timestamp\n1\n")
    with pytest.raises(CommandError, match=message):
        call_command(
            "import_messages",
            str(path),
            *(["--device", str(device.pk)] if "--device" not in args else []),
            *args,
        )
    assert outbox_rows(device) == 0


def test_import_into_a_disabled_device_is_refused_with_what_to_do(device):
    device.enabled = False
    device.save(update_fields=["enabled"])
    with pytest.raises(CommandError, match=rf"device {device.pk} is disabled: enable it"):
        import_file(CAR, device)
