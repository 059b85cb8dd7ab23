"""When each change-log row was written (the writer's transaction time): the calc worker counts
an assignment's debounce delay from it, not from the moment it read the log, so that the time a
change waited in the log does not add to the delay (docs/analytics.md, "New messages")."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("devices", "0004_message_changes")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE message_changes ADD COLUMN created timestamptz NOT NULL DEFAULT now();",
            "ALTER TABLE message_changes DROP COLUMN created;",
            hints={"target": "regional"},
        ),
    ]
