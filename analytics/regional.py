"""The rows of an account in the analytics app (see ``accounts.regional_data``): its calculators,
their assignments, and the assignments' stored intervals, and its devices' message blocks, all
in the datacenter database."""

from __future__ import annotations

from accounts.regional_data import RegionalTable
from analytics.models import Assignment, Calculator
from devices.regional import DEVICES

CALCULATORS = RegionalTable(Calculator._meta.db_table)

TABLES = [
    RegionalTable("message_blocks", column="device_id", through=DEVICES),
    RegionalTable("message_block_work", column="device_id", through=DEVICES),
    RegionalTable("intervals", column="calc_id", through=CALCULATORS),
    RegionalTable(Assignment._meta.db_table),
    CALCULATORS,
]
