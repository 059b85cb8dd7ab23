"""Writes of regions and datacenters."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from flespi_site.topology import Topology
from regions.models import Datacenter, Region


class TopologyConflict(RuntimeError):
    """The configuration contradicts rows that must not change (a datacenter's number)."""


@transaction.atomic
def topology_sync(*, topology: Topology | None = None) -> tuple[int, int]:
    """Mirror the configured regions and datacenters into rows; returns (regions, datacenters).

    Rows of regions and datacenters that left the configuration are kept (accounts may still
    point at them) but lose their default flags.
    """
    topology = topology or settings.TOPOLOGY
    Region.objects.update(is_default=False)
    Datacenter.objects.update(is_default=False)
    for config in topology.regions:
        region, _ = Region.objects.update_or_create(
            code=config.code,
            defaults={
                "rest_url": config.rest_url,
                "mqtt_url": config.mqtt_url,
                "is_default": config.code == topology.default_region,
            },
        )
        for dc in config.datacenters:
            existing = Datacenter.objects.filter(code=dc.code).first()
            if existing is not None and (existing.number != dc.number or existing.region_id != region.id):
                raise TopologyConflict(
                    f"datacenter {dc.code} is stored with number {existing.number} in region "
                    f"{existing.region.code}; the configuration says {dc.number} in {config.code}. "
                    "A datacenter's number and region are part of its ids and cannot change."
                )
            Datacenter.objects.update_or_create(
                code=dc.code,
                defaults={"region": region, "number": dc.number, "is_default": dc.code == config.default_datacenter},
            )
    return len(topology.regions), len(topology.datacenters)
