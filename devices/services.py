"""Writes of devices and messages.

``messages_ingest`` is the one way messages enter the platform: REST, MQTT ingestion and the
importer all call it. It validates each message on its own (a bad one never costs the good ones
of its batch, ``devices.validation``), encodes it once as COPY text (``devices.storage``), writes
it in one transaction per datacenter together with its outbox rows, and returns, after commit,
which devices got new messages in which time range.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, OperationalError, connections, transaction
from psycopg.errors import DeadlockDetected

from accounts import placement
from accounts.models import Account
from accounts.placement_guard import AccountMoved, placement_guard
from devices import storage
from devices.constants import (
    IDENT_FORBIDDEN,
    MAX_IDENT_LENGTH,
    MAX_MESSAGES_PER_BATCH,
)
from devices.followers import metadata_changed
from devices.membership import groups_lock, members_changed
from devices.models import Device, DeviceIdent, Group, GroupDevice
from devices.selectors import (
    DEVICE_SELECTED_FIELDS,
    TelemetrySelection,
    device_item,
    device_selection,
    group_member_ids,
    selector_hint,
)
from devices.storage import ChangedRange
from devices.validation import MessageError, message_prepare
from flespi_site import celery as calc_queue
from flespi_site import fleet, metrics
from flespi_site.errors import Conflict, DomainError, ErrorKind, InvalidInput, NotFound
from flespi_site.jsontext import dumps_exact
from flespi_site.mqtt.topics import LogEvent, device_log_topic
from flespi_site.updates import locked_row, save_fields
from regions.datacenters import allocate_ids

# --- devices -------------------------------------------------------------------------------


def shard_of(device_id: int, shards: int | None = None) -> int:
    """The calculation shard of a device (``flespi_site.fleet.shard_of``) with this platform's
    number of shards."""
    return fleet.shard_of(device_id, shards or settings.CALC_SHARDS)


def ident_problem(ident: Any) -> str | None:
    if not isinstance(ident, str) or not ident:
        return "configuration.ident must be a non-empty string"
    if len(ident) > MAX_IDENT_LENGTH:
        return f"configuration.ident is longer than {MAX_IDENT_LENGTH} characters"
    bad = sorted({ch for ch in ident if ch in IDENT_FORBIDDEN or ord(ch) < 32 or ord(ch) == 127})
    if bad:
        return f"configuration.ident may not contain {', '.join(repr(ch) for ch in bad)}"
    return None


def _ident_taken(*, region: str, ident: str) -> Conflict:
    return Conflict(f"a device with ident {ident!r} already exists in region {region}", field="configuration.ident")


# The fields a device is created with besides its configuration (``devices_create``).
_CREATE_FIELDS = (
    "name", "enabled", "messages_ttl", "metadata", "messages_rotate", "device_type_id", "media_ttl", "media_rotate",
)


def device_create(*, account: Account, configuration: dict[str, Any], **fields: Any) -> Device:
    """One device (``devices_create`` of one item); its refusal raised."""
    [outcome] = devices_create(account=account, items=[{"configuration": configuration, **fields}])
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


def devices_create(*, account: Account, items: Sequence[Mapping[str, Any]]) -> list[Device | DomainError]:
    """Create a batch of devices (each item: ``configuration`` and any of ``_CREATE_FIELDS``):
    for each item its device, or the domain error that refused it (a bad ident, or one taken,
    also by an earlier item of the batch). The ids are allocated at once, the idents claimed with
    one statement, and the devices and their ``created`` log events written with one multi-row
    insert each, in one transaction: a batch of 1,000 costs a few statements, not 1,000.

    The claims are committed before the devices and removed after them (``device_delete``): at
    every moment a device's ident is claimed, so that no other device can take it."""
    region = account.region.code
    outcome: list[Device | DomainError | None] = [None] * len(items)
    chosen: dict[str, int] = {}  # ident -> index of the item that takes it
    for index, item in enumerate(items):
        ident = item["configuration"].get("ident")
        problem = ident_problem(ident)
        if problem:
            outcome[index] = InvalidInput(problem, field="configuration.ident")
        elif ident in chosen:
            outcome[index] = _ident_taken(region=region, ident=ident)
        else:
            chosen[ident] = index
    if chosen:
        alias = placement.alias_for_account(account.pk)
        wanted = dict(zip(allocate_ids(alias=alias, count=len(chosen)), chosen, strict=True))  # id -> ident
        claimed = _idents_claim(region=region, account_id=account.pk, idents=wanted)
        now = time.time()
        devices = []
        for device_id, ident in wanted.items():
            item = items[chosen[ident]]
            if device_id not in claimed:
                outcome[chosen[ident]] = _ident_taken(region=region, ident=ident)
                continue
            fields = {name: item[name] for name in _CREATE_FIELDS if item.get(name) is not None}
            fields.setdefault("metadata", {})
            device = Device(
                id=device_id, account_id=account.pk, ident=ident, configuration=item["configuration"],
                shard=shard_of(device_id), created=now, **fields,
            )
            devices.append(device)
            outcome[chosen[ident]] = device
        try:
            with transaction.atomic(using=alias):
                groups_lock(alias=alias, account_ids=[account.pk], exclusive=False)
                Device.objects.using(alias).bulk_create(devices)
                _logged(alias=alias, devices=devices, event=LogEvent.CREATED)
                # New devices matching a group's selector join it: what follows (the group's
                # calculators) follows in this transaction.
                members_changed(alias=alias, device_ids=[device.pk for device in devices], created=True)
        except Exception:
            DeviceIdent.objects.filter(device_id__in=claimed).delete()
            raise
    return outcome  # type: ignore[return-value]  # every item has its outcome


def _idents_claim(*, region: str, account_id: int, idents: Mapping[int, str]) -> set[int]:
    """Claim ``idents`` (by device id) in the region, in one statement; the device ids whose
    ident was free (another device's claim stands)."""
    table = DeviceIdent._meta.db_table
    with transaction.atomic(using="default"), connections["default"].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (region, ident, device_id, account_id) "
            "SELECT %s, i, d, %s FROM unnest(%s::text[], %s::bigint[]) AS c(i, d) "
            "ON CONFLICT (region, ident) DO NOTHING RETURNING device_id",
            [region, account_id, list(idents.values()), list(idents)],
        )
        return {row[0] for row in cursor.fetchall()}


def _logged(*, alias: str, devices: Sequence[Device], event: LogEvent) -> None:
    """Queue the log event of each device (``log/gw/devices/{id}/{event}``, its item as the API
    renders it) in the caller's transaction, with one insert."""
    storage.outbox_events_write(
        alias=alias,
        device_ids=[device.pk for device in devices],
        topics=[device_log_topic(device_id=device.pk, event=event) for device in devices],
        payloads=[dumps_exact(device_item(device)).decode() for device in devices],
        retains=[False] * len(devices),
    )


_DEVICE_FIELDS = (
    "name", "enabled", "messages_ttl", "metadata", "configuration", "account_id",
    "messages_rotate", "device_type_id", "media_ttl", "media_rotate",
)


def device_update(*, device: Device, account: Account, data: dict[str, Any]) -> Device:
    """Update the named fields of a device (``flespi_site.updates``): a device deleted meanwhile
    is a 404, never re-created. A new ident is claimed in the region; a move to another account
    stays within the acting account's tree, region and datacenter."""
    if "configuration" in data:
        problem = ident_problem(data["configuration"].get("ident"))
        if problem:
            raise InvalidInput(problem, field="configuration.ident")
    # The ident claim (control database) and the device (datacenter database) are written in
    # this order: lock the device row, change the claim inside a control transaction, save the
    # device and commit it, then commit the claim. While the claim's UPDATE is uncommitted,
    # PostgreSQL makes anyone inserting the old or the new ident wait for it (the unique index
    # holds both entries until the commit), and a delete of this device waits for the device
    # lock and then for the claim's row lock: no interleaving frees the ident of an existing
    # device or lets a second device claim it. (A crash between the two commits could still
    # leave them apart; nothing in a single run does.)
    with transaction.atomic(using="default"), device_update_locks(device=device, data=data):
        return _device_update(device=device, account=account, data=data)


@contextmanager
def device_update_locks(*, device: Device, data: Mapping[str, Any]) -> Iterator[None]:
    """A transaction on the device's database holding what an update of it takes before the
    device's row (the groups lock of its account, and of the account it moves to): a PATCH,
    which locks the row to merge into it, enters it first."""
    with transaction.atomic(using=device.database):
        accounts = {device.account_id, data.get("account_id", data.get("cid", device.account_id))}
        groups_lock(alias=device.database, account_ids=accounts, exclusive=False)
        yield


def _device_update(*, device: Device, account: Account, data: dict[str, Any]) -> Device:
    with locked_row(Device, pk=device.pk, using=device.database, name="device") as fresh:
        changes = {name: data[name] for name in _DEVICE_FIELDS if name in data}
        claim: dict[str, Any] = {}
        if "configuration" in changes and changes["configuration"]["ident"] != fresh.ident:
            changes["ident"] = claim["ident"] = changes["configuration"]["ident"]
        if "account_id" in changes and changes["account_id"] != fresh.account_id:
            _device_move_check(device=fresh, account=account, target_id=changes["account_id"])
            claim["account_id"] = changes["account_id"]
        if claim:
            try:
                with transaction.atomic(using="default"):
                    DeviceIdent.objects.filter(device_id=fresh.pk).update(**claim)
            except IntegrityError:
                raise Conflict(
                    f"a device with ident {claim['ident']!r} already exists in region {account.region.code}",
                    field="configuration.ident",
                ) from None
            except OperationalError as exc:
                # Two devices swapping idents at once wait for each other's claim.
                if not isinstance(exc.__cause__, DeadlockDetected):
                    raise
                raise Conflict(
                    f"device {fresh.pk}: another device changed its ident to or from "
                    f"{claim.get('ident')!r} at the same time; send the change again",
                    field="configuration.ident",
                ) from None
        changed = {name for name, value in changes.items() if getattr(fresh, name) != value}
        moved = "account_id" in changed
        updated = save_fields(fresh, changes, name="device")
        if changed:
            # A move to another account and a change of ident are updates too: brokers and
            # subscribers learn the device's new owner and ident from it.
            _logged(alias=updated.database, devices=[updated], event=LogEvent.UPDATED)
        if moved:
            # A group holds devices of its own account only.
            GroupDevice.objects.using(updated.database).filter(device_id=updated.pk).delete()
        if changed & DEVICE_SELECTED_FIELDS:
            members_changed(alias=updated.database, device_ids=[updated.pk])
        if "metadata" in changed:
            metadata_changed(alias=updated.database, device_ids=[updated.pk])
        return updated


def _device_move_check(*, device: Device, account: Account, target_id: int) -> None:
    target = Account.objects.filter(pk=target_id).select_related("region", "datacenter").first()
    if target is None or not (target.pk == account.pk or target.is_descendant_of(account)):
        raise NotFound(f"account {target_id} not found", field="account_id")
    if target.region_id != account.region_id:
        raise InvalidInput(
            f"device {device.pk} lives in region {account.region.code}; it cannot move to account "
            f"{target.pk} in region {target.region.code}",
            field="account_id",
        )
    if placement.alias_for_account(target.pk) != placement.alias_for_account(device.account_id):
        raise InvalidInput(
            f"account {target.pk} is placed in datacenter {target.datacenter.code}; a device moves only "
            "between accounts of the same datacenter (move the account with the operator's command first)",
            field="account_id",
        )


def device_delete(*, device: Device) -> None:
    """Delete a device with its messages; a device already gone is a 404. The claim of its ident
    goes after the device's commit, so that the ident is never free while the device exists."""
    with locked_row(Device, pk=device.pk, using=device.database, name="device") as fresh:
        storage.messages_drop_device(alias=fresh.database, device_id=fresh.pk)
        _logged(alias=fresh.database, devices=[fresh], event=LogEvent.DELETED)
        fresh.delete()
    DeviceIdent.objects.filter(device_id=device.pk).delete()


# --- groups --------------------------------------------------------------------------------


def _group_devices(*, account: Account, alias: str, device_ids: Sequence[int], field: str) -> list[int]:
    """``device_ids`` checked: each a device of ``account`` (another account's device does not
    exist for it: a 404 naming its place in the list)."""
    known = set(Device.objects.using(alias).filter(account_id=account.pk, pk__in=list(device_ids)).values_list("pk", flat=True))
    for index, device_id in enumerate(device_ids):
        if device_id not in known:
            raise NotFound(f"device {device_id} not found", field=f"{field}[{index}]")
    return list(dict.fromkeys(device_ids))


def _selector_checked(selector: str) -> str:
    if not selector.strip():
        raise InvalidInput("selector must be a device selector, like metadata.fleet=north or {name==\"truck*\"}",
                           field="selector")
    try:
        device_selection(selector)
    except InvalidInput as exc:
        raise InvalidInput(exc.reason, field="selector") from None
    return selector


def group_selector_fields(selector: str | None) -> dict[str, Any]:
    """A group's fields of its selector: the selector and the condition it implies (its hint)."""
    hint = selector_hint(selector) if selector is not None else None
    return {
        "selector": selector,
        "hint_field": hint.field if hint else None,
        "hint_path": list(hint.path) if hint else None,
        "hint_value": hint.value if hint else None,
        "hint_prefix": hint.prefix if hint else False,
    }


def _membership_checked(*, devices: Sequence[int] | None, selector: str | None) -> None:
    if devices is not None and selector is not None:
        raise InvalidInput(
            "a group takes its devices either as a list (devices) or by a device selector (selector), not both",
            field="selector",
        )


def group_create(
    *, account: Account, name: str, metadata: dict | None = None, devices: Sequence[int] | None = None,
    selector: str | None = None,
) -> Group:
    """A group with its explicit members (``devices``, ids of the account's devices) or a stored
    device ``selector``, not both. A new group has no calculators: nothing follows."""
    _membership_checked(devices=devices, selector=selector)
    if selector is not None:
        selector = _selector_checked(selector)
    alias = placement.alias_for_account(account.pk)
    with transaction.atomic(using=alias):
        groups_lock(alias=alias, account_ids=[account.pk], exclusive=False)
        members = _group_devices(account=account, alias=alias, device_ids=devices or [], field="devices")
        group = Group(account_id=account.pk, name=name, metadata=metadata or {}, created=time.time(),
                      **group_selector_fields(selector))
        group.save(using=alias)
        _members_insert(group=group, device_ids=members)
    return group


def _members_insert(*, group: Group, device_ids: Sequence[int]) -> list[int]:
    """Insert explicit members (those already there stay); the ids that were not members."""
    alias = group.database
    present = set(GroupDevice.objects.using(alias).filter(group_id=group.pk, device_id__in=list(device_ids))
                  .values_list("device_id", flat=True))
    new = [device_id for device_id in device_ids if device_id not in present]
    ids = allocate_ids(alias=alias, count=len(new)) if new else []
    GroupDevice.objects.using(alias).bulk_create(
        [GroupDevice(id=pk, account_id=group.account_id, group_id=group.pk, device_id=device_id)
         for pk, device_id in zip(ids, new, strict=True)]
    )
    return new


@contextmanager
def group_update_locks(*, group: Group) -> Iterator[None]:
    """A transaction on the group's database holding what an update of it takes before its row
    (its account's groups lock, exclusively); a PATCH enters it first."""
    with transaction.atomic(using=group.database):
        groups_lock(alias=group.database, account_ids=[group.account_id], exclusive=True)
        yield


def group_update(*, group: Group, account: Account, data: Mapping[str, Any]) -> Group:
    """Change the named fields of a group: ``name``, ``metadata``, and its membership (``devices``
    replaces the member list, ``selector`` the selector; ``"selector": null`` with ``devices``
    turns a selector group into an explicit one). The devices that joined or left follow in the
    same transaction."""
    alias = group.database
    with group_update_locks(group=group), locked_row(Group, pk=group.pk, using=alias, name="group") as fresh:
        placement_guard(alias=alias, account_ids=[fresh.account_id])
        selector = data.get("selector", fresh.selector)
        devices = data.get("devices")
        if devices is not None and selector is not None:
            raise InvalidInput(
                f"group {fresh.pk} selects its devices by selector {selector!r}: send \"selector\": null "
                "with devices to give it a member list instead",
                field="devices",
            )
        if "selector" in data and selector is not None:
            _selector_checked(selector)
        members = _group_devices(account=account, alias=alias, device_ids=devices or [], field="devices")
        before = set(group_member_ids(groups=[fresh])[fresh.pk])
        changes = {name: data[name] for name in ("name", "metadata") if name in data}
        if "selector" in data:
            changes.update(group_selector_fields(data["selector"]))
        updated = save_fields(fresh, changes, name="group")
        if devices is not None or (selector is not None and "selector" in data):
            GroupDevice.objects.using(alias).filter(group_id=fresh.pk).exclude(device_id__in=members).delete()
            _members_insert(group=updated, device_ids=members)
        after = set(group_member_ids(groups=[updated])[updated.pk])
        members_changed(alias=alias, device_ids=before ^ after)
        return updated


def group_delete(*, group: Group) -> None:
    """Delete a group; its members leave it (what followed from it, in the same transaction)."""
    alias = group.database
    with transaction.atomic(using=alias):
        groups_lock(alias=alias, account_ids=[group.account_id], exclusive=True)
        with locked_row(Group, pk=group.pk, using=alias, name="group") as fresh:
            members = group_member_ids(groups=[fresh])[fresh.pk]
            fresh.delete()
            members_changed(alias=alias, device_ids=members)


def _explicit_group(group: Group) -> None:
    if group.selector is not None:
        raise Conflict(
            f"group {group.pk} selects its devices by selector {group.selector!r}: change the selector, or turn "
            "it into a member list with PUT /gw/groups/{group} {\"selector\": null, \"devices\": [...]}",
            id=group.pk,
        )


def group_members_add(*, group: Group, devices: Sequence[Device]) -> list[int]:
    """Add devices (of the group's account) to a group's member list; returns the ids added
    (members already there stay, idempotent). What follows, follows in the same transaction."""
    alias = group.database
    with transaction.atomic(using=alias):
        groups_lock(alias=alias, account_ids=[group.account_id], exclusive=False)
        with locked_row(Group, pk=group.pk, using=alias, name="group") as fresh:
            _explicit_group(fresh)
            placement_guard(alias=alias, account_ids=[fresh.account_id])
            for device in devices:
                if device.account_id != fresh.account_id:
                    raise NotFound(f"device {device.pk} not found", id=device.pk)
            # The devices' rows in id order, as every write of a device locks it: membership
            # changes of one device run one after the other.
            ids = sorted(device.pk for device in devices)
            locked = list(Device.objects.using(alias).select_for_update().filter(pk__in=ids, account_id=fresh.account_id)
                          .order_by("pk").values_list("pk", flat=True))
            added = _members_insert(group=fresh, device_ids=locked)
            members_changed(alias=alias, device_ids=added)
            return added


def group_members_remove(*, group: Group, devices: Sequence[Device]) -> list[int]:
    """Remove devices from a group's member list; returns the ids removed."""
    alias = group.database
    with transaction.atomic(using=alias):
        groups_lock(alias=alias, account_ids=[group.account_id], exclusive=False)
        with locked_row(Group, pk=group.pk, using=alias, name="group") as fresh:
            _explicit_group(fresh)
            placement_guard(alias=alias, account_ids=[fresh.account_id])
            ids = sorted(device.pk for device in devices)
            list(Device.objects.using(alias).select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))
            rows = GroupDevice.objects.using(alias).filter(group_id=fresh.pk, device_id__in=ids)
            removed = list(rows.values_list("device_id", flat=True))
            rows.delete()
            members_changed(alias=alias, device_ids=removed)
            return removed


# --- messages ------------------------------------------------------------------------------


@dataclass
class IngestResult:
    """What a write did: per device, the range of stored messages it inserted or changed
    (after commit), and the messages it refused, by index."""

    accepted: int = 0
    changes: list[ChangedRange] = field(default_factory=list)
    errors: list[DomainError] = field(default_factory=list)


def messages_ingest(
    *, devices: Sequence[Device], messages: Sequence[Any], source: str = "rest", now: float | None = None
) -> IngestResult:
    """Store ``messages`` into every enabled device of ``devices``; a disabled device takes none
    (whatever the entry point) and is reported by id in ``errors``. Devices whose account moved
    to another datacenter meanwhile are read again there and the batch written again (a resent
    batch changes nothing where it was already stored)."""
    (result,) = messages_ingest_batches(batches=[(devices, messages)], source=source, now=now)
    return result


def messages_ingest_batches(
    *, batches: Sequence[tuple[Sequence[Device], Sequence[Any]]], source: str = "rest", now: float | None = None
) -> list[IngestResult]:
    """``messages_ingest`` of several batches (devices and their messages; a device in one batch
    at most) with one transaction per datacenter for all of them: the MQTT ingest stores what one
    turn brought, payloads of many devices, so. A result per batch, in order."""
    now = time.time() if now is None else now
    try:
        return _messages_ingest(batches=batches, source=source, now=now)
    except AccountMoved:
        return _messages_ingest(
            batches=[(placement.rows_placed(devices), messages) for devices, messages in batches], source=source,
            now=now,
        )


@dataclass
class _Datacenter:
    """What a datacenter gets of an ingestion: rows, telemetry, the devices, their results."""

    rows: list = field(default_factory=list)
    telemetry: list = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    results: dict[int, IngestResult] = field(default_factory=dict)
    stored: int = 0


def _messages_ingest(
    *, batches: Sequence[tuple[Sequence[Device], Sequence[Any]]], source: str, now: float
) -> list[IngestResult]:
    started = time.perf_counter()
    reception_key = "rest.timestamp" if source == "rest" else "server.timestamp"
    stamp_keys = storage.stamp_keys_of(reception_key)
    results = []
    by_alias: dict[str, _Datacenter] = {}
    for devices, messages in batches:
        if len(messages) > MAX_MESSAGES_PER_BATCH:
            raise InvalidInput(f"at most {MAX_MESSAGES_PER_BATCH} messages per batch, got {len(messages)}")
        result = IngestResult()
        results.append(result)
        for device in devices:
            if not device.enabled:
                result.errors.append(
                    Conflict(
                        f"device {device.pk} is disabled: enable it to store its messages",
                        kind=ErrorKind.DEVICE_DISABLED,
                        id=device.pk,
                    )
                )
        enabled = [device for device in devices if device.enabled]
        prepared: list[tuple[int, dict]] = []
        for index, raw in enumerate(messages):
            try:
                prepared.append(message_prepare(raw, now=now))
            except MessageError as exc:
                result.errors.append(InvalidInput(str(exc), kind=ErrorKind.INVALID_MESSAGE, index=index))
        if not prepared or not enabled:
            continue
        result.accepted = len(prepared)
        encoded = storage.messages_encode(prepared=prepared, stamp_keys=stamp_keys)
        groups: dict[str, list[Device]] = {}
        for device in enabled:
            groups.setdefault(device.database, []).append(device)
        for alias, group in groups.items():
            datacenter = by_alias.setdefault(alias, _Datacenter())
            rows, telemetry = storage.messages_copy_rows(
                devices=group, batch=encoded, reception_key=reception_key, now=now
            )
            datacenter.rows.extend(rows)
            datacenter.telemetry.extend(telemetry)
            datacenter.devices.extend(group)
            datacenter.stored += len(group) * len(prepared)
            for device in group:
                if datacenter.results.setdefault(device.pk, result) is not result:
                    raise ValueError(f"device {device.pk} is in more than one batch of an ingestion")
    for alias, datacenter in by_alias.items():
        with transaction.atomic(using=alias):
            placement_guard(alias=alias, account_ids={device.account_id for device in datacenter.devices})
            changes = storage.messages_write(alias=alias, rows=datacenter.rows, telemetry=datacenter.telemetry)
            storage.devices_active(alias=alias, device_ids=[device.pk for device in datacenter.devices], at=now)
            storage.changes_record(
                alias=alias, changes=changes, shards={device.pk: device.shard for device in datacenter.devices}
            )
        _wake(alias, datacenter.devices, changes)
        for change in changes:
            datacenter.results[change.device_id].changes.append(change)
    if by_alias:
        metrics.ingest_done(
            source=source,
            stored={alias: datacenter.stored for alias, datacenter in by_alias.items()},
            seconds=time.perf_counter() - started,
        )
    return results


def devices_sessions_seen(*, owners: Mapping[int, int], at: float) -> None:
    """The devices (``owners``: device id -> account id) held an MQTT session of their own at
    ``at``: active then, as if a message had come (``last_active``, ``connected`` and their
    retained topics; docs/messages.md, "Connected and last active"). Devices gone meanwhile are
    left out; an account moving its data is skipped (the broker reports its live sessions again
    within ``DEVICE_CONNECTION_TIMEOUT`` / 4)."""
    by_alias: dict[str, dict[int, int]] = {}
    for device_id, account_id in owners.items():
        by_alias.setdefault(placement.alias_for_account(account_id), {})[device_id] = account_id
    for alias, placed in by_alias.items():
        try:
            with transaction.atomic(using=alias):
                placement_guard(alias=alias, account_ids=set(placed.values()))
                present = Device.objects.using(alias).filter(pk__in=list(placed)).values_list("pk", flat=True)
                storage.devices_active(alias=alias, device_ids=list(present), at=at)
        except AccountMoved:
            continue


def devices_disconnect(*, alias: str, now: float | None = None) -> list[int]:
    """The devices of the datacenter ``alias`` that were connected and have not been heard from
    for ``DEVICE_CONNECTION_TIMEOUT`` seconds are not any more (their retained ``connected``
    becomes false); returns their ids. The pump's connection sweep."""
    now = time.time() if now is None else now
    with transaction.atomic(using=alias):
        return storage.devices_disconnect(alias=alias, quiet_since=now - settings.DEVICE_CONNECTION_TIMEOUT)


def messages_delete(*, devices: Sequence[Device], begin: float | None, end: float | None) -> list[ChangedRange]:
    """Delete the devices' messages in [begin, end] (seconds); returns what was deleted."""
    if not devices:
        return []
    alias = devices[0].database
    with transaction.atomic(using=alias):
        placement_guard(alias=alias, account_ids={device.account_id for device in devices})
        changes = storage.messages_delete(
            alias=alias,
            device_ids=[device.pk for device in devices],
            begin=None if begin is None else round(begin * 1_000_000),
            end=None if end is None else round(end * 1_000_000),
        )
        storage.changes_record(alias=alias, changes=changes, shards={device.pk: device.shard for device in devices})
    _wake(alias, devices, changes)
    return changes


def telemetry_delete(*, devices: Sequence[Device], selection: TelemetrySelection) -> int:
    """Forget the devices' telemetry parameters that ``selection`` names (their stored messages
    stay); returns how many values went."""
    if not devices:
        return 0
    alias = devices[0].database
    device_ids = [device.pk for device in devices]
    with transaction.atomic(using=alias):
        placement_guard(alias=alias, account_ids={device.account_id for device in devices})
        if selection.everything:
            return storage.telemetry_delete(alias=alias, device_ids=device_ids, names=[], patterns=[".*"])
        return storage.telemetry_delete(
            alias=alias, device_ids=device_ids, names=selection.names, patterns=selection.patterns
        )


def _wake(alias: str, devices: Sequence[Device], changes: Sequence[ChangedRange]) -> None:
    """After commit: wake the calc workers of the shards whose devices changed."""
    if changes:
        changed = {change.device_id for change in changes}
        calc_queue.shards_wake(
            region=calc_queue.region_of_alias(alias),
            shards={device.shard for device in devices if device.pk in changed},
        )


def messages_purge_expired(*, alias: str, now: float | None = None, batch: int = 10_000) -> int:
    """Delete messages older than each device's ``messages_ttl``, then the oldest beyond its
    ``messages_rotate`` bytes, in short batches. (Like expiry, rotation drops history at its old
    end: it records no change for the calculators, whose intervals there stay as computed.)"""
    now = time.time() if now is None else now
    deleted = 0
    rows = Device.objects.using(alias).values_list("id", "messages_ttl", "messages_rotate").iterator()
    for device_id, ttl, rotate in rows:
        before = round((now - ttl) * 1_000_000)
        while True:
            count = storage.messages_purge_device(alias=alias, device_id=device_id, before=before, batch=batch)
            deleted += count
            if count < batch:
                break
        while rotate:
            count = storage.messages_rotate_device(alias=alias, device_id=device_id, keep_bytes=rotate, batch=batch)
            deleted += count
            if count < batch:
                break
    return deleted
