"""Stored intervals: a plain table in every datacenter database, hash-partitioned by device like
messages. Why this shape is in docs/analytics.md ("Interval storage")."""

from django.db import migrations

from analytics.constants import INTERVALS_PARTITIONS

PARTITIONS = "\n".join(
    f"CREATE TABLE intervals_p{r} PARTITION OF intervals FOR VALUES WITH (MODULUS {INTERVALS_PARTITIONS}, REMAINDER {r});"
    for r in range(INTERVALS_PARTITIONS)
)

CREATE = f"""
CREATE TABLE intervals (
    calc_id bigint NOT NULL,
    device_id bigint NOT NULL,
    id bigint NOT NULL,
    "begin" double precision NOT NULL,
    "end" double precision NOT NULL,
    duration double precision NOT NULL,
    timestamp double precision NOT NULL,
    counters json NOT NULL,
    user_fields jsonb,
    PRIMARY KEY (calc_id, device_id, id),
    FOREIGN KEY (calc_id, device_id) REFERENCES analytics_assignment (calculator_id, device_id) ON DELETE CASCADE
) PARTITION BY HASH (device_id);
{PARTITIONS}
CREATE INDEX intervals_end_idx ON intervals (calc_id, device_id, "end");
"""


class Migration(migrations.Migration):
    dependencies = [("analytics", "0002_calculators_assignments")]

    operations = [
        migrations.RunSQL(CREATE, "DROP TABLE intervals;", hints={"target": "regional"}),
    ]
