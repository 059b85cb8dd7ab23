"""The change log of messages: one row per device and write (insert, merge or delete) with the
time range it changed, in the same transaction as the write. The calc worker of the device's
shard consumes it (docs/analytics.md, "New messages"): it is what makes a change that Redis lost
(a lost Celery message, a flushed broker) still reach the device's intervals."""

from django.db import migrations

CREATE = """
CREATE TABLE message_changes (
    id bigserial PRIMARY KEY,
    device_id bigint NOT NULL,
    shard smallint NOT NULL,
    begin_ts bigint NOT NULL,
    end_ts bigint NOT NULL,
    CHECK (begin_ts <= end_ts)
);
CREATE INDEX message_changes_shard_idx ON message_changes (shard, id);
"""


class Migration(migrations.Migration):
    dependencies = [("devices", "0003_message_body_json")]

    operations = [
        migrations.RunSQL(CREATE, "DROP TABLE message_changes;", hints={"target": "regional"}),
    ]
