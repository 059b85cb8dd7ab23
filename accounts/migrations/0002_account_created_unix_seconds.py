"""``Account.created`` in unix seconds, like every other ``created`` of the platform (tokens,
devices) and like the API has always shown it (docs/api.md)."""

import time

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE accounts_account ALTER COLUMN created TYPE double precision "
                    "USING extract(epoch FROM created)",
                    "ALTER TABLE accounts_account ALTER COLUMN created TYPE timestamp with time zone "
                    "USING to_timestamp(created)",
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="account",
                    name="created",
                    field=models.FloatField(default=time.time, help_text="unix time"),
                ),
            ],
        ),
    ]
