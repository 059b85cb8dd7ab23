"""Messages, telemetry and the outbox: plain tables in every datacenter database.

Why this shape is in docs/messages.md.
"""

from django.db import migrations

from devices.constants import MESSAGES_PARTITIONS

PARTITIONS = "\n".join(
    f"CREATE TABLE messages_p{r} PARTITION OF messages FOR VALUES WITH (MODULUS {MESSAGES_PARTITIONS}, REMAINDER {r});"
    for r in range(MESSAGES_PARTITIONS)
)

CREATE = f"""
CREATE TABLE messages (
    device_id bigint NOT NULL,
    ts bigint NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (device_id, ts)
) PARTITION BY HASH (device_id);
{PARTITIONS}

CREATE TABLE telemetry (
    device_id bigint NOT NULL,
    name text NOT NULL,
    value jsonb NOT NULL,
    ts bigint NOT NULL,
    PRIMARY KEY (device_id, name)
);

CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    device_id bigint NOT NULL,
    kind smallint NOT NULL,
    stamps bigint[],
    topic text,
    payload jsonb,
    retain boolean NOT NULL DEFAULT false,
    created timestamptz NOT NULL DEFAULT now()
);
"""

DROP = "DROP TABLE outbox; DROP TABLE telemetry; DROP TABLE messages;"


class Migration(migrations.Migration):
    dependencies = [("devices", "0001_devices")]
    operations = [migrations.RunSQL(CREATE, DROP, hints={"target": "regional"})]
