"""Reads of devices, messages and telemetry, scoped to the acting account."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from django.db.models import QuerySet

from accounts import placement
from accounts.models import Account
from devices import storage
from devices.constants import MAX_KEY_LENGTH
from devices.models import Device, DeviceIdent
from flespi_site.api.selection import MAX_WILDCARD_LENGTH, wildcard_regex
from flespi_site.errors import InvalidInput


def device_item(device: Device) -> dict:
    """A device as the API renders it, and as its log events carry it."""
    return {
        "id": device.pk,
        "name": device.name,
        "cid": device.account_id,
        "device_type_id": device.device_type_id,
        "configuration": device.configuration,
        "enabled": device.enabled,
        "messages_ttl": device.messages_ttl,
        "messages_rotate": device.messages_rotate,
        "media_ttl": device.media_ttl,
        "media_rotate": device.media_rotate,
        "metadata": device.metadata,
        "shard": device.shard,
        "created": device.created,
    }


def devices_of(*, account: Account) -> QuerySet[Device]:
    return placement.using_account(Device, account.pk).filter(account_id=account.pk)


def device_by_id(device_id: int) -> Device | None:
    """The device with ``device_id``, read from the datacenter of its account, or None."""
    claim = DeviceIdent.objects.filter(device_id=device_id).first()
    if claim is None:
        return None
    return placement.using_account(Device, claim.account_id).filter(pk=device_id).first()


def device_by_ident(*, region: str, ident: str) -> Device | None:
    """The device with ``ident`` in ``region``, read from its datacenter, or None."""
    claim = DeviceIdent.objects.filter(region=region, ident=ident).first()
    if claim is None:
        return None
    return placement.using_account(Device, claim.account_id).filter(pk=claim.device_id).first()


def devices_by_idents(*, regions: Collection[str], idents: Collection[str]) -> dict[tuple[str, str], Device]:
    """The devices with ``idents`` in ``regions``, by (region, ident): one read of the claims,
    one of each datacenter holding some of them."""
    claims = list(
        DeviceIdent.objects.filter(region__in=list(regions), ident__in=list(idents)).values_list(
            "region", "ident", "device_id", "account_id"
        )
    )
    by_alias: dict[str, list[int]] = {}
    for _region, _ident, device_id, account_id in claims:
        by_alias.setdefault(placement.alias_for_account(account_id), []).append(device_id)
    rows = {device.pk: device for alias, ids in by_alias.items() for device in Device.objects.using(alias).filter(pk__in=ids)}
    return {(region, ident): rows[device_id] for region, ident, device_id, _account in claims if device_id in rows}


def messages_of(
    *, devices: list[Device], begin: float | None, end: float | None, count: int | None, reverse: bool
) -> list[dict]:
    if not devices:
        return []
    return storage.messages_read(
        alias=devices[0].database,
        device_ids=[device.pk for device in devices],
        begin=None if begin is None else round(begin * 1_000_000),
        end=None if end is None else round(end * 1_000_000),
        count=count,
        reverse=reverse,
    )


def messages_matching(
    *, devices: list[Device], begin: float | None, end: float | None, count: int, reverse: bool, condition, chunk: int = 10_000
) -> list[dict]:
    """Messages for which ``condition.matches`` holds, read in chunks so that a selective filter
    over a long history never loads the whole history at once."""
    return [
        message
        for page in messages_pages(
            devices=devices, begin=begin, end=end, count=count, reverse=reverse, condition=condition, chunk=chunk
        )
        for message in page
    ]


def messages_pages(
    *,
    devices: list[Device],
    begin: float | None,
    end: float | None,
    count: int | None,
    reverse: bool,
    condition=None,
    chunk: int = 10_000,
) -> Iterator[list[dict]]:
    """The messages ``messages_of`` (``messages_matching`` with a ``condition``) answers for the
    same arguments, in the same order, as pages of at most ``chunk`` read one statement at a time:
    an export of a long range holds one page at a time."""
    if not devices:
        return
    left = count
    low = None if begin is None else round(begin * 1_000_000)
    high = None if end is None else round(end * 1_000_000)
    while left is None or left > 0:
        size = chunk if left is None or condition is not None else min(chunk, left)
        batch = storage.messages_read(
            alias=devices[0].database, device_ids=[device.pk for device in devices],
            begin=low, end=high, count=size, reverse=reverse,
        )
        last = len(batch) < size
        if last:
            head = batch
        else:
            # Several devices can share the boundary timestamp: its group is left for the next
            # chunk, which starts at that timestamp (or after it, if the whole chunk is one group).
            boundary = batch[-1]["timestamp"]
            head = [message for message in batch if message["timestamp"] != boundary] or batch
            edge = round(boundary * 1_000_000)
            step = 0 if len(head) < len(batch) else 1
            if reverse:
                high = edge - step
            else:
                low = edge + step
        kept = head if condition is None else [message for message in head if condition.matches(message)]
        if left is not None:
            kept = kept[:left]
            left -= len(kept)
        if kept:
            yield kept
        if last:
            return


def messages_keys(
    *, devices: list[Device], begin: float | None, end: float | None, count: int | None, reverse: bool
) -> set[str]:
    """The parameter names of the messages ``messages_of`` answers for the same arguments."""
    if not devices:
        return set()
    return storage.messages_keys(
        alias=devices[0].database,
        device_ids=[device.pk for device in devices],
        begin=None if begin is None else round(begin * 1_000_000),
        end=None if end is None else round(end * 1_000_000),
        count=count,
        reverse=reverse,
    )


def devices_state(*, devices: list[Device], names: Collection[str]) -> dict[int, dict]:
    """What the stored messages say of each device, by id, for the ``names`` asked:
    ``telemetry`` (the latest value of each parameter and its time), ``last_active`` (the time of
    its newest message, null before any) and ``messages_size`` (bytes its messages take)."""
    state: dict[int, dict] = {device.pk: {} for device in devices}
    if not devices:
        return state
    if "telemetry" in names or "last_active" in names:
        telemetry = telemetry_of(devices=devices)
        for device_id, values in telemetry.items():
            if "telemetry" in names:
                state[device_id]["telemetry"] = values
            if "last_active" in names:
                state[device_id]["last_active"] = max((item["ts"] for item in values.values()), default=None)
    if "messages_size" in names:
        sizes = storage.messages_sizes(alias=devices[0].database, device_ids=list(state))
        for device_id, size in sizes.items():
            state[device_id]["messages_size"] = size
    return state


def telemetry_of(*, devices: list[Device]) -> dict[int, dict[str, dict]]:
    if not devices:
        return {}
    return storage.telemetry_read(alias=devices[0].database, device_ids=[device.pk for device in devices])


@dataclass(frozen=True)
class TelemetrySelection:
    """flespi's ``{telemetry-selector}``: ``all``, or parameter names separated by commas, each
    with ``*`` and ``?`` wildcards (``position.*,battery.voltage``)."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()  # regular expressions of the names with wildcards
    everything: bool = False

    @classmethod
    def parse(cls, text: str) -> TelemetrySelection:
        text = text.strip()
        if text == "all":
            return cls(everything=True)
        names, patterns = [], []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise InvalidInput(f"telemetry selector {text[:64]!r} has an empty item", field="selector")
            if len(part) > MAX_KEY_LENGTH or any(ord(ch) < 32 for ch in part):
                raise InvalidInput(
                    f"telemetry selector item {part[:64]!r}: a parameter name has at most {MAX_KEY_LENGTH} "
                    "characters and no control characters",
                    field="selector",
                )
            if "*" in part or "?" in part:
                if len(part) > MAX_WILDCARD_LENGTH:
                    raise InvalidInput(
                        f"telemetry selector item {part[:64]!r}...: a name with wildcards has at most "
                        f"{MAX_WILDCARD_LENGTH} characters",
                        field="selector",
                    )
                patterns.append(wildcard_regex(part))
            else:
                names.append(part)
        return cls(names=tuple(names), patterns=tuple(patterns))

    def matches(self, name: str) -> bool:
        return self.everything or name in self.names or any(re.match(pattern, name) for pattern in self.patterns)


def telemetry_selected(*, devices: list[Device], selection: TelemetrySelection) -> dict[int, dict[str, dict]]:
    """The devices' telemetry parameters that ``selection`` names, by device id."""
    telemetry = telemetry_of(devices=devices)
    return {
        device_id: {name: value for name, value in values.items() if selection.matches(name)}
        for device_id, values in telemetry.items()
    }
