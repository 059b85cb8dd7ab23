"""Shard leases of the calculation fleet, with an epoch per shard as fencing token.

In Redis, per region (keys of ``flespi_site.fleet``): a lease per shard holds ``"<worker> <epoch>"``
with a TTL (SET NX PX), an epoch counter per shard the shard's newest epoch (never expires), and a
sorted set the live workers (worker id -> heartbeat expiry, Redis's clock, ms). In every datacenter database of the region, ``shard_fence`` holds the newest
epoch per shard; a worker's write transaction starts with ``fence_check``, so a worker that lost
its shard cannot commit. Rules and reasons: docs/analytics.md, "Shards and fencing". No Django
here: the fleet passes a redis-py client and DB-API cursors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import redis

from flespi_site.fleet import epoch_key, lease_holder, lease_key, workers_key

_PRELUDE = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A new epoch: one more than the last, and never below Redis's clock in ms, so that epochs keep
-- growing past the ones recorded in the fence tables when Redis has lost its counters.
local function acquire(lease, counter, worker, ttl)
  if not redis.call('SET', lease, worker, 'NX', 'PX', ttl) then return nil end
  local epoch = redis.call('INCR', counter)
  local clock = now_ms()
  if clock > epoch then
    epoch = clock
    redis.call('SET', counter, string.format('%.0f', epoch))
  end
  redis.call('SET', lease, worker .. ' ' .. string.format('%.0f', epoch), 'PX', ttl)
  return epoch
end
"""

# KEYS: lease, epoch counter. ARGV: worker, ttl_ms. Returns the epoch, or nil when held.
_ACQUIRE = (
    _PRELUDE
    + r"""
return acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
"""
)

# KEYS: lease. ARGV: "<worker> <epoch>", ttl_ms (renew) or '' (release).
_RENEW_OR_RELEASE = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: workers. ARGV: worker, ttl_ms. Heartbeat: forget expired workers, note this one's expiry;
# returns the live workers.
_HEARTBEAT = (
    _PRELUDE
    + r"""
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)

# KEYS: workers, then (lease, epoch counter) per shard. ARGV: worker, ttl_ms, then per shard its
# known epoch ('' when this process does not hold it) and whether it is wanted ('1' or '').
# Renews the leases this process holds; takes wanted shards that are free, or held under this
# worker's name by an earlier process of it (a restart: a new epoch fences that one out).
# Returns (shard index, epoch) of every lease held after the step, 0-based in the order given.
_BALANCE = (
    _PRELUDE
    + r"""
local worker, ttl = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms() + ttl, worker)
local out = {}
local count = (#KEYS - 1) / 2
for i = 0, count - 1 do
  local lease, counter = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local known, wanted = ARGV[3 + 2 * i], ARGV[4 + 2 * i] == '1'
  local value = redis.call('GET', lease)
  local epoch = nil
  if value and known ~= '' and value == worker .. ' ' .. known then
    redis.call('PEXPIRE', lease, ttl)
    epoch = known
  elseif wanted then
    local owner = value and string.match(value, '^(.*) %d+$')
    if not value or owner == worker then
      if value then redis.call('DEL', lease) end
      local taken = acquire(lease, counter, worker, ttl)
      if taken then epoch = string.format('%.0f', taken) end
    end
  end
  if epoch then
    out[#out + 1] = i
    out[#out + 1] = epoch
  end
end
return out
"""
)

# KEYS: workers, lease per shard. ARGV: worker, ttl_ms, then "<worker> <epoch>" per shard.
# Heartbeat and renew every lease still this worker's at that epoch; returns 1/0 per shard.
_RENEW_MANY = (
    _PRELUDE
    + r"""
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
local out = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1 + i] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)


def placement(shards: int, workers: Sequence[str]) -> dict[int, str]:
    """Which live worker each shard belongs to: rendezvous hashing (each shard ranks the workers by
    a hash of shard and name, and goes to the first) bounded to ceil(shards / workers) shards per
    worker, so that the shares stay even. The same live workers give the same placement in every
    process; a worker that restarts under its name gets the same shards back, and one that joins
    or leaves moves about its share."""
    names = sorted(set(workers))
    if not names:
        return {}
    cap = -(-shards // len(names))
    load = dict.fromkeys(names, 0)
    out: dict[int, str] = {}
    for shard in range(shards):
        for name in sorted(names, key=lambda name: _score(shard, name), reverse=True):
            if load[name] < cap:
                out[shard] = name
                load[name] += 1
                break
    return out


def _score(shard: int, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{shard}/{name}".encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=16)
def _placement_cached(shards: int, workers: tuple[str, ...]) -> dict[int, str]:
    return placement(shards, workers)


class Fenced(Exception):
    """The shard's fence holds a newer epoch than the writer's: another worker holds the shard."""

    def __init__(self, *, shard: int, epoch: int, stored: int | None):
        held = "no epoch" if stored is None else f"epoch {stored}"
        super().__init__(f"shard {shard}: the fence holds {held}; this writer's epoch {epoch} is not current")
        self.shard = shard
        self.epoch = epoch
        self.stored = stored


@dataclass(frozen=True)
class Balance:
    """One balancing step of a worker: how many shards the placement gives it (``target``), every
    lease it holds now (shard -> epoch); of those, the ones it just took (raise their fences before
    writing), the extras the placement gives another worker (stop consuming them, then
    ``release``), and the shards it held at the last step and has lost."""

    target: int
    held: dict[int, int]
    acquired: dict[int, int] = field(default_factory=dict)
    extra: dict[int, int] = field(default_factory=dict)
    lost: dict[int, int] = field(default_factory=dict)


class ShardLeases:
    """The shard leases of one worker in one region. ``ttl`` (seconds) is both the lease time and
    the heartbeat's: call ``balance`` well within it (a third of it, say)."""

    def __init__(self, client: redis.Redis, *, region: str, shards: int, worker: str, ttl: float):
        if not worker or any(ch.isspace() for ch in worker):
            raise ValueError(f"worker id must be non-empty text without spaces, not {worker!r}")
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards!r}")
        if not math.isfinite(ttl) or ttl <= 0:
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        self.client = client
        self.region = region
        self.shards = shards
        self.worker = worker
        self.ttl_ms = max(1, round(ttl * 1000))
        self._held: dict[int, int] = {}
        self._acquire = client.register_script(_ACQUIRE)
        self._renew_or_release = client.register_script(_RENEW_OR_RELEASE)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._balance = client.register_script(_BALANCE)
        self._renew_many = client.register_script(_RENEW_MANY)

    def _lease_key(self, shard: int) -> str:
        return lease_key(self.region, shard)

    def _epoch_key(self, shard: int) -> str:
        return epoch_key(self.region, shard)

    def _workers_key(self) -> str:
        return workers_key(self.region)

    def _check(self, shard: int) -> int:
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard must be in 0..{self.shards - 1}, not {shard!r}")
        return shard

    def acquire(self, shard: int) -> int | None:
        """Take ``shard`` if no live lease holds it; its new epoch, or None."""
        self._check(shard)
        epoch = self._acquire(
            keys=[self._lease_key(shard), self._epoch_key(shard)], args=[self.worker, self.ttl_ms]
        )
        if epoch is None:
            return None
        self._held[shard] = int(epoch)
        return int(epoch)

    def renew(self, shard: int, epoch: int) -> bool:
        """Extend the lease for another TTL if it is still this worker's at ``epoch``."""
        value = f"{self.worker} {int(epoch)}"
        renewed = bool(
            self._renew_or_release(keys=[self._lease_key(self._check(shard))], args=[value, self.ttl_ms])
        )
        if not renewed:
            self._held.pop(shard, None)
        return renewed

    def release(self, shard: int, epoch: int) -> bool:
        """Give ``shard`` up (only if the lease is still this worker's at ``epoch``)."""
        value = f"{self.worker} {int(epoch)}"
        self._held.pop(shard, None)
        return bool(self._renew_or_release(keys=[self._lease_key(self._check(shard))], args=[value, ""]))

    def balance(self) -> Balance:
        """Heartbeat, renew every lease held, and take the shards the placement gives this worker
        (``placement`` over the live workers) that are free, or held under this worker's name by
        an earlier process of it. Held shards the placement gives another worker are reported as
        extras, not dropped: the worker stops consuming their queues first and then releases them,
        and their new owner takes them at its next step."""
        live = self._heartbeat(keys=[self._workers_key()], args=[self.worker, self.ttl_ms])
        names = tuple(sorted(member.decode() if isinstance(member, bytes) else str(member) for member in live))
        if self.worker not in names:  # the heartbeat just wrote it; a reply without it is a race with FLUSHALL
            names = tuple(sorted({*names, self.worker}))
        mine = {shard for shard, name in _placement_cached(self.shards, names).items() if name == self.worker}
        order = sorted(set(self._held) | mine)
        keys = [self._workers_key()]
        args: list[str | int] = [self.worker, self.ttl_ms]
        for shard in order:
            keys += [self._lease_key(shard), self._epoch_key(shard)]
            known = self._held.get(shard)
            args += ["" if known is None else str(known), "1" if shard in mine else ""]
        reply = self._balance(keys=keys, args=args) if order else []
        held = {order[int(reply[i])]: int(reply[i + 1]) for i in range(0, len(reply), 2)}
        previous, self._held = self._held, dict(held)
        return Balance(
            target=len(mine),
            held=held,
            acquired={shard: epoch for shard, epoch in held.items() if previous.get(shard) != epoch},
            extra={shard: epoch for shard, epoch in held.items() if shard not in mine},
            lost={shard: epoch for shard, epoch in previous.items() if held.get(shard) != epoch},
        )

    def renew_all(self, held: dict[int, int]) -> list[int]:
        """Heartbeat and extend every lease of ``held`` (shard -> epoch) still this worker's at
        that epoch, in one round trip; returns the shards whose lease was lost."""
        keys = [self._workers_key(), *(self._lease_key(shard) for shard in held)]
        args: list[str | int] = [self.worker, self.ttl_ms, *(f"{self.worker} {int(epoch)}" for epoch in held.values())]
        renewed = self._renew_many(keys=keys, args=args)
        lost = [shard for shard, ok in zip(held, renewed, strict=True) if not int(ok)]
        for shard in lost:
            self._held.pop(shard, None)
        return lost

    def leave(self, *, keep_place: bool = False) -> None:
        """Release every lease held and stop counting as live. With ``keep_place`` (a clean
        shutdown), the heartbeat is left to run out instead: the placement keeps this worker's
        shards for it for one TTL, so that a restart takes them back and moves nothing, and a
        worker gone for good hands them over when it runs out."""
        for shard, epoch in list(self._held.items()):
            self.release(shard, epoch)
        if not keep_place:
            self.client.zrem(self._workers_key(), self.worker)

    def live_workers(self) -> list[str]:
        """The workers whose heartbeat has not expired (Redis's clock)."""
        seconds, micros = self.client.time()
        members = self.client.zrangebyscore(
            self._workers_key(), f"({seconds * 1000 + micros // 1000}", "+inf"
        )
        return sorted(member.decode() if isinstance(member, bytes) else str(member) for member in members)


@dataclass(frozen=True)
class LeaseState:
    """A shard's lease as it stands: its holder and epoch (None when free) and the seconds its
    TTL has left."""

    shard: int
    worker: str | None
    epoch: int | None
    ttl_left: float | None


@dataclass(frozen=True)
class LeasesRead:
    """Every shard's lease of a region and the live workers' heartbeat expiry (Redis's clock,
    seconds), read at ``now`` (Redis's clock)."""

    now: float
    leases: list[LeaseState]
    workers: dict[str, float]


def leases_read(client: redis.Redis, *, region: str, shards: int) -> LeasesRead:
    """The leases of ``shards`` shards of ``region`` and the workers' heartbeats, in one round
    trip (for the status page: nothing is changed)."""
    pipe = client.pipeline(transaction=True)
    pipe.time()
    for shard in range(shards):
        pipe.get(lease_key(region, shard))
        pipe.pttl(lease_key(region, shard))
    pipe.zrange(workers_key(region), 0, -1, withscores=True)
    reply = pipe.execute()
    seconds, micros = reply[0]
    now = seconds + micros / 1_000_000
    leases = []
    for shard in range(shards):
        value, pttl = reply[1 + 2 * shard], reply[2 + 2 * shard]
        if value is None:
            leases.append(LeaseState(shard, None, None, None))
            continue
        owner, epoch = lease_holder(value)
        leases.append(LeaseState(shard, owner, epoch, pttl / 1000 if pttl >= 0 else None))
    workers = {
        (member.decode() if isinstance(member, bytes) else str(member)): score / 1000
        for member, score in reply[-1]
        if score / 1000 > now
    }
    return LeasesRead(now=now, leases=leases, workers=workers)


_RAISE = """
INSERT INTO shard_fence (shard, epoch, worker, updated) VALUES (%s, %s, %s, now())
ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch, worker = EXCLUDED.worker, updated = now()
WHERE shard_fence.epoch < EXCLUDED.epoch
"""


def fence_raise(cursor, *, shard: int, epoch: int, worker: str) -> int:
    """Record ``epoch`` as the newest of ``shard`` in this database (a lower one is left as it is)
    and return the epoch stored. A worker that took a shard raises the fence in every datacenter
    database of its region, each in a transaction of its own, before its first write; a stored
    epoch above its own means the shard has moved on: it must not write, and releases the lease."""
    cursor.execute(_RAISE, [shard, epoch, worker])
    cursor.execute("SELECT epoch FROM shard_fence WHERE shard = %s", [shard])
    return int(cursor.fetchone()[0])


def fences_raise(cursor, *, epochs: Mapping[int, int], worker: str) -> dict[int, int]:
    """``fence_raise`` for several shards (shard -> epoch) in one statement each way; returns
    shard -> the epoch stored."""
    order = sorted(epochs)
    cursor.execute(
        "INSERT INTO shard_fence (shard, epoch, worker, updated) "
        "SELECT shard, epoch, %s, now() FROM unnest(%s::integer[], %s::bigint[]) AS x(shard, epoch) "
        "ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch, worker = EXCLUDED.worker, updated = now() "
        "WHERE shard_fence.epoch < EXCLUDED.epoch",
        [worker, order, [epochs[shard] for shard in order]],
    )
    cursor.execute("SELECT shard, epoch FROM shard_fence WHERE shard = ANY(%s)", [order])
    return {int(shard): int(epoch) for shard, epoch in cursor.fetchall()}


def fence_check(cursor, *, shard: int, epoch: int) -> None:
    """First statement of a write transaction for ``shard``: lock its fence row until commit and
    raise ``Fenced`` unless it holds ``epoch``.

    FOR SHARE, because what must be excluded is a raise committing between this check and the
    writer's commit: the raise's UPDATE waits for the share lock, so a fenced-out owner's commit
    either lands before the new owner's fence (and the new owner, which reads only after raising,
    sees it) or its check waits for the raise and sees the newer epoch. FOR KEY SHARE would not do:
    it does not conflict with an UPDATE that leaves the key alone. FOR UPDATE would also be correct,
    but it would serialize the owner's own concurrent transactions on the shard (a sync and a
    recalculation batch, say) for nothing: two writers cannot both pass the check, only the holder
    of the stored epoch does."""
    cursor.execute("SELECT epoch FROM shard_fence WHERE shard = %s FOR SHARE", [shard])
    row = cursor.fetchone()
    stored = None if row is None else int(row[0])
    if stored != epoch:
        raise Fenced(shard=shard, epoch=epoch, stored=stored)


def fences_check(cursor, *, epochs: dict[int, int]) -> None:
    """``fence_check`` for a transaction that writes for several shards (shard -> epoch): one
    statement locks their fence rows, in shard order, and raises ``Fenced`` for the first shard
    whose fence holds another epoch."""
    if len(epochs) == 1:
        ((shard, epoch),) = epochs.items()
        fence_check(cursor, shard=shard, epoch=epoch)
        return
    cursor.execute(
        "SELECT shard, epoch FROM shard_fence WHERE shard = ANY(%s) ORDER BY shard FOR SHARE", [sorted(epochs)]
    )
    stored = {int(shard): int(epoch) for shard, epoch in cursor.fetchall()}
    for shard in sorted(epochs):
        if stored.get(shard) != epochs[shard]:
            raise Fenced(shard=shard, epoch=epochs[shard], stored=stored.get(shard))
