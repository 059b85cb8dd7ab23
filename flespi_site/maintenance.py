"""Vacuuming of the platform's queue tables (docs/running.md, "Maintenance").

A few tables work as queues: rows are inserted and deleted (or updated) all the time, so they
are small but leave dead rows behind at the rate of their traffic: the change log of messages,
the outbox, the sealer's work list, and the assignments (two updates per recalculation). Index
scans of a queue walk its dead rows until a vacuum removes them: a change log of a hundred live
rows with a quarter of a million dead ones took 20 ms to read instead of well under one.
PostgreSQL's autovacuum looks at a table at most once a ``autovacuum_naptime`` (a minute) and
may be off altogether, so each region's pump vacuums the queue tables of its datacenters itself
whenever their dead rows pass a threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.db import connections

from flespi_site.runner import Loop

logger = logging.getLogger(__name__)

QUEUE_TABLES = ("message_changes", "outbox", "message_block_work", "analytics_assignment")
# Dead rows a queue table may gather before it is vacuumed, and how often the tables are looked at.
DEAD_ROWS = 5_000
VACUUM_EVERY = 10.0


def vacuum_queues(*, alias: str, tables: Sequence[str] = QUEUE_TABLES, dead_rows: int = DEAD_ROWS) -> list[str]:
    """VACUUM each of ``tables`` in ``alias`` whose dead rows (PostgreSQL's statistics) are at
    least ``dead_rows``; a table another session holds locked is skipped this time. Returns the
    tables vacuumed. Must run outside a transaction (VACUUM cannot run inside one)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
            "AND relname = ANY(%s) AND n_dead_tup >= %s ORDER BY relname",
            [list(tables), dead_rows],
        )
        due = [row[0] for row in cursor.fetchall()]
        for table in due:
            cursor.execute(f'VACUUM (SKIP_LOCKED) "{table}"')
    if due:
        logger.info("maintenance %s: vacuumed %s", alias, ", ".join(due))
    return due


class QueueVacuum(Loop):
    """Vacuums the queue tables of the datacenter ``alias`` that need it, every ``every`` seconds."""

    def __init__(self, *, alias: str, every: float = VACUUM_EVERY, dead_rows: int = DEAD_ROWS):
        super().__init__()
        self.name = f"vacuum {alias}"
        self.alias = alias
        self.every = every
        self.dead_rows = dead_rows
        self.vacuumed = 0

    def counts(self) -> dict[str, int]:
        return {"tables vacuumed": self.vacuumed}

    def step(self) -> float:
        self.vacuumed += len(vacuum_queues(alias=self.alias, dead_rows=self.dead_rows))
        return self.every
