"""/gw/calcs: calculators and assignments over the API, validation with paths, isolation."""

import pytest

from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(databases="__all__")


def _rows(alias, table, where="", params=()):
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} {where}", params)
        return cursor.fetchone()[0]


def test_create_read_update_delete(api, key, account):
    response = api.call("POST", "/gw/calcs", key=key, body=[TRIPS])
    assert response.status_code == 200, response.content
    calc = response.json()["result"][0]
    assert calc["name"] == "trips" and calc["cid"] == account.pk and calc["version"] == 1
    assert calc["update_delay"] == 30 and calc["timezone"] == "UTC" and calc["counters"][0]["method"] == "maximum"
    response = api.call("GET", f"/gw/calcs/{calc['id']}?fields=id,name", key=key)
    assert response.json() == {"result": [{"id": calc["id"], "name": "trips"}]}
    response = api.call("PUT", f"/gw/calcs/{calc['id']}", key=key, body={"update_delay": 5})
    assert response.status_code == 200, response.content
    assert response.json()["result"][0]["update_delay"] == 5
    assert response.json()["result"][0]["version"] == 1  # update_delay does not change results
    response = api.call("PUT", f"/gw/calcs/{calc['id']}", key=key, body={"timezone": "Europe/Riga"})
    assert response.json()["result"][0]["version"] == 2
    response = api.call("DELETE", f"/gw/calcs/{calc['id']}", key=key)
    assert response.json() == {"result": [{"id": calc["id"]}]}
    assert api.call("GET", f"/gw/calcs/{calc['id']}", key=key).status_code == 404


def test_validation_names_every_path_and_saves_nothing(api, key, account):
    from accounts.placement import alias_for_account

    bad = {"name": "x", "selectors": [{"type": "expression", "expression": "a > )"}, {"type": "nope"}],
           "timezone": "Mars/Olympus", "bogus": 1}
    response = api.call("POST", "/gw/calcs", key=key, body=[TRIPS, bad])
    assert response.status_code == 200
    body = response.json()
    assert len(body["result"]) == 1
    fields = {error["field"] for error in body["errors"]}
    assert {"[1].selectors[0].expression", "[1].selectors[1].type", "[1].timezone", "[1].bogus"} <= fields
    assert all(error["field"].startswith("[1].") and error["code"] == 400 for error in body["errors"])
    assert "unexpected ')'" in next(e["reason"] for e in body["errors"] if e["field"] == "[1].selectors[0].expression")
    assert _rows(alias_for_account(account.pk), "analytics_calculator") == 1
    response = api.call("POST", "/gw/calcs", key=key, body=[bad])
    assert response.status_code == 400
    assert _rows(alias_for_account(account.pk), "analytics_calculator") == 1


def test_put_validation_changes_nothing(api, key, calculator):
    response = api.call("PUT", f"/gw/calcs/{calculator.pk}", key=key,
                        body={"selectors": [{"type": "expression", "expression": "(("}]})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"].startswith("selectors[0].expression")
    calculator.refresh_from_db()
    assert calculator.selectors == TRIPS["selectors"] or calculator.selectors[0]["expression"] == "position.speed > 5"
    assert calculator.version == 1


@pytest.mark.parametrize("body", [[1], [None], ["x"], [[]], [{"name": "\x00", "selectors": []}], [{"name": "a\ud800"}]])
def test_bad_bodies_are_400(api, key, body):
    import json

    raw = json.dumps(body)
    response = api.call("POST", "/gw/calcs", key=key, raw=raw)
    assert response.status_code == 400, response.content
    assert response.json()["errors"]


def test_assign_list_disable_unassign(api, key, calculator, device):
    from analytics.models import Assignment

    response = api.call("POST", f"/gw/calcs/{calculator.pk}/devices/{device.pk}", key=key)
    assert response.status_code == 200, response.content
    row = response.json()["result"][0]
    assert row == {**row, "id": device.pk, "calc_id": calculator.pk, "enabled": True, "synced": False, "state": "unsynced"}
    # idempotent
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/devices/{device.pk}", key=key)
    assert response.status_code == 200
    assert Assignment.objects.using(device.database).count() == 1
    response = api.call("GET", f"/gw/calcs/{calculator.pk}/devices/all", key=key)
    assert [r["id"] for r in response.json()["result"]] == [device.pk]
    response = api.call("PUT", f"/gw/calcs/{calculator.pk}/devices/{device.pk}", key=key, body={"enabled": False})
    assert response.json()["result"][0]["enabled"] is False
    response = api.call("PUT", f"/gw/calcs/{calculator.pk}/devices/{device.pk}", key=key, body={"enabled": "no"})
    assert response.status_code == 400
    response = api.call("DELETE", f"/gw/calcs/{calculator.pk}/devices/{device.pk}", key=key)
    assert response.json()["result"] == [{"id": device.pk, "calc_id": calculator.pk}]
    assert Assignment.objects.using(device.database).count() == 0
    assert api.call("GET", f"/gw/calcs/{calculator.pk}/devices/{device.pk}", key=key).status_code == 404
    assert api.call("GET", f"/gw/calcs/{calculator.pk}/devices/all", key=key).json() == {"result": []}


def test_other_accounts_calculators_and_devices_do_not_exist(api, key, make_account, make_token, calculator, device):
    from analytics.services import calculator_create
    from devices.services import device_create

    other = make_account("other")
    other_key = make_token(other)
    other_calc = calculator_create(account=other, config=TRIPS)
    other_device = device_create(account=other, configuration={"ident": "other-1"})
    for path in (f"/gw/calcs/{other_calc.pk}", f"/gw/calcs/{other_calc.pk}/devices/all",
                 f"/gw/calcs/{other_calc.pk}/devices/{other_device.pk}/intervals/all"):
        assert api.call("GET", path, key=key).status_code == 404, path
    assert api.call("GET", "/gw/calcs/name=trips*", key=key).json()["result"][0]["id"] == calculator.pk
    assert [c["id"] for c in api.call("GET", "/gw/calcs/all", key=other_key).json()["result"]] == [other_calc.pk]
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/devices/{other_device.pk}", key=key)
    assert response.status_code == 404
    assert response.json()["errors"][0]["id"] == other_device.pk
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/devices/{device.pk},{other_device.pk}", key=key)
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["result"]] == [device.pk]
    assert response.json()["errors"][0]["id"] == other_device.pk
    assert api.call("DELETE", f"/gw/calcs/{other_calc.pk}", key=key).status_code == 404
    assert api.call("PUT", f"/gw/calcs/{other_calc.pk}", key=key, body={"name": "x"}).status_code == 404


def test_subaccount_through_cid(api, key, account, make_account):
    from analytics.services import calculator_create

    child = make_account("child", parent=account)
    calc = calculator_create(account=child, config=TRIPS)
    assert api.call("GET", f"/gw/calcs/{calc.pk}", key=key).status_code == 404
    assert api.call("GET", f"/gw/calcs/{calc.pk}", key=key, cid=child.pk).json()["result"][0]["id"] == calc.pk


def test_calculator_change_requests_recalculation(api, key, assignment, calculator):
    import math

    from analytics.engine import Diff
    from tests.support.intervals import diff_store

    diff_store(assignment=assignment, diff=Diff(), now=1.0)  # a run over all of history
    assignment.refresh_from_db()
    assert assignment.pending_begin is None
    api.call("PUT", f"/gw/calcs/{calculator.pk}", key=key, body={"name": "renamed"})
    assignment.refresh_from_db()
    assert assignment.pending_begin is None
    api.call("PUT", f"/gw/calcs/{calculator.pk}", key=key, body={"validate_message": "position.speed < 300"})
    assignment.refresh_from_db()
    assert (assignment.pending_begin, assignment.pending_end) == (-math.inf, math.inf)


def test_recalculate_endpoint_widens_the_pending_range(api, key, assignment, calculator, device):
    import math

    from analytics.engine import Diff
    from tests.support.intervals import diff_store

    diff_store(assignment=assignment, diff=Diff(), now=1.0)  # a run over all of history
    path = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/recalculate"
    assert api.call("POST", path, key=key, body={"begin": 100, "end": 200}).status_code == 200
    assert api.call("POST", path, key=key, body={"begin": 50, "end": 150}).status_code == 200
    assignment.refresh_from_db()
    assert (assignment.pending_begin, assignment.pending_end) == (50, 200)
    assert api.call("POST", path, key=key, body={"begin": 300, "end": 100}).status_code == 400
    assert api.call("POST", path, key=key, body={"begin": "x"}).status_code == 400
    assert api.call("POST", path, key=key).status_code == 200
    assignment.refresh_from_db()
    assert (assignment.pending_begin, assignment.pending_end) == (-math.inf, math.inf)
    _ = math


def test_calculate_on_demand_over_the_api(api, key, account, device, calculator):
    from analytics.engine import calculate
    from devices.services import messages_ingest

    t0 = 1_700_000_000
    messages = [{"timestamp": t0 + i * 10, "position.speed": 40 if i % 20 < 8 else 0,
                 "position.latitude": 56.9 + i / 1e4, "position.longitude": 24.1} for i in range(60)]
    messages_ingest(devices=[device], messages=messages)
    stored = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key,
                      body={"calc_id": calculator.pk, "begin": t0, "end": t0 + 1000})
    assert stored.status_code == 200, stored.content
    [row] = stored.json()["result"]
    assert row["id"] == device.pk
    from devices.selectors import messages_of

    expected = calculate(messages_of(devices=[device], begin=t0, end=t0 + 1000, count=None, reverse=False),
                         TRIPS)
    assert row["intervals"] == [dict(iv) for iv in expected] and len(expected) == 3
    inline = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key,
                      body={"calculator": TRIPS, "from": t0, "to": t0 + 1000})
    assert inline.json()["result"][0]["intervals"] == row["intervals"]
    # nothing stored
    assert _rows(device.database, "intervals") == 0


@pytest.mark.parametrize("body, field", [
    ({"begin": 1, "end": 2}, "calc_id"),
    ({"calc_id": 1, "calculator": {}, "begin": 1, "end": 2}, "calc_id"),
    ({"calculator": {"name": "x", "selectors": [{"type": "nope"}]}, "begin": 1, "end": 2}, "calculator.selectors[0].type"),
    ({"calc_id": 999999, "begin": 1, "end": 2}, "calc_id"),
    ({"calculator": TRIPS, "begin": 5, "end": 2}, "begin"),
    ({"calculator": TRIPS, "begin": 1}, "end"),
    ({"calculator": TRIPS, "begin": 1, "from": 1, "end": 2}, "from"),
    ({"calculator": TRIPS, "begin": 0, "end": 400 * 86400}, "end"),
    ({"calculator": TRIPS, "begin": "x", "end": 2}, "begin"),
])
def test_calculate_refuses_bad_input(api, key, device, body, field):
    response = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body=body)
    assert 400 <= response.status_code < 500, response.content
    assert field in {error.get("field") for error in response.json()["errors"]}, response.json()


def test_assigning_answers_each_device_and_projects_its_items(api, key, make_account, calculator, device):
    from analytics.models import Assignment
    from devices.services import device_create

    other = device_create(account=make_account("other"), configuration={"ident": "other-2"})
    path = f"/gw/calcs/{calculator.pk}/devices"
    # A bad fields= refuses the request before anything is assigned.
    response = api.call("POST", f"{path}/{device.pk}?fields=id,nope", key=key)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "fields"
    assert not Assignment.objects.using(device.database).exists()
    response = api.call("POST", f"{path}/{device.pk},{other.pk},999999?fields=id,calc_id", key=key)
    assert response.status_code == 200
    assert response.json() == {
        "result": [{"id": device.pk, "calc_id": calculator.pk}],
        "errors": [
            {"code": 404, "reason": f"no device with id {other.pk}", "id": other.pk},
            {"code": 404, "reason": "no device with id 999999", "id": 999999},
        ],
    }
    assert api.call("POST", f"{path}/name=nothing*", key=key).json() == {
        "errors": [{"code": 404, "reason": "no device matches 'name=nothing*'"}]
    }
    # Unassigning answers the pair; a device no longer assigned is a 404.
    response = api.call("DELETE", f"{path}/{device.pk}", key=key)
    assert response.json() == {"result": [{"id": device.pk, "calc_id": calculator.pk}]}
    response = api.call("DELETE", f"{path}/{device.pk}", key=key)
    assert response.status_code == 404


def test_assignments_create_names_the_pairs_it_refuses(make_account, calculator, device):
    from analytics.services import assignments_create
    from devices.services import device_create

    other = device_create(account=make_account("other"), configuration={"ident": "other-3"})
    assignments, refused = assignments_create(calculators=[calculator], devices=[device, other])
    assert [(a.calculator_id, a.device_id) for a in assignments] == [(calculator.pk, device.pk)]
    [error] = refused
    assert error.as_error() == {**error.as_error(), "code": 400, "id": other.pk, "selector": f"calc_id={calculator.pk}"}
    # Idempotent: assigning again answers the same assignment.
    again, refused = assignments_create(calculators=[calculator], devices=[device])
    assert [a.pk for a in again] == [assignments[0].pk] and refused == []


def test_intervals_are_projected_by_fields(api, key, assignment, calculator, device):
    from analytics.engine import Diff
    from tests.support.intervals import diff_store

    interval = {"id": 10_000_000, "begin": 10.0, "end": 20.0, "duration": 10.0, "max_speed": 60.0, "km": 1.5}
    diff_store(assignment=assignment, diff=Diff(created=[interval], reached_end=True), now=100.0)
    path = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all"
    response = api.call("GET", f"{path}?fields=id,km,nope", key=key)
    assert response.json() == {"result": [{"id": 10_000_000, "km": 1.5}]}
    response = api.call("GET", f"{path}?fields=,", key=key)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "fields"


def test_calculate_compiles_the_inline_calculator_after_the_range(api, key, device):
    path = f"/gw/devices/{device.pk}/calculate"
    broken = {"name": "x", "selectors": [{"type": "expression", "expression": "a >"}], "timezone": "Mars/Olympus"}
    response = api.call("POST", path, key=key, body={"calculator": broken, "begin": 1})
    assert response.json() == {"errors": [{"code": 400, "reason": "end: required", "field": "end"}]}
    response = api.call("POST", path, key=key, body={"calculator": broken, "begin": 1, "end": 2})
    assert [error["field"] for error in response.json()["errors"]] == [
        "calculator.selectors[0].expression",
        "calculator.timezone",
    ]
