"""Debounce timers of the calculation fleet: per assignment the pending recalculation range and a
due time, in Redis, changed only by atomic Lua scripts that read Redis's own clock.

Per region and shard there are four keys (``flespi_site.fleet.debounce_keys``): a sorted set of
timers (score: the next moment the pump must look at the entry), a sorted set of the entries with a
range not yet claimed (score: its due time; it is what the lag metrics read), a hash of the entries
themselves, and the counter of run tokens; and per region a due index, every shard with a timer
scored by its earliest, which each script keeps in step, so that finding what is due costs one
command however many shards a region has. One script call serves all the shards of a batch (each
shard as a call of its own would, one after the other): its keys are every shard's four and the
due index once, which one Redis per region allows (not a Redis Cluster: the keys of a call are in
many hash slots). The states, the scripts and what Redis losing its state means are in
docs/analytics.md, "Debounce". No Django here: the fleet passes a redis-py client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import redis

from flespi_site.fleet import debounce_keys, due_index_key

# Entries are packed as space-separated fields; "-" is an empty field:
#   state begin end due token run_begin run_end deadline
# begin/end are kept as the strings the caller sent (shortest float repr), so that merging
# ranges (compared with tonumber) never rounds a message timestamp.
#
# One call of a script serves any number of shards of a region. KEYS[1] is the region's due index;
# then come four keys per shard (``debounce_keys``: timers, pending, entries, token), so that the
# shard at key offset ``base`` has KEYS[base + TIMERS] ... KEYS[base + TOKEN]. ARGV starts with the
# arguments common to every shard (ARGV[1] is ``now``, '' for Redis's clock); then, for scripts
# that take entries, one group per shard in the order of the keys: how many entries, and the
# entries. The script works through the shards one after the other, each exactly as a call of
# its own would, with one clock.
_PRELUDE = r"""
local DUE, TIMERS, PENDING, ENTRIES, TOKEN = KEYS[1], 1, 2, 3, 4
local function now_ms()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The shards of the call in order: each one's key offset and, when its entries take `width`
-- arguments each (after the `head` common ones), the index of its first entry and their count.
local function shards(head, width)
  local base, cursor = -3, head + 1
  return function()
    base = base + 4
    if base > #KEYS - 4 then return nil end
    if width == 0 then return base end
    local count = tonumber(ARGV[cursor])
    local first = cursor + 1
    cursor = first + count * width
    return base, first, count
  end
end
local function fmt(ms) return string.format('%.0f', ms) end
local function load(base, member)
  local raw = redis.call('HGET', KEYS[base + ENTRIES], member)
  if not raw then return nil end
  local f = {}
  for part in string.gmatch(raw, '%S+') do f[#f + 1] = part end
  return {state = f[1], b = f[2], e = f[3], due = f[4], token = f[5], rb = f[6], re = f[7], deadline = f[8]}
end
local function store(base, member, x)
  redis.call('HSET', KEYS[base + ENTRIES], member,
    table.concat({x.state, x.b, x.e, x.due, x.token, x.rb, x.re, x.deadline}, ' '))
  if x.b == '-' then
    redis.call('ZREM', KEYS[base + PENDING], member)
  else
    redis.call('ZADD', KEYS[base + PENDING], x.due, member)
  end
end
local function forget(base, member)
  redis.call('HDEL', KEYS[base + ENTRIES], member)
  redis.call('ZREM', KEYS[base + TIMERS], member)
  redis.call('ZREM', KEYS[base + PENDING], member)
end
-- The shard's place in the region's due index: its earliest timer (its timers' key ends in
-- ':<shard>'). Returns 1 when the shard has a timer, else 0.
local function reindex(base)
  local first = redis.call('ZRANGE', KEYS[base + TIMERS], 0, 0, 'WITHSCORES')
  local shard = string.match(KEYS[base + TIMERS], ':(%d+)$')
  if first[1] then
    redis.call('ZADD', DUE, first[2], shard)
    return 1
  end
  redis.call('ZREM', DUE, shard)
  return 0
end
local function merge(b1, e1, b2, e2)
  if b1 == '-' then return b2, e2 end
  if b2 == '-' then return b1, e1 end
  local b, e = b1, e1
  if tonumber(b2) < tonumber(b1) then b = b2 end
  if tonumber(e2) > tonumber(e1) then e = e2 end
  return b, e
end
"""

# ARGV: now, then per shard its count of changes and (member, begin, end, delay_ms) per change.
# Returns per shard how many timers it armed (entries that were idle). The due time never moves
# later once armed: the first message of a window fixes it, so a device that never stops
# reporting is calculated every delay.
_SCHEDULE = (
    _PRELUDE
    + r"""
local now = now_ms()
local function schedule(base, first, count)
  local armed = 0
  for i = first, first + 4 * (count - 1), 4 do
    local m, b, e = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local due = now + tonumber(ARGV[i + 3])
    local x = load(base, m)
    if not x then
      x = {state = 'pending', b = b, e = e, due = fmt(due), token = '-', rb = '-', re = '-', deadline = '-'}
      redis.call('ZADD', KEYS[base + TIMERS], x.due, m)
      armed = armed + 1
    else
      x.b, x.e = merge(x.b, x.e, b, e)
      if x.state == 'pending' then
        if due < tonumber(x.due) then
          x.due = fmt(due)
          redis.call('ZADD', KEYS[base + TIMERS], x.due, m)
        end
      elseif x.state == 'running' then
        -- the range waits for the run's release; the timer stays on the run's deadline
        if x.due == '-' or due < tonumber(x.due) then x.due = fmt(due) end
      end
      -- 'sent': already offered, the claim takes the widened range
    end
    store(base, m, x)
  end
  reindex(base)
  return armed
end
local out = {}
for base, first, count in shards(1, 4) do out[#out + 1] = schedule(base, first, count) end
return out
"""
)

# ARGV: now, limit (per shard), offer_timeout_ms, budget. Returns per shard its member, reason
# pairs, for the first shards only when their offers reach the budget (the caller sends the others
# again).
_PUMP = (
    _PRELUDE
    + r"""
local now = now_ms()
local limit = tonumber(ARGV[2])
local timeout = tonumber(ARGV[3])
local function pump(base)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[base + TIMERS], '-inf', now, 'LIMIT', 0, limit)) do
    local x = load(base, m)
    if not x then
      forget(base, m)
    else
      local reason = 'due'
      if x.state == 'running' then
        -- its deadline passed with no release: the run crashed, its range joins the pending one
        reason = 'crashed'
        x.b, x.e = merge(x.b, x.e, x.rb, x.re)
        if x.due == '-' then x.due = x.deadline end
        x.rb, x.re, x.token, x.deadline = '-', '-', '-', '-'
      elseif x.state == 'sent' then
        reason = 'reoffered'
      end
      x.state = 'sent'
      redis.call('ZADD', KEYS[base + TIMERS], fmt(now + timeout), m)
      store(base, m, x)
      out[#out + 1] = m
      out[#out + 1] = reason
    end
  end
  reindex(base)
  return out
end
local budget = tonumber(ARGV[4])
local out, offered = {}, 0
for base in shards(4, 0) do
  if offered >= budget then break end
  local offers = pump(base)
  out[#out + 1] = offers
  offered = offered + #offers / 2
end
return out
"""
)

# ARGV: now, run_timeout_ms, then per shard its count of members and the members. Returns per
# shard member, token, begin, end per claim granted.
_CLAIM = (
    _PRELUDE
    + r"""
local now = now_ms()
local deadline = fmt(now + tonumber(ARGV[2]))
local function claim(base, first, count)
  local out = {}
  for i = first, first + count - 1 do
    local m = ARGV[i]
    local x = load(base, m)
    local take = false
    if x then
      if x.state == 'running' then
        if tonumber(x.deadline) <= now then
          -- a crashed run the pump has not seen yet: its range joins this run
          x.b, x.e = merge(x.b, x.e, x.rb, x.re)
          take = true
        end
      else
        take = x.b ~= '-'
      end
    end
    if take then
      local token = tostring(redis.call('INCR', KEYS[base + TOKEN]))
      x.state, x.rb, x.re, x.b, x.e, x.due = 'running', x.b, x.e, '-', '-', '-'
      x.token, x.deadline = token, deadline
      redis.call('ZADD', KEYS[base + TIMERS], deadline, m)
      store(base, m, x)
      out[#out + 1] = m
      out[#out + 1] = token
      out[#out + 1] = x.rb
      out[#out + 1] = x.re
    end
  end
  reindex(base)
  return out
end
local out = {}
for base, first, count in shards(2, 1) do out[#out + 1] = claim(base, first, count) end
return out
"""
)

# ARGV: now, ok (1/0), retry_delay_ms, then per shard its count of claims and (member, token) per
# claim. Returns per shard member, outcome pairs: 'done' (nothing left), 'again' (a range is
# pending: one more run), 'stale' (not this run's claim).
_RELEASE = (
    _PRELUDE
    + r"""
local now = now_ms()
local ok = ARGV[2] == '1'
local retry = now + tonumber(ARGV[3])
local function release(base, first, count)
  local out = {}
  for i = first, first + 2 * (count - 1), 2 do
    local m, token = ARGV[i], ARGV[i + 1]
    local x = load(base, m)
    local outcome
    if not x or x.state ~= 'running' or x.token ~= token then
      outcome = 'stale'
    else
      if not ok then
        x.b, x.e = merge(x.b, x.e, x.rb, x.re)
        if x.due == '-' or tonumber(x.due) < retry then x.due = fmt(retry) end
      end
      x.rb, x.re, x.token, x.deadline = '-', '-', '-', '-'
      if x.b == '-' then
        forget(base, m)
        outcome = 'done'
      else
        x.state = 'pending'
        redis.call('ZADD', KEYS[base + TIMERS], x.due, m)
        store(base, m, x)
        outcome = 'again'
      end
    end
    out[#out + 1] = m
    out[#out + 1] = outcome
  end
  reindex(base)
  return out
end
local out = {}
for base, first, count in shards(3, 2) do out[#out + 1] = release(base, first, count) end
return out
"""
)

# ARGV: now. Every offer and run of the shards comes back at the next pump round (the shards'
# previous holder is gone). Returns per shard how many.
_ABANDON = (
    _PRELUDE
    + r"""
local now = now_ms()
local function abandon(base)
  local count = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[base + TIMERS], 0, -1)) do
    local x = load(base, m)
    if x and x.state ~= 'pending' then
      if x.state == 'running' then x.deadline = fmt(now) end
      redis.call('ZADD', KEYS[base + TIMERS], fmt(now), m)
      store(base, m, x)
      count = count + 1
    end
  end
  reindex(base)
  return count
end
local out = {}
for base in shards(1, 0) do out[#out + 1] = abandon(base) end
return out
"""
)

# ARGV: now (unused). Puts each shard's earliest timer in the due index (a repair after Redis lost
# the index alone, or timers armed by an older version). Returns per shard 1 when it has a timer.
_REINDEX = (
    _PRELUDE
    + r"""
local out = {}
for base in shards(1, 0) do out[#out + 1] = reindex(base) end
return out
"""
)

_NOW = "local t = redis.call('TIME') return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"

State = Literal["pending", "sent", "running"]
OfferReason = Literal["due", "reoffered", "crashed"]
ReleaseOutcome = Literal["done", "again", "stale"]


@dataclass(frozen=True)
class Change:
    """Assignment (calc_id, device_id) has messages changed in [begin, end] (timestamps, s)."""

    calc_id: int
    device_id: int
    begin: float
    end: float
    delay: float


@dataclass(frozen=True)
class Offer:
    """A due assignment the pump sends to the shard's holder, and why it is offered."""

    calc_id: int
    device_id: int
    reason: OfferReason


@dataclass(frozen=True)
class Claim:
    """A run's claim: the range to recalculate and the token that releases it."""

    calc_id: int
    device_id: int
    begin: float
    end: float
    token: str


@dataclass(frozen=True)
class Entry:
    """An assignment's timer as stored: the pending range (None when all of it is claimed), its
    due time, and the running claim if any (times in seconds of Redis's clock)."""

    calc_id: int
    device_id: int
    state: State
    begin: float | None
    end: float | None
    due: float | None
    running_begin: float | None
    running_end: float | None
    deadline: float | None


@dataclass(frozen=True)
class ShardLag:
    """What the status page and metrics show for a shard: assignments with a range waiting to be
    claimed, the oldest due time among them, and how far Redis's clock is past it."""

    pending: int
    timers: int
    oldest_due: float | None
    lag: float


def _member(calc_id: int, device_id: int) -> str:
    return f"{int(calc_id)}:{int(device_id)}"


def _ids(member: str | bytes) -> tuple[int, int]:
    text = member.decode() if isinstance(member, bytes) else member
    calc, _, device = text.partition(":")
    return int(calc), int(device)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else str(round(seconds * 1000))


def _duration_ms(seconds: float, what: str) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, not {seconds!r}")
    return str(round(seconds * 1000))


def _stamp(value: float, what: str) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite timestamp, not {value!r}")
    return repr(number)


def _optional(field: str, scale: float = 1.0) -> float | None:
    return None if field == "-" else float(field) / scale


# The most entries one script call touches (changes scheduled, assignments claimed, claims
# released, offers made). A call over more is cut between shards (never inside one): the
# ``_many`` methods split what they send, and the pump's script stops at this many offers and
# leaves the shards it did not reach to the next call. A batch of the fleet (1,000 assignments
# over 256 shards, or ``BATCH`` of 500) is one call; a catch-up drain or a deep backlog becomes a
# few calls of some milliseconds of Redis each, between which Redis serves its other clients.
CALL_ENTRIES = 2048


@dataclass(frozen=True)
class _Group:
    """A shard's part of a script call: its argument group (the count of its entries and the
    entries; nothing for the scripts without entries) and how many entries it holds."""

    shard: int
    args: list[str]
    entries: int


def _fitting(groups: Sequence[_Group]) -> int:
    """How many of the first ``groups`` one call takes: as many as hold at most ``CALL_ENTRIES``
    entries together, and at least one."""
    entries = 0
    for count, group in enumerate(groups):
        entries += group.entries
        if count and entries > CALL_ENTRIES:
            return count
    return len(groups)


class DebounceTimers:
    """The debounce timers of one region. ``client`` is a redis-py client of the region's Redis;
    the scripts are registered once here and run by SHA afterwards. Durations are seconds;
    ``now`` (seconds) replaces Redis's clock, for tests only."""

    def __init__(self, client: redis.Redis, *, region: str):
        self.client = client
        self.region = region
        self._schedule = client.register_script(_SCHEDULE)
        self._pump = client.register_script(_PUMP)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._now = client.register_script(_NOW)
        self._abandon = client.register_script(_ABANDON)
        self._reindex = client.register_script(_REINDEX)

    def keys(self, shard: int) -> list[str]:
        return debounce_keys(self.region, shard)

    def now(self) -> float:
        """Redis's clock, in seconds (what the scripts compare due times with)."""
        return int(self._now()) / 1000

    def _call(self, script, head: list[str], groups: Sequence[_Group]) -> list:
        """Run ``script`` over the shards of ``groups`` in one call, after ``head`` (the arguments
        common to every shard): each shard's reply, in the order of ``groups``. Past
        ``CALL_ENTRIES`` entries the shards left go in another call, so that no single script holds
        Redis for long; each call reads Redis's clock once."""
        replies: list = []
        left = list(groups)
        while left:
            part = left[:_fitting(left)]
            keys = [due_index_key(self.region)]
            args = list(head)
            for group in part:
                keys += self.keys(group.shard)[:4]  # the fifth, the due index, is KEYS[1]
                args += group.args
            answered = script(keys=keys, args=args)  # the pump's may answer for the first shards only
            if not answered:
                shards = [group.shard for group in part]
                raise RuntimeError(f"the debounce script answered for none of shards {shards}")
            replies += answered
            left = left[len(answered):]
        return replies

    def schedule(self, *, shard: int, changes: Iterable[Change], now: float | None = None) -> int:
        """Widen each assignment's pending range and arm its timer at now + delay unless it is armed
        sooner. Returns how many timers were armed (assignments that had nothing pending)."""
        return self.schedule_many({shard: changes}, now=now)

    def schedule_many(self, changes: Mapping[int, Iterable[Change]], *, now: float | None = None) -> int:
        """``schedule`` for several shards (shard -> changes) in one script call."""
        groups = []
        for shard, shard_changes in changes.items():
            args = []
            for change in shard_changes:
                begin, end = _stamp(change.begin, "begin"), _stamp(change.end, "end")
                if float(begin) > float(end):
                    raise ValueError(f"begin {begin} is after end {end}")
                args += [
                    _member(change.calc_id, change.device_id),
                    begin,
                    end,
                    _duration_ms(change.delay, "delay"),
                ]
            if args:
                count = len(args) // 4
                groups.append(_Group(shard, [str(count), *args], entries=count))
        return sum(int(armed) for armed in self._call(self._schedule, [_ms(now)], groups))

    def pump(self, *, shard: int, limit: int, offer_timeout: float, now: float | None = None) -> list[Offer]:
        """Take up to ``limit`` due assignments of ``shard`` and mark them sent, for one message to
        the shard's holder. An offer not claimed within ``offer_timeout`` is offered again, and a
        run past its deadline with no release comes back as ``crashed`` with its range merged."""
        return self.pump_many(shards=[shard], limit=limit, offer_timeout=offer_timeout, now=now).get(shard, [])

    def pump_many(
        self, *, shards: Iterable[int], limit: int, offer_timeout: float, now: float | None = None
    ) -> dict[int, list[Offer]]:
        """``pump`` for several shards (up to ``limit`` each) in one script call; shards with
        nothing due are left out."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        order = list(dict.fromkeys(shards))
        head = [_ms(now), str(limit), _duration_ms(offer_timeout, "offer_timeout"), str(CALL_ENTRIES)]
        # What a shard's pump offers is known only in Redis: the script keeps to CALL_ENTRIES.
        replies = self._call(self._pump, head, [_Group(shard, [], entries=0) for shard in order])
        offers = {}
        for shard, reply in zip(order, replies, strict=True):
            if reply:
                offers[shard] = [
                    Offer(*_ids(reply[i]), reason=_text(reply[i + 1]))  # type: ignore[arg-type]
                    for i in range(0, len(reply), 2)
                ]
        return offers

    def claim(
        self,
        *,
        shard: int,
        assignments: Sequence[tuple[int, int]],
        run_timeout: float,
        now: float | None = None,
    ) -> list[Claim]:
        """Claim each (calc_id, device_id)'s accumulated range for a run ending by now + run_timeout.
        An assignment already running (deadline not passed) or with nothing pending is left out."""
        return self.claim_many({shard: assignments}, run_timeout=run_timeout, now=now).get(shard, [])

    def claim_many(
        self, assignments: Mapping[int, Sequence[tuple[int, int]]], *, run_timeout: float, now: float | None = None
    ) -> dict[int, list[Claim]]:
        """``claim`` for several shards (shard -> assignments) in one script call."""
        order = [shard for shard, pairs in assignments.items() if pairs]
        head = [_ms(now), _duration_ms(run_timeout, "run_timeout")]
        groups = [
            _Group(
                shard,
                [str(len(assignments[shard]))]
                + [_member(calc_id, device_id) for calc_id, device_id in assignments[shard]],
                entries=len(assignments[shard]),
            )
            for shard in order
        ]
        claims = {}
        for shard, reply in zip(order, self._call(self._claim, head, groups), strict=True):
            claims[shard] = [
                Claim(
                    *_ids(reply[i]), token=_text(reply[i + 1]), begin=float(reply[i + 2]), end=float(reply[i + 3])
                )
                for i in range(0, len(reply), 4)
            ]
        return claims

    def release(
        self,
        *,
        shard: int,
        claims: Sequence[Claim],
        ok: bool,
        retry_delay: float = 0.0,
        now: float | None = None,
    ) -> dict[tuple[int, int], ReleaseOutcome]:
        """End the runs of ``claims``. Success clears the claimed ranges; failure puts them back
        merged with what arrived since, due no sooner than now + retry_delay. Either way, a range
        scheduled during the run stays armed for exactly one more run. A claim that is no longer
        the entry's (its deadline passed and it was re-offered or re-claimed, or Redis lost it)
        changes nothing and comes back ``stale``."""
        return self.release_many({shard: claims}, ok=ok, retry_delay=retry_delay, now=now).get(shard, {})

    def release_many(
        self,
        claims: Mapping[int, Sequence[Claim]],
        *,
        ok: bool,
        retry_delay: float = 0.0,
        now: float | None = None,
    ) -> dict[int, dict[tuple[int, int], ReleaseOutcome]]:
        """``release`` for several shards (shard -> claims) in one script call."""
        order = [shard for shard, shard_claims in claims.items() if shard_claims]
        head = [_ms(now), "1" if ok else "0", _duration_ms(retry_delay, "retry_delay")]
        groups = []
        for shard in order:
            args = [str(len(claims[shard]))]
            for claim in claims[shard]:
                args += [_member(claim.calc_id, claim.device_id), claim.token]
            groups.append(_Group(shard, args, entries=len(claims[shard])))
        outcomes = {}
        for shard, reply in zip(order, self._call(self._release, head, groups), strict=True):
            outcomes[shard] = {_ids(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply), 2)}
        return outcomes  # type: ignore[return-value]

    def abandon(self, *, shard: int, now: float | None = None) -> int:
        """The shard changed hands: its offers and runs (of the previous holder, which is gone or
        fenced out) are offered again at the next pump round, runs as crashed with their range
        merged. Returns how many."""
        [count] = self._call(self._abandon, [_ms(now)], [_Group(shard, [], entries=0)])
        return int(count)

    def entries(self, *, shard: int) -> list[Entry]:
        """Every timer of ``shard`` (pending, sent or running), ordered by assignment."""
        raw = self.client.hgetall(self.keys(shard)[2])
        result = []
        for member, packed in raw.items():
            state, begin, end, due, _token, run_begin, run_end, deadline = _text(packed).split(" ")
            result.append(
                Entry(
                    *_ids(member),
                    state=state,  # type: ignore[arg-type]
                    begin=_optional(begin),
                    end=_optional(end),
                    due=_optional(due, 1000),
                    running_begin=_optional(run_begin),
                    running_end=_optional(run_end),
                    deadline=_optional(deadline, 1000),
                )
            )
        return sorted(result, key=lambda entry: (entry.calc_id, entry.device_id))

    def unheld(self, changes: Mapping[int, Sequence[Change]]) -> dict[int, list[Change]]:
        """Those of ``changes`` (shard -> changes) whose assignment has no timer at all, in one
        round trip (an ``HMGET`` per shard of exactly those assignments, not every timer read)."""
        order = [shard for shard, shard_changes in changes.items() if shard_changes]
        pipe = self.client.pipeline(transaction=False)
        for shard in order:
            pipe.hmget(self.keys(shard)[2], [_member(change.calc_id, change.device_id) for change in changes[shard]])
        missing: dict[int, list[Change]] = {}
        for shard, found in zip(order, pipe.execute() if order else [], strict=True):
            absent = [change for change, packed in zip(changes[shard], found, strict=True) if packed is None]
            if absent:
                missing[shard] = absent
        return missing

    def due_index(self) -> tuple[float, dict[int, float]]:
        """Redis's clock and every shard with a timer -> the earliest moment one of them wants the
        pump (seconds), in one round trip, from the region's due index."""
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(due_index_key(self.region), 0, -1, withscores=True)
        (seconds, micros), members = pipe.execute()
        return seconds + micros / 1_000_000, {int(member): score / 1000 for member, score in members}

    def due_shards(self, *, shards: Iterable[int]) -> list[int]:
        """Those of ``shards`` with a timer due now (by the due index)."""
        now, index = self.due_index()
        return [shard for shard in shards if index.get(shard, math.inf) <= now]

    def next_due(self, *, shards: Iterable[int]) -> tuple[float, float | None]:
        """Redis's clock and the earliest moment any timer of ``shards`` wants the pump (None: no
        timer), in seconds, in one round trip."""
        now, index = self.due_index()
        dues = [index[shard] for shard in shards if shard in index]
        return now, min(dues) if dues else None

    def reindex(self, *, shards: Iterable[int]) -> None:
        """Put each shard's earliest timer in the due index (reconciliation's repair)."""
        self._call(self._reindex, [""], [_Group(shard, [], entries=1) for shard in dict.fromkeys(shards)])

    def lag(self, *, shard: int, now: float | None = None) -> ShardLag:
        """Counts and the oldest due time of ``shard`` (two ZCARDs and one ZRANGE: cheap to poll)."""
        timers_key, pending_key = self.keys(shard)[:2]
        pipe = self.client.pipeline(transaction=True)
        pipe.zcard(pending_key)
        pipe.zcard(timers_key)
        pipe.zrange(pending_key, 0, 0, withscores=True)
        pending, timers, oldest = pipe.execute()
        oldest_due = oldest[0][1] / 1000 if oldest else None
        clock = self.now() if now is None else now
        return ShardLag(
            pending=int(pending),
            timers=int(timers),
            oldest_due=oldest_due,
            lag=max(0.0, clock - oldest_due) if oldest_due is not None else 0.0,
        )
