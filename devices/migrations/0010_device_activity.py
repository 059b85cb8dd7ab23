"""When the platform last heard from each device, and whether it counts as connected: a plain
table in every datacenter database, written by ingestion and by the pump's connection sweep
(docs/messages.md, "Connected and last active")."""

from django.db import migrations

CREATE = """
CREATE TABLE device_activity (
    device_id bigint PRIMARY KEY,
    last_active double precision NOT NULL,
    connected boolean NOT NULL
);
CREATE INDEX device_activity_connected ON device_activity (last_active) WHERE connected;
"""

DROP = "DROP TABLE device_activity;"


class Migration(migrations.Migration):
    dependencies = [("devices", "0009_groups")]
    operations = [migrations.RunSQL(CREATE, DROP, hints={"target": "regional"})]
