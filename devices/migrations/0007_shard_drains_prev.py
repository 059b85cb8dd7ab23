"""Each drain of the change log also keeps when the drain before it was taken (µs since the
epoch): a cache whose last drain is not the predecessor of the drains it missed (the database was
restored to an earlier point, then drained again under the same numbers) is refilled, even when
its own drain was pruned meanwhile (docs/analytics.md, "Cache validity"). Rows written before have
none: nothing is known of theirs."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("devices", "0006_shard_drains")]

    operations = [
        migrations.RunSQL("ALTER TABLE shard_drains ADD COLUMN prev bigint;",
                          "ALTER TABLE shard_drains DROP COLUMN prev;", hints={"target": "regional"}),
    ]
