"""A calc worker process: a Celery worker (solo pool: one task at a time, late acknowledgement,
prefetch of one) of one region that consumes its own queue (by its stable name), through which
all work on the shards it holds comes.

A consumer bootstep balances the shard leases every ``BALANCE_EVERY`` seconds in the consumer's
own loop (between tasks), and a heartbeat thread renews the leases every third of their TTL while
tasks run; both are loops of ``flespi_site.runner``, which owns their failures. A shard whose lease
is lost is dropped at the next balance, and anything its task tries to write is refused by the
fence in the meantime; a message for it still in this worker's queue is passed on to its new
holder. Run it with ``manage.py calc_worker --region eu``.
"""

from __future__ import annotations

import logging
import threading

from celery import bootsteps
from celery.signals import task_postrun, task_prerun, worker_ready
from django.db import close_old_connections

from analytics.fleet import tasks
from analytics.fleet.worker import ShardWorker
from flespi_site import health
from flespi_site.celery import celery_app
from flespi_site.fleet import control_queue, worker_queue
from flespi_site.runner import Loop, loops_problems, startup_frozen

logger = logging.getLogger(__name__)

BALANCE_EVERY = 2.0
# The write-behind caches are looked at this often between tasks, and at most this many flushed
# each time (spread: a commit of every shard at once would hold up the next task).
FLUSH_TICK = 0.1
FLUSH_PER_TICK = 16


class LeaseBalance(Loop):
    """Balance the shard leases (a step of the consumer's timer, between tasks) and, for the shards
    gained, have their change logs drained and their requests scheduled."""

    def __init__(self, worker: ShardWorker):
        super().__init__()
        self.name = f"calc {worker.region}: lease balance"
        self.worker = worker

    def step(self) -> float:
        worker = self.worker
        gained, lost = worker.rebalance()
        if gained:
            worker.taken_over(gained)
        worker.report_publish()
        if gained or lost:
            logger.info("calc %s: %s holds shards %s (gained %s, lost %s)", worker.region, worker.worker_id,
                        sorted(worker.held), gained, lost)
        return BALANCE_EVERY


class CacheFlush(Loop):
    """Flush the write-behind shard caches that held writes for ``FLUSH_EVERY`` seconds (a step of
    the consumer's timer, between tasks, like every use of the caches)."""

    def __init__(self, worker: ShardWorker):
        super().__init__()
        self.name = f"calc {worker.region}: cache flush"
        self.worker = worker

    def step(self) -> float:
        self.worker.caches_flush(at_most=FLUSH_PER_TICK)
        return FLUSH_TICK


class LeaseHeartbeat(Loop):
    """Renew the leases held every third of their TTL while tasks run (a thread of its own)."""

    def __init__(self, worker: ShardWorker, every: float):
        super().__init__()
        self.name = f"calc {worker.region}: lease heartbeat"
        self.worker = worker
        self.every = every

    def step(self) -> float:
        self.worker.renew()
        return self.every


def _make_step(worker: ShardWorker, balance: LeaseBalance, flush: CacheFlush):
    class ShardQueues(bootsteps.StartStopStep):
        """Balance the leases and flush the caches between tasks (the consumer's timer)."""

        requires = {"celery.worker.consumer.tasks:Tasks"}

        def start(self, consumer):
            # Every tick is one step under the runner's failure policy (Redis or a database away:
            # logged, counted, tried again at the next tick).
            balance.attempt()
            self.timer = consumer.timer.call_repeatedly(BALANCE_EVERY, balance.attempt, priority=10)
            self.flush_timer = consumer.timer.call_repeatedly(FLUSH_TICK, flush.attempt, priority=20)

        def stop(self, consumer):
            for name in ("timer", "flush_timer"):
                timer = getattr(self, name, None)
                if timer is not None:
                    timer.cancel()

        def shutdown(self, consumer):
            worker.leave(keep_place=True)

    return ShardQueues


def _connections_checked(**_kwargs) -> None:
    close_old_connections()


def run_calc_worker(*, region: str, data_dir: str, lease_ttl: float, name: str | None = None,
                    loglevel: str = "INFO") -> None:
    """Run a calc worker of ``region`` until SIGTERM/SIGINT (a warm shutdown: the running task
    finishes, the leases are released). ``name`` (else the first free slot of ``data_dir``) is its
    stable identity: ``analytics.fleet.home``."""
    worker = ShardWorker(region=region, worker_id=name, data_dir=data_dir, lease_ttl=lease_ttl)
    worker_id = worker.worker_id
    tasks.set_worker(worker)
    app = celery_app(region)
    # Between tasks, Django's rule for its connections, as between requests: one that failed or
    # is older than CONN_MAX_AGE is closed (the next task opens it again), the others are kept.
    task_prerun.connect(_connections_checked, weak=False)
    task_postrun.connect(_connections_checked, weak=False)
    worker_ready.connect(lambda **_kwargs: startup_frozen(f"calc {region} {worker_id}"), weak=False)
    app.conf.task_default_queue = control_queue(region)
    queues = f"{worker_queue(region, worker_id)},{app.conf.task_default_queue}"
    balance = LeaseBalance(worker)
    app.steps["consumer"].add(_make_step(worker, balance, CacheFlush(worker)))
    heartbeat = LeaseHeartbeat(worker, lease_ttl / 3)
    # Ready once it balances its leases (its consumer runs) and renews them, each step succeeding.
    server = health.serve(role=f"calc {region} {worker_id}", problems=lambda: loops_problems([heartbeat, balance]))
    beat = threading.Thread(target=heartbeat.run, name="lease-heartbeat", daemon=True)
    beat.start()
    logger.info("calc %s: worker %s starting (data in %s)", region, worker_id, worker.data_dir)
    try:
        app.worker_main(
            argv=["worker", "--pool=solo", f"--loglevel={loglevel}", "-n", f"{worker_id}@calc",
                  "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queues]
        )
    finally:
        if server is not None:
            server.stop()
        heartbeat.stop()
        try:
            worker.close()
        except Exception:
            logger.exception("calc %s: releasing the shard leases failed", region)
        tasks.set_worker(None)
