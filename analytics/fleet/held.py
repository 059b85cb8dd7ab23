"""What a calc worker holds of a shard (its lease's epoch and its cache), and the fenced
transaction every write for held shards runs in (docs/analytics.md, "Shards and fencing")."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction

from accounts import placement
from analytics.fleet.cache import ShardCache
from analytics.fleet.leases import fences_check


@dataclass
class HeldShard:
    shard: int
    epoch: int
    cache: ShardCache


class NotHeld(Exception):
    """This worker does not hold the shard (the task goes back to its queue for the holder)."""

    def __init__(self, shard: int):
        super().__init__(f"shard {shard} is not held by this worker")
        self.shard = shard


@contextmanager
def fenced(alias: str, held_shards: Sequence[HeldShard]) -> Iterator[Any]:
    """A transaction on ``alias`` that may write for these held shards: its first statement checks
    their fences (``Fenced`` when another worker took one of them); yields a cursor."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        fences_check(cursor, epochs={held.shard: held.epoch for held in held_shards})
        yield cursor


def placed_elsewhere(alias: str, account_ids: Iterable[int]) -> set[int]:
    """The accounts whose data the placement (at most a moment old) puts in another datacenter:
    their rows here are a moving account's source copy. The placement guard checks again, exactly,
    inside each write."""
    return {account_id for account_id in account_ids if placement.alias_for_account(account_id) != alias}
