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
    PRIMARY KEY (calc_id, device_id, id)
) PARTITION BY HASH (device_id);
{PARTITIONS}
CREATE INDEX intervals_end_idx ON intervals (calc_id, device_id, "end");

-- An assignment's intervals (and its retained state on the broker) go with it, however it is deleted (unassigned, its calculator or its
-- device deleted through the ORM's cascade). A trigger rather than a foreign key: Django's test
-- flush truncates the assignments table, which a foreign key would forbid. Writers of intervals
-- lock their assignment row first (analytics.storage.assignments_lock), so none can insert
-- intervals of an assignment that is being deleted.
CREATE FUNCTION intervals_of_assignment_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    base text := 'state/gw/calcs/' || OLD.calculator_id || '/devices/' || OLD.device_id || '/';
BEGIN
    DELETE FROM intervals WHERE calc_id = OLD.calculator_id AND device_id = OLD.device_id;
    -- Clear the assignment's retained state on the broker (a NULL payload is published empty).
    INSERT INTO outbox (device_id, kind, topic, payload, retain)
    SELECT OLD.device_id, 2, base || name, NULL, true FROM unnest(ARRAY['synced', 'last', 'active']) AS name;
    RETURN OLD;
END $$;
CREATE TRIGGER assignment_intervals_delete AFTER DELETE ON analytics_assignment
    FOR EACH ROW EXECUTE FUNCTION intervals_of_assignment_delete();
"""
DROP = """
DROP TRIGGER assignment_intervals_delete ON analytics_assignment;
DROP FUNCTION intervals_of_assignment_delete();
DROP TABLE intervals;
"""


class Migration(migrations.Migration):
    dependencies = [("analytics", "0002_calculators_assignments")]

    operations = [
        migrations.RunSQL(CREATE, DROP, hints={"target": "regional"}),
    ]
