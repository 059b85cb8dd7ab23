"""The size of a worker's batch (``analytics.fleet.batches.batch_limit``)."""

from __future__ import annotations

import pytest

from analytics.fleet.batches import BATCH, batch_limit


@pytest.mark.parametrize("due_shards", [0, 1, 2, 7, 100, 256, 499, 500, 501, 4096])
def test_a_batch_holds_about_batch_whatever_the_number_of_due_shards(due_shards):
    limit = batch_limit(due_shards)
    shards = max(1, due_shards)
    # Every due shard has a share, and the whole stays within one share per shard of BATCH.
    assert limit >= 1
    assert limit * shards >= min(BATCH, shards)
    assert limit * shards < BATCH + shards


def test_a_worker_with_every_shard_due_takes_two_of_each_not_fifty():
    # 256 shards with timers due used to give 50 each: batches of up to 12,800 runs, whose events
    # all waited for the one commit at the end.
    assert batch_limit(256) == 2
    assert batch_limit(1) == BATCH
