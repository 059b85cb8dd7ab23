"""Webhooks (control database), and in every datacenter database the feed that a trigger on the
outbox fills with a copy of every row queued while the region has an enabled webhook, the switch
of that copy, and the delivery log. Why this shape is in docs/webhooks.md."""

import time

import django.db.models.deletion
from django.db import migrations, models

REGIONAL = """
CREATE TABLE webhook_feeding (on_since double precision NOT NULL);

CREATE TABLE webhook_feed (
    id bigserial PRIMARY KEY,
    device_id bigint NOT NULL,
    kind smallint NOT NULL,
    stamps bigint[],
    topic text,
    payload jsonb,
    retain boolean NOT NULL DEFAULT false,
    queued double precision NOT NULL
);

CREATE TABLE webhook_deliveries (
    id bigserial PRIMARY KEY,
    webhook_id bigint NOT NULL,
    device_id bigint NOT NULL,
    topic text NOT NULL,
    payload jsonb NOT NULL,
    queued double precision NOT NULL,
    status smallint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    first_try double precision,
    next_try double precision NOT NULL DEFAULT 0,
    last_status integer,
    last_error text NOT NULL DEFAULT '',
    done double precision,
    replay_of bigint
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, id) WHERE status = 0;
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, queued, id);
CREATE INDEX webhook_deliveries_device ON webhook_deliveries (device_id);
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (done) WHERE status <> 0;

CREATE FUNCTION webhook_feed_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_feeding) THEN
        INSERT INTO webhook_feed (device_id, kind, stamps, topic, payload, retain, queued)
        SELECT device_id, kind, stamps, topic, payload, retain, extract(epoch FROM created)
        FROM new_rows ORDER BY id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_webhook_feed AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_feed_copy();
"""

REGIONAL_DROP = """
DROP TRIGGER outbox_webhook_feed ON outbox;
DROP FUNCTION webhook_feed_copy();
DROP TABLE webhook_deliveries;
DROP TABLE webhook_feed;
DROP TABLE webhook_feeding;
"""


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("accounts", "0003_account_moves"),
        ("devices", "0002_message_tables"),
    ]

    operations = [
        migrations.CreateModel(
            name="Webhook",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=255)),
                ("triggers", models.JSONField()),
                ("configuration", models.JSONField()),
                ("enabled", models.BooleanField(default=True)),
                ("secret", models.CharField(max_length=128)),
                ("retry_seconds", models.PositiveIntegerField(default=86400)),
                ("timeout", models.PositiveSmallIntegerField(default=10, help_text="seconds per request")),
                ("created", models.FloatField(default=time.time, help_text="unix time")),
                ("account", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="webhooks",
                                              to="accounts.account")),
            ],
            options={
                "ordering": ["id"],
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("retry_seconds__lte", 604800)),
                                           name="webhook_retry_seconds_range"),
                    models.CheckConstraint(condition=models.Q(("timeout__gte", 1), ("timeout__lte", 60)),
                                           name="webhook_timeout_range"),
                ],
            },
        ),
        migrations.RunSQL(REGIONAL, REGIONAL_DROP, hints={"target": "regional"}),
    ]
