"""Interval events and retained state of one stored change (analytics.events, no database)."""

from analytics.events import deleted_events, interval_events, last_event, synced_event
from flespi_site.mqtt.topics import IntervalEvent, StateName


def _iv(i, **fields):
    return {"id": i, "begin": float(i), "end": float(i) + 1, **fields}


def _kinds(events):
    return [(e.topic.rsplit("/", 1)[1], e.payload["id"] if isinstance(e.payload, dict) else e.payload) for e in events]


def test_order_and_payloads():
    events = interval_events(
        calc_id=1, device_id=2, created=[_iv(30), _iv(20)], updated=[_iv(10)], deleted=[_iv(5)],
        was_active=_iv(10), active=_iv(30), active_known=True, last=_iv(30), last_changed=True,
    )
    assert _kinds(events) == [
        ("deactivated", 10), ("deleted", 5), ("updated", 10), ("created", 20), ("created", 30), ("activated", 30),
        ("active", 30), ("last", 30),
    ]
    assert events[0].topic == "interval/gw/calcs/1/devices/2/deactivated" and not events[0].retain
    assert events[-1].topic == "state/gw/calcs/1/devices/2/last" and events[-1].retain


def test_nothing_changed_publishes_nothing():
    assert interval_events(calc_id=1, device_id=2, created=[], updated=[], deleted=[], was_active=_iv(1),
                           active=_iv(1), active_known=True, last=_iv(1), last_changed=False) == []


def test_active_interval_extended_updates_the_retained_active():
    events = interval_events(calc_id=1, device_id=2, created=[], updated=[_iv(1)], deleted=[], was_active=_iv(1),
                             active=_iv(1), active_known=True, last=_iv(1), last_changed=True)
    assert _kinds(events) == [("updated", 1), ("active", 1), ("last", 1)]


def test_closing_without_a_new_interval_sets_active_null():
    events = interval_events(calc_id=1, device_id=2, created=[], updated=[_iv(1, active=False)], deleted=[],
                             was_active=_iv(1), active=None, active_known=True, last=_iv(1), last_changed=True)
    assert _kinds(events) == [("deactivated", 1), ("updated", 1), ("active", None), ("last", 1)]


def test_a_window_that_did_not_reach_the_end_says_nothing_of_active():
    events = interval_events(calc_id=1, device_id=2, created=[_iv(3)], updated=[], deleted=[], was_active=_iv(9),
                             active=None, active_known=False, last=_iv(9), last_changed=False)
    assert _kinds(events) == [("created", 3)]


def test_state_topics():
    synced = synced_event(calc_id=1, device_id=2, synced=True)
    assert (synced.topic, synced.payload, synced.retain) == ("state/gw/calcs/1/devices/2/synced", True, True)
    last = last_event(calc_id=1, device_id=2, last=_iv(4))
    assert (last.topic, last.payload, last.retain) == ("state/gw/calcs/1/devices/2/last", _iv(4), True)
    assert last_event(calc_id=1, device_id=2, last=None).payload is None


def test_purged_intervals_are_deleted_events_in_the_order_given():
    events = deleted_events(calc_id=1, device_id=2, rows=[_iv(3), _iv(1)])
    assert [(e.topic, e.payload["id"], e.retain) for e in events] == [
        ("interval/gw/calcs/1/devices/2/deleted", 3, False), ("interval/gw/calcs/1/devices/2/deleted", 1, False),
    ]


def test_every_topic_ends_with_an_event_kind_or_a_state_name():
    events = interval_events(
        calc_id=1, device_id=2, created=[_iv(30)], updated=[_iv(10)], deleted=[_iv(5)],
        was_active=_iv(10), active=_iv(30), active_known=True, last=_iv(30), last_changed=True,
    )
    kinds = {e.topic.rsplit("/", 1)[1] for e in events if not e.retain}
    names = {e.topic.rsplit("/", 1)[1] for e in events if e.retain}
    assert kinds == set(IntervalEvent) and names == {StateName.ACTIVE, StateName.LAST}


def test_an_open_interval_that_is_deleted_is_not_also_deactivated():
    events = interval_events(calc_id=1, device_id=2, created=[], updated=[_iv(1)], deleted=[_iv(5)],
                             was_active=_iv(5), active=_iv(1), active_known=True, last=_iv(1), last_changed=True)
    assert _kinds(events) == [("deleted", 5), ("updated", 1), ("activated", 1), ("active", 1), ("last", 1)]
