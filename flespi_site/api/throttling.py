"""Rate limits per token (docs/api.md, "Rate limits"): one budget of requests, and a separate one of
messages for ingestion, so that a client storing messages at full speed does not starve its own
reads and a client polling fast does not stop its devices' messages.

Each budget is a token bucket (as GCRA: one Redis key per token and budget holding the time at
which the bucket is full again): ``rate`` per second, up to ``burst`` at once. A request over the
budget is answered 429 with ``Retry-After`` (whole seconds until it would pass) in the API's
envelope, before its view runs: an ingestion batch over the budget stores nothing, and one that
passes is charged all its messages. A batch larger than the whole burst can never pass: it is
a 413 with a reason saying to split it (a retry would not help).

The check is one Redis round trip (a script), on the Redis of the region this process serves. When
that Redis cannot be reached the request is let through and the failure logged at most once a
minute: a rate limit must not take the API down with it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from flespi_site.errors import RateLimited, TooLarge
from flespi_site.fleet import rate_limit_key

logger = logging.getLogger(__name__)

# KEYS[1] the bucket; ARGV: cost, milliseconds per unit, burst tolerance in ms. Returns
# {1, 0} when allowed (and charges it), {0, whole ms until it would be allowed, at least 1} when
# not (Redis makes a Lua number an integer reply: a fraction would come back as 0).
_GCRA = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local cost, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allowed_at = new_tat - tolerance
if allowed_at > now then
  return {0, math.max(1, math.ceil(allowed_at - now))}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, 0}
"""


@dataclass(frozen=True)
class Budget:
    name: str  # "requests" or "messages"
    rate: float  # per second; 0: unlimited
    burst: int

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.rate

    @property
    def shown(self) -> int | float:
        """The rate as the API shows it (100, not 100.0)."""
        return int(self.rate) if float(self.rate).is_integer() else self.rate


def budgets() -> tuple[Budget, Budget]:
    return (
        Budget("requests", settings.RATE_LIMIT_REQUESTS, settings.RATE_LIMIT_REQUESTS_BURST),
        Budget("messages", settings.RATE_LIMIT_MESSAGES, settings.RATE_LIMIT_MESSAGES_BURST),
    )


_last_complaint = 0.0


@functools.cache
def _client(region: str) -> redis.Redis:
    """The region's Redis, for the limits only: short timeouts and no retries, so that a Redis that
    is away costs a request half a second once, not the shared client's retries."""
    return redis.Redis.from_url(settings.TOPOLOGY.region(region).redis_url, socket_timeout=0.5,
                                socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


@functools.cache
def _script(client: redis.Redis):
    """The bucket script on ``client``, sent by its hash (loaded once per Redis)."""
    return client.register_script(_GCRA)


def _charge(budget: Budget, token_id: int, cost: int) -> int:
    """Milliseconds until ``cost`` would fit the token's budget; 0 when it fits (and is charged)."""
    global _last_complaint
    region = settings.SERVED_REGION or settings.TOPOLOGY.default_region
    try:
        client = _client(region)
        allowed, wait_ms = _script(client)(
            keys=[rate_limit_key(region, budget.name, token_id)],
            args=[cost, budget.interval_ms, budget.burst * budget.interval_ms],
        )
    except redis.RedisError as error:
        if time.monotonic() - _last_complaint > 60:
            _last_complaint = time.monotonic()
            logger.warning("rate limits are not enforced: the Redis of region %s cannot be reached (%s)", region, error)
        return 0
    return 0 if allowed else max(1, int(wait_ms))


def ingests(request: Request, view) -> bool:
    """Is this request an ingestion (charged to the messages budget)?"""
    return request.method == "POST" and getattr(view, "ingestion", False)


class TokenRateThrottle(BaseThrottle):
    """The API's rate limits; a view that stores messages says so with ``ingestion = True``."""

    def allow_request(self, request: Request, view) -> bool:
        token = getattr(request, "auth", None)
        if token is None:
            return True  # refused by authentication, or a public endpoint
        requests_budget, messages_budget = budgets()
        if ingests(request, view):
            budget = messages_budget
            data = request.data
            cost = len(data) if isinstance(data, list) else 1
        else:
            budget, cost = requests_budget, 1
        if budget.rate <= 0 or cost == 0:
            return True
        if cost > budget.burst:  # can never pass: a retry would not help
            raise TooLarge(
                f"a batch of {cost} {budget.name} is more than this token may send at once ({budget.burst}); "
                f"split it into batches of at most {budget.burst}",
                limit=budget.shown, burst=budget.burst,
            )
        wait_ms = _charge(budget, token.pk, cost)
        if wait_ms:
            seconds = max(1, math.ceil(wait_ms / 1000))
            raise RateLimited(
                f"this token is over its rate of {budget.shown} {budget.name} per second (bursts of "
                f"{budget.burst}); retry after {seconds} s",
                retry_after=seconds, limit=budget.shown, burst=budget.burst,
            )
        return True
