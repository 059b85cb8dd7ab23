"""The MQTT access policy (``flespi_site.mqtt.policy``) applied with the control database's facts,
for a broker that asks on every connect, subscribe, publish and delivery: the embedded broker
(``devtools.mqtt_broker``) holds one ``BrokerAccess``. Token and device facts are read by
``accounts.mqtt_facts``; device ownership is cached for ``DEVICE_CACHE_SECONDS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts import mqtt_facts
from flespi_site.mqtt import policy
from flespi_site.mqtt.policy import Decision, Principal

DEVICE_CACHE_SECONDS = 2.0
_UNKNOWN = object()


@dataclass
class _Cache:
    """Values by key for ``ttl`` seconds (also the None of a key that has none)."""

    ttl: float
    values: dict[Any, tuple[Any, float]] = field(default_factory=dict)

    def get(self, key: Any) -> Any:
        hit = self.values.get(key)
        if hit is None or hit[1] < time.monotonic():
            return _UNKNOWN
        return hit[0]

    def put(self, found: dict[Any, Any], asked: Iterable[Any]) -> None:
        expires = time.monotonic() + self.ttl
        for key in asked:
            self.values[key] = (found.get(key), expires)
        if len(self.values) > 200_000:
            self.values.clear()


class BrokerAccess:
    """The policy's inputs for one broker: settings, the regions it serves (those whose MQTT
    endpoint is ``url``), cached lookups."""

    def __init__(self, *, url: str):
        self.root = settings.MQTT_TOPIC_ROOT
        self.ingest_pattern = settings.MQTT_INGEST_TOPIC
        self.platform_username = settings.MQTT_PLATFORM_USERNAME
        self.platform_password = settings.MQTT_PLATFORM_PASSWORD
        self.region_urls = {region.code: region.mqtt_url for region in settings.TOPOLOGY.regions}
        self.regions = frozenset(code for code, mqtt_url in self.region_urls.items() if mqtt_url == url)
        self.devices = _Cache(DEVICE_CACHE_SECONDS)
        self.idents = _Cache(DEVICE_CACHE_SECONDS)

    async def connect(self, username: str | None, password: str | None) -> tuple[Decision, Principal | None]:
        token = None
        if username and username != self.platform_username:
            token = await sync_to_async(mqtt_facts.token_facts)(key=username)
        decision, principal = policy.connect_decision(
            username=username, password=password, platform_username=self.platform_username,
            platform_password=self.platform_password, token=token, broker_regions=self.regions,
            region_mqtt_urls=self.region_urls, now=time.time(),
        )
        if principal is not None and token is not None:
            await sync_to_async(mqtt_facts.token_touch)(token=token)
        return decision, principal

    async def publish(self, principal: Principal, topic: str) -> Decision:
        return await self._decide(
            lambda path: policy.publish_decision(
                principal=principal, topic=topic, root=self.root, ingest_pattern=self.ingest_pattern, ident_path=path
            ),
            self.idents, self._ident_paths,
        )

    async def subscribe(self, principal: Principal, topic_filter: str) -> Decision:
        return await self._decide(
            lambda path: policy.subscribe_decision(
                principal=principal, topic_filter=topic_filter, root=self.root, device_path=path
            ),
            self.devices, self._device_paths,
        )

    async def receive(self, principal: Principal, topic: str) -> Decision:
        return await self._decide(
            lambda path: policy.receive_decision(principal=principal, topic=topic, root=self.root, device_path=path),
            self.devices, self._device_paths,
        )

    async def _decide(
        self, decide: Callable[[Callable[[Any], str | None]], Decision], cache: _Cache,
        fetch: Callable[[list[Any]], dict[Any, str]],
    ) -> Decision:
        """Run ``decide`` with a lookup answered from ``cache``; what it misses is fetched once
        and the decision made again."""
        missing: list[Any] = []

        def lookup(key: Any) -> str | None:
            value = cache.get(key)
            if value is _UNKNOWN:
                missing.append(key)
                return None
            return value

        decision = decide(lookup)
        if missing:
            cache.put(await sync_to_async(fetch)(missing), missing)
            decision = decide(lookup)
        return decision

    def _device_paths(self, ids: list[int]) -> dict[int, str]:
        return mqtt_facts.device_paths(device_ids=ids)

    def _ident_paths(self, idents: list[str]) -> dict[str, str]:
        return mqtt_facts.ident_paths(regions=self.regions, idents=idents)
