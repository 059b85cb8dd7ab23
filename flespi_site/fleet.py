"""The contract between the web processes and the calc fleet, in one Django-free module: the
shard of a device, the queues, the tasks and their typed payloads, every Redis key the fleet
uses, and the wake-ups the web sends after a commit (docs/analytics.md, "Processes").

Every hop from one process to another goes through a name defined here: a request that stores
messages calls ``shards_wake``, which sends a ``ShardChanges`` payload to the queue of the shard's
holder (``worker_queue``); the calc worker's task (``analytics.fleet.tasks``) is registered under the same
``FleetTask`` name and decodes the same payload class. ``tests/test_protocols.py`` fails on a task
name, a Redis key prefix or a lock number spelled anywhere else.

No Django here (a test guards it): callers pass the region's Celery app and Redis client
(``flespi_site.celery``), so the calc processes, the web and the tests share one definition.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from kombu.transport.redis import PRIORITY_STEPS, Channel

logger = logging.getLogger(__name__)


def shard_of(device_id: int, shards: int) -> int:
    """The calculation shard of a device: a stable hash of its id."""
    return zlib.crc32(str(device_id).encode()) % shards


# -- queues and tasks --------------------------------------------------------------------------


def worker_queue(region: str, worker: str) -> str:
    """The queue of a calc worker (by its stable name): all work on the shards it holds goes
    through it, so that a worker polls one queue however many shards it holds. A message for a
    shard that moved meanwhile is passed on to its holder (``analytics.fleet.tasks``)."""
    return f"calc.{region}.w.{worker}"


def control_queue(region: str) -> str:
    """The queue every calc worker of ``region`` consumes besides its own (nothing is sent to it
    today; Celery needs a default)."""
    return f"calc.{region}.control"


class FleetTask(StrEnum):
    """The calc fleet's Celery tasks. The values are the names messages carry in the broker:
    stable across deploys, so that a message sent by one version is run by the next."""

    SHARD_CHANGES = "analytics.shard_changes"
    SHARD_RUN = "analytics.shard_run"
    SHARD_REQUESTS = "analytics.shard_requests"
    SHARD_PURGE = "analytics.shard_purge"
    SHARD_FILL = "analytics.shard_fill"

    @property
    def short(self) -> str:
        """The name without its app's prefix (``shard_run``), as the benchmarks' reports show it."""
        return self.value.partition(".")[2]


class _App(Protocol):
    def send_task(self, name: str, args: Sequence[Any] | None = ..., **options: Any) -> Any: ...


@dataclass(frozen=True)
class ShardPayload:
    """What a fleet task carries: the region and the shard it is about, and the task's own fields.
    ``args`` is the message's body; ``from_args`` reads it back."""

    task: ClassVar[FleetTask]
    region: str
    shard: int

    def args(self) -> list[Any]:
        return [self.region, self.shard]

    @classmethod
    def from_args(cls, region: str, shard: int) -> ShardPayload:
        return cls(region=region, shard=int(shard))

    def send(self, app: _App, worker: str) -> None:
        """Send it to the queue of ``worker``, the shard's holder (with the app's publish retry
        policy)."""
        app.send_task(self.task.value, args=self.args(), queue=worker_queue(self.region, worker))


@dataclass(frozen=True)
class ShardChanges(ShardPayload):
    """Drain the change log: sent by ``shards_wake`` to the holder of ``shard`` (one of the changed
    shards), ``address`` (its name), which drains every shard its dirty set names."""

    task: ClassVar[FleetTask] = FleetTask.SHARD_CHANGES
    address: str = ""

    def args(self) -> list[Any]:
        return [self.region, self.shard, self.address]

    @classmethod
    def from_args(cls, region: str, shard: int, address: str | int | None = None) -> ShardChanges:
        return cls(region=region, shard=int(shard), address="" if address is None else str(address))


@dataclass(frozen=True)
class Due:
    """An assignment whose debounce timer fell due, in the shard its device is in."""

    calc_id: int
    device_id: int
    shard: int


@dataclass(frozen=True)
class ShardRun(ShardPayload):
    """Recalculate these due assignments: one batch of a worker over every shard it holds (``shard``
    is the first of them)."""

    task: ClassVar[FleetTask] = FleetTask.SHARD_RUN
    due: tuple[Due, ...] = ()

    def args(self) -> list[Any]:
        return [self.region, self.shard, [[item.calc_id, item.device_id, item.shard] for item in self.due]]

    @classmethod
    def from_args(cls, region: str, shard: int, due: Sequence[Sequence[int]] = ()) -> ShardRun:
        return cls(
            region=region,
            shard=int(shard),
            due=tuple(Due(int(calc_id), int(device_id), int(of)) for calc_id, device_id, of in due),
        )

    def by_shard(self) -> dict[int, list[tuple[int, int]]]:
        """shard -> [(calc_id, device_id)], the batch as the worker runs it (the payload's shard
        alone, empty, when nothing is due: the worker then only hands on its next batch)."""
        batch: dict[int, list[tuple[int, int]]] = {}
        for item in self.due:
            batch.setdefault(item.shard, []).append((item.calc_id, item.device_id))
        return batch or {self.shard: []}


@dataclass(frozen=True)
class ShardRequests(ShardPayload):
    """Schedule the shard's durable recalculation requests now (a new assignment, a calculator
    change): without it they wait for the pump's reconciliation."""

    task: ClassVar[FleetTask] = FleetTask.SHARD_REQUESTS


@dataclass(frozen=True)
class ShardPurge(ShardPayload):
    """Apply ``intervals_ttl`` / ``intervals_rotate`` and the cache's message retention."""

    task: ClassVar[FleetTask] = FleetTask.SHARD_PURGE


@dataclass(frozen=True)
class ShardFill(ShardPayload):
    """Fill the cache with the devices of the shard that have an enabled assignment and are not
    cached yet (a shard just taken), a slice at a time: the worker sends itself the rest."""

    task: ClassVar[FleetTask] = FleetTask.SHARD_FILL


# -- Redis keys --------------------------------------------------------------------------------
# Every key the platform writes in a region's Redis starts with ``flespi:<region>:``, so that
# regions sharing one Redis (the embedded default) stay apart.


def region_prefix(region: str) -> str:
    """The prefix of every key of ``region`` (a test or a benchmark clears a region by it)."""
    return f"flespi:{region}:"


def celery_prefix(region: str) -> str:
    """Where the region's Celery app keeps its queues and its unacknowledged messages."""
    return f"{region_prefix(region)}celery:"


def queue_keys(region: str, worker: str) -> list[str]:
    """The Redis lists of a worker's Celery queue: kombu keeps one per priority step."""
    prefix, queue = celery_prefix(region), worker_queue(region, worker)
    return [f"{prefix}{queue}{Channel.sep}{step}" if step else f"{prefix}{queue}" for step in PRIORITY_STEPS]


def unacked_key(region: str) -> str:
    """The hash of the messages delivered to a worker and not acknowledged yet (kombu's)."""
    return f"{celery_prefix(region)}unacked"


def wake_key(region: str, worker: str | int) -> str:
    """Set while a wake-up message addressed to ``worker`` waits (at most one does)."""
    return f"{region_prefix(region)}wake:{worker}"


def dirty_key(region: str, worker: str) -> str:
    """The shards of ``worker`` whose change log got rows that no drain has taken yet (a set the
    writers add to after their commit, and the worker empties before it reads the log)."""
    return f"{region_prefix(region)}dirty:{worker}"


def deliveries_key(region: str, task_id: str) -> str:
    """How often a task message was delivered (a worker that keeps dying on it drops it)."""
    return f"{region_prefix(region)}deliveries:{task_id}"


def batch_busy_key(region: str, worker_id: str) -> str:
    """Set while a batch sent to ``worker_id`` waits or runs (with a TTL, for a worker that died
    on it); the worker clears it when the batch is done and nothing else is due."""
    return f"{region_prefix(region)}batch:{worker_id}"


def lease_key(region: str, shard: int) -> str:
    """The shard's lease: ``"<worker> <epoch>"`` with a TTL."""
    return f"{region_prefix(region)}shards:lease:{int(shard)}"


def epoch_key(region: str, shard: int) -> str:
    """The shard's newest epoch (never expires)."""
    return f"{region_prefix(region)}shards:epoch:{int(shard)}"


def workers_key(region: str) -> str:
    """The live workers: a sorted set of worker id -> heartbeat expiry (Redis's clock, ms)."""
    return f"{region_prefix(region)}shards:workers"


def worker_reports_key(region: str) -> str:
    """A hash of worker name -> what the worker reports of itself at each balance (JSON: host,
    pid, start, shards held, fills in progress, catch-ups), for the status page."""
    return f"{region_prefix(region)}shards:reports"


def debounce_keys(region: str, shard: int) -> list[str]:
    """The shard's debounce timers: due times, pending ranges, entries, the offer token, and the
    region's index of shards by their earliest timer (``due_index_key``)."""
    base = f"{region_prefix(region)}debounce:{int(shard)}"
    return [base, f"{base}:pending", f"{base}:entries", f"{base}:token", due_index_key(region)]


def rate_limit_key(region: str, budget: str, token_id: int) -> str:
    """A token's bucket of one rate-limit budget (``requests`` or ``messages``) in the region's
    Redis: the time at which it is full again (``flespi_site.api.throttling``)."""
    return f"{region_prefix(region)}ratelimit:{budget}:{int(token_id)}"


def due_index_key(region: str) -> str:
    """Every shard with a timer, scored by its earliest one (ms): the pump and a worker read what
    is due from it in one command, however many shards there are."""
    return f"{region_prefix(region)}debounce:due"


def lease_holder(value: bytes | str | None) -> tuple[str | None, int | None]:
    """(worker, epoch) of a lease's value, (None, None) when free."""
    if value is None:
        return None, None
    owner, _, epoch = (value.decode() if isinstance(value, bytes) else str(value)).rpartition(" ")
    return owner or None, int(epoch) if epoch.isdigit() else None


def lease_holders(pipe, *, region: str, shards: Sequence[int]) -> dict[int, str | None]:
    """The worker holding each of ``shards`` (None: free). ``pipe`` is a redis-py pipeline with
    other commands queued before: they run in the same round trip, and this reads the last reply."""
    pipe.mget([lease_key(region, shard) for shard in shards])
    values = pipe.execute()[-1]
    return {shard: lease_holder(value)[0] for shard, value in zip(shards, values, strict=True)}


# -- wake-ups ------------------------------------------------------------------------------------

# A message not acknowledged this long after delivery (its worker hangs, or the connection
# vanished without a close) is delivered again; it must exceed the longest task.
VISIBILITY_TIMEOUT = 900
# A wake-up flag left by a message nobody took (its queue's shard had no holder for that long)
# lets the next change send another after this.
WAKE_TTL = 60


def shards_held(client, *, region: str, shards: Iterable[int]) -> dict[str, list[int]]:
    """The holders of ``shards`` (one round trip), each with its shards in order; shards nobody
    holds are left out: whoever takes them next drains their change log and schedules their
    requests when it does (``analytics.fleet.process``)."""
    order = sorted(set(shards))
    if not order:
        return {}
    holders = lease_holders(client.pipeline(transaction=False), region=region, shards=order)
    by_holder: dict[str, list[int]] = {}
    for shard in order:
        worker = holders[shard]
        if worker is not None:
            by_holder.setdefault(worker, []).append(shard)
    return by_holder


def shards_wake(*, app: _App, client, region: str, shards: Iterable[int], force: bool = False) -> None:
    """Tell the workers of ``shards`` that their devices' messages changed (the change log in the
    datacenter database says how), after the change committed.

    The shards are added to their holders' dirty sets (their leases, read first), which a worker
    empties before it reads the log, and each holder gets one wake-up message in its queue, none
    while one addressed to it still waits (a flag the consumer of the message clears). One drain
    takes the rows of every dirty shard the worker holds, so a request touching all shards costs
    it one task, not one per shard. A shard nobody holds gets nothing: its next holder drains it
    when it takes it. A broker that cannot be reached loses nothing (the pump's reconciliation
    finds the change log) and is only logged. ``force`` sends even when a wake-up is waiting
    (reconciliation: the one waiting may be in the hands of a worker that died)."""
    try:
        by_holder = shards_held(client, region=region, shards=shards)
        if not by_holder:
            return
        pipe = client.pipeline(transaction=False)
        for worker, held in by_holder.items():
            pipe.sadd(dirty_key(region, worker), *held)
            pipe.expire(dirty_key(region, worker), VISIBILITY_TIMEOUT)
            pipe.set(wake_key(region, worker), 1, nx=not force, ex=WAKE_TTL)
        replies = pipe.execute()
        for (worker, held), newly in zip(by_holder.items(), replies[2::3], strict=True):
            if newly:
                ShardChanges(region=region, shard=held[0], address=worker).send(app, worker)
    except Exception as exc:
        logger.warning("could not wake the calc workers of region %s (%s); the pump will catch up", region, exc)


def shards_request(*, app: _App, client, region: str, shards: Iterable[int]) -> None:
    """Tell the workers of ``shards`` that assignments of theirs have a new recalculation request
    stored (a new assignment, a calculator change, ...), so that they schedule it now rather than
    at the pump's next reconciliation. Losing this message loses nothing but that head start."""
    try:
        for worker, held in shards_held(client, region=region, shards=shards).items():
            for shard in held:
                ShardRequests(region=region, shard=shard).send(app, worker)
    except Exception as exc:  # the request is stored; reconciliation schedules it
        logger.warning("could not tell the calc workers of region %s of new requests (%s)", region, exc)
