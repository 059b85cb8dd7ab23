"""The pump of a region (DESIGN 3 and 8): turns due debounce timers into Celery messages, one per
worker per round (its batch over the shards it holds, see ``Pump.pump_once``), and runs the periodic sweeps that keep the fleet honest:

* reconciliation (every ``RECONCILE_EVERY`` s): shards with unconsumed change-log rows are woken,
  and enabled assignments with a durable request (a pending range, or not synced) that have no
  debounce entry (Redis lost it, or a worker died between its commit and arming the timer) are
  scheduled again;
* purges (every ``PURGE_EVERY`` s): each shard's worker is asked to apply ``intervals_ttl`` /
  ``intervals_rotate`` and its cache's message retention;
* the connection sweep (every ``DISCONNECT_EVERY`` s): devices not heard from for
  ``DEVICE_CONNECTION_TIMEOUT`` s are no longer connected (``devices.services.devices_disconnect``).

The pump process also runs the sealer of message blocks (``analytics.blocks``) and the vacuuming
of the datacenters' queue tables (``flespi_site.maintenance``), each a loop of its own.

Wall-clock closing of active intervals (``max_inactive``, the end of a ``datetime`` period) and
opening of ``inactive`` ones need nothing here: the worker arms a timer at that moment, and the
pump sends it when it is due.
Several pumps of one region are harmless: each due timer is offered once (the pump script), and
reconciliation only adds what is missing.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from django.conf import settings

from analytics.fleet.batches import OFFER_TIMEOUT, batch_limit, batch_send, busy_workers, region_aliases
from analytics.fleet.debounce import DebounceTimers, Offer
from analytics.fleet.requests import requests_read
from devices import storage as message_storage
from devices.services import devices_disconnect
from flespi_site.celery import celery_app, redis_client, shards_wake
from flespi_site.fleet import ShardPurge, lease_holders, shards_held
from flespi_site.runner import Loop

logger = logging.getLogger(__name__)

ROUND_SECONDS = 0.05
# The shortest pause between rounds when a timer falls due sooner than a round.
MIN_PAUSE = 0.005
RECONCILE_EVERY = 5.0
PURGE_EVERY = 300.0
# A purge's shard tasks are sent spread over this many seconds, not at once: each takes a worker
# a few ms, and hundreds queued together would hold up the runs behind them for seconds.
PURGE_SPREAD = 60.0
# Seconds between connection sweeps: how late after DEVICE_CONNECTION_TIMEOUT ``connected`` turns
# false on MQTT (the REST field is exact).
DISCONNECT_EVERY = 1.0



class Pump(Loop):
    """The pump of one region."""

    def __init__(self, *, region: str, round_seconds: float = ROUND_SECONDS, reconcile_every: float = RECONCILE_EVERY,
                 purge_every: float = PURGE_EVERY, purge_spread: float = PURGE_SPREAD):
        super().__init__()
        self.name = f"pump {region}"
        self.region = region
        self.round_seconds = round_seconds
        self.reconcile_every = reconcile_every
        self.purge_every = purge_every
        self.purge_spread = purge_spread
        self._purges: deque[tuple[float, str, int]] = deque()  # (when, worker, shard) of a purge under way
        self.client = redis_client(region)
        self.timers = DebounceTimers(self.client, region=region)
        self.app = celery_app(region)
        self.sent = 0
        self.messages = 0
        self._watched: list[int] = []
        self.reconciled = 0
        self._next_reconcile = 0.0
        self._next_purge = time.monotonic() + purge_every
        self._next_disconnect = 0.0
        self.disconnected = 0

    def counts(self) -> dict[str, int]:
        return {"assignments sent": self.sent, "messages": self.messages, "reconciled": self.reconciled,
                "disconnected": self.disconnected}

    def step(self) -> float:
        """One round: send what is due, reconcile and purge when their time comes; returns the
        pause until the next round."""
        self.pump_once()
        now = time.monotonic()
        if now >= self._next_reconcile:
            self.reconciled += self.reconcile()
            self._next_reconcile = now + self.reconcile_every
        if now >= self._next_purge:
            self.purge()
            self._next_purge = now + self.purge_every
        self._purge_due(now)
        if now >= self._next_disconnect:
            self.disconnected += self.disconnect()
            self._next_disconnect = now + DISCONNECT_EVERY
        return self._pause()

    def disconnect(self) -> int:
        """The connection sweep of every datacenter of the region; returns how many devices are no
        longer connected."""
        wall = time.time()
        return sum(len(devices_disconnect(alias=alias, now=wall)) for alias in region_aliases(self.region))

    def _pause(self) -> float:
        """Until the next timer of a shard whose worker is free falls due, within
        ``round_seconds`` (a busy worker sends itself what falls due on its shards)."""
        now, due = self.timers.next_due(shards=self._watched)
        if due is None:
            return self.round_seconds
        return min(self.round_seconds, max(MIN_PAUSE, due - now))

    def pump_once(self) -> int:
        """Send every due assignment; returns how many. The due assignments of the shards one
        worker holds go in one message to its queue, and no more to that worker while one is
        waiting or running: what falls due meanwhile waits for its next batch, so that a busy
        worker takes more per task instead of more tasks. Shards nobody holds wait for their
        next holder, which takes their timers back when it takes them."""
        now, index = self.timers.due_index()
        holders = self._holders(sorted(index))
        busy = busy_workers(self.client, region=self.region,
                            workers={worker for worker in holders.values() if worker is not None})
        held = {shard: worker for shard, worker in holders.items() if worker is not None}
        self._watched = [shard for shard, worker in held.items() if worker not in busy]
        due_by_worker: dict[str, list[int]] = {}
        for shard in self._watched:
            if index[shard] <= now:
                due_by_worker.setdefault(held[shard], []).append(shard)
        by_limit: dict[int, list[int]] = {}
        for due_shards in due_by_worker.values():
            by_limit.setdefault(batch_limit(len(due_shards)), []).extend(due_shards)
        offers: dict[int, list] = {}
        for limit, shards in by_limit.items():
            offers.update(self.timers.pump_many(shards=shards, limit=limit, offer_timeout=OFFER_TIMEOUT))
        batches: dict[str, dict[int, list[Offer]]] = {}
        for shard in sorted(offers):
            batches.setdefault(held[shard], {})[shard] = offers[shard]
        sent = 0
        for worker, batch in batches.items():
            sent += batch_send(app=self.app, client=self.client, region=self.region, worker_id=worker, offers=batch)
            self.messages += 1
        self.sent += sent
        return sent

    def _holders(self, shards: list[int]) -> dict[int, str | None]:
        """The worker holding each of ``shards`` (None: free), one read."""
        if not shards:
            return {}
        return lease_holders(self.client.pipeline(transaction=False), region=self.region, shards=shards)

    def reconcile(self) -> int:
        """Wake shards with unconsumed changes; schedule durable requests Redis does not hold.
        Returns how many assignments were scheduled again."""
        aliases = region_aliases(self.region)
        changed_shards: set[int] = set()
        for alias in aliases:
            changed_shards |= message_storage.changes_shards(alias=alias)
        requests = requests_read(aliases=aliases)
        if changed_shards:
            shards_wake(region=self.region, shards=changed_shards, force=True)
        self.timers.reindex(shards=range(settings.CALC_SHARDS))
        scheduled = 0
        for shard, missing in self.timers.unheld(requests).items():
            self.timers.schedule(shard=shard, changes=missing)
            scheduled += len(missing)
            logger.info("%s: shard %s: %d assignment(s) scheduled again by reconciliation", self.name, shard,
                        len(missing))
        return scheduled

    def purge(self) -> None:
        """Ask each shard's worker for retention (one shard task after the other over
        ``purge_spread`` seconds: ``_purge_due``), and forget the change log's drains older than
        ``CALC_CATCHUP_WINDOW``."""
        held = shards_held(self.client, region=self.region, shards=range(settings.CALC_SHARDS))
        pairs = [(worker, shard) for worker, shards in held.items() for shard in shards]
        step = self.purge_spread / max(len(pairs), 1)
        start = time.monotonic()
        self._purges = deque((start + number * step, worker, shard) for number, (worker, shard) in enumerate(pairs))
        self._purge_due(start)
        for alias in region_aliases(self.region):
            message_storage.drains_prune(alias=alias, older_than=settings.CALC_CATCHUP_WINDOW)

    def _purge_due(self, now: float) -> None:
        """Send the shard purges whose time has come (a shard's new holder ignores a purge sent
        to its old one; the next purge reaches it)."""
        while self._purges and self._purges[0][0] <= now:
            _when, worker, shard = self._purges.popleft()
            ShardPurge(region=self.region, shard=shard).send(self.app, worker)
