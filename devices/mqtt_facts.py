"""The devices app's answers to MQTT access (``accounts.mqtt_facts.DeviceOwners``): which account
owns which device, from the control database's index of every device (``DeviceIdent``).
``DevicesConfig.ready`` installs them."""

from __future__ import annotations

from collections.abc import Iterator

from accounts.mqtt_facts import OwnedDevice
from devices.models import DeviceIdent


class DeviceIdentOwners:
    """``accounts.mqtt_facts.DeviceOwners`` read from ``DeviceIdent``."""

    def owners_by_id(self, *, device_ids: list[int]) -> dict[int, int]:
        return dict(DeviceIdent.objects.filter(device_id__in=device_ids).values_list("device_id", "account_id"))

    def owners_by_ident(self, *, regions: list[str], idents: list[str]) -> dict[str, int]:
        return dict(DeviceIdent.objects.filter(region__in=regions, ident__in=idents).values_list("ident", "account_id"))

    def idents_of(self, *, regions: list[str], idents: list[str]) -> dict[str, tuple[int, int]]:
        rows = DeviceIdent.objects.filter(region__in=regions, ident__in=idents).values_list(
            "ident", "device_id", "account_id"
        )
        return {ident: (device_id, account_id) for ident, device_id, account_id in rows}

    def devices_of(self, *, regions: list[str]) -> Iterator[OwnedDevice]:
        rows = DeviceIdent.objects.filter(region__in=regions).values_list("device_id", "ident", "account_id")
        for device_id, ident, account_id in rows:
            yield OwnedDevice(device_id=device_id, ident=ident, account_id=account_id)


DEVICE_OWNERS = DeviceIdentOwners()
