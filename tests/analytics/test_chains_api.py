"""Calculator chaining over the API and in the stored world (docs/analytics.md, "Calculator
chaining"): references checked at save (the account's calculators only, no cycle), a chained
calculator not deleted, the on-demand calculation reading the source's stored intervals, and a
source's stored change widening its dependents' pending ranges in the same transaction."""

from __future__ import annotations

import math

import pytest

from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(databases="__all__")

T0 = 1_700_000_000.0


def _stops(trips_id: int) -> dict:
    return {"name": "stops", "selectors": [{"type": "calc", "calc_id": trips_id},
                                           {"type": "expression", "expression": "position.speed < 5"}],
            "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"}]}


def _daily(trips_id: int) -> dict:
    return {"name": "daily", "messages_source": {"source": "calculator", "calculator_id": trips_id},
            "selectors": [{"type": "datetime", "split": "day"}],
            "counters": [{"name": "trips", "type": "expression", "expression": "1", "method": "summary"},
                         {"name": "km", "type": "parameter", "parameter": "km", "method": "summary"}]}


def _create(api, key, config) -> dict:
    response = api.call("POST", "/gw/calcs", key=key, body=[config])
    assert response.status_code == 200, response.content
    return response.json()["result"][0]


def _links(alias) -> list[tuple[int, int]]:
    from analytics.models import CalculatorSource

    return list(CalculatorSource.objects.using(alias).order_by("calculator_id", "source_id")
                .values_list("calculator_id", "source_id"))


def _count(alias, model, account) -> int:
    return model.objects.using(alias).filter(account_id=account.pk).count()


def test_chained_calculators_are_created_shown_and_linked(api, key, account):
    from accounts.placement import alias_for_account

    trips = _create(api, key, TRIPS)
    stops = _create(api, key, _stops(trips["id"]))
    daily = _create(api, key, {**_daily(trips["id"]), "counters": [
        {"name": "stops", "type": "calculator", "calc_id": stops["id"], "method": "count",
         "allow_start_before": True, "allow_finish_after": True}]})
    assert trips["messages_source"] == {"source": "device"}
    assert daily["messages_source"] == {"source": "calculator", "calculator_id": trips["id"]}
    assert daily["counters"] == [{"name": "stops", "type": "calculator", "calc_id": stops["id"], "fields": [],
                                  "method": "count", "allow_start_before": True, "allow_finish_after": True}]
    assert stops["selectors"][0] == {"type": "calc", "calc_id": trips["id"], "invert": False,
                                     "max_messages_time_diff": 0, "min_active": 0, "max_inactive": 0,
                                     "merge_message_before": False, "merge_message_after": False, "min_duration": 0}
    alias = alias_for_account(account.pk)
    assert _links(alias) == sorted([(stops["id"], trips["id"]), (daily["id"], trips["id"]),
                                    (daily["id"], stops["id"])])
    # The daily summary reads its device's messages again: its link to trips goes, stops' stays.
    response = api.call("PUT", f"/gw/calcs/{daily['id']}", key=key, body={"messages_source": {"source": "device"}})
    assert response.status_code == 200, response.content
    assert response.json()["result"][0]["version"] == 2  # what it reads changes its results
    assert _links(alias) == sorted([(stops["id"], trips["id"]), (daily["id"], stops["id"])])


def test_references_to_unknown_or_another_accounts_calculators_are_refused(api, key, account, make_account):
    from accounts.placement import alias_for_account
    from analytics.models import Calculator, CalculatorSource
    from analytics.services import calculator_create

    other = make_account("other")
    theirs = calculator_create(account=other, config=TRIPS)
    alias = alias_for_account(account.pk)
    for calc_id in (999_999_999, theirs.pk):
        response = api.call("POST", "/gw/calcs", key=key, body=[_stops(calc_id)])
        assert response.status_code == 400, response.content
        [error] = response.json()["errors"]
        assert error["field"] == "[0].selectors[0].calc_id"
        assert error["reason"] == f"selectors[0].calc_id: no calculator {calc_id} in this account"
        response = api.call("POST", "/gw/calcs", key=key, body=[_daily(calc_id)])
        assert response.json()["errors"][0]["field"] == "[0].messages_source.calculator_id"
    assert _count(alias, Calculator, account) == 0 and _count(alias, CalculatorSource, account) == 0
    # In a list, the good ones are created and the bad one named by its place.
    mine = _create(api, key, TRIPS)
    response = api.call("POST", "/gw/calcs", key=key, body=[_stops(mine["id"]), _stops(theirs.pk)])
    assert len(response.json()["result"]) == 1
    assert [error["field"] for error in response.json()["errors"]] == ["[1].selectors[0].calc_id"]
    assert _count(alias, Calculator, account) == 2 and _count(alias, CalculatorSource, account) == 1
    # A change to another account's calculator is refused the same way, and changes nothing.
    response = api.call("PUT", f"/gw/calcs/{mine['id']}", key=key, body={"counters": [
        {"name": "x", "type": "calculator", "calc_id": theirs.pk}]})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "counters[0].calc_id"
    assert Calculator.objects.using(alias).get(pk=mine["id"]).version == 1


@pytest.mark.parametrize(("config", "field"), [
    ({"name": "x", "selectors": [{"type": "calc", "calc_id": 2**63}]}, "[0].selectors[0].calc_id"),
    ({"name": "x", "selectors": [{"type": "calc", "calc_id": -1, "invert": 2}]}, "[0].selectors[0].calc_id"),
    ({"name": "x", "selectors": [{"type": "calc", "calc_id": 1, "merge_unknown": True}]},
     "[0].selectors[0].merge_unknown"),
    ({"name": "x", "selectors": [{"type": "datetime"}], "counters": [
        {"name": "n", "type": "calculator", "calc_id": 1, "method": "average"}]}, "[0].counters[0].fields"),
    ({"name": "x", "selectors": [{"type": "datetime"}], "messages_source": {"source": "calculator",
                                                                             "calculator_id": "7"}},
     "[0].messages_source.calculator_id"),
    ({"name": "x", "selectors": [{"type": "datetime"}], "messages_source": ["calculator"]}, "[0].messages_source"),
])
def test_bad_chaining_options_are_400_with_their_path(api, key, account, config, field):
    from accounts.placement import alias_for_account
    from analytics.models import Calculator

    response = api.call("POST", "/gw/calcs", key=key, body=[config])
    assert response.status_code == 400, response.content
    assert field in [error["field"] for error in response.json()["errors"]]
    assert _count(alias_for_account(account.pk), Calculator, account) == 0


def test_cycles_are_refused_with_their_path(api, key, account):
    from accounts.placement import alias_for_account
    from analytics.models import Calculator

    alias = alias_for_account(account.pk)
    a = _create(api, key, TRIPS)
    b = _create(api, key, _stops(a["id"]))
    c = _create(api, key, {**_stops(b["id"]), "name": "c"})
    links = _links(alias)

    def refused(calc_id, body, field, reason):
        response = api.call("PUT", f"/gw/calcs/{calc_id}", key=key, body=body)
        assert response.status_code == 400, response.content
        [error] = response.json()["errors"]
        assert (error["field"], error["reason"]) == (field, f"{field}: {reason}")

    refused(a["id"], {"selectors": [{"type": "calc", "calc_id": a["id"]}]}, "selectors[0].calc_id",
            f"chain {a['id']} -> {a['id']}")
    refused(a["id"], {"selectors": [{"type": "calc", "calc_id": b["id"]}]}, "selectors[0].calc_id",
            f"chain {a['id']} -> {b['id']} -> {a['id']}")
    refused(a["id"], {"counters": [{"name": "n", "type": "calculator", "calc_id": c["id"], "method": "count"}]},
            "counters[0].calc_id", f"chain {a['id']} -> {c['id']} -> {b['id']} -> {a['id']}")
    refused(a["id"], {"messages_source": {"source": "calculator", "calculator_id": c["id"]}},
            "messages_source.calculator_id", f"chain {a['id']} -> {c['id']} -> {b['id']} -> {a['id']}")
    stored = Calculator.objects.using(alias).get(pk=a["id"])
    assert stored.version == 1 and stored.counters == a["counters"] and stored.messages_source == {"source": "device"}
    assert _links(alias) == links
    # Not a cycle: two calculators chaining the same one (a diamond).
    response = api.call("PUT", f"/gw/calcs/{c['id']}", key=key, body={"counters": [
        {"name": "n", "type": "calculator", "calc_id": a["id"], "method": "count"}]})
    assert response.status_code == 200, response.content
    assert _links(alias) == sorted([*links, (c["id"], a["id"])])


def test_a_chained_calculator_is_not_deleted(api, key, account):
    from accounts.placement import alias_for_account

    trips = _create(api, key, TRIPS)
    stops = _create(api, key, _stops(trips["id"]))
    daily = _create(api, key, _daily(trips["id"]))
    response = api.call("DELETE", f"/gw/calcs/{trips['id']}", key=key)
    assert response.status_code == 409, response.content
    [error] = response.json()["errors"]
    assert error["reason"] == (f"calculator {trips['id']} is chained by calculators {stops['id']}, {daily['id']}: "
                               "change or delete them first")
    assert api.call("GET", f"/gw/calcs/{trips['id']}", key=key).status_code == 200
    assert api.call("DELETE", f"/gw/calcs/{stops['id']},{daily['id']}", key=key).status_code == 200
    assert _links(alias_for_account(account.pk)) == []
    assert api.call("DELETE", f"/gw/calcs/{trips['id']}", key=key).status_code == 200


def test_inline_calculate_refuses_another_accounts_calculator(api, key, device, make_account):
    from analytics.services import calculator_create

    theirs = calculator_create(account=make_account("other"), config=TRIPS)
    body = {"calculator": _stops(theirs.pk), "begin": T0, "end": T0 + 100}
    response = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body=body)
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == "calculator.selectors[0].calc_id"
    flespis = {**_daily(theirs.pk), "from": T0, "to": T0 + 100}
    response = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body=flespis)
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == "messages_source.calculator_id"


def _drive(device) -> list[dict]:
    """Two trips (speed 40) with a stop inside the first (speed 0 at 30..40 s, shorter than the
    trips' max_inactive), and a parking between them (speed 0 at 160 s, 100 s after the first)."""
    from devices.services import messages_ingest

    speeds = {0: 40, 10: 40, 20: 40, 30: 0, 40: 0, 50: 40, 60: 40, 160: 0, 260: 40, 270: 40, 280: 40}
    messages = [{"timestamp": T0 + t, "position.speed": float(v), "position.latitude": 56.9 + t / 1e4,
                 "position.longitude": 24.1} for t, v in sorted(speeds.items())]
    messages_ingest(devices=[device], messages=messages)
    return messages


def test_on_demand_calculation_reads_the_sources_stored_intervals(api, key, account, device):
    from analytics.engine import Diff, calculate
    from analytics.services import assignment_create, calculator_create
    from tests.support.intervals import diff_store

    messages = _drive(device)
    trips = calculator_create(account=account, config=TRIPS)
    stops = calculator_create(account=account, config=_stops(trips.pk))
    daily = calculator_create(account=account, config=_daily(trips.pk))
    body = {"begin": T0, "end": T0 + 1000}
    # Not assigned: trips has no stored intervals of the device, so the chain sees none.
    response = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body={"calc_id": stops.pk, **body})
    assert response.json()["result"][0]["intervals"] == []
    source = assignment_create(calculator=trips, device=device)[0]
    stored_trips = list(calculate(messages, TRIPS))
    assert [(iv["begin"] - T0, iv["end"] - T0) for iv in stored_trips] == [(0, 60), (260, 280)]
    diff_store(assignment=source, diff=Diff(created=stored_trips), now=T0 + 2000)
    response = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body={"calc_id": stops.pk, **body})
    [stop] = response.json()["result"][0]["intervals"]
    assert (stop["begin"] - T0, stop["end"] - T0, stop["n"]) == (30, 40, 2)
    response = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body={"calc_id": daily.pk, **body})
    [day] = response.json()["result"][0]["intervals"]
    assert (day["begin"] - T0, day["end"] - T0, day["trips"]) == (0, 260, 2)
    assert day["km"] == stored_trips[0]["km"] + stored_trips[1]["km"]


def test_a_stored_change_of_a_source_widens_its_dependents_pending_ranges(account, device, make_account):
    from analytics.calculation import CHAIN_PAD
    from analytics.engine import Diff
    from analytics.models import Assignment
    from analytics.services import assignment_create, assignment_update, calculator_create
    from devices.services import device_create
    from tests.support.intervals import diff_store

    trips = calculator_create(account=account, config=TRIPS)
    stops = calculator_create(account=account, config=_stops(trips.pk))
    daily = calculator_create(account=account, config=_daily(trips.pk))
    unrelated = calculator_create(account=account, config={**TRIPS, "name": "unrelated"})
    other_device = device_create(account=account, configuration={"ident": "chain-2"})
    source = assignment_create(calculator=trips, device=device)[0]
    dependents = [assignment_create(calculator=calc, device=device)[0] for calc in (stops, daily, unrelated)]
    elsewhere = assignment_create(calculator=stops, device=other_device)[0]
    for assignment in [source, *dependents, elsewhere]:
        diff_store(assignment=assignment, diff=Diff(), now=T0)  # synced, nothing pending
    assignment_update(assignment=dependents[1], enabled=False)
    first = {"id": int(T0 * 1e6), "begin": T0, "end": T0 + 60, "duration": 60.0, "max_speed": 40.0, "km": 1.0}
    diff_store(assignment=source, diff=Diff(created=[first]), now=T0 + 1)

    def pending(assignment):
        row = Assignment.objects.using(assignment.database).get(pk=assignment.pk)
        return (row.pending_begin, row.pending_end)

    assert pending(dependents[0]) == (T0 - CHAIN_PAD, T0 + 60 + CHAIN_PAD)
    assert pending(dependents[1]) == (None, None)  # disabled: enabling it asks for all of history
    assert pending(dependents[2]) == (None, None)  # chains nothing
    assert pending(elsewhere) == (None, None)  # another device
    assert pending(source) == (None, None)
    # An update that shrinks the interval: its old end counts too; and a created one further on.
    diff_store(assignment=dependents[0], diff=Diff(), now=T0 + 2)
    shorter = {**first, "end": T0 + 30, "duration": 30.0}
    later = {**first, "id": int((T0 + 500) * 1e6), "begin": T0 + 500, "end": T0 + 520, "duration": 20.0}
    diff_store(assignment=source, diff=Diff(updated=[shorter], created=[later]), now=T0 + 3)
    assert pending(dependents[0]) == (T0 - CHAIN_PAD, T0 + 520 + CHAIN_PAD)
    # A run that changes nothing widens nothing.
    diff_store(assignment=dependents[0], diff=Diff(), now=T0 + 4)
    diff_store(assignment=source, diff=Diff(), now=T0 + 5)
    assert pending(dependents[0]) == (None, None)


def test_unassigning_a_source_recalculates_its_dependents(account, device):
    from analytics.engine import Diff
    from analytics.models import Assignment
    from analytics.services import assignment_create, assignment_delete, calculator_create
    from tests.support.intervals import diff_store

    trips = calculator_create(account=account, config=TRIPS)
    stops = calculator_create(account=account, config=_stops(trips.pk))
    source = assignment_create(calculator=trips, device=device)[0]
    dependent = assignment_create(calculator=stops, device=device)[0]
    diff_store(assignment=dependent, diff=Diff(), now=T0)
    assignment_delete(assignment=source)
    row = Assignment.objects.using(dependent.database).get(pk=dependent.pk)
    assert (row.pending_begin, row.pending_end) == (-math.inf, math.inf)


def test_a_purge_of_a_sources_intervals_leaves_its_dependents_alone(account, device):
    """Retention is not a change of data: the source's intervals beyond ``intervals_ttl`` go, the
    daily summary made of them stays, and no dependent is asked to
    recalculate (docs/analytics.md, "Calculator chaining")."""
    from analytics.engine import Diff
    from analytics.models import Assignment
    from analytics.selectors import intervals_of
    from analytics.services import assignment_create, calculator_create, intervals_purge
    from tests.support.intervals import diff_store

    trips = calculator_create(account=account, config={**TRIPS, "intervals_ttl": 86400})
    daily = calculator_create(account=account, config=_daily(trips.pk))
    source = assignment_create(calculator=trips, device=device)[0]
    dependent = assignment_create(calculator=daily, device=device)[0]
    old = [{"id": int((T0 + k * 100) * 1e6), "begin": T0 + k * 100, "end": T0 + k * 100 + 60, "duration": 60.0,
            "max_speed": 40.0, "km": 1.0} for k in range(3)]
    diff_store(assignment=source, diff=Diff(created=old), now=T0 + 1000)
    day = {"id": int(T0 * 1e6), "begin": T0, "end": T0 + 260, "duration": 260.0, "trips": 3, "km": 3.0}
    diff_store(assignment=dependent, diff=Diff(created=[day]), now=T0 + 1001)  # synced, nothing pending

    gone = intervals_purge(assignment=source, calculator=trips, now=T0 + 2 * 86400)
    assert [interval["id"] for interval in gone] == [interval["id"] for interval in old]
    assert intervals_of(assignments=[source]) == []
    [kept] = intervals_of(assignments=[dependent])
    assert (kept["id"], kept["trips"], kept["km"]) == (day["id"], 3, 3.0)
    row = Assignment.objects.using(dependent.database).get(pk=dependent.pk)
    assert (row.pending_begin, row.pending_end) == (None, None)
