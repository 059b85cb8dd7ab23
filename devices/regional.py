"""The rows of an account in the devices app (see ``accounts.regional_data``): its devices, their
messages, telemetry and outbox rows in the datacenter database, and the claims of their idents in
the control database."""

from __future__ import annotations

from accounts.regional_data import CONTROL, RegionalTable
from devices.models import Device, DeviceIdent

DEVICES = RegionalTable(Device._meta.db_table)

TABLES = [
    RegionalTable("messages", column="device_id", through=DEVICES),
    RegionalTable("telemetry", column="device_id", through=DEVICES),
    RegionalTable("outbox", column="device_id", through=DEVICES),
    DEVICES,
    RegionalTable(DeviceIdent._meta.db_table, database=CONTROL),
]
