"""The rows of an account in the analytics app (see ``accounts.regional_data``): its calculators,
their assignments (of devices and of groups), the calculators they chain, and the assignments' stored intervals, its geofences
and their assignments to calculators, and its devices' message blocks, all in the datacenter
database; how a move between datacenters brings each, and the reset of the message blocks
(derived from the messages) in the move's target."""

from __future__ import annotations

import psycopg

from accounts.regional_data import JournalTrigger, MoveKind, RegionalData, RegionalTable
from analytics.models import (
    Assignment,
    Calculator,
    CalculatorGeofence,
    CalculatorSource,
    Geofence,
    GroupAssignment,
)
from devices.regional import DEVICES
from flespi_site.constants import LockSpace, lock_id

CALCULATORS = RegionalTable(Calculator._meta.db_table, moves=MoveKind.ENTITIES)
# Function of ``accounts`` migration 0003: notes the key of every interval written or deleted.
INTERVALS_JOURNAL = JournalTrigger(
    table="intervals", events="AFTER INSERT OR UPDATE OR DELETE", function="move_journal_intervals"
)


def message_blocks_reset(*, connection: psycopg.Connection, device_ids: list[int]) -> None:
    """The target's message blocks of the moved devices, which its sealer may have built from
    part of the copy, deleted, and the devices noted for sealing: under the devices' block locks
    (shared, as a write of messages takes them), so that no block is built from the target's
    rows until the switch commits them all."""
    if not device_ids:
        return
    connection.execute(
        "SELECT pg_advisory_xact_lock_shared(%s, key) FROM unnest(%s::integer[]) AS key",
        [LockSpace.DEVICE_BLOCKS, sorted({lock_id(device_id) for device_id in device_ids})],
    )
    connection.execute("DELETE FROM message_blocks WHERE device_id = ANY(%s)", [device_ids])
    connection.execute(
        "INSERT INTO message_block_work (device_id) SELECT unnest(%s::bigint[]) "
        "ON CONFLICT (device_id) DO UPDATE SET due = 0",
        [device_ids],
    )


REGIONAL = RegionalData(
    tables=[
        # Sealed from the messages (``analytics.blocks``): rebuilt in the target, never copied.
        RegionalTable("message_blocks", column="device_id", through=DEVICES, moves=MoveKind.DERIVED),
        RegionalTable("message_block_work", column="device_id", through=DEVICES, moves=MoveKind.DERIVED),
        RegionalTable("intervals", column="calc_id", through=CALCULATORS, moves=MoveKind.JOURNALED,
                      device_column="device_id", journal_key=("calc_id", "device_id", "id"), journal=INTERVALS_JOURNAL),
        RegionalTable(Assignment._meta.db_table, moves=MoveKind.ENTITIES),
        RegionalTable(CalculatorGeofence._meta.db_table, moves=MoveKind.ENTITIES),
        # Calculators assigned to groups (of devices): their rows refer to both.
        RegionalTable(GroupAssignment._meta.db_table, moves=MoveKind.ENTITIES),
        # Calculators chaining others (both ends are calculators of the account).
        RegionalTable(CalculatorSource._meta.db_table, moves=MoveKind.ENTITIES),
        CALCULATORS,
        RegionalTable(Geofence._meta.db_table, moves=MoveKind.ENTITIES),
    ],
    derived_reset=message_blocks_reset,
)
