"""Regions and datacenters (control database), and the base of every regional model."""

from __future__ import annotations

from django.db import models


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
        from flespi_site.topology import datacenter_alias

        return datacenter_alias(self.code)


class RegionalModel(models.Model):
    """Base of every model stored in a datacenter database.

    ``account_id`` is a plain integer (no foreign key crosses databases). Ids come from the
    datacenter's entity sequence (``regions.placement.allocate_ids``) so that they are unique
    across every datacenter and survive a move between datacenters unchanged.
    """

    regional = True

    id = models.BigIntegerField(primary_key=True, editable=False)
    account_id = models.BigIntegerField(db_index=True)

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        from regions.placement import allocate_ids

        using = kwargs.get("using") or self.database
        kwargs["using"] = using
        if self.id is None:
            self.id = allocate_ids(alias=using, count=1)[0]
            kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    @property
    def database(self) -> str:
        """The alias of the datacenter database this row lives in: the one it was read from, else
        its account's."""
        from regions.placement import alias_for_account

        return self._state.db or alias_for_account(self.account_id)
