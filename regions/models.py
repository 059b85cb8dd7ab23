"""Regions and datacenters (control database)."""

from __future__ import annotations

from django.db import models

from flespi_site.topology import datacenter_alias


class Region(models.Model):
    """A geographic region with its own datacenters, Celery broker and MQTT broker.

    Mirrored from the topology configuration by ``regions.services.topology_sync``; the
    configuration is the source of truth.
    """

    code = models.CharField(max_length=32, unique=True)
    rest_url = models.CharField(max_length=255)
    mqtt_url = models.CharField(max_length=255)
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="region_single_default"
            ),
        ]

    def __str__(self) -> str:
        return self.code


class Datacenter(models.Model):
    """One database of a region's regional data. ``number`` is part of every entity id created
    there (see docs/regions.md, "Entity ids") and must never change."""

    code = models.CharField(max_length=32, unique=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="datacenters")
    number = models.PositiveSmallIntegerField(unique=True)
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.UniqueConstraint(
                fields=["region"], condition=models.Q(is_default=True), name="datacenter_single_default_per_region"
            ),
            models.CheckConstraint(condition=models.Q(number__gte=1, number__lte=1023), name="datacenter_number_range"),
        ]

    def __str__(self) -> str:
        return self.code

    @property
    def alias(self) -> str:
        return datacenter_alias(self.code)

