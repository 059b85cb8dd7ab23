"""The base of every model stored in a datacenter database: a row owned by an account."""

from __future__ import annotations

from django.db import models, transaction

from accounts.placement import alias_for_account
from accounts.placement_guard import placement_guard
from regions.datacenters import allocate_ids


class RegionalModel(models.Model):
    """Base of every model stored in a datacenter database.

    ``account_id`` is a plain integer (no foreign key crosses databases). Ids come from the
    datacenter's entity sequence (``regions.datacenters.allocate_ids``) so that they are unique
    across every datacenter and survive a move between datacenters unchanged. Saving and deleting
    a row pass the placement guard of moves (``accounts.placement_guard``).
    """

    regional = True

    id = models.BigIntegerField(primary_key=True, editable=False)
    account_id = models.BigIntegerField(db_index=True)

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        using = kwargs.get("using") or self.database
        kwargs["using"] = using
        if self.id is None:
            self.id = allocate_ids(alias=using, count=1)[0]
            kwargs["force_insert"] = True
        with transaction.atomic(using=using):
            placement_guard(alias=using, account_ids=[self.account_id])
            super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        using = kwargs.get("using") or self.database
        with transaction.atomic(using=using):
            placement_guard(alias=using, account_ids=[self.account_id])
            return super().delete(*args, **kwargs)

    @property
    def database(self) -> str:
        """The alias of the datacenter database this row lives in: the one it was read from, else
        its account's."""
        return self._state.db or alias_for_account(self.account_id)
