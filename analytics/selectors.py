"""Reads of calculators, assignments and stored intervals, scoped to the acting account."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import QuerySet

from accounts import placement
from accounts.models import Account
from analytics import storage
from analytics.models import Assignment, Calculator, GroupAssignment

# Every calculator reads its device's own messages (the engine refuses any other source).
MESSAGES_SOURCE = {"source": "device"}


def calculator_item(calculator: Calculator) -> dict:
    """A calculator as the API renders it, and as its log events carry it."""
    return {
        "id": calculator.pk,
        "cid": calculator.account_id,
        "messages_source": dict(MESSAGES_SOURCE),
        **calculator.configuration(),
        "version": calculator.version,
        "created": calculator.created,
    }


def calculators_of(*, account: Account) -> QuerySet[Calculator]:
    return placement.using_account(Calculator, account.pk).filter(account_id=account.pk)


def assignments_of(
    *, account: Account, calculator_ids: Sequence[int], device_ids: Sequence[int] | None = None
) -> QuerySet[Assignment]:
    """The account's assignments of these calculators (and devices), calculator by calculator."""
    rows = placement.using_account(Assignment, account.pk).filter(account_id=account.pk, calculator_id__in=calculator_ids)
    if device_ids is not None:
        rows = rows.filter(device_id__in=device_ids)
    return rows.order_by("calculator_id", "device_id")


def group_assignments_of(*, account: Account, calculator_ids: Sequence[int]) -> QuerySet[GroupAssignment]:
    """The account's assignments of groups to these calculators, with their groups."""
    rows = placement.using_account(GroupAssignment, account.pk).filter(
        account_id=account.pk, calculator_id__in=calculator_ids
    )
    return rows.select_related("group").order_by("calculator_id", "group_id")


def intervals_of(
    *,
    assignments: Sequence[Assignment],
    ids: Sequence[int] | None = None,
    begin: float | None = None,
    end: float | None = None,
    count: int | None = None,
    reverse: bool = False,
    condition=None,
    chunk: int = 10_000,
) -> list[dict]:
    """Stored intervals of each assignment overlapping ``[begin, end]``, by begin (newest first
    with ``reverse``), at most ``count`` per assignment, each with ``calc_id`` and ``device_id``.
    ``condition`` (a compiled expression) keeps those it matches; it is applied chunk by chunk,
    so a selective filter over years of intervals never reads them all at once."""
    if not assignments:
        return []
    alias = assignments[0].database
    pairs = [(assignment.calculator_id, assignment.device_id) for assignment in assignments]
    if condition is None:
        return storage.intervals_read(alias=alias, pairs=pairs, ids=ids, begin=begin, end=end, count=count, reverse=reverse)
    # Every assignment is read a chunk at a time, all of them in one statement per round: the
    # number of statements grows with the longest history, not with the number of assignments.
    kept: dict[tuple[int, int], list[dict]] = {pair: [] for pair in pairs}
    past: dict[tuple[int, int], int | None] = dict.fromkeys(pairs)
    open_pairs = list(pairs)
    while open_pairs:
        batch = storage.intervals_read(
            alias=alias, pairs=open_pairs, ids=ids, begin=begin, end=end, count=chunk, reverse=reverse,
            past_ids=[past[pair] for pair in open_pairs],
        )
        read: dict[tuple[int, int], int] = {}
        for interval in batch:
            pair = (interval["calc_id"], interval["device_id"])
            read[pair] = read.get(pair, 0) + 1
            past[pair] = interval["id"]
            if condition.matches(interval):
                kept[pair].append(interval)
        open_pairs = [
            pair for pair in open_pairs
            if read.get(pair, 0) == chunk and (count is None or len(kept[pair]) < count)
        ]
    found: list[dict] = []
    for pair in pairs:
        found.extend(kept[pair] if count is None else kept[pair][:count])
    return found


def interval_counts(*, assignments: Sequence[Assignment]) -> dict[tuple[int, int], tuple[int, float | None]]:
    """Per (calc_id, device_id): how many intervals are stored and the end of the newest."""
    if not assignments:
        return {}
    return storage.intervals_count(
        alias=assignments[0].database,
        pairs=[(assignment.calculator_id, assignment.device_id) for assignment in assignments],
    )
