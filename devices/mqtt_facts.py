"""The devices app's answers to MQTT access (``accounts.mqtt_facts.DeviceOwners``): which account
owns which device, from the control database's index of every device (``DeviceIdent``), and the
devices' own MQTT sessions as activity. ``DevicesConfig.ready`` installs them."""

from __future__ import annotations

from devices import services
from devices.models import DeviceIdent


class DeviceIdentOwners:
    """``accounts.mqtt_facts.DeviceOwners`` read from ``DeviceIdent``."""

    def owners_by_id(self, *, device_ids: list[int]) -> dict[int, int]:
        return dict(DeviceIdent.objects.filter(device_id__in=device_ids).values_list("device_id", "account_id"))

    def idents_of(self, *, regions: list[str], idents: list[str]) -> dict[str, tuple[int, int]]:
        rows = DeviceIdent.objects.filter(region__in=regions, ident__in=idents).values_list(
            "ident", "device_id", "account_id"
        )
        return {ident: (device_id, account_id) for ident, device_id, account_id in rows}

    def sessions_seen(self, *, device_ids: list[int], at: float) -> None:
        services.devices_sessions_seen(owners=self.owners_by_id(device_ids=device_ids), at=at)


DEVICE_OWNERS = DeviceIdentOwners()
