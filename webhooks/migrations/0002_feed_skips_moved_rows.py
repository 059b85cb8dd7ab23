"""The outbox rows an account move copies into a datacenter database (``accounts.moves``, which
sets ``platform.move_copy`` for its copy of the logs) are not new events: the source fed them to
its own webhook feed when they were queued, and the move carries that feed and the delivery queues
along. The trigger leaves them out, so that a move never feeds an event to the target's webhooks
a second time (docs/webhooks.md, "Account moves")."""

from django.db import migrations

REGIONAL = """
CREATE OR REPLACE FUNCTION webhook_feed_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_feeding)
       AND current_setting('platform.move_copy', true) IS DISTINCT FROM 'on' THEN
        INSERT INTO webhook_feed (device_id, kind, stamps, topic, payload, retain, queued)
        SELECT device_id, kind, stamps, topic, payload, retain, extract(epoch FROM created)
        FROM new_rows ORDER BY id;
    END IF;
    RETURN NULL;
END $$;
"""

REGIONAL_BACK = """
CREATE OR REPLACE FUNCTION webhook_feed_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_feeding) THEN
        INSERT INTO webhook_feed (device_id, kind, stamps, topic, payload, retain, queued)
        SELECT device_id, kind, stamps, topic, payload, retain, extract(epoch FROM created)
        FROM new_rows ORDER BY id;
    END IF;
    RETURN NULL;
END $$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("webhooks", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(REGIONAL, REGIONAL_BACK, hints={"target": "regional"}),
    ]
