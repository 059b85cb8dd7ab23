"""The numeric counters of each stored interval as two arrays, ``number_keys text[]`` and
``number_values float8[]`` (the value of ``number_keys[i]`` is ``number_values[i]``), in place
of ``numbers jsonb``: a rollup reads a value with a subscript and no conversion, where a jsonb
lookup made a ``numeric`` of it and then a double through its text (docs/analytics.md,
"Rollups"). Every row is filled, from ``numbers`` or, for a row written before it, from the
counters' text; a number beyond the range of a double is left out, as the writer leaves it out."""

from django.db import migrations

CREATE = """
ALTER TABLE intervals ADD COLUMN number_keys text[], ADD COLUMN number_values float8[];
UPDATE intervals AS i SET number_keys = COALESCE(n.keys, '{}'), number_values = COALESCE(n.vals, '{}')
FROM (
    SELECT calc_id, device_id, id,
        array_agg(e.key ORDER BY e.key) FILTER (WHERE e.ok) AS keys,
        array_agg(e.value::text::float8 ORDER BY e.key) FILTER (WHERE e.ok) AS vals
    FROM intervals
    LEFT JOIN LATERAL (
        SELECT key, value, jsonb_typeof(value) = 'number' AND abs(value::text::numeric) <= 1.7976931348623157e308 AS ok
        FROM jsonb_each(COALESCE(numbers, counters::jsonb))
    ) AS e ON true
    GROUP BY calc_id, device_id, id
) AS n
WHERE i.calc_id = n.calc_id AND i.device_id = n.device_id AND i.id = n.id;
ALTER TABLE intervals ALTER COLUMN number_keys SET NOT NULL, ALTER COLUMN number_values SET NOT NULL,
    DROP COLUMN numbers;
"""
DROP = """
ALTER TABLE intervals ADD COLUMN numbers jsonb;
UPDATE intervals SET numbers = (SELECT jsonb_object_agg(k, v) FROM unnest(number_keys, number_values) AS u(k, v))
WHERE cardinality(number_keys) > 0;
ALTER TABLE intervals DROP COLUMN number_keys, DROP COLUMN number_values;
"""


class Migration(migrations.Migration):
    dependencies = [("analytics", "0008_calculator_chaining")]

    operations = [
        migrations.RunSQL(CREATE, DROP, hints={"target": "regional"}),
    ]
