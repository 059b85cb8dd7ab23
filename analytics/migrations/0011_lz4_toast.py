"""The stored interval's counters and the queued events' payloads compressed with lz4, where the
server has it (PostgreSQL 14 and newer, built ``--with-lz4``, as Debian's and the container's
are): an open interval is rewritten at every message, its route growing all along, and its events
carry it three times (``updated``, ``active``, ``last``). Past 2 kB a value is compressed (TOAST),
and lz4 compresses it in a fraction of pglz's time: with hour-long trips a calc worker's run takes
about 30% less time (docs/analytics.md, "Fleet benchmarks"). Only values written from now on change; a server
without lz4 (the embedded PostgreSQL of ``make run``) keeps pglz."""

from django.db import migrations

# Every partition of ``intervals`` as well as the partitioned table (a partition keeps the
# setting it was made with), the outbox and the webhook feed that copies its rows.
COLUMNS = """
    SELECT c.oid::regclass AS stored, 'counters' AS field FROM pg_class AS c
    WHERE c.oid = 'intervals'::regclass
       OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'intervals'::regclass)
    UNION ALL SELECT 'outbox'::regclass, 'payload'
    UNION ALL SELECT 'webhook_feed'::regclass, 'payload'
"""


def compression(method: str) -> str:
    """The statement that sets ``method`` on every column of ``COLUMNS``, where the server has lz4."""
    return f"""
DO $$
DECLARE
    target record;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)
    ) THEN
        RETURN;
    END IF;
    FOR target IN {COLUMNS} LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET COMPRESSION {method}', target.stored, target.field);
    END LOOP;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("analytics", "0010_assignment_interval_names"),
        ("devices", "0010_device_activity"),
        ("webhooks", "0002_feed_skips_moved_rows"),
    ]

    operations = [
        migrations.RunSQL(compression("lz4"), compression("pglz"), hints={"target": "regional"}),
    ]
