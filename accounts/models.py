"""The account tree and API tokens (control database)."""

from __future__ import annotations

import time

from django.db import models

from accounts.choices import AccessType, MoveState
from accounts.constants import MAX_ACCOUNT_DEPTH


class Account(models.Model):
    """A customer account. Root accounts have no parent and live in the default region; a
    first-level subaccount chooses its region, deeper ones inherit it, and it never changes.

    ``path`` is the chain of ids from the root, ``"1/7/12/"``, so that a subtree is a prefix match.
    """

    name = models.CharField(max_length=255)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    region = models.ForeignKey("regions.Region", on_delete=models.PROTECT, related_name="accounts")
    datacenter = models.ForeignKey("regions.Datacenter", on_delete=models.PROTECT, related_name="accounts")
    depth = models.PositiveSmallIntegerField(default=0)
    path = models.CharField(max_length=255, db_index=True, editable=False, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created = models.FloatField(default=time.time, help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(depth__lte=MAX_ACCOUNT_DEPTH), name="account_depth_limit"),
            models.CheckConstraint(
                condition=(models.Q(parent__isnull=True, depth=0) | models.Q(parent__isnull=False, depth__gt=0)),
                name="account_root_iff_depth_zero",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    def is_descendant_of(self, other: Account) -> bool:
        return self.path.startswith(other.path) and self.pk != other.pk


class Token(models.Model):
    """An API token. The key is shown once at creation; only its SHA-256 is stored."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="tokens")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(max_length=16, editable=False)
    info = models.CharField(max_length=255, blank=True, default="")
    enabled = models.BooleanField(default=True)
    expire = models.BigIntegerField(default=0, help_text="unix time after which the token is invalid; 0 = never")
    ttl = models.BigIntegerField(default=0, help_text="seconds of inactivity after which the token is invalid; 0 = never")
    access_type = models.PositiveSmallIntegerField(choices=AccessType.choices, default=AccessType.STANDARD)
    created = models.FloatField(help_text="unix time")
    last_used = models.FloatField(null=True, blank=True, help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(expire__gte=0), name="token_expire_non_negative"),
            models.CheckConstraint(condition=models.Q(ttl__gte=0), name="token_ttl_non_negative"),
        ]

    def __str__(self) -> str:
        return f"token {self.key_prefix}… of account {self.account_id}"


class AccountMove(models.Model):
    """A move of an account's subtree from one datacenter of its region to another
    (``accounts.moves``). Until ``state`` is ``switched`` the source is authoritative; from then
    on the target is, and only the source's rows remain to be deleted. ``tables`` holds the rows
    moved per table once it is done."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="moves")
    region = models.ForeignKey("regions.Region", on_delete=models.PROTECT, related_name="+")
    source = models.ForeignKey("regions.Datacenter", on_delete=models.PROTECT, related_name="+")
    target = models.ForeignKey("regions.Datacenter", on_delete=models.PROTECT, related_name="+")
    account_ids = models.JSONField(default=list, help_text="the accounts of the subtree that move")
    state = models.CharField(max_length=16, choices=MoveState.choices, default=MoveState.COPYING)
    started = models.FloatField(help_text="unix time")
    switched = models.FloatField(null=True, blank=True, help_text="unix time")
    finished = models.FloatField(null=True, blank=True, help_text="unix time")
    tables = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # One unfinished move per region: a move's journal of changes is per source database,
            # and an operator finishes (reruns) an interrupted move before starting another.
            models.UniqueConstraint(
                fields=["region"], condition=~models.Q(state=MoveState.DONE), name="account_move_one_unfinished_per_region"
            ),
        ]

    def __str__(self) -> str:
        return f"move of account {self.account_id} to datacenter {self.target_id} ({self.state})"


class PlacementVersion(models.Model):
    """One row: a number that grows whenever an account's datacenter changes, in the same
    transaction. Processes compare it with the one their placement cache was read at
    (``accounts.placement``)."""

    version = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"placement version {self.version}"
