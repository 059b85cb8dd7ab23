"""The rows of an account in the webhooks app (see ``accounts.regional_data``): in the datacenter
database, the feed and the delivery log of its devices' events (by device; a calculator's log
event names device 0 and stays with its database). Both move as logs: a move copies them at the
switch; the outbox rows it copies feed nothing at the target (the source fed them), and the switch
waits for the events in flight (docs/webhooks.md, "Account moves"), so each event is delivered
once across a move. The webhooks themselves are control rows deleted with their account."""

from __future__ import annotations

from accounts.regional_data import MoveKind, RegionalData, RegionalTable
from devices.regional import DEVICES

REGIONAL = RegionalData(
    tables=[
        RegionalTable("webhook_deliveries", column="device_id", through=DEVICES, moves=MoveKind.LOG,
                      device_column="device_id"),
        RegionalTable("webhook_feed", column="device_id", through=DEVICES, moves=MoveKind.LOG,
                      device_column="device_id"),
    ],
)
