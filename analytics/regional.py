"""The rows of an account in the analytics app (see ``accounts.regional_data``): its calculators,
their assignments, and the assignments' stored intervals, all in the datacenter database."""

from __future__ import annotations

from accounts.regional_data import RegionalTable
from analytics.models import Assignment, Calculator

CALCULATORS = RegionalTable(Calculator._meta.db_table)

TABLES = [
    RegionalTable("intervals", column="calc_id", through=CALCULATORS),
    RegionalTable(Assignment._meta.db_table),
    CALCULATORS,
]
