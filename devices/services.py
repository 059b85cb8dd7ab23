"""Writes of devices and messages.

``messages_ingest`` is the one way messages enter the platform: REST, MQTT ingestion and the
importer all call it. It validates each message on its own (a bad one never costs the good ones
of its batch), writes the batch with COPY in one transaction together with its outbox rows, and
returns, after commit, which devices got new messages in which time range.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction

from accounts import mqtt_dynsec
from accounts.models import Account
from devices import storage
from devices.constants import (
    IDENT_FORBIDDEN,
    MAX_FUTURE_SECONDS,
    MAX_IDENT_LENGTH,
    MAX_KEY_LENGTH,
    MAX_MESSAGES_PER_BATCH,
)
from devices.models import Device, DeviceIdent
from devices.storage import ChangedRange
from flespi_site.errors import Conflict, InvalidInput, NotFound
from regions import placement

RECEPTION_KEYS = ("rest.timestamp", "server.timestamp")


# --- devices -------------------------------------------------------------------------------


def shard_of(device_id: int, shards: int | None = None) -> int:
    """The calculation shard of a device: a stable hash of its id."""
    shards = shards or settings.CALC_SHARDS
    return zlib.crc32(str(device_id).encode()) % shards


def ident_problem(ident: Any) -> str | None:
    if not isinstance(ident, str) or not ident:
        return "configuration.ident must be a non-empty string"
    if len(ident) > MAX_IDENT_LENGTH:
        return f"configuration.ident is longer than {MAX_IDENT_LENGTH} characters"
    bad = sorted({ch for ch in ident if ch in IDENT_FORBIDDEN or ord(ch) < 32 or ord(ch) == 127})
    if bad:
        return f"configuration.ident may not contain {', '.join(repr(ch) for ch in bad)}"
    return None


def _claim_ident(*, region: str, ident: str, device_id: int, account_id: int) -> DeviceIdent:
    try:
        with transaction.atomic(using="default"):
            return DeviceIdent.objects.create(region=region, ident=ident, device_id=device_id, account_id=account_id)
    except IntegrityError:
        raise Conflict(f"a device with ident {ident!r} already exists in region {region}", field="configuration.ident") from None


def device_create(
    *,
    account: Account,
    configuration: dict[str, Any],
    name: str = "",
    enabled: bool = True,
    messages_ttl: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Device:
    problem = ident_problem(configuration.get("ident"))
    if problem:
        raise InvalidInput(problem, field="configuration.ident")
    alias = placement.alias_for_account(account.pk)
    device_id = placement.allocate_ids(alias=alias, count=1)[0]
    ident = configuration["ident"]
    claim = _claim_ident(region=account.region.code, ident=ident, device_id=device_id, account_id=account.pk)
    device = Device(
        id=device_id,
        account_id=account.pk,
        name=name,
        ident=ident,
        configuration=configuration,
        enabled=enabled,
        metadata=metadata or {},
        shard=shard_of(device_id),
        created=time.time(),
    )
    if messages_ttl is not None:
        device.messages_ttl = messages_ttl
    try:
        device.save(using=alias, force_insert=True)
    except Exception:
        claim.delete()
        raise
    mqtt_dynsec.device_granted(account_id=account.pk, device_id=device.pk, ident=ident)
    return device


def device_update(*, device: Device, account: Account, data: dict[str, Any]) -> Device:
    """Update a device. A new ident is claimed in the region first; a move to another account
    stays within the acting account's tree and region."""
    new_ident = None
    if "configuration" in data:
        configuration = data["configuration"]
        problem = ident_problem(configuration.get("ident"))
        if problem:
            raise InvalidInput(problem, field="configuration.ident")
        if configuration["ident"] != device.ident:
            new_ident = configuration["ident"]
    if "account_id" in data and data["account_id"] != device.account_id:
        _device_move_check(device=device, account=account, target_id=data["account_id"])
    before = (device.account_id, device.ident)
    if new_ident is not None:
        try:
            with transaction.atomic(using="default"):
                DeviceIdent.objects.filter(device_id=device.pk).update(ident=new_ident)
        except IntegrityError:
            raise Conflict(
                f"a device with ident {new_ident!r} already exists in region {account.region.code}",
                field="configuration.ident",
            ) from None
        device.ident = new_ident
    for name in ("name", "enabled", "messages_ttl", "metadata", "configuration", "account_id"):
        if name in data:
            setattr(device, name, data[name])
    device.save()
    if "account_id" in data:
        DeviceIdent.objects.filter(device_id=device.pk).update(account_id=device.account_id)
    if (device.account_id, device.ident) != before:
        mqtt_dynsec.device_revoked(account_id=before[0], device_id=device.pk, ident=before[1])
        mqtt_dynsec.device_granted(account_id=device.account_id, device_id=device.pk, ident=device.ident)
    return device


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
    alias, device_id = device.database, device.pk  # delete() sets pk to None
    with transaction.atomic(using=alias):
        storage.messages_drop_device(alias=alias, device_id=device_id)
        device.delete()
    DeviceIdent.objects.filter(device_id=device_id).delete()
    mqtt_dynsec.device_revoked(account_id=device.account_id, device_id=device_id, ident=device.ident)


# --- messages ------------------------------------------------------------------------------


class MessageError(ValueError):
    """One message of a batch is invalid; the reason names the field."""


@dataclass
class IngestResult:
    """What a write did: per device, the range of stored messages it inserted or changed
    (after commit), and the messages it refused, by index."""

    accepted: int = 0
    changes: list[ChangedRange] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


_valid_keys: set[str] = set()


def _check_key(key: Any) -> None:
    if key in _valid_keys:
        return
    if not isinstance(key, str) or not key:
        raise MessageError("parameter names must be non-empty strings")
    if len(key) > MAX_KEY_LENGTH:
        raise MessageError(f"parameter name {key[:32]!r}… is longer than {MAX_KEY_LENGTH} characters")
    if any(ord(ch) < 32 for ch in key):
        raise MessageError(f"parameter name {key!r} contains control characters")
    if not _encodable(key):
        raise MessageError(f"parameter name {key!r} contains a lone surrogate, which UTF-8 cannot encode")
    if len(_valid_keys) < 100_000:
        _valid_keys.add(key)


def _encodable(text: str) -> bool:
    """Whether UTF-8 can encode ``text`` (JSON's ``\\ud800`` escapes make lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_timestamp(value: Any) -> float:
    """Unix seconds from a number or an ISO 8601 string (UTC when it names no offset)."""
    if isinstance(value, bool):
        raise MessageError("timestamp must be unix seconds or an ISO 8601 string, not a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise MessageError(f"timestamp {value[:40]!r} is not unix seconds or ISO 8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        number = moment.timestamp()
    else:
        raise MessageError("timestamp must be unix seconds or an ISO 8601 string")
    if not math.isfinite(number) or number < 0:
        raise MessageError(f"timestamp {value!r} is out of range")
    return number


def message_prepare(raw: Any, *, now: float) -> tuple[int, dict]:
    """Validate one message; returns its time in microseconds and a body with a float
    ``timestamp`` (reception keys are stamped by the caller)."""
    if raw.__class__ is not dict and not isinstance(raw, dict):
        raise MessageError("a message must be a JSON object")
    if "timestamp" not in raw:
        raise MessageError("timestamp is required")
    seconds = raw["timestamp"]
    kind = seconds.__class__
    # Unix seconds in range, the common case, need no more than the comparison (NaN fails it).
    if not ((kind is float or kind is int) and 0 <= seconds <= now + MAX_FUTURE_SECONDS):
        try:
            seconds = parse_timestamp(seconds)
        except OverflowError:  # an integer beyond any float, which JSON allows
            raise MessageError("timestamp is out of range") from None
        if seconds > now + MAX_FUTURE_SECONDS:
            raise MessageError(f"timestamp {seconds:.0f} is more than {MAX_FUTURE_SECONDS} s in the future")
    ts = round(seconds * 1_000_000)
    body = dict(raw)
    body["timestamp"] = ts / 1_000_000
    if not _valid_keys.issuperset(body):  # a name not seen before: check everything in order
        _check_body(body)
        return ts, body
    for value in body.values():
        kind = type(value)
        if kind is float:
            if value - value:  # NaN or infinite
                _check_body(body)
        elif kind is str:
            if "\x00" in value or not _encodable(value):
                _check_body(body)
        elif (kind is dict or kind is list) and _has_nul_or_nan(value):
            _check_body(body)
    return ts, body


def _check_body(body: dict) -> None:
    """Raise the first problem of ``body``'s names and values, in their order."""
    for key, value in body.items():
        _check_key(key)
        kind = type(value)
        if kind is str:
            if "\x00" in value:
                raise MessageError(f"{key}: string values may not contain the NUL character")
            if not _encodable(value):
                raise MessageError(f"{key}: a lone surrogate (\\ud800-\\udfff) in the string cannot be stored")
        elif kind is float:
            if not math.isfinite(value):
                raise MessageError(f"{key} is not a finite number")
        elif (kind is dict or kind is list) and _has_nul_or_nan(value):
            raise MessageError(
                f"{key}: nested values may not contain NUL characters, lone surrogates or non-finite numbers"
            )


def _has_nul_or_nan(value: Any) -> bool:
    # PostgreSQL's jsonb cannot hold NUL and UTF-8 no lone surrogate; refusing them here keeps the
    # rest of the batch storable.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not _encodable(item):
                return True
        elif isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def messages_ingest(
    *, devices: Sequence[Device], messages: Sequence[Any], source: str = "rest", now: float | None = None
) -> IngestResult:
    """Store ``messages`` into every enabled device of ``devices``; a disabled device takes none
    (whatever the entry point) and is reported by id in ``errors``."""
    if len(messages) > MAX_MESSAGES_PER_BATCH:
        raise InvalidInput(f"at most {MAX_MESSAGES_PER_BATCH} messages per batch, got {len(messages)}")
    now = time.time() if now is None else now
    reception_key = "rest.timestamp" if source == "rest" else "server.timestamp"
    result = IngestResult()
    for device in devices:
        if not device.enabled:
            result.errors.append(
                {"code": 409, "type": "device_disabled", "id": device.pk,
                 "reason": f"device {device.pk} is disabled: enable it to store its messages"}
            )
    devices = [device for device in devices if device.enabled]
    prepared: list[tuple[int, dict]] = []
    for index, raw in enumerate(messages):
        try:
            prepared.append(message_prepare(raw, now=now))
        except MessageError as exc:
            result.errors.append({"code": 400, "type": "invalid_message", "reason": str(exc), "index": index})
    if not prepared or not devices:
        return result
    by_alias: dict[str, list[Device]] = {}
    for device in devices:
        by_alias.setdefault(device.database, []).append(device)
    batch = _encode(prepared, stamp_keys_of(reception_key))
    for alias, group in by_alias.items():
        rows, telemetry = _copy_lines(group, batch, reception_key, now)
        with transaction.atomic(using=alias):
            changes = storage.messages_write(alias=alias, rows=rows, telemetry=telemetry)
        result.changes.extend(changes)
    result.accepted = len(prepared)
    return result


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits, which JSON allows
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Encoded:
    """A validated batch, independent of the devices it goes to: the unique timestamps in
    increasing order, each with its body as COPY text (``ts`` tab ``{...``, the object left open
    so that the stamps can close it), and each parameter's latest value and its time."""

    stamps: list[int]
    heads: list[bytes]
    latest: dict[str, tuple[int, str]]


def stamp_keys_of(reception_key: str) -> frozenset[str]:
    """The names the platform stamps on every message it stores from a source."""
    return frozenset(("device.id", "device.name", "ident", reception_key))


def _encode(prepared: list[tuple[int, dict]], stamp_keys: frozenset[str]) -> _Encoded:
    # Messages of one batch with equal timestamps merge in batch order, like stored ones.
    merged: dict[int, dict] = {}
    for ts, body in prepared:
        previous = merged.get(ts)
        merged[ts] = body if previous is None else {**previous, **body}
    stamps = sorted(merged)
    bodies = [merged[ts] for ts in stamps]
    if any(not stamp_keys.isdisjoint(body) for body in bodies):
        # The platform's stamps replace what a client sent under their names; bodies are stored
        # as ``json`` text, which would keep both.
        bodies = [{k: v for k, v in body.items() if k not in stamp_keys} for body in bodies]
    heads = [b"%d\t%b" % (ts, _dumps(body)[:-1]) for ts, body in zip(stamps, bodies, strict=True)]
    return _Encoded(stamps, heads, _latest(stamps, bodies))


def _latest(stamps: list[int], bodies: list[dict]) -> dict[str, tuple[int, str]]:
    """Each parameter's latest value in the batch (as JSON) and its time."""
    values: dict[str, Any] = {}
    for body in bodies:
        values.update(body)
    # Mostly every message has every parameter and the last message has them all; the others are
    # looked for from the end.
    times = dict.fromkeys(values, stamps[-1])
    missing = values.keys() - bodies[-1].keys()
    for ts, body in zip(reversed(stamps), reversed(bodies), strict=True):
        if not missing:
            break
        found = missing & body.keys()
        times.update(dict.fromkeys(found, ts))
        missing -= found
    return {name: (times[name], _dumps(value).decode()) for name, value in values.items()}


def _copy_lines(
    devices: Iterable[Device], batch: _Encoded, reception_key: str, now: float
) -> tuple[list[storage.DeviceRows], list[storage.TelemetryValue]]:
    """The rows of the batch for every device, and each parameter's latest value in it.

    Every body gets the device's stamps appended as members after its own (``_encode`` took out
    any member of the same name), so each body is encoded once for all devices."""
    rows: list[storage.DeviceRows] = []
    telemetry: list[storage.TelemetryValue] = []
    last = batch.stamps[-1]
    for device in devices:
        stamps = {"device.id": device.pk, "device.name": device.name, "ident": device.ident, reception_key: now}
        tail = b"," + _dumps(stamps)[1:] + b"\n"
        head = b"%d\t" % device.pk
        data = head + (tail + head).join(batch.heads) + tail
        rows.append(storage.DeviceRows(device.pk, batch.stamps, storage.copy_escape(data)))
        latest = {**batch.latest, **{name: (last, _dumps(value).decode()) for name, value in stamps.items()}}
        telemetry.extend(storage.TelemetryValue(device.pk, name, value, ts) for name, (ts, value) in latest.items())
    return rows, telemetry


def messages_delete(*, devices: Sequence[Device], begin: float | None, end: float | None) -> list[ChangedRange]:
    """Delete the devices' messages in [begin, end] (seconds); returns what was deleted."""
    if not devices:
        return []
    alias = devices[0].database
    with transaction.atomic(using=alias):
        return storage.messages_delete(
            alias=alias,
            device_ids=[device.pk for device in devices],
            begin=None if begin is None else round(begin * 1_000_000),
            end=None if end is None else round(end * 1_000_000),
        )


def messages_purge_expired(*, alias: str, now: float | None = None, batch: int = 10_000) -> int:
    """Delete messages older than each device's ``messages_ttl``, in short batches."""
    now = time.time() if now is None else now
    deleted = 0
    for device_id, ttl in Device.objects.using(alias).values_list("id", "messages_ttl").iterator():
        before = round((now - ttl) * 1_000_000)
        while True:
            count = storage.messages_purge_device(alias=alias, device_id=device_id, before=before, batch=batch)
            deleted += count
            if count < batch:
                break
    return deleted
