"""MQTT topics and payloads of interval events and assignment state (DESIGN 6). No Django here:
the worker turns a stored change into these and queues them in the outbox of the same
transaction (``analytics.storage.outbox_events``); the outbox relay publishes them under the
topic root.

Topics are those of ``flespi_site.mqtt.topics``, relative to the root (``flespi``):

* ``interval/gw/calcs/{calc}/devices/{device}/{event}`` (an ``IntervalEvent``), not retained,
  the interval as stored (``deleted``: the interval as it was);
* ``state/gw/calcs/{calc}/devices/{device}/{name}`` (a ``StateName``), retained: ``synced``
  ``true``/``false``, ``last`` the newest interval (``null`` when none), ``active`` the open
  interval (``null`` when none). Unassigning clears them (an empty retained payload, which
  brokers take as "no retained message"; the trigger of ``analytics/migrations/0003_intervals.py``
  queues it).

Within one recalculation the events of an assignment come in this order: ``deactivated`` (the
interval that was open closed), ``deleted``, ``updated``, ``created`` (each by interval id),
``activated``, then the retained state that changed (an open interval that the change deleted is
only ``deleted``). The relay keeps the outbox order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flespi_site.mqtt.topics import IntervalEvent, StateName, interval_topic, state_topic

CLEAR = object()  # the payload of a retained topic being cleared


@dataclass(frozen=True)
class Event:
    device_id: int
    topic: str
    payload: Any  # a JSON value, or CLEAR
    retain: bool


def _by_id(rows: Sequence[Mapping]) -> list[Mapping]:
    return sorted(rows, key=lambda row: row["id"])


def _interval_event(calc_id: int, device_id: int, event: IntervalEvent, row: Mapping) -> Event:
    return Event(device_id, interval_topic(calc_id=calc_id, device_id=device_id, event=event), dict(row), False)


def _state_event(calc_id: int, device_id: int, name: StateName, payload: Any) -> Event:
    return Event(device_id, state_topic(calc_id=calc_id, device_id=device_id, name=name), payload, True)


def interval_events(
    *,
    calc_id: int,
    device_id: int,
    created: Sequence[Mapping],
    updated: Sequence[Mapping],
    deleted: Sequence[Mapping],
    was_active: Mapping | None,
    active: Mapping | None,
    active_known: bool,
    last: Mapping | None,
    last_changed: bool,
) -> list[Event]:
    """The events of one stored change of an assignment.

    ``was_active``: the interval that was open before the change (as it is now, or as it was if
    it was deleted), or None; ``active``: the open one after it, or None; ``active_known``: whether
    the recalculation reached the newest message (only then does it know what is open).
    ``last``/``last_changed``: the newest stored interval after the change, and whether it (or
    which one it is) changed."""
    events: list[Event] = []
    was_id = None if was_active is None else was_active["id"]
    now_id = None if active is None else active["id"]
    flipped = active_known and was_id != now_id
    # An open interval that a change deleted is only deleted (its "deleted" says it is gone).
    if flipped and was_active is not None and was_id not in {row["id"] for row in deleted}:
        events.append(_interval_event(calc_id, device_id, IntervalEvent.DEACTIVATED, was_active))
    for event, rows in (
        (IntervalEvent.DELETED, deleted), (IntervalEvent.UPDATED, updated), (IntervalEvent.CREATED, created)
    ):
        events.extend(_interval_event(calc_id, device_id, event, row) for row in _by_id(rows))
    if flipped and active is not None:
        events.append(_interval_event(calc_id, device_id, IntervalEvent.ACTIVATED, active))
    touched = {row["id"] for row in (*created, *updated, *deleted)}
    if active_known and (flipped or (now_id is not None and now_id in touched)):
        events.append(_state_event(calc_id, device_id, StateName.ACTIVE, None if active is None else dict(active)))
    if last_changed:
        events.append(last_event(calc_id=calc_id, device_id=device_id, last=last))
    return events


def deleted_events(*, calc_id: int, device_id: int, rows: Sequence[Mapping]) -> list[Event]:
    """The ``deleted`` events of intervals a purge removed, in the order given."""
    return [_interval_event(calc_id, device_id, IntervalEvent.DELETED, row) for row in rows]


def last_event(*, calc_id: int, device_id: int, last: Mapping | None) -> Event:
    """The retained newest interval (``null`` when none)."""
    return _state_event(calc_id, device_id, StateName.LAST, None if last is None else dict(last))


def synced_event(*, calc_id: int, device_id: int, synced: bool) -> Event:
    return _state_event(calc_id, device_id, StateName.SYNCED, synced)
