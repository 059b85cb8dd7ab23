"""The shard fence: in every datacenter database, the newest lease epoch of each calculation
shard of its region. A worker writes intervals and outbox rows only in a transaction that first
checks its epoch against this row (``analytics.fleet.leases``), so a worker that lost its lease
cannot write (docs/analytics.md, "Shards and fencing")."""

from django.db import migrations

CREATE = """
CREATE TABLE shard_fence (
    shard integer PRIMARY KEY,
    epoch bigint NOT NULL CHECK (epoch >= 0),
    worker text NOT NULL DEFAULT '',
    updated timestamptz NOT NULL DEFAULT now()
);
"""


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []

    operations = [
        migrations.RunSQL(CREATE, "DROP TABLE shard_fence;", hints={"target": "regional"}),
    ]
