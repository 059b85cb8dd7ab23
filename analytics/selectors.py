"""Reads of calculators, assignments, geofences and stored intervals, scoped to the acting account."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from operator import itemgetter

from django.db.models import QuerySet

from accounts import placement
from accounts.models import Account
from analytics import storage
from analytics.constants import MAX_ROLLUP_PERIODS, ROLLUP_DEVICES_CHUNK
from analytics.engine.rollups import ROLLUP_COLUMNS, Rollup, RollupError, period_bounds
from analytics.models import Assignment, Calculator, CalculatorGeofence, Geofence, GroupAssignment
from flespi_site.errors import ErrorKind, InvalidInput


def calculator_item(calculator: Calculator) -> dict:
    """A calculator as the API renders it, and as its log events carry it."""
    return {
        "id": calculator.pk,
        "cid": calculator.account_id,
        **calculator.configuration(),
        "version": calculator.version,
        "created": calculator.created,
    }


def calculators_of(*, account: Account) -> QuerySet[Calculator]:
    return placement.using_account(Calculator, account.pk).filter(account_id=account.pk)


def geofence_item(geofence: Geofence) -> dict:
    """A geofence as the API renders it."""
    return {
        "id": geofence.pk,
        "cid": geofence.account_id,
        "name": geofence.name,
        "enabled": geofence.enabled,
        "priority": geofence.priority,
        "geometry": geofence.geometry,
        "metadata": geofence.metadata,
        "created": geofence.created,
    }


def geofences_of(*, account: Account) -> QuerySet[Geofence]:
    return placement.using_account(Geofence, account.pk).filter(account_id=account.pk)


def calculator_geofences_of(*, account: Account, calculator_ids: Sequence[int]) -> QuerySet[CalculatorGeofence]:
    """The account's geofence assignments of these calculators, calculator by calculator."""
    return (
        placement.using_account(CalculatorGeofence, account.pk)
        .filter(account_id=account.pk, calculator_id__in=calculator_ids)
        .select_related("geofence")
        .order_by("calculator_id", "geofence_id")
    )


def geofences_of_calculator(*, calculator: Calculator) -> list[Geofence]:
    """The geofences assigned to a calculator, disabled ones too."""
    return list(
        Geofence.objects.using(calculator.database)
        .filter(calculator_links__calculator_id=calculator.pk)
        .order_by("id")
    )


def calculators_of_geofences(*, alias: str, geofence_ids: Sequence[int]) -> list[int]:
    """The ids of the calculators that see any of these geofences."""
    return sorted(
        set(
            CalculatorGeofence.objects.using(alias)
            .filter(geofence_id__in=geofence_ids)
            .values_list("calculator_id", flat=True)
        )
    )


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


def intervals_pages(
    *,
    assignments: Sequence[Assignment],
    ids: Sequence[int] | None = None,
    begin: float | None = None,
    end: float | None = None,
    count: int | None = None,
    reverse: bool = False,
    condition=None,
    chunk: int = 5_000,
) -> Iterator[list[dict]]:
    """The intervals ``intervals_of`` answers for the same arguments, in the same order, as pages
    read one statement at a time (keyset pages by id, assignment by assignment): an export of
    years of intervals holds one page at a time. Each page is a statement of its own: an
    interval that a recalculation writes while the pages are read is seen as it was when its
    page was read."""
    if not assignments:
        return
    alias = assignments[0].database
    for assignment in assignments:
        pair = (assignment.calculator_id, assignment.device_id)
        past: int | None = None
        left = count
        while left is None or left > 0:
            size = chunk if left is None or condition is not None else min(chunk, left)
            batch = storage.intervals_read(
                alias=alias, pairs=[pair], ids=ids, begin=begin, end=end, count=size, reverse=reverse, past_ids=[past]
            )
            if not batch:
                break
            past = batch[-1]["id"]
            kept = batch if condition is None else [interval for interval in batch if condition.matches(interval)]
            if left is not None:
                kept = kept[:left]
                left -= len(kept)
            if kept:
                yield kept
            if len(batch) < size:
                break


def intervals_keys(
    *,
    assignments: Sequence[Assignment],
    ids: Sequence[int] | None = None,
    begin: float | None = None,
    end: float | None = None,
    count: int | None = None,
    reverse: bool = False,
) -> set[str]:
    """The counter and user-field names of the stored intervals ``intervals_pages`` reads for the
    same arguments without a condition (a condition keeps rows after they are read: with one,
    ``count`` does not bound the rows, so pass None)."""
    if not assignments:
        return set()
    return storage.intervals_keys(
        alias=assignments[0].database,
        pairs=[(assignment.calculator_id, assignment.device_id) for assignment in assignments],
        ids=ids,
        begin=begin,
        end=end,
        count=count,
        reverse=reverse,
    )


def calculators_of_assignments(*, assignments: Sequence[Assignment]) -> dict[int, Calculator]:
    """The calculators of these assignments, by id, in one read."""
    if not assignments:
        return {}
    ids = sorted({assignment.calculator_id for assignment in assignments})
    return {calculator.pk: calculator for calculator in Calculator.objects.using(assignments[0].database).filter(pk__in=ids)}


def interval_counts(*, assignments: Sequence[Assignment]) -> dict[tuple[int, int], tuple[int, float | None]]:
    """Per (calc_id, device_id): how many intervals are stored and the end of the newest."""
    if not assignments:
        return {}
    return storage.intervals_count(
        alias=assignments[0].database,
        pairs=[(assignment.calculator_id, assignment.device_id) for assignment in assignments],
    )


def rollups_of(
    *, account: Account, assignments: Sequence[Assignment], rollup: Rollup, begin: float, end: float
) -> list[dict]:
    """The rollup of the stored intervals of each assignment that begin in ``[begin, end)``: per
    device and calendar period that holds one, ``{"calc_id", "device_id", "begin", "end",
    <counters>}`` (the period clipped to the range; a counter without a value is left out), by
    device, then period, then calculator. Periods are cut in the rollup's timezone, or each
    calculator's own. One statement per calculator and chunk of devices; no message is read.
    Raises ``RollupError`` for a field that a calculator's intervals do not have, and
    ``InvalidInput`` (``range_too_long``) beyond ``MAX_ROLLUP_PERIODS`` periods."""
    if not assignments:
        return []
    alias = assignments[0].database
    devices: dict[int, list[int]] = {}
    for assignment in assignments:
        devices.setdefault(assignment.calculator_id, []).append(assignment.device_id)
    calculators = list(calculators_of(account=account).filter(pk__in=list(devices)).order_by("pk"))
    problems = []
    for calculator in calculators:
        known = [counter["name"] for counter in calculator.counters]
        problems += [
            type(problem)(problem.path, f"{problem.message} (calculator {calculator.pk})")
            for problem in rollup.unknown_fields(known)
        ]
    if problems:
        raise RollupError(problems)
    bounds_of: dict[str, list[float]] = {}
    found: list[dict] = []
    counters = [(counter.type, counter.field) for counter in rollup.counters]
    for calculator in calculators:
        timezone = rollup.timezone or calculator.timezone
        if timezone not in bounds_of:
            bounds = period_bounds(begin=begin, end=end, timezone=timezone, split=rollup.split, limit=MAX_ROLLUP_PERIODS)
            if bounds is None:
                raise InvalidInput(
                    f"from..to holds more than {MAX_ROLLUP_PERIODS:,} periods of a {rollup.split}: narrow from/to "
                    "or split by a longer period",
                    kind=ErrorKind.RANGE_TOO_LONG,
                    field="to",
                    limit=MAX_ROLLUP_PERIODS,
                )
            bounds_of[timezone] = bounds
        bounds = bounds_of[timezone]
        ids = devices[calculator.pk]
        for start in range(0, len(ids), ROLLUP_DEVICES_CHUNK):
            rows = storage.intervals_rollup(
                alias=alias, calc_id=calculator.pk, device_ids=ids[start:start + ROLLUP_DEVICES_CHUNK], bounds=bounds,
                begin=begin, end=end, counters=counters, columns=ROLLUP_COLUMNS,
            )
            found += _rollup_items(calculator.pk, rows, bounds, begin, end, rollup)
    found.sort(key=itemgetter("device_id", "begin", "calc_id"))
    return found


def _rollup_items(calc_id: int, rows: list[tuple], bounds: list[float], begin: float, end: float,
                  rollup: Rollup) -> list[dict]:
    """The items of ``storage.intervals_rollup``'s rows (tens of thousands: one dict built per
    row by ``zip``, the periods' clipped bounds computed once)."""
    starts = [max(bound, begin) for bound in bounds[:-1]]
    ends = [min(bound, end) for bound in bounds[1:]]
    keys = ("calc_id", "device_id", "begin", "end", *(counter.name for counter in rollup.counters))
    items = []
    for device_id, period, *values in rows:
        item = dict(zip(keys, (calc_id, device_id, starts[period - 1], ends[period - 1], *values), strict=True))
        if None in values:  # a counter without a value is left out
            for name, value in zip(keys[4:], values, strict=True):
                if value is None:
                    del item[name]
        items.append(item)
    return items
