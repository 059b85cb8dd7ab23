"""Exports of stored intervals and of on-demand calculations as CSV, GeoJSON and GPX: small
exports checked by hand in each format, times in the calculator's timezone across a DST change,
empty results, the same intervals as the JSON answer for the same query, the choice of format
(format= and Accept) and its refusals, the CSV header from the names recorded on the
assignments (the rows read for names only when one is no counter), and the stream over a real
HTTP server."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from analytics.engine import Diff
from analytics.engine.geo import decode_polyline, encode_polyline
from tests.support.api import errors_of, reasons, result_of
from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(databases="__all__")

GPX = "{http://www.topografix.com/GPX/1/1}"
BERLIN_TRIPS = {
    **TRIPS,
    "timezone": "Europe/Berlin",
    "counters": [*TRIPS["counters"], {"name": "route", "type": "route"}],
}
# Europe/Berlin leaves +01:00 for +02:00 at 2024-03-31 01:00 UTC.
DST = 1_711_846_800
ROUTE = [(52.52, 13.405), (52.5205, 13.41), (52.53001, 13.42)]


def _iv(begin, end, **counters):
    return {"id": int(begin * 1_000_000), "begin": float(begin), "end": float(end), "duration": float(end - begin),
            **counters}


def _store(assignment, intervals, now=1000.0):
    from tests.support.intervals import diff_store

    diff_store(assignment=assignment, diff=Diff(created=intervals, updated=[], deleted=[], active_id=None,
                                               reached_end=True), now=now)


@pytest.fixture
def berlin(account, device):
    """An assignment of a calculator in Europe/Berlin with three intervals around the DST change:
    one with a route, one with a position only, one with neither (and a user field)."""
    from analytics.services import assignment_create, calculator_create, interval_user_update

    calculator = calculator_create(account=account, config=BERLIN_TRIPS)
    assignment = assignment_create(calculator=calculator, device=device)[0]
    _store(assignment, [
        _iv(DST - 1800, DST + 1800, max_speed=61, km=2.5, route=encode_polyline(ROUTE)),
        _iv(DST + 3600, DST + 3600.25, max_speed=0, km=0.0,
            **{"position.latitude": 52.5, "position.longitude": 13.4}),
        _iv(DST + 7200, DST + 7260, max_speed=7.5, km=0.125),
    ])
    interval_user_update(assignment=assignment, calculator=calculator, interval_id=(DST + 7200) * 1_000_000,
                         fields={"driver": "Anna, \"Nina\""})
    return calculator, assignment


def _get(api, key, path, **headers):
    response = api.call("GET", path, key=key, **headers)
    assert response.status_code == 200, response.content if not response.streaming else response.status_code
    return response


def _body(response) -> str:
    return b"".join(response.streaming_content).decode()


def _csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(_body(response))))


def test_csv_by_hand_in_the_calculators_timezone(api, key, berlin, device):
    calculator, _ = berlin
    response = _get(api, key, f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all?format=csv")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="calc-{calculator.pk}-device-{device.pk}-intervals.csv"'
    )
    rows = _csv(response)
    assert rows[0] == ["id", "calc_id", "device_id", "begin", "end", "duration", "begin_time", "end_time",
                       "timestamp", "max_speed", "km", "route", "driver", "position.latitude",
                       "position.longitude"]
    c, d = str(calculator.pk), str(device.pk)
    assert rows[1:] == [
        [str((DST - 1800) * 1_000_000), c, d, "1711845000.0", "1711848600.0", "3600.0",
         "2024-03-31T01:30:00+01:00", "2024-03-31T03:30:00+02:00", "1000.0", "61", "2.5",
         encode_polyline(ROUTE), "", "", ""],
        [str((DST + 3600) * 1_000_000), c, d, "1711850400.0", "1711850400.25", "0.25",
         "2024-03-31T04:00:00+02:00", "2024-03-31T04:00:00.250000+02:00", "1000.0", "0", "0.0", "", "", "52.5",
         "13.4"],
        [str((DST + 7200) * 1_000_000), c, d, "1711854000.0", "1711854060.0", "60.0",
         "2024-03-31T05:00:00+02:00", "2024-03-31T05:01:00+02:00", "1000.0", "7.5", "0.125", "",
         'Anna, "Nina"', "", ""],
    ]


def test_csv_columns_from_fields(api, key, berlin, device):
    calculator, _ = berlin
    response = _get(api, key, f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all"
                              "?format=csv&fields=end_time,km,driver&reverse=true&count=2")
    assert _csv(response) == [["end_time", "km", "driver"],
                              ["2024-03-31T05:01:00+02:00", "0.125", 'Anna, "Nina"'],
                              ["2024-03-31T04:00:00.250000+02:00", "0.0", ""]]


def test_geojson_by_hand(api, key, berlin, device):
    calculator, _ = berlin
    response = _get(api, key, f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all",
                    HTTP_ACCEPT="application/geo+json")
    assert response["Content-Type"] == "application/geo+json; charset=utf-8"
    collection = json.loads(_body(response))
    assert collection["type"] == "FeatureCollection"
    route, point, nothing = collection["features"]
    # lon, lat (RFC 7946), the route's points decoded
    assert route["geometry"] == {"type": "LineString",
                                 "coordinates": [[13.405, 52.52], [13.41, 52.5205], [13.42, 52.53001]]}
    assert route["id"] == (DST - 1800) * 1_000_000
    assert route["properties"] == {
        "id": (DST - 1800) * 1_000_000, "begin": 1711845000.0, "end": 1711848600.0, "duration": 3600.0,
        "timestamp": 1000.0, "max_speed": 61, "km": 2.5, "calc_id": calculator.pk, "device_id": device.pk,
        "begin_time": "2024-03-31T01:30:00+01:00", "end_time": "2024-03-31T03:30:00+02:00",
    }
    assert point["geometry"] == {"type": "Point", "coordinates": [13.4, 52.5]}
    assert nothing["geometry"] is None and nothing["properties"]["driver"] == 'Anna, "Nina"'
    response = _get(api, key, f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all"
                              "?format=geojson&fields=km")
    features = json.loads(_body(response))["features"]
    assert [feature["properties"] for feature in features] == [{"km": 2.5}, {"km": 0.0}, {"km": 0.125}]
    assert features[0]["geometry"]["type"] == "LineString"  # the route whatever fields names


def test_gpx_by_hand(api, key, berlin, device):
    calculator, _ = berlin
    response = _get(api, key, f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all?format=gpx")
    assert response["Content-Type"] == "application/gpx+xml; charset=utf-8"
    root = ET.fromstring(_body(response))
    assert root.tag == f"{GPX}gpx" and root.get("version") == "1.1"
    tracks = root.findall(f"{GPX}trk")
    assert [track.findtext(f"{GPX}name") for track in tracks] == [
        f"interval {(DST + offset) * 1_000_000}" for offset in (-1800, 3600, 7200)
    ]
    assert tracks[0].findtext(f"{GPX}desc") == "2024-03-31T01:30:00+01:00 - 2024-03-31T03:30:00+02:00"
    assert tracks[0].findtext(f"{GPX}type") == "trips"
    points = [(float(p.get("lat")), float(p.get("lon"))) for p in tracks[0].iter(f"{GPX}trkpt")]
    assert points == ROUTE
    assert [(p.get("lat"), p.get("lon")) for p in tracks[1].iter(f"{GPX}trkpt")] == [("52.5", "13.4")]
    assert tracks[2].find(f"{GPX}trkseg") is None


def test_empty_exports(api, key, berlin, device):
    calculator, _ = berlin
    base = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all?begin=1&end=2&format="
    assert _csv(_get(api, key, base + "csv")) == [
        ["id", "calc_id", "device_id", "begin", "end", "duration", "begin_time", "end_time", "timestamp",
         "max_speed", "km", "route"]
    ]
    assert json.loads(_body(_get(api, key, base + "geojson"))) == {"type": "FeatureCollection", "features": []}
    root = ET.fromstring(_body(_get(api, key, base + "gpx")))
    assert root.tag == f"{GPX}gpx" and list(root.iter(f"{GPX}trk")) == []


@pytest.mark.parametrize("query", [
    "", "?begin=1711848000&end=1711851000", "?count=2", "?reverse=true&count=2", "?filter=km>0.1",
    "?filter=km<1&reverse=true", "?fields=id,km",
])
def test_csv_holds_what_json_answers(api, key, berlin, device, query):
    calculator, _ = berlin
    base = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all{query}"
    expected = result_of(api.call("GET", base, key=key))
    rows = _csv(_get(api, key, base + ("&" if query else "?") + "format=csv"))
    header, rows = rows[0], rows[1:]
    assert [row[header.index("id")] for row in rows] == [str(interval["id"]) for interval in expected]
    if "fields" in query:
        assert header == ["id", "km"] and [row[1] for row in rows] == [repr(iv["km"]) for iv in expected]


def _scanned_header(assignments, calculator, **kwargs) -> list[str]:
    """The CSV header the names of the stored rows give (``storage.intervals_keys`` over the
    rows of ``kwargs``' range)."""
    from analytics import selectors
    from analytics.exports import STORED_LEADING, CalculatorShape, interval_columns

    found = selectors.intervals_keys(assignments=assignments, **kwargs)
    return interval_columns(leading=STORED_LEADING, shapes=[CalculatorShape.of(calculator.configuration())],
                            found=found)


def _csv_and_name_reads(api, key, device, path) -> tuple[list[list[str]], int]:
    """The CSV at ``path``, and how many statements on the device's database read the names of
    stored rows."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections[device.database]) as captured:
        rows = _csv(_get(api, key, path))
    return rows, sum("json_object_keys" in query["sql"] for query in captured)


@pytest.mark.parametrize("query", ["", "&count=1&reverse=true", "&filter=km>1", "&begin=1&end=2"])
def test_csv_header_without_reading_the_rows_when_every_name_is_a_counter(api, key, account, device, query):
    """Intervals whose names (``Assignment.interval_names``) are all counters of the calculator:
    the header is the leading columns and the counters, which is what the rows' names give, and
    no statement reads them."""
    from analytics.services import assignment_create, calculator_create

    calculator = calculator_create(account=account, config=BERLIN_TRIPS)
    assignment = assignment_create(calculator=calculator, device=device)[0]
    _store(assignment, [_iv(DST, DST + 60, max_speed=10, km=1.5, route=encode_polyline(ROUTE)),
                        _iv(DST + 600, DST + 660, km=0.5)])
    rows, name_reads = _csv_and_name_reads(
        api, key, device, f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all?format=csv{query}"
    )
    assert name_reads == 0
    assert rows[0] == ["id", "calc_id", "device_id", "begin", "end", "duration", "begin_time", "end_time",
                       "timestamp", "max_speed", "km", "route"] == _scanned_header([assignment], calculator)
    assert len(rows) == {"": 3, "&begin=1&end=2": 1}.get(query, 2)


def test_csv_header_reads_the_rows_names_when_one_is_no_counter(api, key, account, device):
    """Once a name beyond the counters is recorded (a user field put after the intervals were
    written, a counter of an earlier version of the calculator), the names are read from the
    exported rows: the header has those of the exported range, sorted after the counters, as the
    rows' names give it; an assignment without one is still exported without the read."""
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create

    calculator = calculator_create(account=account, config=TRIPS)
    assignment = assignment_create(calculator=calculator, device=device)[0]
    other = device_create(account=account, configuration={"ident": "csv-names-2"})
    plain = assignment_create(calculator=calculator, device=other)[0]
    _store(assignment, [_iv(DST, DST + 60, km=1.5), _iv(DST + 600, DST + 660, km=0.5)])
    _store(plain, [_iv(DST, DST + 60, km=2.5)])
    base = f"/gw/calcs/{calculator.pk}/devices/{{devices}}/intervals/all?format=csv"
    leading = ["id", "calc_id", "device_id", "begin", "end", "duration", "begin_time", "end_time", "timestamp",
               "max_speed", "km"]
    rows, name_reads = _csv_and_name_reads(api, key, device, base.format(devices=device.pk))
    assert (rows[0], name_reads) == (leading, 0)

    put = api.call("PUT", f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/{DST * 1_000_000}", key=key,
                   body={"driver": "Anna"})
    assert put.status_code == 200, put.json()
    rows, name_reads = _csv_and_name_reads(api, key, device, base.format(devices=device.pk))
    assert (rows[0], name_reads) == ([*leading, "driver"], 1)
    assert rows[0] == _scanned_header([assignment], calculator)
    assert [row[-1] for row in rows[1:]] == ["Anna", ""]

    _store(assignment, [_iv(DST + 1200, DST + 1260, km=0.25, legacy=7)], now=2000.0)
    rows, name_reads = _csv_and_name_reads(api, key, device, base.format(devices=device.pk))
    assert (rows[0], name_reads) == ([*leading, "driver", "legacy"], 1)
    assert rows[3][-2:] == ["", "7"]
    for begin, end, extra in ((DST + 1000, DST + 2000, ["legacy"]), (DST + 500, DST + 700, [])):
        path = base.format(devices=device.pk) + f"&begin={begin}&end={end}"
        rows, name_reads = _csv_and_name_reads(api, key, device, path)
        assert (rows[0], name_reads) == ([*leading, *extra], 1)
        assert rows[0] == _scanned_header([assignment], calculator, begin=begin, end=end)
    # Two assignments: the names of either.
    rows, name_reads = _csv_and_name_reads(api, key, device, base.format(devices=f"{device.pk},{other.pk}"))
    assert (rows[0], name_reads) == ([*leading, "driver", "legacy"], 1)
    assert len(rows) == 5
    rows, name_reads = _csv_and_name_reads(api, key, device, base.format(devices=other.pk))
    assert (rows[0], name_reads) == (leading, 0)
    assert rows[0] == _scanned_header([plain], calculator)


def test_pages_are_the_json_answer(assignment, calculator, device):
    from analytics.engine import compile_expression
    from analytics.selectors import intervals_of, intervals_pages

    _store(assignment, [_iv(t, t + 5, km=float(t % 7)) for t in range(0, 500, 10)])
    condition = compile_expression("km > 2")
    for kwargs in ({}, {"count": 7}, {"reverse": True, "count": 11}, {"begin": 95, "end": 305},
                   {"condition": condition}, {"condition": condition, "count": 9, "reverse": True},
                   {"ids": [0, 10_000_000, 490_000_000]}):
        pages = list(intervals_pages(assignments=[assignment], chunk=4, **kwargs))
        assert all(0 < len(page) <= 4 for page in pages)
        assert [iv for page in pages for iv in page] == intervals_of(assignments=[assignment], **kwargs), kwargs


def test_choice_of_format_and_its_refusals(api, key, berlin, device):
    calculator, _ = berlin
    base = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all"
    plain = api.call("GET", base, key=key)
    assert plain["Content-Type"] == "application/json" and len(result_of(plain)) == 3
    assert result_of(api.call("GET", base + "?format=json", key=key)) == result_of(plain)
    assert _body(_get(api, key, base, HTTP_ACCEPT="text/csv")).startswith("id,calc_id,")
    assert _body(_get(api, key, base, HTTP_ACCEPT="application/gpx+xml;q=0.9, application/json")).startswith("<?xml")
    errors = errors_of(api.call("GET", base + "?format=xlsx", key=key), 400)
    assert errors == [{"code": 400, "field": "format",
                       "reason": "format 'xlsx' is not one of json, csv, geojson, gpx"}]
    errors = errors_of(api.call("GET", base + "?format=csv", key=key, HTTP_ACCEPT="application/gpx+xml"), 400)
    assert errors[0]["field"] == "format" and "application/gpx+xml" in errors[0]["reason"]
    response = api.call("GET", base, key=key, HTTP_ACCEPT="text/csv, application/gpx+xml")
    assert "several export formats" in reasons(response, 406)
    assert errors_of(api.call("GET", base, key=key, HTTP_ACCEPT="image/png"), 406)
    # a bad parameter of an export is the JSON answer's refusal
    errors = errors_of(api.call("GET", base + "?format=csv&count=0", key=key), 400)
    assert errors[0]["field"] == "count"
    errors = errors_of(api.call("GET", base + "?format=gpx&filter=km>", key=key), 400)
    assert errors[0]["field"] == "filter"
    assert errors_of(api.call("GET", base + "?format=csv&colour=red", key=key), 400)[0]["field"] == "colour"
    assert "no interval 5" in reasons(api.call("GET", base[:-3] + "5?format=csv", key=key), 404)
    # an export may ask for more than a JSON answer holds
    assert errors_of(api.call("GET", base + "?count=200000", key=key), 400)[0]["field"] == "count"
    assert len(_csv(_get(api, key, base + "?count=200000&format=csv"))) == 4


def test_exports_see_only_the_acting_account(api, key, berlin, device, make_account, make_token):
    calculator, _ = berlin
    stranger = make_token(make_account("stranger"))
    base = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all?format=csv"
    assert errors_of(api.call("GET", base, key=stranger), 404)
    assert errors_of(api.call("GET", base, key=stranger, HTTP_ACCEPT="text/csv"), 404)
    assert errors_of(api.call("GET", base, key=key, cid=999_999_999), 404)


def test_on_demand_calculation_exports(api, key, device):
    from devices.services import messages_ingest

    t0 = 1_700_000_000
    messages_ingest(devices=[device], messages=[
        {"timestamp": t0 + i * 10, "position.speed": 40 if i % 20 < 8 else 0,
         "position.latitude": 56.9 + i / 1e4, "position.longitude": 24.1} for i in range(60)
    ])
    body = {"calculator": {**BERLIN_TRIPS, "timezone": "Europe/Moscow"}, "begin": t0, "end": t0 + 1000}
    path = f"/gw/devices/{device.pk}/calculate"
    [answer] = result_of(api.call("POST", path, key=key, body=body))
    intervals = answer["intervals"]
    assert len(intervals) == 3
    response = api.call("POST", path + "?format=csv", key=key, body=body)
    assert response.status_code == 200 and response["Content-Disposition"].endswith(f'device-{device.pk}-calculated.csv"')
    rows = _csv(response)
    assert rows[0] == ["id", "device_id", "begin", "end", "duration", "begin_time", "end_time", "max_speed", "km",
                       "route"]
    assert [row[0] for row in rows[1:]] == [str(iv["id"]) for iv in intervals]
    # 1700000000 is 2023-11-14T22:13:20Z, 01:13:20 the next day in Moscow (+03:00, no DST)
    assert rows[1][5] == "2023-11-15T01:13:20+03:00"
    features = json.loads(_body(api.call("POST", path + "?format=geojson", key=key, body=body)))["features"]
    assert [f["geometry"]["coordinates"] for f in features] == [
        [[lon, lat] for lat, lon in decode_polyline(iv["route"])] for iv in intervals
    ]
    assert features[0]["geometry"]["coordinates"][0] == [24.1, 56.9]
    projected = result_of(api.call("POST", path + "?fields=id,km", key=key, body=body))
    assert projected[0]["intervals"] == [{"id": iv["id"], "km": iv["km"]} for iv in intervals]
    assert errors_of(api.call("POST", path + "?format=kml", key=key, body=body), 400)[0]["field"] == "format"
    bad = api.call("POST", path + "?format=csv", key=key, body={**body, "begin": t0 + 5000})
    assert errors_of(bad, 400)[0]["field"] == "begin"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_streamed_over_real_http(live_server, account, key, device):
    from analytics.services import assignment_create, calculator_create

    calculator = calculator_create(account=account, config=BERLIN_TRIPS)
    assignment = assignment_create(calculator=calculator, device=device)[0]
    total = 12_000  # more than two pages
    _store(assignment, [_iv(t * 10, t * 10 + 5, km=float(t)) for t in range(total)])
    request = urllib.request.Request(
        f"{live_server.url}/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all?format=csv&count=20000",
        headers={"Authorization": f"FlespiToken {key}"},
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.headers["Content-Length"] is None  # streamed: no length known in advance
        rows = list(csv.reader(io.TextIOWrapper(answer, encoding="utf-8")))
    assert len(rows) == total + 1
    km = rows[0].index("km")
    assert [float(row[km]) for row in rows[1:]] == [float(t) for t in range(total)]
