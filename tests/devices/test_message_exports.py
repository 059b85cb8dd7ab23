"""Exports of messages as CSV, GeoJSON and GPX: what the message importer reads back (a device's
messages exported as CSV and imported into another device are the same messages), hand-checked
small exports, empty ones, the same messages as the JSON answer, and the refusals."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest
from django.core.management import call_command

from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

GPX = "{http://www.topografix.com/GPX/1/1}"
TPX = "{http://www.garmin.com/xmlschemas/TrackPointExtension/v2}"
T0 = 1_700_000_000

MESSAGES = [
    {"timestamp": T0, "position.latitude": 56.95, "position.longitude": 24.1, "position.speed": 36.0,
     "position.direction": 90, "position.altitude": 12.5, "position.satellites": 9, "engine.ignition.status": True,
     "driver.name": 'Anna, "Nina"', "can.fuel.level": 43},
    {"timestamp": T0 + 10.5, "position.latitude": 56.951, "position.longitude": 24.102, "position.speed": 0.0,
     "position.direction": 0, "engine.ignition.status": False, "din": 3},
    {"timestamp": T0 + 20.25, "battery.voltage": 12.8, "text": "line one\nline two"},
]


@pytest.fixture
def other(account):
    from devices.services import device_create

    return device_create(account=account, name="copy", configuration={"ident": "copy-1"})


@pytest.fixture
def sent(device):
    from devices.services import messages_ingest

    result = messages_ingest(devices=[device], messages=[dict(message) for message in MESSAGES])
    assert result.accepted == len(MESSAGES) and not result.errors
    return device


def _body(response) -> str:
    assert response.status_code == 200, response.content if not response.streaming else response.status_code
    return b"".join(response.streaming_content).decode()


def _messages(api, key, device, query=""):
    return result_of(api.call("GET", f"/gw/devices/{device.pk}/messages{query}", key=key))


def test_csv_round_trip_through_the_importer(api, key, sent, other, tmp_path):
    response = api.call("GET", f"/gw/devices/{sent.pk}/messages?format=csv", key=key)
    assert response["Content-Disposition"] == f'attachment; filename="device-{sent.pk}-messages.csv"'
    path = tmp_path / "export.csv"
    path.write_text(_body(response), encoding="utf-8")
    call_command("import_messages", str(path), "--device", str(other.pk), stdout=io.StringIO(), stderr=io.StringIO())
    original = _messages(api, key, sent)
    copied = _messages(api, key, other)
    # ingestion stamps the receiving device and the import's reception time; everything else came
    # through the file, values of every JSON type kept
    assert len(copied) == 3 and all(isinstance(m["server.timestamp"], float) for m in copied)
    assert copied == [
        {**m, "device.id": other.pk, "device.name": "copy", "ident": "copy-1",
         "server.timestamp": c["server.timestamp"]}
        for m, c in zip(original, copied, strict=True)
    ]
    assert [{k: m[k] for k in sent_message} for m, sent_message in zip(copied, MESSAGES, strict=True)] == MESSAGES


def test_csv_by_hand(api, key, sent):
    rows = list(csv.reader(io.StringIO(_body(api.call("GET", f"/gw/devices/{sent.pk}/messages?format=csv"
                                                                  "&fields=timestamp,position.speed,driver.name,din",
                                                      key=key)))))
    assert rows == [
        ["timestamp", "position.speed", "driver.name", "din"],
        ["1700000000.0", "36.0", 'Anna, "Nina"', ""],
        ["1700000010.5", "0.0", "", "3"],
        ["1700000020.25", "", "", ""],
    ]
    header = next(csv.reader(io.StringIO(_body(api.call("GET", f"/gw/devices/{sent.pk}/messages?format=csv",
                                                         key=key)))))
    assert header[0] == "timestamp" and header[1:] == sorted(header[1:])
    assert {"rest.timestamp", "text", "battery.voltage", "din"} <= set(header)


def test_gpx_by_hand_and_back_through_the_importer(api, key, sent, other, tmp_path):
    text = _body(api.call("GET", f"/gw/devices/{sent.pk}/messages", key=key, HTTP_ACCEPT="application/gpx+xml"))
    root = ET.fromstring(text)
    assert root.tag == f"{GPX}gpx" and root.get("version") == "1.1"
    [track] = root.findall(f"{GPX}trk")
    points = list(track.iter(f"{GPX}trkpt"))
    assert [(p.get("lat"), p.get("lon"), p.findtext(f"{GPX}time")) for p in points] == [
        ("56.95", "24.1", "2023-11-14T22:13:20Z"), ("56.951", "24.102", "2023-11-14T22:13:30.500000Z"),
    ]
    assert points[0].findtext(f"{GPX}ele") == "12.5" and points[0].findtext(f"{GPX}sat") == "9"
    assert points[0].findtext(f"{GPX}extensions/{TPX}TrackPointExtension/{TPX}speed") == "10.0"  # 36 km/h
    assert points[0].findtext(f"{GPX}extensions/{TPX}TrackPointExtension/{TPX}course") == "90.0"
    path = tmp_path / "export.gpx"
    path.write_text(text, encoding="utf-8")
    call_command("import_messages", str(path), "--device", str(other.pk), stdout=io.StringIO(), stderr=io.StringIO())
    copied = _messages(api, key, other)
    assert [(m["timestamp"], m["position.latitude"], m["position.longitude"], m["position.speed"],
             m["position.direction"]) for m in copied] == [(T0, 56.95, 24.1, 36.0, 90.0),
                                                           (T0 + 10.5, 56.951, 24.102, 0.0, 0.0)]


def test_geojson_points(api, key, sent):
    collection = json.loads(_body(api.call("GET", f"/gw/devices/{sent.pk}/messages?format=geojson"
                                                  "&fields=timestamp,din", key=key)))
    assert collection == {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [24.1, 56.95]},
         "properties": {"timestamp": T0}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [24.102, 56.951]},
         "properties": {"timestamp": T0 + 10.5, "din": 3}},
    ]}


def test_empty_exports(api, key, device):
    base = f"/gw/devices/{device.pk}/messages?format="
    assert _body(api.call("GET", base + "csv", key=key)) == "timestamp\r\n"
    assert json.loads(_body(api.call("GET", base + "geojson", key=key))) == {"type": "FeatureCollection",
                                                                             "features": []}
    root = ET.fromstring(_body(api.call("GET", base + "gpx", key=key)))
    assert root.tag == f"{GPX}gpx" and list(root.iter(f"{GPX}trkpt")) == []


@pytest.mark.parametrize("query", ["", "?count=2", "?reverse=true&count=2", "?begin=1700000005&end=1700000030",
                                   "?filter=exists('din')", "?filter=not(exists('din'))&reverse=true"])
def test_csv_holds_what_json_answers(api, key, sent, query):
    expected = _messages(api, key, sent, query)
    text = _body(api.call("GET", f"/gw/devices/{sent.pk}/messages{query}{'&' if query else '?'}format=csv", key=key))
    assert [float(row["timestamp"]) for row in csv.DictReader(io.StringIO(text))] == [
        message["timestamp"] for message in expected
    ]


def test_pages_are_the_json_answer(account, device, other):
    from analytics.engine import compile_expression
    from devices.selectors import messages_matching, messages_of, messages_pages
    from devices.services import messages_ingest

    # two devices sharing timestamps: pages must not split or repeat a timestamp's group
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + t, "n": t} for t in range(40)])
    messages_ingest(devices=[other], messages=[{"timestamp": T0 + t, "n": t + 100} for t in range(0, 40, 2)])
    both = [device, other]
    condition = compile_expression("n % 3 == 0")
    for kwargs in ({"count": None}, {"count": 7}, {"count": 13, "reverse": True}, {"count": None, "begin": T0 + 5,
                                                                                  "end": T0 + 25}):
        window = {"begin": None, "end": None, "reverse": False, **kwargs}
        pages = list(messages_pages(devices=both, chunk=5, **window))
        assert [m for page in pages for m in page] == messages_of(devices=both, **window), kwargs
        count = window.pop("count") or 1000
        filtered = list(messages_pages(devices=both, chunk=5, condition=condition, count=count, **window))
        assert [m for page in filtered for m in page] == messages_matching(
            devices=both, condition=condition, count=count, chunk=1000, **window
        ), kwargs


def test_refusals(api, key, sent, other):
    base = f"/gw/devices/{sent.pk}/messages"
    assert errors_of(api.call("GET", base + "?format=kml", key=key), 400) == [
        {"code": 400, "field": "format", "reason": "format 'kml' is not one of json, csv, geojson, gpx"}
    ]
    errors = errors_of(api.call("GET", f"/gw/devices/{sent.pk},{other.pk}/messages?format=gpx", key=key), 400)
    assert errors[0]["field"] == "selector" and "one device's track" in errors[0]["reason"]
    assert errors_of(api.call("GET", base, key=key, HTTP_ACCEPT="text/csv, application/geo+json"), 406)
    assert errors_of(api.call("GET", base + "?format=csv&count=x", key=key), 400)[0]["field"] == "count"
    assert errors_of(api.call("GET", base + "?format=csv&filter=)(", key=key), 400)[0]["field"] == "filter"
    # POST and DELETE are not exports: an Accept of an export format changes nothing there
    assert api.call("DELETE", base + "?format=csv", key=key).status_code == 400
