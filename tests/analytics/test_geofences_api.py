"""/gw/geofences and /gw/calcs/{calc}/geofences over the API: CRUD, bad geometry with paths and
nothing saved, isolation, assignment, hittest, and the recalculation a change asks for."""

import json
import math

import pytest

from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(databases="__all__")

CIRCLE = {"name": "depot", "priority": 10, "metadata": {"customer": "acme"},
          "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.0}, "radius": 1.0}}
SQUARE = {"name": "yard", "geometry": {"type": "polygon", "path": [
    {"lat": 50.0, "lon": 10.0}, {"lat": 50.0, "lon": 10.1}, {"lat": 50.1, "lon": 10.1}, {"lat": 50.1, "lon": 10.0},
]}}


def _count(account, table):
    from django.db import connections

    from accounts.placement import alias_for_account

    with connections[alias_for_account(account.pk)].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} WHERE account_id = %s", [account.pk])
        return cursor.fetchone()[0]


def _create(api, key, *items):
    response = api.call("POST", "/gw/geofences", key=key, body=list(items))
    assert response.status_code == 200, response.content
    return response.json()["result"]


def test_create_read_update_delete(api, key, account):
    circle, square = _create(api, key, CIRCLE, SQUARE)
    assert circle["cid"] == account.pk and circle["enabled"] is True and circle["priority"] == 10
    assert circle["geometry"] == CIRCLE["geometry"] and circle["metadata"] == {"customer": "acme"}
    assert square["priority"] == 0 and square["metadata"] == {} and len(square["geometry"]["path"]) == 4
    response = api.call("GET", "/gw/geofences/all?fields=id,name", key=key)
    assert response.json() == {"result": [{"id": circle["id"], "name": "depot"}, {"id": square["id"], "name": "yard"}]}
    assert [g["id"] for g in api.call("GET", "/gw/geofences/name=yard", key=key).json()["result"]] == [square["id"]]
    assert [g["id"] for g in api.call("GET", "/gw/geofences/priority=10", key=key).json()["result"]] == [circle["id"]]
    response = api.call("PUT", f"/gw/geofences/{circle['id']}", key=key,
                        body={"priority": 50, "geometry": {"type": "corridor", "width": 0.5,
                                                           "path": [{"lat": 1, "lon": 2}, {"lat": 1, "lon": 3}]}})
    assert response.status_code == 200, response.content
    changed = response.json()["result"][0]
    assert changed["priority"] == 50 and changed["geometry"]["type"] == "corridor" and changed["name"] == "depot"
    response = api.call("PATCH", f"/gw/geofences/{circle['id']}", key=key, body={"metadata": {"zone": 7}})
    assert response.json()["result"][0]["metadata"] == {"customer": "acme", "zone": 7}
    response = api.call("DELETE", f"/gw/geofences/{circle['id']},{square['id']}", key=key)
    assert response.json() == {"result": [{"id": circle["id"]}, {"id": square["id"]}]}
    assert api.call("GET", f"/gw/geofences/{circle['id']}", key=key).status_code == 404
    assert _count(account, "analytics_geofence") == 0


def test_polygon_closing_and_repeated_points_are_dropped(api, key):
    path = [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}, {"lat": 0, "lon": 1}, {"lat": 1, "lon": 1}, {"lat": 0, "lon": 0}]
    (zone,) = _create(api, key, {"name": "z", "geometry": {"type": "polygon", "path": path}})
    assert zone["geometry"]["path"] == [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}, {"lat": 1, "lon": 1}]


def _ring(count):
    return [{"lat": math.sin(2 * math.pi * i / count), "lon": math.cos(2 * math.pi * i / count)} for i in range(count)]


BAD_GEOMETRY = [
    ({"type": "polygon", "path": [{"lat": 0, "lon": 0}, {"lat": 1, "lon": 1}, {"lat": 0, "lon": 1}, {"lat": 1, "lon": 0}]},
     "geometry.path", "crosses itself: the edge from point 0 meets the edge from point 2"),
    ({"type": "polygon", "path": _ring(1025)}, "geometry.path", "has 1025 points, at most 1024 are allowed"),
    ({"type": "polygon", "path": [{"lat": 0, "lon": 0}, {"lat": 1, "lon": 1}, {"lat": 0, "lon": 0}]},
     "geometry.path", "needs at least 3 distinct points, has 2"),
    ({"type": "polygon", "path": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 2}, {"lat": 0, "lon": 1}]},
     "geometry.path", "crosses itself: the edge from point 0 meets the edge from point 1"),
    ({"type": "circle", "center": {"lat": 0, "lon": 0}, "radius": 0}, "geometry.radius", "must be greater than 0"),
    ({"type": "circle", "center": {"lat": 0, "lon": 0}, "radius": -1}, "geometry.radius", "must be greater than 0"),
    ({"type": "circle", "center": {"lat": 91, "lon": 0}, "radius": 1}, "geometry.center.lat",
     "must be between -90 and 90"),
    ({"type": "polygon", "path": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 181}, {"lat": 1, "lon": 1}]},
     "geometry.path[1].lon", "must be between -180 and 180"),
    ({"type": "square", "center": {"lat": 0, "lon": 0}}, "geometry.type", "must be one of circle, polygon, corridor"),
    ({"type": "corridor", "path": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}]}, "geometry.width", "missing field"),
    ({"type": "corridor", "path": [{"lat": 0, "lon": 0}], "width": 1}, "geometry.path",
     "needs at least 2 distinct points, has 1"),
    ({"type": "circle", "center": {"lat": 0, "lon": 0}, "radius": 1, "bogus": 1}, "geometry.bogus", "unknown field"),
]


@pytest.mark.parametrize(("geometry", "field", "reason"), BAD_GEOMETRY)
def test_bad_geometry_is_400_with_its_path_and_saves_nothing(api, key, account, geometry, field, reason):
    response = api.call("POST", "/gw/geofences", key=key, body=[{"name": "bad", "geometry": geometry}])
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert any(error["field"] == f"[0].{field}" and reason in error["reason"] for error in errors), errors
    assert _count(account, "analytics_geofence") == 0


def test_bad_update_is_400_and_changes_nothing(api, key, account):
    (zone,) = _create(api, key, CIRCLE)
    for body, field in (
        ({"geometry": {"type": "circle", "center": {"lat": 0, "lon": 0}, "radius": 0}}, "geometry.radius"),
        ({"priority": 101}, "priority"),
        ({"enabled": "yes"}, "enabled"),
        ({"name": ""}, "name"),
        ({"colour": "red"}, "colour"),
    ):
        response = api.call("PUT", f"/gw/geofences/{zone['id']}", key=key, body=body)
        assert response.status_code == 400, (body, response.content)
        assert response.json()["errors"][0]["field"] == field, response.json()
    assert api.call("GET", f"/gw/geofences/{zone['id']}", key=key).json()["result"][0] == zone


def test_other_accounts_geofences_do_not_exist(api, key, account, make_account, make_token, calculator):
    from analytics.services import calculator_create, geofence_create

    other = make_account("other")
    other_key = make_token(other)
    mine = geofence_create(account=account, data=CIRCLE)
    theirs = geofence_create(account=other, data={**CIRCLE, "name": "theirs"})
    other_calc = calculator_create(account=other, config=TRIPS)
    for method, path in (("GET", f"/gw/geofences/{theirs.pk}"), ("DELETE", f"/gw/geofences/{theirs.pk}"),
                         ("GET", f"/gw/geofences/{theirs.pk}/hittest?data=" + json.dumps({"lat": 50, "lon": 10})),
                         ("GET", f"/gw/calcs/{other_calc.pk}/geofences/all")):
        assert api.call(method, path, key=key).status_code == 404, path
    assert api.call("PUT", f"/gw/geofences/{theirs.pk}", key=key, body={"name": "x"}).status_code == 404
    assert [g["id"] for g in api.call("GET", "/gw/geofences/all", key=key).json()["result"]] == [mine.pk]
    assert [g["id"] for g in api.call("GET", "/gw/geofences/name=*", key=key).json()["result"]] == [mine.pk]
    assert [g["id"] for g in api.call("GET", "/gw/geofences/all", key=other_key).json()["result"]] == [theirs.pk]
    assert api.call("GET", f"/gw/geofences/{mine.pk},{theirs.pk}", key=key).json()["result"][0]["id"] == mine.pk
    # Assigning another account's geofence: an error naming it, nothing saved.
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/geofences/{theirs.pk}", key=key)
    assert response.status_code == 404
    assert response.json()["errors"][0]["id"] == theirs.pk
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/geofences/{mine.pk},{theirs.pk}", key=key)
    assert response.status_code == 200
    assert [link["id"] for link in response.json()["result"]] == [mine.pk]
    assert response.json()["errors"][0]["id"] == theirs.pk
    assert _count(account, "analytics_calculatorgeofence") == 1 and _count(other, "analytics_calculatorgeofence") == 0
    theirs.refresh_from_db()
    assert theirs.name == "theirs"


def test_subaccount_through_cid(api, key, account, make_account):
    from analytics.services import geofence_create

    child = make_account("child", parent=account)
    zone = geofence_create(account=child, data=CIRCLE)
    assert api.call("GET", f"/gw/geofences/{zone.pk}", key=key).status_code == 404
    assert api.call("GET", f"/gw/geofences/{zone.pk}", key=key, cid=child.pk).json()["result"][0]["id"] == zone.pk


def test_unknown_ids(api, key, calculator):
    assert api.call("GET", "/gw/geofences/999999999", key=key).status_code == 404
    assert api.call("DELETE", "/gw/geofences/999999999", key=key).status_code == 404
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/geofences/999999999", key=key)
    assert response.status_code == 404 and response.json()["errors"][0]["id"] == 999999999
    assert api.call("POST", "/gw/calcs/999999999/geofences/all", key=key).status_code == 404


def test_assign_list_unassign(api, key, account, calculator):
    circle, square = _create(api, key, CIRCLE, SQUARE)
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/geofences/{circle['id']},{square['id']}", key=key)
    assert response.status_code == 200, response.content
    assert [link["id"] for link in response.json()["result"]] == [circle["id"], square["id"]]
    again = api.call("POST", f"/gw/calcs/{calculator.pk}/geofences/all", key=key)  # idempotent
    assert [link["id"] for link in again.json()["result"]] == [circle["id"], square["id"]]
    assert _count(account, "analytics_calculatorgeofence") == 2
    listed = api.call("GET", f"/gw/calcs/{calculator.pk}/geofences/all", key=key).json()["result"]
    assert [(link["id"], link["calc_id"], link["name"]) for link in listed] == [
        (circle["id"], calculator.pk, "depot"), (square["id"], calculator.pk, "yard")]
    assert api.call("GET", f"/gw/calcs/{calculator.pk}/geofences/name=yard", key=key).json()["result"][0]["id"] == (
        square["id"])
    assert api.call("PUT", f"/gw/calcs/{calculator.pk}/geofences/all", key=key, body={}).status_code == 405
    response = api.call("DELETE", f"/gw/calcs/{calculator.pk}/geofences/{circle['id']}", key=key)
    assert response.json() == {"result": [{"id": circle["id"], "calc_id": calculator.pk}]}
    assert _count(account, "analytics_calculatorgeofence") == 1
    api.call("DELETE", f"/gw/geofences/{square['id']}", key=key)
    assert _count(account, "analytics_calculatorgeofence") == 0


def test_hittest(api, key):
    circle, square = _create(api, key, CIRCLE, SQUARE)
    # (50.05, 10.05): in the square only; (50.0, 10.005): in both (the circle first, priority 10);
    # (50.0, 10.02): the circle's centre is 1.43 km away (> 1 km), on the square's edge (lat 50.0,
    # inside by the even-odd rule's lower edge); (0, 0): in neither.
    points = [{"lat": 50.05, "lon": 10.05}, {"lat": 50.0005, "lon": 10.005}, {"lat": 50.0, "lon": 10.02},
              {"lat": 0, "lon": 0}]
    response = api.call("GET", "/gw/geofences/all/hittest?data=" + json.dumps({"points": points}), key=key)
    assert response.status_code == 200, response.content
    hits = [[zone["id"] for zone in point["geofences"]] for point in response.json()["result"]]
    assert hits == [[square["id"]], [circle["id"], square["id"]], [square["id"]], []]
    response = api.call("GET", f"/gw/geofences/{circle['id']}/hittest?data=" + json.dumps({"lat": 50, "lon": 10}),
                        key=key)
    assert response.json()["result"] == [
        {"lat": 50, "lon": 10, "geofences": [{"id": circle["id"], "name": "depot", "priority": 10}]}]
    for data, field in (({"lat": 91, "lon": 0}, "lat"), ({"lat": 1}, "lon"), ({}, "non_field_errors"),
                        ({"points": [{"lat": 0, "lon": "x"}]}, "points[0].lon"), ({"points": []}, "points"),
                        ({"lat": 1, "lon": 1, "alt": 3}, "alt")):
        response = api.call("GET", "/gw/geofences/all/hittest?data=" + json.dumps(data), key=key)
        assert response.status_code == 400, (data, response.content)
        assert response.json()["errors"][0].get("field", "non_field_errors") in (field, None), response.json()


def test_changes_recalculate_the_calculators_that_see_the_zone(api, key, account, calculator, assignment):
    from analytics.models import Assignment, Calculator
    from analytics.services import calculator_create

    quiet = calculator_create(account=account, config={**TRIPS, "name": "quiet", "update_onchange": False})
    (zone,) = _create(api, key, CIRCLE)
    (unseen,) = _create(api, key, {**SQUARE, "enabled": False})

    alias = assignment.database

    def settle():
        Assignment.objects.using(alias).filter(pk=assignment.pk).update(pending_begin=None, pending_end=None)

    def state():
        row = Assignment.objects.using(alias).get(pk=assignment.pk)
        return Calculator.objects.using(alias).get(pk=calculator.pk).version, (row.pending_begin, row.pending_end)

    settle()
    before = Calculator.objects.using(alias).get(pk=calculator.pk).version
    api.call("POST", f"/gw/calcs/{calculator.pk},{quiet.pk}/geofences/{zone['id']}", key=key)
    assert state() == (before + 1, (-math.inf, math.inf))
    assert Calculator.objects.using(alias).get(pk=quiet.pk).version == 2  # a new version, no recalculation asked
    settle()
    api.call("POST", f"/gw/calcs/{calculator.pk}/geofences/{unseen['id']}", key=key)  # disabled: invisible
    api.call("PUT", f"/gw/geofences/{unseen['id']}", key=key, body={"name": "still hidden"})
    assert state() == (before + 1, (None, None))
    api.call("PUT", f"/gw/geofences/{zone['id']}", key=key, body={"priority": 10})  # no change
    assert state() == (before + 1, (None, None))
    api.call("PUT", f"/gw/geofences/{zone['id']}", key=key, body={"metadata": {"customer": "other"}})
    assert state() == (before + 2, (-math.inf, math.inf))
    settle()
    api.call("PUT", f"/gw/geofences/{unseen['id']}", key=key, body={"enabled": True})
    assert state() == (before + 3, (-math.inf, math.inf))
    settle()
    api.call("DELETE", f"/gw/calcs/{calculator.pk}/geofences/{zone['id']}", key=key)
    assert state() == (before + 4, (-math.inf, math.inf))
    settle()
    api.call("DELETE", f"/gw/geofences/{unseen['id']}", key=key)
    assert state() == (before + 5, (-math.inf, math.inf))
    settle()
    api.call("DELETE", f"/gw/geofences/{zone['id']}", key=key)  # no longer seen by calculator
    assert state() == (before + 5, (None, None))
