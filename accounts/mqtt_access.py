"""The MQTT access policy (``flespi_site.mqtt.policy``) applied with the control database's facts,
for the platform's broker (``flespi_site.mqtt.broker``), which asks on every connect, subscribe,
publish and delivery. Its ``Access`` protocol is what this class provides.

Facts are read by ``accounts.mqtt_facts`` and cached: the account path of each device (by id and
by ident) and of each account named by a subscription's ``cid``. A cached fact lives
``MQTT_ACCESS_CACHE_SECONDS``; the broker asks for what a batch of packets lacks in one read
(``learn``), so a burst over many devices costs one query, not one per message. Tokens are not
cached: each CONNECT reads its token, and every connected token is read again, all in one query,
every few seconds (``recheck``).

Nothing here grows with the platform: a device or token created, moved or deleted costs the broker
nothing until a client's packet is about it (docs/mqtt.md, "Access control at scale").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts import mqtt_facts
from flespi_site.mqtt import policy
from flespi_site.mqtt.broker.routing import expand
from flespi_site.mqtt.policy import Decision, Principal
from flespi_site.mqtt.topics import (
    entity_of_log_topic,
    entity_of_topic,
    filter_entities,
    ident_of_topic,
    ingest_topic,
    strip_share,
)

_UNKNOWN = object()
MAX_CACHED = 1_000_000


class _Cache:
    """Values by key for ``ttl`` seconds; that a key has none (None) for ``absent_ttl``, shorter:
    a device created since is not a change the platform announces to the broker."""

    def __init__(self, ttl: float, absent_ttl: float):
        self.ttl = ttl
        self.absent_ttl = absent_ttl
        self.values: dict[Any, tuple[Any, float]] = {}

    def get(self, key: Any) -> Any:
        hit = self.values.get(key)
        if hit is None or hit[1] < time.monotonic():
            return _UNKNOWN
        return hit[0]

    def put(self, found: dict[Any, Any], asked: Iterable[Any]) -> None:
        now = time.monotonic()
        if len(self.values) > MAX_CACHED:
            self.values.clear()
        for key in asked:
            value = found.get(key)
            self.values[key] = (value, now + (self.absent_ttl if value is None else self.ttl))

    def forget(self, key: Any) -> None:
        self.values.pop(key, None)


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


class BrokerAccess:
    """The policy's inputs for one broker: settings, the regions it serves (those whose MQTT
    endpoint is ``url``), cached lookups."""

    def __init__(self, *, url: str, regions: Iterable[str] | None = None):
        self.root = settings.MQTT_TOPIC_ROOT
        self.ingest_pattern = settings.MQTT_INGEST_TOPIC
        self.platform_username = settings.MQTT_PLATFORM_USERNAME
        self.platform_password = settings.MQTT_PLATFORM_PASSWORD
        self.region_urls = {region.code: region.mqtt_url for region in settings.TOPOLOGY.regions}
        if regions is None:
            regions = [code for code, mqtt_url in self.region_urls.items() if mqtt_url == url]
        self.regions = frozenset(regions)
        ttl, absent = settings.MQTT_ACCESS_CACHE_SECONDS, settings.MQTT_ACCESS_ABSENT_SECONDS
        self.devices = _Cache(ttl, absent)
        self.idents = _Cache(ttl, absent)  # ident -> (device id, account path)
        self.ident_of: dict[int, str] = {}  # device id -> the ident cached for it
        self.accounts = _Cache(ttl, absent)
        self.calcs = _Cache(ttl, absent)

    # --- connect and the periodic re-check ---

    async def connect(
        self, username: str | None, password: bytes | str | None
    ) -> tuple[Decision, Principal | None]:
        text_password = _text(password)
        if password is not None and text_password is None:
            return policy.refuse("the password must be UTF-8 text"), None
        key, _malformed = policy.token_key(username, text_password)
        token = None
        if key and username != self.platform_username:
            token = await sync_to_async(mqtt_facts.token_facts)(key=key)
        decision, principal = policy.connect_decision(
            username=username,
            password=text_password,
            platform_username=self.platform_username,
            platform_password=self.platform_password,
            token=token,
            broker_regions=self.regions,
            region_mqtt_urls=self.region_urls,
            now=time.time(),
        )
        if principal is not None and token is not None:
            await sync_to_async(mqtt_facts.token_touch)(token=token)
        return decision, principal

    async def recheck(self, token_ids: set[int]) -> dict[int, str]:
        facts = await sync_to_async(mqtt_facts.tokens_facts)(token_ids=token_ids)
        now = time.time()
        refused = {}
        for token_id in token_ids:
            token = facts.get(token_id)
            if token is None:
                refused[token_id] = f"token {token_id} was deleted"
                continue
            problem = policy.token_refusal(
                token_id=token.id,
                enabled=token.enabled,
                expire=token.expire,
                ttl=token.ttl,
                created=token.created,
                last_used=token.last_used,
                now=now,
            )
            if problem:
                refused[token_id] = problem
        return refused

    # --- decisions from the cache (None: a fact is missing; ``learn`` it) ---

    def publish_now(self, principal: Principal, topic: str) -> Decision | None:
        if principal.platform:
            return policy.ALLOW
        missing = False

        def lookup(ident: str) -> str | None:
            nonlocal missing
            value = self.idents.get(ident)
            if value is _UNKNOWN:
                missing = True
                return None
            return value[1] if value is not None else None

        decision = policy.publish_decision(
            principal=principal,
            topic=topic,
            root=self.root,
            ingest_pattern=self.ingest_pattern,
            ident_path=lookup,
        )
        return None if missing else decision

    def subscribe_now(self, principal: Principal, topic_filter: str, cid: int | None) -> Decision | None:
        missing = False

        def lookup(cache: _Cache) -> Any:
            def get(key: Any) -> str | None:
                nonlocal missing
                value = cache.get(key)
                if value is _UNKNOWN:
                    missing = True
                    return None
                return value

            return get

        entity_path = self._entity_lookup(lookup)

        plain = strip_share(topic_filter)
        prefix = topic_filter[: len(topic_filter) - len(plain)] if plain is not None else ""
        decisions = []
        for branch in expand(plain) if plain is not None else [topic_filter]:
            decision = policy.subscribe_decision(
                principal=principal,
                topic_filter=prefix + branch,
                root=self.root,
                entity_path=entity_path,
                cid=cid,
                account_path=lookup(self.accounts),
            )
            if missing:
                return None
            if not decision.allowed:
                return decision
            decisions.append(decision)
        if len({decision.private for decision in decisions}) > 1:
            return policy.refuse(f"{topic_filter!r} mixes the platform's topics with the account's own")
        return decisions[0]

    def _entity_lookup(self, lookup: Any) -> Any:
        """An ``EntityPath`` over the caches of devices and calculators, through ``lookup``."""
        by_kind = {"device": lookup(self.devices), "calc": lookup(self.calcs)}
        return lambda entity: by_kind[entity[0]](entity[1])

    def owner_now(self, topic: str) -> str | Literal[False] | None:
        entity = entity_of_topic(topic, root=self.root)
        if entity is None:
            return None
        value = (self.devices if entity[0] == "device" else self.calcs).get(entity[1])
        return False if value is _UNKNOWN else value

    def receives(self, principal: Principal, topic: str, owner: str | None, cid: int | None) -> bool:
        if principal.platform and cid is None:
            return True
        return policy.receive_decision(
            principal=principal, topic=topic, root=self.root, entity_path=lambda _entity: owner, cid=cid
        ).allowed

    async def learn(
        self, *, topics: Iterable[str] = (), filters: Iterable[str] = (), accounts: Iterable[int] = ()
    ) -> None:
        missing = self._missing(topics=topics, filters=filters, accounts=accounts)
        if missing is not None:
            await sync_to_async(self._fetch)(*missing)

    def learn_now(self, *, topics: Iterable[str] = (), filters: Iterable[str] = ()) -> None:
        """``learn`` for a caller that is not a coroutine (the webhooks' delivery loop and
        services, which decide with this same access)."""
        missing = self._missing(topics=topics, filters=filters, accounts=())
        if missing is not None:
            self._fetch(*missing)

    def _missing(
        self, *, topics: Iterable[str], filters: Iterable[str], accounts: Iterable[int]
    ) -> tuple[set[int], set[int], set[str], set[int]] | None:
        """The devices, calculators, idents and accounts the caches lack, or None."""
        wanted: dict[str, set[int]] = {"device": set(), "calc": set()}
        idents: set[str] = set()
        for topic in topics:
            entity = entity_of_topic(topic, root=self.root)
            if entity is not None:
                wanted[entity[0]].add(entity[1])
                continue
            ident = ident_of_topic(topic, pattern=self.ingest_pattern)
            if ident is not None and self.idents.get(ident) is _UNKNOWN:
                idents.add(ident)
        for topic_filter in filters:
            plain = strip_share(topic_filter)
            if plain is None or plain.split("/", 1)[0] != self.root:
                continue
            for branch in expand(plain):
                for kind, entity_id in filter_entities(branch.split("/")[1:])[1]:
                    wanted[kind].add(entity_id)
        devices = {device for device in wanted["device"] if self.devices.get(device) is _UNKNOWN}
        calcs = {calc for calc in wanted["calc"] if self.calcs.get(calc) is _UNKNOWN}
        wanted_accounts = {account for account in accounts if self.accounts.get(account) is _UNKNOWN}
        if devices or calcs or idents or wanted_accounts:
            return devices, calcs, idents, wanted_accounts
        return None

    def _fetch(self, devices: set[int], calcs: set[int], idents: set[str], accounts: set[int]) -> None:
        if devices:
            self.devices.put(mqtt_facts.device_paths(device_ids=devices), devices)
        if calcs:
            self.calcs.put(mqtt_facts.calculator_paths(regions=self.regions, calc_ids=calcs), calcs)
        if idents:
            owners = mqtt_facts.ident_owners(regions=self.regions, idents=idents)
            self.idents.put(owners, idents)
            for ident, (device, _path) in owners.items():
                self.ident_of[device] = ident
        if accounts:
            self.accounts.put(mqtt_facts.account_paths(account_ids=accounts), accounts)

    async def sessions_seen(self, sessions: list[tuple[Principal, str]], at: float) -> None:
        """A connection whose client id is the ident of a device its token may publish for (the
        ingest topic of that ident) is the device's MQTT session: the device was active at
        ``at`` (docs/messages.md, "Connected and last active")."""
        topics = {}
        for principal, client_id in sessions:
            topic = ingest_topic(client_id, pattern=self.ingest_pattern)
            if topic is not None and not principal.platform:
                topics[(principal, client_id)] = topic
        if not topics:
            return
        await self.learn(topics=topics.values())
        devices = set()
        for (principal, client_id), topic in topics.items():
            decision = self.publish_now(principal, topic)
            if decision is not None and decision.allowed and not decision.private:
                known = self.idents.get(client_id)
                if known is not _UNKNOWN and known is not None:
                    devices.add(known[0])
        if devices:
            await sync_to_async(mqtt_facts.device_sessions_seen)(device_ids=devices, at=at)

    def published(self, topic: str) -> None:
        """The platform's own events say what changed: a device's or calculator's log event drops
        what the cache knows of it (a device's owner, and so its ident's), so a move or a
        deletion takes effect as soon as its event passes, before any later topic of the same
        entity (the outbox publishes in order), not when the cached fact expires."""
        entity = entity_of_log_topic(topic, root=self.root)
        if entity is None:
            return
        kind, entity_id = entity
        if kind == "calc":
            self.calcs.forget(entity_id)
            return
        self.devices.forget(entity_id)
        ident = self.ident_of.pop(entity_id, None)
        if ident is not None:
            self.idents.forget(ident)
