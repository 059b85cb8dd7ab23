"""Message blocks: stored messages of a device by column, a columnar copy of the ``messages`` rows
that the on-demand calculation and the shard caches' fill read instead of decoding a JSON body
per message (``analytics.blocks``; why and how in docs/analytics.md, "Message blocks").

One row per block and column: ``name`` '' holds the block's timestamps, the others one
parameter each (``entry`` is the column's JSON description, ``data`` its arrays), so that a
calculation reads only the parameters it uses. A block vouches for ``lo..hi``: every stored
message of the device in that range is in it, and no other. The blocks of a device never
overlap.

Any change of stored messages in a range (ingestion, deletion: every write notes it in
``message_changes``) deletes the blocks that overlap it, in the same transaction, and notes the
device in ``message_block_work`` for the sealer (due at once when blocks went). The trigger takes the
device's block lock (shared; the sealer takes it exclusively while it builds a block), so a
block is never built from rows that a transaction in flight is changing.
"""

from django.db import migrations

from flespi_site.constants import LockSpace

# The advisory lock space of the device block locks (two-key form: space, device id mod 2**31).
LOCK_SPACE = int(LockSpace.DEVICE_BLOCKS)

CREATE = f"""
CREATE TABLE message_blocks (
    device_id bigint NOT NULL,
    lo bigint NOT NULL,
    hi bigint NOT NULL,
    n integer NOT NULL,
    name text NOT NULL,
    entry text,
    data bytea NOT NULL,
    PRIMARY KEY (device_id, lo, name),
    CHECK (lo <= hi)
);
-- Arrays are read whole and hardly compress: kept out of line, uncompressed.
ALTER TABLE message_blocks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX message_blocks_hi_idx ON message_blocks (device_id, hi);

-- Devices the sealer is to look at, from ``due`` (unix seconds; 0: now).
CREATE TABLE message_block_work (device_id bigint PRIMARY KEY, due double precision NOT NULL DEFAULT 0);

CREATE FUNCTION message_blocks_invalidate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({LOCK_SPACE}, (d.device_id % 2147483648)::integer)
        FROM (SELECT DISTINCT device_id FROM changed ORDER BY device_id) AS d;
    -- A device not noted yet is noted (due now); one already noted is left as it is (no write on
    -- the hot path of appended messages) unless blocks of it were removed: then it is due now.
    WITH gone AS (
        DELETE FROM message_blocks AS b USING changed AS c
        WHERE b.device_id = c.device_id AND b.hi >= c.begin_ts AND b.lo <= c.end_ts
        RETURNING b.device_id
    )
    INSERT INTO message_block_work AS w (device_id, due)
        SELECT DISTINCT device_id, 0 FROM changed ORDER BY device_id
        ON CONFLICT (device_id) DO UPDATE SET due = 0 WHERE w.device_id IN (SELECT device_id FROM gone);
    RETURN NULL;
END
$$;
CREATE TRIGGER message_blocks_invalidate AFTER INSERT ON message_changes
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION message_blocks_invalidate();
"""

DROP = """
DROP TRIGGER message_blocks_invalidate ON message_changes;
DROP FUNCTION message_blocks_invalidate();
DROP TABLE message_block_work;
DROP TABLE message_blocks;
"""


class Migration(migrations.Migration):
    dependencies = [("analytics", "0003_intervals"), ("devices", "0004_message_changes")]
    operations = [migrations.RunSQL(CREATE, DROP, hints={"target": "regional"})]
