"""Every counter and user-field name of an assignment's stored intervals on its row
(``interval_names``, sorted, never shrinking): a CSV export of the intervals finds its header
there instead of reading the keys of every exported row (docs/api.md, "Exports"). Filled here
from the stored intervals, with the keys ``storage.intervals_keys`` reads (the counters' and the
user fields'); from then on the writers of intervals add to it in their transaction."""

import django.contrib.postgres.fields
from django.db import migrations, models

# The names in byte order (COLLATE "C"), as every writer of the column sorts them: the same as
# Python's ``sorted``. The distinct (assignment, name) pairs first: a hash of few rows, however
# many intervals.
CREATE = """
ALTER TABLE analytics_assignment ADD COLUMN interval_names text[] NOT NULL DEFAULT '{}';
UPDATE analytics_assignment AS a SET interval_names = n.names
FROM (
    SELECT calc_id, device_id, array_agg(name ORDER BY name COLLATE "C") AS names
    FROM (
        SELECT DISTINCT i.calc_id, i.device_id, k.name
        FROM intervals AS i
        CROSS JOIN LATERAL (
            SELECT json_object_keys(i.counters) UNION ALL SELECT jsonb_object_keys(COALESCE(i.user_fields, '{}'))
        ) AS k(name)
    ) AS pairs
    GROUP BY calc_id, device_id
) AS n
WHERE a.calculator_id = n.calc_id AND a.device_id = n.device_id;
"""
DROP = "ALTER TABLE analytics_assignment DROP COLUMN interval_names;"


class Migration(migrations.Migration):
    dependencies = [("analytics", "0009_interval_number_arrays")]

    operations = [
        migrations.RunSQL(
            CREATE,
            DROP,
            hints={"target": "regional"},
            state_operations=[
                migrations.AddField(
                    model_name="assignment",
                    name="interval_names",
                    field=django.contrib.postgres.fields.ArrayField(
                        base_field=models.TextField(), db_default=[], editable=False, size=None
                    ),
                ),
            ],
        ),
    ]
