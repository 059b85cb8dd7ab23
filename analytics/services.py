"""Writes of calculators, assignments, geofences and stored intervals.

The API, the admin and the calc fleet call these; none of them touches the shard cache or Redis
(the fleet's own modules do). The results of recalculations are stored by
``analytics.calculation`` (``runs_store``), with their outbox rows in the same transaction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.db.models.functions import Greatest, Least

from accounts import placement
from accounts.models import Account
from accounts.placement_guard import placement_guard
from analytics import selectors, storage
from analytics.choices import AssignmentState
from analytics.constants import MAX_USER_FIELDS_BYTES, RESULT_FIELDS
from analytics.engine import CalculatorError, Problem, compile_calculator, normalize_calculator
from analytics.engine.interval_fields import INTERVAL_FIELDS
from analytics.engine.zone_checks import check_geometry
from analytics.engine.zones import GeofenceSet, zone_order
from analytics.events import Event, interval_events
from analytics.models import (
    Assignment,
    Calculator,
    CalculatorGeofence,
    CalculatorSource,
    Geofence,
    GroupAssignment,
)
from devices.membership import groups_lock
from devices.models import Device, Group
from devices.selectors import group_member_ids, groups_matching
from flespi_site import celery as calc_queue
from flespi_site.constants import LockSpace, lock_id
from flespi_site.errors import Conflict, DomainError, ErrorKind, InvalidInput, NotFound
from flespi_site.jsontext import dumps_exact
from flespi_site.mqtt.topics import LogEvent, calc_log_topic
from flespi_site.updates import locked_row, save_fields


class CalculatorInvalid(InvalidInput):
    """A calculator configuration with problems; ``problems`` lists every one with its path."""

    kind = ErrorKind.INVALID_CALCULATOR

    def __init__(self, problems: Sequence[Problem]):
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = list(problems)


def calculator_config_check(config: Mapping[str, Any]) -> dict:
    """The normalised configuration (every default filled in); ``CalculatorInvalid`` listing
    every problem with its path otherwise."""
    try:
        return normalize_calculator(dict(config))
    except CalculatorError as exc:
        raise CalculatorInvalid(exc.problems) from None


def calculator_changes_check(*, changes: Mapping[str, Any]) -> None:
    """The problems of a calculator update's changes alone (every path), before any calculator is
    read: the fields not changed are taken from a minimal valid calculator."""
    calculator_config_check({"name": "-", "selectors": [{"type": "datetime", "split": "day"}], **changes})


def _apply_config(calculator: Calculator, config: Mapping[str, Any]) -> None:
    for name, value in config.items():
        setattr(calculator, name, value)


def _logged(*, alias: str, calculator: Calculator, event: LogEvent) -> None:
    """Queue the calculator's log event (``log/gw/calcs/{id}/{event}``, its item as the API
    renders it) in the caller's transaction. It concerns no device: its outbox row names device
    0, which no device has."""
    storage.outbox_events(
        alias=alias,
        events=[Event(device_id=0, topic=calc_log_topic(calc_id=calculator.pk, event=event),
                      payload=selectors.calculator_item(calculator), retain=False)],
    )


def calculator_create(*, account: Account, config: Mapping[str, Any]) -> Calculator:
    """Create a calculator; the calculators it chains must be the account's (a 400 naming the
    path otherwise, nothing saved)."""
    normalised = calculator_config_check(config)
    compiled_config = compile_calculator(normalised)
    alias = placement.alias_for_account(account.pk)
    calculator = Calculator(account_id=account.pk, created=time.time())
    _apply_config(calculator, normalised)
    with transaction.atomic(using=alias):
        if compiled_config.chained:
            _chains_lock(alias=alias, account_id=account.pk)
            _chains_check(alias=alias, account_id=account.pk, calculator_id=None, compiled_config=compiled_config)
        calculator.save(using=alias)
        if compiled_config.chained:
            _chains_keep(alias=alias, calculator=calculator, compiled_config=compiled_config)
        _logged(alias=alias, calculator=calculator, event=LogEvent.CREATED)
    return calculator


def calculator_update(*, calculator: Calculator, data: Mapping[str, Any]) -> Calculator:
    """Change the named fields; the whole configuration is validated again. A change of a field
    that changes results (``metadata`` too when an expression reads ``calculator.metadata``)
    gives a new version and, with ``update_onchange``, asks for the recalculation of every
    assignment (within ``update_period``: the engine keeps older intervals frozen)."""
    alias = calculator.database
    with locked_row(Calculator, pk=calculator.pk, using=alias, name="calculator") as current:
        was_chained = compile_calculator(current.configuration()).chained
        config = current.configuration()
        config.update(data)
        normalised = calculator_config_check(config)
        changes = {name: value for name, value in normalised.items() if getattr(current, name) != value}
        if not changes:
            return current
        compiled_config = compile_calculator(normalised)
        affects_results = any(name in RESULT_FIELDS for name in changes) or (
            "metadata" in changes and "calculator" in compiled_config.reads_metadata
        )
        chains = compiled_config.chained or was_chained
        if chains:
            _chains_lock(alias=alias, account_id=current.account_id)
            _chains_check(alias=alias, account_id=current.account_id, calculator_id=current.pk,
                          compiled_config=compiled_config)
        if affects_results:
            changes["version"] = current.version + 1
        save_fields(current, changes, name="calculator")
        if chains:
            _chains_keep(alias=alias, calculator=current, compiled_config=compiled_config)
        _logged(alias=alias, calculator=current, event=LogEvent.UPDATED)
        if affects_results:
            _results_changed(alias=alias, calculators=[current])
    return current


def _results_changed(*, alias: str, calculators: Sequence[Calculator]) -> None:
    """What a change of what calculators compute (their new version is saved) asks of the fleet:
    with ``update_onchange``, the recalculation of every assignment of theirs (within
    ``update_period``: the engine keeps older intervals frozen)."""
    ids = [calculator.pk for calculator in calculators if calculator.update_onchange]
    if not ids:
        return
    assignments = Assignment.objects.using(alias).filter(calculator_id__in=ids)
    _request(assignments, -math.inf, math.inf)
    _tell_fleet(alias, assignments.values_list("shard", flat=True).distinct())


def _calculators_new_version(*, alias: str, calculator_ids: Iterable[int]) -> None:
    """The calculators' geofences changed: each gets a new version (a calc worker compiles a
    calculator once per version, with its geofences), its log event, and its assignments'
    recalculation as a change of its configuration would (``_results_changed``). Locks the
    calculators in id order, as ``calculator_update`` locks one; the caller's transaction."""
    ids = sorted(set(calculator_ids))
    if not ids:
        return
    with transaction.atomic(using=alias):
        calculators = list(Calculator.objects.using(alias).filter(pk__in=ids).order_by("pk").select_for_update())
        for calculator in calculators:
            save_fields(calculator, {"version": calculator.version + 1}, name="calculator")
            _logged(alias=alias, calculator=calculator, event=LogEvent.UPDATED)
        _results_changed(alias=alias, calculators=calculators)


def calculator_delete(*, calculator: Calculator) -> None:
    """Delete a calculator, its assignments and their intervals. One that other calculators
    chain is a ``Conflict`` naming them: they would lose what they compute from."""
    with locked_row(Calculator, pk=calculator.pk, using=calculator.database, name="calculator") as current:
        _chains_lock(alias=current.database, account_id=current.account_id)
        dependents = list(CalculatorSource.objects.using(current.database).filter(source_id=current.pk)
                          .order_by("calculator_id").values_list("calculator_id", flat=True))
        if dependents:
            raise Conflict(
                f"calculator {current.pk} is chained by calculator{'s' if len(dependents) > 1 else ''} "
                f"{', '.join(str(calc_id) for calc_id in dependents)}: change or delete "
                f"{'them' if len(dependents) > 1 else 'it'} first",
                id=current.pk,
            )
        # Its assignments are locked in id order first, as a calc worker's run locks them, so that
        # the two never wait on each other (a deadlock otherwise: each holding what the other wants).
        list(Assignment.objects.using(current._state.db).filter(calculator_id=current.pk).order_by("pk")
             .select_for_update().values_list("pk", flat=True))
        _logged(alias=calculator.database, calculator=current, event=LogEvent.DELETED)
        current.delete()


# --- calculator chaining -------------------------------------------------------------------


def _chains_lock(*, alias: str, account_id: int) -> None:
    """The account's chains lock, exclusive, in the caller's transaction: calculator writes that
    chain or may be chained take it, so that no two of them close a cycle together and no
    calculator is deleted while another starts chaining it."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LockSpace.ACCOUNT_CHAINS, lock_id(account_id)])


def _chains_check(*, alias: str, account_id: int, calculator_id: int | None, compiled_config) -> None:
    """``CalculatorInvalid`` naming the path of each reference to a calculator that is not the
    account's, and of each that closes a cycle (``selectors[0].calc_id: chain 7 -> 9 -> 7``)."""
    problems = chain_problems(alias=alias, account_id=account_id, calculator_id=calculator_id,
                              references=compiled_config.references)
    if problems:
        raise CalculatorInvalid(problems)


def chain_problems(
    *, alias: str, account_id: int, calculator_id: int | None, references: Sequence[tuple[str, int]]
) -> list[Problem]:
    """The problems of a calculator's references to others (``Calculator.references``: path, id):
    each must be a calculator of the account, and none may lead back to ``calculator_id`` (the
    calculator being changed; ``None`` for a new one, which nothing chains yet)."""
    ids = {calc_id for _path, calc_id in references}
    if not ids:
        return []
    known = set(Calculator.objects.using(alias).filter(account_id=account_id, pk__in=ids).values_list("pk", flat=True))
    problems = [
        Problem(path, f"no calculator {calc_id} in this account")
        for path, calc_id in references if calc_id not in known
    ]
    if calculator_id is None:
        return problems
    edges: dict[int, list[int]] = {}
    for dependent, source in (CalculatorSource.objects.using(alias).filter(account_id=account_id)
                              .exclude(calculator_id=calculator_id).order_by("calculator_id", "source_id")
                              .values_list("calculator_id", "source_id")):
        edges.setdefault(dependent, []).append(source)
    for path, calc_id in references:
        if calc_id not in known:
            continue
        cycle = _path_to(edges, calc_id, calculator_id)
        if cycle is not None:
            problems.append(Problem(path, "chain " + " -> ".join(str(node) for node in [calculator_id, *cycle])))
    return problems


def _path_to(edges: Mapping[int, Sequence[int]], start: int, goal: int) -> list[int] | None:
    """The calculators from ``start`` to ``goal`` following ``edges`` (dependent -> sources),
    both included, or ``None`` when ``goal`` is not reached."""
    stack: list[tuple[int, list[int]]] = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        if node in seen:
            continue
        seen.add(node)
        for source in reversed(edges.get(node, ())):
            stack.append((source, [*path, source]))
    return None


def _chains_keep(*, alias: str, calculator: Calculator, compiled_config) -> None:
    """The calculator's ``CalculatorSource`` rows in step with what its configuration chains."""
    wanted = {calc_id for _path, calc_id in compiled_config.references}
    links = CalculatorSource.objects.using(alias).filter(calculator_id=calculator.pk)
    have = set(links.values_list("source_id", flat=True))
    if have - wanted:
        links.filter(source_id__in=have - wanted).delete()
    now = time.time()
    for source_id in sorted(wanted - have):
        CalculatorSource(account_id=calculator.account_id, calculator_id=calculator.pk, source_id=source_id,
                         created=now).save(using=alias)


def calculator_chain_check(*, account: Account, calculator) -> None:
    """An inline calculator (``POST /gw/devices/{sel}/calculate``) chains only the account's
    calculators: ``CalculatorInvalid`` naming the path otherwise."""
    if calculator.chained:
        problems = chain_problems(alias=placement.alias_for_account(account.pk), account_id=account.pk,
                                  calculator_id=None, references=calculator.references)
        if problems:
            raise CalculatorInvalid(problems)


def chain_dependents_request(*, alias: str, source_id: int, device_ids: Collection[int]) -> None:
    """In the caller's transaction: the assignments of these devices to the calculators chaining
    ``source_id`` recalculate all of history (the source's intervals of the devices went with its
    assignments), told to the fleet after commit."""
    dependents = Assignment.objects.using(alias).filter(
        calculator__source_links__source_id=source_id, device_id__in=list(device_ids), enabled=True
    )
    shards = list(dependents.values_list("shard", flat=True).distinct())
    if shards:
        _request(Assignment.objects.using(alias).filter(pk__in=list(dependents.values_list("pk", flat=True))),
                 -math.inf, math.inf)
        _tell_fleet(alias, shards)


# --- assignments ---------------------------------------------------------------------------


def assignment_create(*, calculator: Calculator, device: Device, by_hand: bool = True) -> tuple[Assignment, bool]:
    """Assign ``device`` to ``calculator`` (idempotent); returns the assignment and whether it is
    new. Both must belong to the same account. ``by_hand``: a hand-made assignment (the API's);
    otherwise one held by a group the calculator is assigned to (``auto_assignments_follow``). A
    hand-made assign of an assignment that a group holds makes it held by hand too."""
    if device.account_id != calculator.account_id:
        raise InvalidInput(
            f"device {device.pk} belongs to account {device.account_id}, calculator {calculator.pk} to "
            f"account {calculator.account_id}: a calculator takes devices of its own account",
            id=device.pk,
        )
    alias = calculator.database
    existing = Assignment.objects.using(alias).filter(calculator_id=calculator.pk, device_id=device.pk).first()
    if existing is not None:
        if not by_hand or existing.by_hand:
            return existing, False
        try:
            return _by_hand_set(existing, True), False
        except NotFound:
            pass  # its group let it go meanwhile: assigned again below, by hand
    assignment = Assignment(
        account_id=calculator.account_id,
        calculator_id=calculator.pk,
        device_id=device.pk,
        shard=device.shard,
        created=time.time(),
        pending_begin=-math.inf,
        pending_end=math.inf,
        by_hand=by_hand,
    )
    try:
        with transaction.atomic(using=alias):
            assignment.save(using=alias)
            _tell_fleet(alias, [assignment.shard])
    except IntegrityError:
        # A concurrent assign of the same pair won, or the calculator or device went away.
        existing = Assignment.objects.using(alias).filter(calculator_id=calculator.pk, device_id=device.pk).first()
        if existing is None:
            raise NotFound(f"calculator {calculator.pk} or device {device.pk} no longer exists", id=device.pk) from None
        if by_hand and not existing.by_hand:
            return _by_hand_set(existing, True), False
        return existing, False
    return assignment, True


def _by_hand_set(assignment: Assignment, by_hand: bool) -> Assignment:
    with locked_row(Assignment, pk=assignment.pk, using=assignment.database, name=_assignment_name(assignment)) as current:
        return save_fields(current, {"by_hand": by_hand}, name=_assignment_name(current))


def assignments_create(
    *, calculators: Sequence[Calculator], devices: Sequence[Device]
) -> tuple[list[Assignment], list[DomainError]]:
    """Assign every device to every calculator (``assignment_create`` for each pair, idempotent).
    Returns the assignments, and the pairs refused as errors naming the device (``id``) and the
    calculator (``selector``: ``calc_id=N``); a refused pair leaves the others assigned."""
    assignments: list[Assignment] = []
    refused: list[DomainError] = []
    for calculator in calculators:
        for device in devices:
            try:
                assignment, _new = assignment_create(calculator=calculator, device=device)
            except DomainError as exc:
                exc.id = device.pk
                exc.selector = f"calc_id={calculator.pk}"
                refused.append(exc)
                continue
            assignments.append(assignment)
    return assignments, refused


def _assignment_name(assignment: Assignment) -> str:
    return f"assignment of device {assignment.device_id} to calculator"


def assignment_update(*, assignment: Assignment, enabled: bool) -> Assignment:
    """Enable or disable an assignment. A disabled one keeps its intervals but is not
    recalculated; enabling it again recalculates its whole history (messages may have arrived
    meanwhile)."""
    name = _assignment_name(assignment)
    with locked_row(Assignment, pk=assignment.pk, using=assignment.database, name=name) as current:
        if current.enabled == enabled:
            return current
        changes: dict[str, Any] = {"enabled": enabled}
        if enabled:
            changes.update(state=AssignmentState.UNSYNCED, pending_begin=-math.inf, pending_end=math.inf)
            _tell_fleet(assignment.database, [current.shard])
        return save_fields(current, changes, name=name)


def assignment_delete(*, assignment: Assignment, by_hand: bool = True) -> None:
    """Unassign: the assignment and its intervals go (and its retained state on the broker).

    ``by_hand`` (the API's unassign) removes the hand-made assignment: one that a group of the
    calculator also holds stays, held by the group alone (``auto_created`` then); one that only a
    group holds is a ``Conflict`` naming the group. Without it, the unassign of a device that left
    its groups (``auto_assignments_follow``), which never removes a hand-made assignment."""
    alias = assignment.database
    with transaction.atomic(using=alias):
        if by_hand:
            groups_lock(alias=alias, account_ids=[assignment.account_id], exclusive=False)
        with locked_row(Assignment, pk=assignment.pk, using=alias, name=_assignment_name(assignment)) as current:
            if not by_hand:
                if not current.by_hand:
                    current.delete()
                    chain_dependents_request(alias=alias, source_id=current.calculator_id,
                                             device_ids=[current.device_id])
                return
            holders = _holding_groups(alias=alias, calculator_id=current.calculator_id, device_id=current.device_id)
            if holders and not current.by_hand:
                raise Conflict(
                    f"device {current.device_id} is assigned to calculator {current.calculator_id} through group "
                    f"{holders[0]}: remove the device from the group, or unassign the group with "
                    f"DELETE /gw/calcs/{current.calculator_id}/groups/{holders[0]}",
                    id=current.device_id,
                )
            if holders:
                save_fields(current, {"by_hand": False}, name=_assignment_name(current))
            else:
                current.delete()
                chain_dependents_request(alias=alias, source_id=current.calculator_id, device_ids=[current.device_id])


class DeviceMetadata:
    """The follower of device metadata changes (``devices.followers``): the assignments whose
    calculators read it recalculate. ``AnalyticsConfig.ready`` installs it."""

    def metadata_changed(self, *, alias: str, device_ids: Collection[int]) -> None:
        device_metadata_changed(alias=alias, device_ids=device_ids)


DEVICE_METADATA = DeviceMetadata()


def device_metadata_changed(*, alias: str, device_ids: Collection[int]) -> int:
    """In the caller's transaction (the one changing the metadata of ``device_ids``): ask for the
    recalculation of every assignment of theirs whose calculator reads ``device.metadata`` and
    has ``update_onchange``, as a change of the calculator would (within ``update_period``: the
    engine keeps older intervals frozen). A calc worker compiles the calculator again with the
    new metadata. Returns how many assignments were asked."""
    assignments = Assignment.objects.using(alias).filter(device_id__in=list(device_ids))
    calculators = Calculator.objects.using(alias).filter(
        pk__in=assignments.values("calculator_id"), update_onchange=True
    )
    reading = [
        calculator.pk
        for calculator in calculators
        if "device" in compile_calculator(calculator.configuration()).reads_metadata
    ]
    if not reading:
        return 0
    asked = assignments.filter(calculator_id__in=reading)
    _tell_fleet(alias, asked.values_list("shard", flat=True).distinct())
    return _request(asked, -math.inf, math.inf)


# --- groups --------------------------------------------------------------------------------


def _holding_groups(*, alias: str, calculator_id: int, device_id: int) -> list[int]:
    """The groups the calculator is assigned to that hold ``device_id`` now, by id."""
    group_ids = GroupAssignment.objects.using(alias).filter(calculator_id=calculator_id).values_list("group_id", flat=True)
    return sorted(groups_matching(alias=alias, device_ids=[device_id], group_ids=list(group_ids))[device_id])


class AutoAssignments:
    """The follower of membership changes (``devices.membership``): the assignments held by groups
    follow their members. ``AnalyticsConfig.ready`` installs it."""

    def members_changed(self, *, alias: str, device_ids: Collection[int], created: bool) -> None:
        auto_assignments_follow(alias=alias, device_ids=device_ids, created=created)


AUTO_ASSIGNMENTS = AutoAssignments()


def auto_assignments_follow(*, alias: str, device_ids: Collection[int], created: bool = False) -> None:
    """In the caller's transaction (which holds the accounts' groups lock): make the assignments
    held by groups of ``device_ids`` what their groups' membership says now. A device that is a
    member of a group assigned to a calculator is assigned to it (``assignment_create``, not by
    hand); an assignment held by no group and not made by hand goes (``assignment_delete``). Only
    the groups that have calculators are evaluated: in one read of the assignments of groups of the
    devices' accounts and one statement for every selector."""
    ids = list(device_ids)
    accounts = Device.objects.using(alias).filter(pk__in=ids).values("account_id")
    links: dict[int, list[int]] = {}  # group id -> calculator ids
    for group_id, calculator_id in (
        GroupAssignment.objects.using(alias).filter(account_id__in=accounts).values_list("group_id", "calculator_id")
    ):
        links.setdefault(group_id, []).append(calculator_id)
    wanted: set[tuple[int, int]] = set()  # (calculator id, device id)
    if links:
        matching = groups_matching(alias=alias, device_ids=ids, group_ids=list(links), created=created)
        wanted = {
            (calc_id, device_id) for device_id, groups in matching.items() for group_id in groups for calc_id in links[group_id]
        }
    present: dict[tuple[int, int], Assignment] = {}
    if not created:
        rows = Assignment.objects.using(alias).filter(device_id__in=ids)
        present = {(row.calculator_id, row.device_id): row for row in rows}
    # Unassigned in id order, as a calc worker's run locks assignments (no deadlock with one).
    leaving = sorted((row for pair, row in present.items() if pair not in wanted and not row.by_hand), key=lambda row: row.pk)
    for row in leaving:
        assignment_delete(assignment=row, by_hand=False)
    missing = sorted(wanted - present.keys())
    if missing:
        calculators = Calculator.objects.using(alias).in_bulk({calc_id for calc_id, _ in missing})
        by_id = Device.objects.using(alias).in_bulk({device_id for _, device_id in missing})
        for calc_id, device_id in missing:
            if device_id not in by_id or calc_id not in calculators:
                continue  # deleted meanwhile: nothing to assign
            try:
                assignment_create(calculator=calculators[calc_id], device=by_id[device_id], by_hand=False)
            except NotFound:
                continue  # the device or the calculator went while this ran (their deletions cascade)


def group_assignment_create(*, calculator: Calculator, group: Group) -> tuple[GroupAssignment, bool]:
    """Assign a group to a calculator (idempotent): its current members are assigned in the same
    transaction, its future members as they join. Returns the assignment of the group and whether
    it is new."""
    if group.account_id != calculator.account_id:
        raise NotFound(f"group {group.pk} not found", id=group.pk)
    alias = calculator.database
    with transaction.atomic(using=alias):
        groups_lock(alias=alias, account_ids=[calculator.account_id], exclusive=True)
        placement_guard(alias=alias, account_ids=[calculator.account_id])
        existing = GroupAssignment.objects.using(alias).filter(calculator_id=calculator.pk, group_id=group.pk).first()
        if existing is not None:
            return existing, False
        if not Group.objects.using(alias).filter(pk=group.pk).exists():
            raise NotFound(f"group {group.pk} not found", id=group.pk)
        if not Calculator.objects.using(alias).filter(pk=calculator.pk).exists():
            raise NotFound(f"calculator {calculator.pk} not found", id=group.pk)
        link = GroupAssignment(account_id=calculator.account_id, calculator=calculator, group=group, created=time.time())
        try:
            with transaction.atomic(using=alias):
                link.save(using=alias)
        except IntegrityError:
            # The calculator was deleted meanwhile (its deletion does not wait for the groups lock).
            raise NotFound(f"calculator {calculator.pk} not found", id=group.pk) from None
        auto_assignments_follow(alias=alias, device_ids=group_member_ids(groups=[group])[group.pk])
    return link, True


def group_assignments_create(
    *, calculators: Sequence[Calculator], groups: Sequence[Group]
) -> tuple[list[GroupAssignment], list[DomainError]]:
    """``group_assignment_create`` of every pair; refusals name the group (``id``) and the
    calculator (``selector``: ``calc_id=N``)."""
    return _each_pair(
        calculators, groups, lambda calculator, group: group_assignment_create(calculator=calculator, group=group)[0]
    )


def _each_pair(calculators: Sequence[Calculator], items: Sequence, link: Callable[[Calculator, Any], Any]):
    """``link(calculator, item)`` of every pair: what they made, and their refusals as errors naming
    the item (``id``) and the calculator (``selector``: ``calc_id=N``)."""
    made: list = []
    refused: list[DomainError] = []
    for calculator in calculators:
        for item in items:
            try:
                made.append(link(calculator, item))
            except DomainError as exc:
                exc.id = item.pk
                exc.selector = f"calc_id={calculator.pk}"
                refused.append(exc)
    return made, refused


def group_assignment_delete(*, link: GroupAssignment) -> None:
    """Unassign a group from a calculator: its members whose assignment nothing else holds (a
    hand-made assignment, another group of the calculator) are unassigned, in the same
    transaction."""
    alias = link.database
    with transaction.atomic(using=alias):
        groups_lock(alias=alias, account_ids=[link.account_id], exclusive=True)
        with locked_row(GroupAssignment, pk=link.pk, using=alias, name="group assignment") as current:
            group = Group.objects.using(alias).get(pk=current.group_id)
            members = group_member_ids(groups=[group])[group.pk]
            current.delete()
            auto_assignments_follow(alias=alias, device_ids=members)


def _tell_fleet(alias: str, shards: Iterable[int]) -> None:
    """After commit, the workers of ``shards`` schedule the stored requests at once."""
    shards = set(shards)
    if shards:
        region = calc_queue.region_of_alias(alias)
        transaction.on_commit(lambda: calc_queue.shards_request(region=region, shards=shards), using=alias)


def _request(assignments, begin: float, end: float) -> int:
    return assignments.update(
        pending_begin=Least(F("pending_begin"), begin, output_field=Assignment._meta.get_field("pending_begin")),
        pending_end=Greatest(F("pending_end"), end, output_field=Assignment._meta.get_field("pending_end")),
    )


def recalculation_request(*, assignments: Sequence[Assignment], begin: float | None, end: float | None) -> int:
    """Ask the fleet to recalculate ``[begin, end]`` (all of history when open) of each
    assignment: the range is widened durably on the row, where the fleet's reconciliation finds
    it. Returns how many assignments took the request."""
    if not assignments:
        return 0
    low = -math.inf if begin is None else float(begin)
    high = math.inf if end is None else float(end)
    if low > high:
        raise InvalidInput(f"begin {begin} is after end {end}", field="begin")
    alias = assignments[0].database
    with transaction.atomic(using=alias):
        placement_guard(alias=alias, account_ids={assignment.account_id for assignment in assignments})
        rows = Assignment.objects.using(alias).filter(pk__in=[assignment.pk for assignment in assignments])
        _tell_fleet(alias, [assignment.shard for assignment in assignments])
        # LEAST/GREATEST ignore NULL in PostgreSQL: a row with no pending range takes the new one.
        return _request(rows, low, high)


# --- intervals -----------------------------------------------------------------------------


def intervals_purge(*, assignment: Assignment, calculator: Calculator, now: float | None = None) -> list[dict]:
    """Delete the intervals beyond the calculator's ``intervals_ttl`` (by their end) and beyond
    ``intervals_rotate`` (all but the newest); returns the deleted rows, for the outbox."""
    now = time.time() if now is None else now
    with transaction.atomic(using=assignment.database):
        placement_guard(alias=assignment.database, account_ids=[assignment.account_id])
        return storage.intervals_purge(
            alias=assignment.database,
            calc_id=assignment.calculator_id,
            device_id=assignment.device_id,
            ended_before=now - calculator.intervals_ttl,
            keep=calculator.intervals_rotate,
        )


def _engine_keys(calculator: Calculator) -> set[str]:
    return {*INTERVAL_FIELDS, *(counter.get("name") for counter in calculator.counters)}


def interval_user_update(
    *, assignment: Assignment, calculator: Calculator, interval_id: int, fields: Mapping[str, Any]
) -> dict:
    """Merge user fields into a stored interval (a key set to null removes it). A key the engine
    or a counter of the calculator writes is refused: user fields never hide computed ones.

    In the same transaction: the merged interval is published as ``updated`` (and as the
    retained ``active``/``last`` when it is the open or the newest one), and when the calculator
    reads the interval before each one (``previous('field')`` in an ``interval`` counter or
    ``validate_interval``, accumulators), the recalculation of the interval and of the one after
    it is asked for (the engine reads user fields of stored intervals as data)."""
    taken = sorted(set(fields) & _engine_keys(calculator))
    if taken:
        raise InvalidInput(
            f"{', '.join(taken)}: written by the calculator; user fields take other names", field=taken[0]
        )
    if len(dumps_exact(dict(fields)).decode()) > MAX_USER_FIELDS_BYTES:
        raise InvalidInput(f"user fields are larger than {MAX_USER_FIELDS_BYTES} bytes encoded")
    alias = assignment.database
    pair = (assignment.calculator_id, assignment.device_id)
    with transaction.atomic(using=alias):
        placement_guard(alias=alias, account_ids=[assignment.account_id])
        # The assignment's row first, exclusively: a calc worker's run (which locks it before it
        # writes intervals) and this merge take turns, whole.
        row = Assignment.objects.using(alias).filter(pk=assignment.pk)
        current = row.select_for_update().first()
        interval = None
        if current is not None:
            interval = storage.intervals_user_merge(
                alias=alias, calc_id=pair[0], device_id=pair[1], interval_id=interval_id, fields=fields
            )
        if current is None or interval is None:
            raise NotFound(
                f"no interval {interval_id} of device {assignment.device_id} in calculator {assignment.calculator_id}",
                id=interval_id,
            )
        newest = next(iter(storage.intervals_read(alias=alias, pairs=[pair], count=1, reverse=True)), None)
        is_active = current.active_id == interval_id
        storage.outbox_events(alias=alias, events=interval_events(
            calc_id=pair[0], device_id=pair[1], created=[], updated=[interval], deleted=[],
            was_active=interval if is_active else None, active=interval if is_active else None, active_known=True,
            last=interval, last_changed=newest is not None and newest["id"] == interval_id,
        ))
        if compile_calculator(calculator.configuration()).crosses_intervals:
            following = next(iter(storage.intervals_read(alias=alias, pairs=[pair], past_ids=[interval_id], count=1)), None)
            end = interval["end"] if following is None else max(interval["end"], following["end"])
            _request(row, interval["begin"], end)
            _tell_fleet(alias, [current.shard])
        # A new stamp: a calc worker's cached copy of the intervals is not this one any more.
        row.update(calculated=time.time())
    return interval


def geofence_data(geofence: Geofence) -> dict:
    """A stored geofence as the engine takes it."""
    return {
        "id": geofence.pk,
        "name": geofence.name,
        "enabled": geofence.enabled,
        "priority": geofence.priority,
        "metadata": geofence.metadata,
        "geometry": geofence.geometry,
    }


def compiled(calculator: Calculator, device_metadata: Mapping | None = None):
    """The engine's compiled form of a stored calculator, with its assigned geofences and, for a
    device, that device's metadata (what ``device.metadata.x`` reads)."""
    zones = [geofence_data(geofence) for geofence in selectors.geofences_of_calculator(calculator=calculator)]
    return compile_calculator(calculator.configuration(), geofences=zones, device_metadata=device_metadata)


# --- geofences -------------------------------------------------------------------------------


def geofences_hittest(*, geofences: Sequence[Geofence], points: Sequence[dict]) -> list[dict]:
    """For each point, the geofences among ``geofences`` containing it, in the order they are
    checked (higher priority first), disabled ones too: the caller selected them."""
    ordered = zone_order([geofence_data(geofence) for geofence in geofences])
    zones = GeofenceSet(ordered)
    lat = np.array([float(point["lat"]) for point in points])
    lon = np.array([float(point["lon"]) for point in points])
    hit_points, numbers = zones.hits(lat, lon, np.ones(len(points), bool))
    found: list[list[dict]] = [[] for _ in points]
    for point, number in zip(hit_points.tolist(), numbers.tolist(), strict=True):
        zone = ordered[number]
        found[point].append({"id": zone["id"], "name": zone["name"], "priority": zone["priority"]})
    return [
        {"lat": point["lat"], "lon": point["lon"], "geofences": hits} for point, hits in zip(points, found, strict=True)
    ]


class GeofenceInvalid(InvalidInput):
    """A geofence's geometry with problems; ``problems`` lists every one with its path."""

    def __init__(self, problems: Sequence[Problem]):
        super().__init__("; ".join(str(problem) for problem in problems), field=problems[0].path if problems else None)
        self.problems = list(problems)


def geofence_geometry_check(*, geometry: Any) -> dict:
    """The normalised geometry (a polygon without repeated points); ``GeofenceInvalid`` naming
    every problem with its path (``geometry.path[3].lat``) otherwise."""
    normalized, problems = check_geometry(geometry)
    if problems:
        raise GeofenceInvalid(problems)
    assert normalized is not None
    return normalized


GEOFENCE_FIELDS = ("name", "enabled", "priority", "geometry", "metadata")


def geofence_create(*, account: Account, data: Mapping[str, Any]) -> Geofence:
    """A new geofence of the account (its geometry checked again)."""
    fields = {name: data[name] for name in GEOFENCE_FIELDS if name in data}
    fields["geometry"] = geofence_geometry_check(geometry=fields.get("geometry"))
    geofence = Geofence(account_id=account.pk, created=time.time(), **fields)
    geofence.save(using=placement.alias_for_account(account.pk))
    return geofence


def geofence_update(*, geofence: Geofence, data: Mapping[str, Any]) -> Geofence:
    """Change the named fields. A change the calculators seeing the geofence can see (any field
    while it is enabled, or ``enabled`` itself) gives each of them a new version and recalculates
    their assignments (``_calculators_new_version``)."""
    alias = geofence.database
    with locked_row(Geofence, pk=geofence.pk, using=alias, name="geofence") as current:
        changes = {name: data[name] for name in GEOFENCE_FIELDS if name in data}
        if "geometry" in changes:
            changes["geometry"] = geofence_geometry_check(geometry=changes["geometry"])
        changes = {name: value for name, value in changes.items() if getattr(current, name) != value}
        if not changes:
            return current
        visible = current.enabled or changes.get("enabled", False)
        save_fields(current, changes, name="geofence")
        if visible:
            _calculators_new_version(
                alias=alias, calculator_ids=selectors.calculators_of_geofences(alias=alias, geofence_ids=[current.pk])
            )
    return current


def geofence_delete(*, geofence: Geofence) -> None:
    """Delete a geofence and its assignments; the calculators that saw it recalculate."""
    alias = geofence.database
    with locked_row(Geofence, pk=geofence.pk, using=alias, name="geofence") as current:
        calculator_ids = selectors.calculators_of_geofences(alias=alias, geofence_ids=[current.pk])
        current.delete()
        if current.enabled:
            _calculators_new_version(alias=alias, calculator_ids=calculator_ids)


def calculator_geofence_assign(*, calculator: Calculator, geofence: Geofence) -> tuple[CalculatorGeofence, bool]:
    """Assign ``geofence`` to ``calculator`` (idempotent; both of one account); returns the
    assignment and whether it is new. A new one of an enabled geofence recalculates the
    calculator's assignments."""
    if geofence.account_id != calculator.account_id:
        raise InvalidInput(
            f"geofence {geofence.pk} belongs to account {geofence.account_id}, calculator {calculator.pk} to "
            f"account {calculator.account_id}: a calculator takes geofences of its own account",
            id=geofence.pk,
        )
    alias = calculator.database
    links = CalculatorGeofence.objects.using(alias)
    existing = links.filter(calculator_id=calculator.pk, geofence_id=geofence.pk).first()
    if existing is not None:
        return existing, False
    link = CalculatorGeofence(
        account_id=calculator.account_id, calculator_id=calculator.pk, geofence_id=geofence.pk, created=time.time()
    )
    try:
        with transaction.atomic(using=alias):
            link.save(using=alias)
            if geofence.enabled:
                _calculators_new_version(alias=alias, calculator_ids=[calculator.pk])
    except IntegrityError:
        # A concurrent assign of the same pair won, or the calculator or geofence went away.
        existing = links.filter(calculator_id=calculator.pk, geofence_id=geofence.pk).first()
        if existing is None:
            raise NotFound(
                f"calculator {calculator.pk} or geofence {geofence.pk} no longer exists", id=geofence.pk
            ) from None
        return existing, False
    return link, True


def calculator_geofences_assign(
    *, calculators: Sequence[Calculator], geofences: Sequence[Geofence]
) -> tuple[list[CalculatorGeofence], list[DomainError]]:
    """Assign every geofence to every calculator (``calculator_geofence_assign`` for each pair);
    the pairs refused as errors naming the geofence (``id``) and the calculator (``selector``)."""
    return _each_pair(
        calculators, geofences,
        lambda calculator, geofence: calculator_geofence_assign(calculator=calculator, geofence=geofence)[0],
    )


def calculator_geofence_unassign(*, link: CalculatorGeofence) -> None:
    """Unassign a geofence from a calculator; the calculator recalculates when it saw it."""
    alias = link.database
    name = f"geofence {link.geofence_id} of calculator {link.calculator_id}"
    with locked_row(CalculatorGeofence, pk=link.pk, using=alias, name=name) as current:
        enabled = Geofence.objects.using(alias).filter(pk=current.geofence_id, enabled=True).exists()
        current.delete()
        if enabled:
            _calculators_new_version(alias=alias, calculator_ids=[current.calculator_id])


def calculator_compile(*, config: Mapping[str, Any]):
    """The engine's compiled form of an inline configuration; ``CalculatorInvalid`` otherwise."""
    try:
        return compile_calculator(dict(config))
    except CalculatorError as exc:
        raise CalculatorInvalid(exc.problems) from None
