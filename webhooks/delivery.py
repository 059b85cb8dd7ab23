"""The delivery loop of one datacenter database (a loop of ``flespi_site.runner``): fans the feed
out into per-webhook queues and sends them.

Each step, in the loop's own thread (the only one that touches the database):

1. reads the region's enabled webhooks again when ``refresh`` seconds passed, and before fanning
   out events written after its last read (so a webhook gets every event written after it was
   created or enabled); their triggers in a ``Subscriptions`` tree, the broker's, so that
   matching an event costs its topic's depth;
2. writes what finished requests did (delivered, or failed: tried again after a pause that
   doubles from ``retry_first`` up to ``retry_most``, or dropped and logged once the webhook's
   ``retry_seconds`` since the first attempt ran out);
3. fans out up to ``batch`` rows of the feed: each event matched against the triggers, then
   checked by the MQTT access of the region's broker (``accounts.mqtt_access``: the webhook's
   account must own the device or calculator, exactly as for its tokens), queued for each
   webhook it passes, and the feed rows deleted, in one transaction;
4. hands each webhook with a due head of queue and no request in flight up to ``per_job`` of its
   events, in order, to a pool of ``senders`` threads.

A sender thread sends a webhook's events one after the other over its kept-alive connection and
stops at the first failure, so each webhook's events arrive in order, one request at a time
(flespi's first-in-first-out), and a slow or dead receiver holds one sender thread, never the loop
or another webhook. One loop per datacenter is active (an advisory lock, like the relay's).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.db import connections, transaction

from accounts.mqtt_access import BrokerAccess
from flespi_site import metrics
from flespi_site.constants import WEBHOOKS_LOCK
from flespi_site.mqtt.broker.routing import Subscriptions, expand
from flespi_site.mqtt.policy import Principal
from flespi_site.runner import Loop
from webhooks import selectors, storage
from webhooks.addresses import AddressPolicy, Resolver, system_resolve
from webhooks.http import Outcome, Request, Sender
from webhooks.models import Webhook
from webhooks.services import (
    access_of,
    address_policy,
    deliveries_of_deleted_webhooks_drop,
    feeding_sync,
    principal_of,
)
from webhooks.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from webhooks.templates import Event, Template, parse

logger = logging.getLogger(__name__)

LOCK_WAIT = 2.0
# Seconds of clock difference between the database (which stamps the feed's rows) and this host
# that the check for webhooks newer than the feed's events allows for.
REFRESH_MARGIN = 2.0
USER_AGENT = "flespi-platform-webhooks/1"
# Seconds before a webhook whose events' account is being switched by a move is looked at again.
SWITCH_PAUSE = 0.2
_NO_BODY = frozenset({"GET"})


@dataclass
class DeliveryStats:
    fanned_out: int = 0
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class _Hook:
    """A webhook as the loop sends it: its templates parsed once."""

    id: int
    principal: Principal
    triggers: tuple[str, ...]
    method: str
    uri: Template
    headers: tuple[tuple[str, Template], ...]
    body: Template
    secret: str
    retry_seconds: int
    timeout: float
    content_type: bool  # whether the webhook sets its own Content-Type

    @classmethod
    def of(cls, webhook: Webhook, principal: Principal) -> _Hook:
        configuration = webhook.configuration
        headers = tuple((header["name"], parse(header["value"])) for header in configuration["headers"])
        return cls(
            id=webhook.pk, principal=principal, triggers=tuple(trigger["topic"] for trigger in webhook.triggers),
            method=configuration["method"], uri=parse(configuration["uri"]), headers=headers,
            body=parse(configuration["body"]), secret=webhook.secret, retry_seconds=webhook.retry_seconds,
            timeout=float(webhook.timeout), content_type=any(name.lower() == "content-type" for name, _ in headers),
        )

    def request(self, pending: storage.Pending, now: float) -> Request:
        event = Event(pending.topic, pending.payload, pending.queued, pending.id, self.id)
        body = b"" if self.method in _NO_BODY else self.body.render(event, "body").encode()
        stamp = int(now)
        headers = [
            ("User-Agent", USER_AGENT),
            *(() if self.content_type else (("Content-Type", "application/json"),)),
            *((name, template.render(event, "text")) for name, template in self.headers),
            (ID_HEADER, str(pending.id)),
            (TIMESTAMP_HEADER, str(stamp)),
            (SIGNATURE_HEADER, signature(secret=self.secret, timestamp=stamp, body=body)),
        ]
        return Request(self.method, self.uri.render(event, "url"), tuple(headers), body)


@dataclass
class _Job:
    """What a sender thread did with a webhook's events: each attempt in order, the last one the
    first that failed (if any)."""

    hook: _Hook
    attempts: list[tuple[storage.Pending, Outcome, float]] = field(default_factory=list)


class WebhookDelivery(Loop):
    """Delivers the webhooks' events of one datacenter database (see the module's docstring)."""

    def __init__(
        self, *, alias: str, region: str, senders: int | None = None, batch: int = 1000, per_job: int = 100,
        refresh: float = 1.0, rescan: float = 1.0, retry_first: float | None = None, retry_most: float | None = None,
        log_seconds: float | None = None, policy: AddressPolicy | None = None, resolve: Resolver = system_resolve,
        idle_sleep: float = 0.05,
    ):
        super().__init__()
        self.name = f"webhooks {alias}"
        self.alias = alias
        self.region = region
        self.root = settings.MQTT_TOPIC_ROOT
        self.batch = batch
        self.per_job = per_job
        self.refresh_every = refresh
        self.rescan_every = rescan
        self.retry_first = settings.WEBHOOK_RETRY_FIRST if retry_first is None else retry_first
        self.retry_most = settings.WEBHOOK_RETRY_MOST if retry_most is None else retry_most
        self.log_seconds = settings.WEBHOOK_LOG_SECONDS if log_seconds is None else log_seconds
        self.policy = policy
        self.resolve = resolve
        self.idle_sleep = idle_sleep
        self.pool = ThreadPoolExecutor(max_workers=senders or settings.WEBHOOK_SENDERS,
                                       thread_name_prefix=f"webhooks-{alias}")
        self.stats = DeliveryStats()
        self.hooks: dict[int, _Hook] = {}
        self.subscriptions = Subscriptions()
        self.access: BrokerAccess | None = None
        self.senders: dict[int, Sender] = {}
        self.in_flight: dict[int, Future[_Job]] = {}
        self.held: dict[int, list[int]] = {}  # webhook -> the account locks its job in flight holds
        self.wake = threading.Event()
        self.look_at: set[int] = set()  # webhooks whose queue may have a due head
        self.due: dict[int, float] = {}  # webhook -> when its head is tried again
        self._next_refresh = 0.0
        self._refreshed_at = 0.0
        self._raws: dict[int, tuple] = {}
        self._next_rescan = 0.0
        self._next_purge = 0.0
        self._locked_on: object | None = None

    def counts(self) -> dict[str, int]:
        return asdict(self.stats)

    def setup(self) -> None:
        if self.policy is None:
            self.policy = address_policy()
        self.access = access_of(self.region)

    def teardown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for sender in self.senders.values():
            sender.close()
        # this thread's connections: the datacenter's, the control database's, and those the
        # feed's switch reached in the region's other datacenters
        for connection in connections.all(initialized_only=True):
            connection.close()

    def _holds_lock(self) -> bool:
        connection = connections[self.alias]
        connection.ensure_connection()
        if connection.connection is self._locked_on:
            return True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [WEBHOOKS_LOCK])
            if not cursor.fetchone()[0]:
                return False
        self._locked_on = connection.connection
        return True

    def step(self) -> float:
        if not self._holds_lock():
            logger.info("another delivery loop holds %s; waiting", self.alias)
            return LOCK_WAIT
        now = time.time()
        if now >= self._next_refresh:
            self._refresh()
            self._next_refresh = now + self.refresh_every
        finished = self._collect()
        fanned = self._fan_out()
        if now >= self._next_rescan:
            self.look_at.update(self.hooks)
            self._next_rescan = now + self.rescan_every
        dispatched = self._dispatch()
        if now >= self._next_purge:
            self._tidy(now)
            self._next_purge = now + 60
        if finished or fanned or dispatched:
            return 0.0
        # Nothing to do: wait for a request to finish (or the next retry, or a poll of the feed).
        pause = self.idle_sleep
        if self.due:
            pause = max(0.0, min(pause, min(self.due.values()) - time.time()))
        self.wake.wait(pause)
        self.wake.clear()
        return 0.0

    def _tidy(self, now: float) -> None:
        """Now and then: the log's old events deleted, the events of webhooks deleted with their
        accounts too, the feed's switch set again."""
        with transaction.atomic(using=self.alias):
            storage.log_purge(alias=self.alias, before=now - self.log_seconds)
            deliveries_of_deleted_webhooks_drop(alias=self.alias)
        feeding_sync(region=self.region)

    # --- the region's webhooks ---

    def _refresh(self) -> None:
        self._refreshed_at = time.time()
        hooks: dict[int, _Hook] = {}
        raws: dict[int, tuple] = {}
        for webhook, account in selectors.webhooks_enabled(region=self.region):
            raw = (json.dumps(webhook.triggers), json.dumps(webhook.configuration), webhook.secret,
                   webhook.retry_seconds, webhook.timeout, account.path)
            raws[webhook.pk] = raw
            old = self.hooks.get(webhook.pk)
            hooks[webhook.pk] = old if old is not None and self._raws.get(webhook.pk) == raw else _Hook.of(
                webhook, principal_of(account))
        self._raws = raws
        if hooks.keys() != self.hooks.keys() or any(hooks[key] is not self.hooks[key] for key in hooks):
            subscriptions = Subscriptions()
            for hook in hooks.values():
                for trigger in hook.triggers:
                    subscriptions.add(expand(trigger), str(hook.id), hook.id)
            self.subscriptions = subscriptions
            for gone in set(self.senders) - set(hooks):
                if gone not in self.in_flight:
                    self.senders.pop(gone).close()
            self.look_at.update(set(hooks) - set(self.hooks))
            self.hooks = hooks

    # --- fan-out ---

    def _fan_out(self) -> int:
        """Queue the next batch of the feed for the webhooks it triggers; returns the feed rows
        taken."""
        assert self.access is not None
        with transaction.atomic(using=self.alias):
            feed_ids, events = storage.feed_take(alias=self.alias, limit=self.batch, root=self.root)
            if not feed_ids:
                return 0
            if events and max(event.queued for event in events) > self._refreshed_at - REFRESH_MARGIN:
                # Events written after the last read of the webhooks (a webhook created or enabled
                # since is committed before them): read them again first.
                self._refresh()
            candidates: list[tuple[int, storage.FeedEvent]] = []
            for event in events:
                found, _groups = self.subscriptions.match(event.topic)
                for webhook_id in dict.fromkeys(subscription for _key, subscription in found):
                    candidates.append((webhook_id, event))
            if candidates:
                self.access.learn_now(topics={event.topic for _id, event in candidates})
            queued = []
            for webhook_id, event in candidates:
                owner = self.access.owner_now(event.topic)
                if self.access.receives(self.hooks[webhook_id].principal, event.topic, owner or None, None):
                    queued.append((webhook_id, event))
            for event in events:
                self.access.published(event.topic)  # a device's log event drops what is known of it
            storage.feed_fanned_out(alias=self.alias, feed_ids=feed_ids, deliveries=queued)
        self.stats.fanned_out += len(feed_ids)
        self.stats.queued += len(queued)
        self.look_at.update(webhook_id for webhook_id, _event in queued)
        return len(feed_ids)

    # --- sending ---

    def _dispatch(self) -> int:
        now = time.time()
        for webhook_id, at in list(self.due.items()):
            if at <= now:
                del self.due[webhook_id]
                self.look_at.add(webhook_id)
        wanted = [webhook_id for webhook_id in self.look_at if webhook_id in self.hooks
                  and webhook_id not in self.in_flight and webhook_id not in self.due]
        self.look_at.clear()
        if not wanted:
            return 0
        dispatched = 0
        for webhook_id, pending in storage.heads(alias=self.alias, webhook_ids=wanted, limit=self.per_job).items():
            if pending[0].next_try > now:
                self.due[webhook_id] = pending[0].next_try
                continue
            # The job holds its events' accounts until its outcomes are written: a move's switch
            # waits for them, and what a move took away (or is taking) is not sent from here.
            held = storage.accounts_hold(alias=self.alias, device_ids=[item.device_id for item in pending])
            if held is None:
                self.due[webhook_id] = now + SWITCH_PAUSE
                continue
            if not storage.pending_present(alias=self.alias, delivery_ids=[item.id for item in pending]):
                storage.accounts_release(alias=self.alias, keys=held)
                self.look_at.add(webhook_id)
                continue
            self.held[webhook_id] = held
            hook = self.hooks[webhook_id]
            sender = self.senders.get(webhook_id)
            if sender is None or sender.timeout != hook.timeout:
                if sender is not None:
                    sender.close()
                assert self.policy is not None
                sender = self.senders[webhook_id] = Sender(policy=self.policy, timeout=hook.timeout,
                                                            resolve=self.resolve)
            future = self.pool.submit(self._send, hook, sender, pending)
            future.add_done_callback(lambda _future: self.wake.set())
            self.in_flight[webhook_id] = future
            dispatched += 1
        return dispatched

    def _send(self, hook: _Hook, sender: Sender, pending: list[storage.Pending]) -> _Job:
        """In a sender thread: ``pending`` in order until the first failure (no database here)."""
        job = _Job(hook)
        for item in pending:
            if self.stopping.is_set():
                break
            now = time.time()
            try:
                outcome = sender.send(hook.request(item, now))
            except Exception as error:  # a request that cannot be made is a failed attempt, logged
                logger.exception("webhook %s: event %s", hook.id, item.id)
                outcome = Outcome(False, None, f"{type(error).__name__}: {error}")
            job.attempts.append((item, outcome, now))
            if not outcome.ok:
                break
        return job

    def _collect(self) -> int:
        """Write what finished requests did; returns how many jobs finished. The jobs leave
        ``in_flight`` only once written: a write that fails (the database away) is made again by
        a later step, rather than their events sent again."""
        done = [webhook_id for webhook_id, future in self.in_flight.items() if future.done()]
        if not done:
            return 0
        now = time.time()
        delivered_count, failed, dropped, retries = 0, 0, [], {}
        with transaction.atomic(using=self.alias):
            for webhook_id in done:
                job = self.in_flight[webhook_id].result()
                delivered = [(item.id, outcome.status or 0, tried) for item, outcome, tried in job.attempts if outcome.ok]
                storage.delivered(alias=self.alias, outcomes=delivered, now=now)
                delivered_count += len(delivered)
                for item, outcome, tried in job.attempts:
                    if outcome.ok:
                        continue
                    next_try = self._attempt_failed(job.hook, item, outcome, tried)
                    if next_try is None:
                        dropped.append((job.hook, item, outcome, tried))
                    else:
                        failed += 1
                        retries[webhook_id] = next_try
        for webhook_id in done:
            del self.in_flight[webhook_id]
            storage.accounts_release(alias=self.alias, keys=self.held.pop(webhook_id, []))
            if webhook_id in retries:
                self.due[webhook_id] = retries[webhook_id]
            else:
                self.look_at.add(webhook_id)
        for hook, item, outcome, tried in dropped:
            first = item.first_try if item.first_try is not None else tried
            logger.warning("webhook %s: dropped event %s (%s) after %d attempts in %.0f s: %s",
                           hook.id, item.id, item.topic, item.attempts + 1, tried - first, outcome.error)
        self.stats.delivered += delivered_count
        self.stats.failed += failed
        self.stats.dropped += len(dropped)
        metrics.webhook_requests(alias=self.alias, delivered=delivered_count, failed=failed, dropped=len(dropped))
        return len(done)

    def _attempt_failed(self, hook: _Hook, item: storage.Pending, outcome: Outcome, tried: float) -> float | None:
        """Write a failed attempt; returns when the event is tried again, or None: dropped."""
        attempts = item.attempts + 1
        first = item.first_try if item.first_try is not None else tried
        next_try: float | None = tried + min(self.retry_most, self.retry_first * 2 ** (attempts - 1))
        if next_try is not None and next_try - first > hook.retry_seconds:
            next_try = None
        storage.failed(alias=self.alias, delivery_id=item.id, status=outcome.status, error=outcome.error,
                       tried=tried, next_try=next_try)
        return next_try


def delivery_loops(*, datacenters: list[tuple[str, str]], **options) -> list[WebhookDelivery]:
    """A loop for each (region, datacenter alias)."""
    return [WebhookDelivery(alias=alias, region=region, **options) for region, alias in datacenters]
