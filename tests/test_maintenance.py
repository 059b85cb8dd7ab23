"""Vacuuming of the queue tables (``flespi_site.maintenance``) in a datacenter test database."""

from __future__ import annotations

import pytest
from django.db import connections

from flespi_site.maintenance import vacuum_queues

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


def dead_rows(alias: str, table: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", [table])
        return cursor.fetchone()[0]


def test_a_queue_table_with_many_dead_rows_is_vacuumed_and_the_others_left_alone(platform):
    from django.conf import settings

    alias = settings.TOPOLOGY.region("eu").datacenters[0].alias
    with connections[alias].cursor() as cursor:
        cursor.execute("VACUUM message_changes")
        cursor.execute(
            "INSERT INTO message_changes (device_id, shard, begin_ts, end_ts) "
            "SELECT n, 0, n, n FROM generate_series(1, 3000) AS n"
        )
        cursor.execute("DELETE FROM message_changes WHERE begin_ts BETWEEN 1 AND 3000")
    assert dead_rows(alias, "message_changes") >= 3000

    assert vacuum_queues(alias=alias, dead_rows=10_000) == []  # below the threshold: left alone
    assert vacuum_queues(alias=alias, tables=["message_changes"], dead_rows=2_000) == ["message_changes"]
    assert dead_rows(alias, "message_changes") < 3000
