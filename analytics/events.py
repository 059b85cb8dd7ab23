"""MQTT topics and payloads of interval events and assignment state (DESIGN 6). No Django here:
``analytics.calculation`` turns a stored change into these and queues them in the outbox of the
same transaction; the outbox relay publishes them under the topic root.

Topics are relative to the root (``flespi``):

* ``interval/gw/calcs/{calc}/devices/{device}/{created|updated|deleted|activated|deactivated}``,
  not retained, the interval as stored (``deleted``: the interval as it was);
* ``state/gw/calcs/{calc}/devices/{device}/{synced|last|active}``, retained: ``true``/``false``,
  the newest interval (``null`` when none), the open interval (``null`` when none). Unassigning
  clears them (an empty retained payload, which brokers take as "no retained message").

Within one recalculation the events of an assignment come in this order: ``deactivated`` (the
interval that was open closed), ``deleted``, ``updated``, ``created`` (each by interval id),
``activated``, then the retained state that changed (an open interval that the change deleted is
only ``deleted``). The relay keeps the outbox order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CLEAR = object()  # the payload of a retained topic being cleared


@dataclass(frozen=True)
class Event:
    device_id: int
    topic: str
    payload: Any  # a JSON value, or CLEAR
    retain: bool


def interval_topic(calc_id: int, device_id: int, kind: str) -> str:
    return f"interval/gw/calcs/{calc_id}/devices/{device_id}/{kind}"


def state_topic(calc_id: int, device_id: int, name: str) -> str:
    return f"state/gw/calcs/{calc_id}/devices/{device_id}/{name}"


def _by_id(rows: Sequence[Mapping]) -> list[Mapping]:
    return sorted(rows, key=lambda row: row["id"])


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

    def emit(kind: str, row: Mapping) -> None:
        events.append(Event(device_id, interval_topic(calc_id, device_id, kind), dict(row), False))

    was_id = None if was_active is None else was_active["id"]
    now_id = None if active is None else active["id"]
    flipped = active_known and was_id != now_id
    # An open interval that a change deleted is only deleted (its "deleted" says it is gone).
    if flipped and was_active is not None and was_id not in {row["id"] for row in deleted}:
        emit("deactivated", was_active)
    for kind, rows in (("deleted", deleted), ("updated", updated), ("created", created)):
        for row in _by_id(rows):
            emit(kind, row)
    if flipped and active is not None:
        emit("activated", active)
    touched = {row["id"] for row in (*created, *updated, *deleted)}
    if active_known and (flipped or (now_id is not None and now_id in touched)):
        events.append(Event(device_id, state_topic(calc_id, device_id, "active"), None if active is None else dict(active), True))
    if last_changed:
        events.append(Event(device_id, state_topic(calc_id, device_id, "last"), None if last is None else dict(last), True))
    return events


def synced_event(*, calc_id: int, device_id: int, synced: bool) -> Event:
    return Event(device_id, state_topic(calc_id, device_id, "synced"), synced, True)
