"""The numeric counters of each stored interval apart, as ``jsonb`` (``numbers``): what rollups
read without parsing the counters' JSON text (docs/analytics.md, "Rollups"). Rows written before
have none; a rollup reads their counters instead."""

from django.db import migrations

CREATE = "ALTER TABLE intervals ADD COLUMN numbers jsonb;"
DROP = "ALTER TABLE intervals DROP COLUMN numbers;"


class Migration(migrations.Migration):
    dependencies = [("analytics", "0005_geofences")]

    operations = [
        migrations.RunSQL(CREATE, DROP, hints={"target": "regional"}),
    ]
