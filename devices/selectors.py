"""Reads of devices, messages and telemetry, scoped to the acting account."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Account
from devices import storage
from devices.models import Device, DeviceIdent
from regions import placement


def devices_of(*, account: Account) -> QuerySet[Device]:
    return placement.using_account(Device, account.pk).filter(account_id=account.pk)


def device_by_ident(*, region: str, ident: str) -> Device | None:
    """The device with ``ident`` in ``region``, read from its datacenter, or None."""
    claim = DeviceIdent.objects.filter(region=region, ident=ident).first()
    if claim is None:
        return None
    return placement.using_account(Device, claim.account_id).filter(pk=claim.device_id).first()


def messages_of(
    *, devices: list[Device], begin: float | None, end: float | None, count: int | None, reverse: bool
) -> list[dict]:
    if not devices:
        return []
    return storage.messages_read(
        alias=devices[0]._state.db,
        device_ids=[device.pk for device in devices],
        begin=None if begin is None else round(begin * 1_000_000),
        end=None if end is None else round(end * 1_000_000),
        count=count,
        reverse=reverse,
    )


def telemetry_of(*, devices: list[Device]) -> dict[int, dict[str, dict]]:
    if not devices:
        return {}
    return storage.telemetry_read(alias=devices[0]._state.db, device_ids=[device.pk for device in devices])
