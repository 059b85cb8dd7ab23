"""The rows of an account in the devices app (see ``accounts.regional_data``): its groups and their
members, its devices, their messages, telemetry, outbox and change-log rows in the datacenter
database, and the claims of their idents in the control database; and how a move between
datacenters brings each."""

from __future__ import annotations

from accounts.regional_data import CONTROL, JournalTrigger, MoveKind, RegionalData, RegionalTable
from devices.models import Device, DeviceIdent, Group, GroupDevice

DEVICES = RegionalTable(Device._meta.db_table, moves=MoveKind.ENTITIES, holds_devices=True)
# Every write of messages appends the range it changed to the change log, in its transaction: the
# journal of a move notes those ranges from there (function of ``accounts`` migration 0003).
MESSAGES_JOURNAL = JournalTrigger(table="message_changes", events="AFTER INSERT", function="move_journal_messages")

REGIONAL = RegionalData(
    tables=[
        # Groups and their explicit members: few rows with ids, like devices (the members refer to
        # both, and go first).
        RegionalTable(GroupDevice._meta.db_table, moves=MoveKind.ENTITIES),
        RegionalTable(Group._meta.db_table, moves=MoveKind.ENTITIES),
        RegionalTable("messages", column="device_id", through=DEVICES, moves=MoveKind.RANGES,
                      device_column="device_id", range_column="ts", journal=MESSAGES_JOURNAL),
        # One row per device and parameter, rewritten with the device's messages.
        RegionalTable("telemetry", column="device_id", through=DEVICES, moves=MoveKind.DEVICE_ROWS,
                      device_column="device_id"),
        # One row per device, rewritten with its messages (the connection sweep's change alone is
        # not journaled: the target's sweep makes it again).
        RegionalTable("device_activity", column="device_id", through=DEVICES, moves=MoveKind.DEVICE_ROWS,
                      device_column="device_id"),
        RegionalTable("outbox", column="device_id", through=DEVICES, moves=MoveKind.LOG, device_column="device_id"),
        RegionalTable("message_changes", column="device_id", through=DEVICES, moves=MoveKind.LOG,
                      device_column="device_id"),
        DEVICES,
        RegionalTable(DeviceIdent._meta.db_table, database=CONTROL),
    ],
)
