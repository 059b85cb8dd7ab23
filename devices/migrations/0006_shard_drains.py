"""What each drain of the change log took, per shard, numbered: a calc worker's cache records the
number of the last drain it applied, and a cache that comes back to a shard after another host
drained it reads the ranges it missed from here (docs/analytics.md, "Cache validity"). The
newest row of each shard is never deleted, so numbers are never reused."""

from django.db import migrations

CREATE = """
CREATE TABLE shard_drains (
    shard integer NOT NULL,
    seq bigint NOT NULL CHECK (seq > 0),
    drained timestamptz NOT NULL DEFAULT now(),
    ranges jsonb NOT NULL,
    PRIMARY KEY (shard, seq)
);
"""


class Migration(migrations.Migration):
    dependencies = [("devices", "0005_message_changes_created")]

    operations = [
        migrations.RunSQL(CREATE, "DROP TABLE shard_drains;", hints={"target": "regional"}),
    ]
