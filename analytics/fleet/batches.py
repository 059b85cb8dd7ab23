"""The batch protocol the pump and the calc workers share (docs/analytics.md, "A
recalculation"): what one batch carries at most, how long a worker counts as busy with one, the
timeouts of offers and claims, and the sending of a worker's due assignments as one batch.

The pump sends a free worker the due assignments of every shard it holds, as one ``ShardRun``;
the worker, once done, sends itself what fell due meanwhile (``batch_send`` again) or clears its
busy mark, so that a busy worker takes more per task instead of more tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from django.conf import settings

from analytics.fleet.debounce import Offer
from flespi_site.fleet import Due, ShardRun, batch_busy_key

# Debounce entries and the engine speak of finite timestamps; "all of history" is this range.
HISTORY_BEGIN = 0.0
HISTORY_END = float(2**40)
# Assignments one batch carries, about (one task writes them in one transaction, and their events
# are published after its commit): shared among the shards with timers due (``batch_limit``).
BATCH = 500
# How long a batch sent to a worker keeps the pump from sending it another (unless the worker
# says sooner that it is done): a worker that died on one is sent the next after this.
BATCH_TTL = 10
# A claimed run must end within this long, or its range is offered again (a crashed run).
RUN_TIMEOUT = 300.0
# An offer the worker did not claim within this long is offered again.
OFFER_TIMEOUT = 15.0


def finite(begin: float, end: float) -> tuple[float, float]:
    """A range clipped to ``HISTORY_BEGIN..HISTORY_END`` (what the debounce timers hold)."""
    return max(begin, HISTORY_BEGIN), min(end, HISTORY_END)


def region_aliases(region: str) -> list[str]:
    """The datacenter databases of ``region`` this process has."""
    return [dc.alias for dc in settings.TOPOLOGY.region(region).datacenters if dc.alias in settings.DATABASES]


def batch_limit(due_shards: int) -> int:
    """Due assignments taken per shard for one batch over ``due_shards`` shards with timers due:
    ``BATCH`` shared among them, rounded up (at least one each). A batch thus stays about
    ``BATCH`` long however many shards are due, and every due shard has its share of each."""
    return max(1, -(-BATCH // max(1, due_shards)))


def batch_send(*, app, client, region: str, worker_id: str, offers: Mapping[int, Sequence[Offer]]) -> int:
    """Send a worker the due assignments of its shards (shard -> offers) as one batch, to its
    queue, and mark it busy until it is done; returns how many went."""
    shards = sorted(shard for shard, pairs in offers.items() if pairs)
    if not shards:
        return 0
    due = tuple(Due(offer.calc_id, offer.device_id, shard) for shard in shards for offer in offers[shard])
    # Set before sending: the worker clears it when the batch is done.
    client.set(batch_busy_key(region, worker_id), 1, ex=BATCH_TTL)
    ShardRun(region=region, shard=shards[0], due=due).send(app, worker_id)
    return len(due)


def busy_workers(client, *, region: str, workers: set[str]) -> set[str]:
    """The workers with a batch waiting or running."""
    order = sorted(workers)
    if not order:
        return set()
    flags = client.mget([batch_busy_key(region, worker) for worker in order])
    return {worker for worker, flag in zip(order, flags, strict=True) if flag is not None}


def batch_done(client, *, region: str, worker_id: str) -> None:
    """The worker is free: the pump may send it the next batch."""
    client.delete(batch_busy_key(region, worker_id))
