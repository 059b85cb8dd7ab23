"""Assigned geofences through the calc fleet: real calc worker, pump and relay processes, real
Redis, PostgreSQL and MQTT broker. A zone's edit, disabling and unassignment recalculate the
device's intervals of the calculators that see it, to what a from-scratch calculation gives."""

from __future__ import annotations

import time

import pytest

from analytics.engine import calculate, compile_calculator
from tests.support.fleet import Fleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

T0 = float(int(time.time()) - 300)
VISITS = {
    "name": "visits",
    "selectors": [{"type": "geofence", "geofences": []}],
    "counters": [
        {"name": "where", "type": "geofence"},
        {"name": "customer", "type": "expression", "expression": "geofence('metadata.customer')", "method": "last"},
        {"name": "count", "type": "expression", "expression": "1", "method": "summary"},
    ],
    "update_delay": 0,
}
# 50.0 N: a thousandth of a degree of longitude is 0.0715 km (111.195 km x cos 50); a circle of
# 0.45 km reaches 0.0063 degrees east and west of its centre.
ZONE = {"name": "depot", "metadata": {"customer": "acme"},
        "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.005}, "radius": 0.45}}


@pytest.fixture
def fleet(tmp_path, platform):
    running = Fleet(tmp_path).start_all()
    yield running
    running.stop()


def _stored(assignment):
    from analytics.selectors import intervals_of

    return intervals_of(assignments=[assignment])


def _fields(intervals):
    keys = ("id", "begin", "end", "duration", "where", "customer", "count")
    return [{key: interval.get(key) for key in keys} for interval in intervals]


def _settled(assignment, device, zones):
    """The stored intervals equal a calculation from scratch over the device's messages with
    ``zones`` (given here, not read back) assigned."""
    from devices.selectors import messages_of

    messages = messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)
    expected = _fields(calculate(messages, compile_calculator(VISITS, geofences=zones)))
    return _fields(_stored(assignment)) == expected


def test_zone_changes_recalculate_through_the_fleet(fleet, make_account):
    from analytics.models import Assignment
    from analytics.services import (
        assignment_create,
        calculator_create,
        calculator_geofence_assign,
        calculator_geofence_unassign,
        geofence_create,
        geofence_update,
    )
    from devices.services import device_create, messages_ingest

    account = make_account("fleet")
    device = device_create(account=account, configuration={"ident": "geo-1"})
    # Eastwards along 50.0 N, 0.001 degrees every 10 s: message k at 10.0 + 0.001 k.
    messages_ingest(devices=[device], messages=[
        {"timestamp": T0 + 10 * k, "position.latitude": 50.0, "position.longitude": 10.0 + 0.001 * k}
        for k in range(20)
    ])
    calculator = calculator_create(account=account, config=VISITS)
    zone = geofence_create(account=account, data=ZONE)
    calculator_geofence_assign(calculator=calculator, geofence=zone)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).synced, what="synced",
               timeout=60)

    def data():
        zone.refresh_from_db()
        return [{"id": zone.pk, "name": zone.name, "enabled": zone.enabled, "priority": zone.priority,
                 "metadata": zone.metadata, "geometry": zone.geometry}]

    wait_until(lambda: _settled(assignment, device, data()), what="settled", timeout=30)
    # 10.000 .. 10.011 are within 0.0063 degrees of 10.005; 10.012 is not.
    [interval] = _stored(assignment)
    assert (interval["begin"], interval["end"], interval["count"]) == (T0, T0 + 110, 12)
    assert (interval["where"], interval["customer"]) == ("depot", "acme")

    # Moved east and renamed: 10.009 .. 10.019 (the track's end) are within 0.0063 of 10.015.
    geofence_update(geofence=zone, data={
        "name": "yard", "metadata": {"customer": "beta"},
        "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.015}, "radius": 0.45}})
    wait_until(lambda: _settled(assignment, device, data()), what="settled after the edit", timeout=30)
    [interval] = _stored(assignment)
    assert (interval["begin"], interval["end"], interval["count"]) == (T0 + 90, T0 + 190, 11)
    assert (interval["where"], interval["customer"]) == ("yard", "beta")

    # Disabled, the zone is invisible: no interval.
    geofence_update(geofence=zone, data={"enabled": False})
    wait_until(lambda: _stored(assignment) == [], what="no interval once disabled", timeout=30)
    assert _settled(assignment, device, data())

    # Enabled again, then unassigned: the interval comes back, then goes.
    geofence_update(geofence=zone, data={"enabled": True})
    wait_until(lambda: len(_stored(assignment)) == 1, what="the interval back", timeout=30)
    wait_until(lambda: _settled(assignment, device, data()), what="settled after enabling", timeout=30)
    from analytics.models import CalculatorGeofence

    calculator_geofence_unassign(link=CalculatorGeofence.objects.using(device.database).get(geofence_id=zone.pk))
    wait_until(lambda: _stored(assignment) == [], what="no interval once unassigned", timeout=30)
    assert _settled(assignment, device, [])
