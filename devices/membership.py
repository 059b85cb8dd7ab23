"""Group membership and what follows it.

A device's membership in groups changes when it is added to or removed from a group, created
matching a group's selector, changed so that it starts or stops matching, moved to another
account, or when a group's selector or members change. Whatever follows a membership change must
happen in the transaction that changes it: the calculators assigned to a group (``analytics``)
assign and unassign its members there. ``analytics`` sits above ``devices``: it installs its
follower when the app registry is ready (``AnalyticsConfig.ready`` calls ``follower_provide``),
and every membership change of ``devices.services`` calls ``members_changed`` in its transaction.

Serialisation: a change of one device's membership (a device created or changed, explicit members
added or removed) takes the account's groups lock shared; a change of a group itself (its
selector, its member list as a whole, its deletion) or of the calculators assigned to a group
takes it exclusively. So a follower always decides on committed groups and assignments of groups,
and the device rows (locked by the writes of one device) keep two changes of one device in order.
The lock is always taken before any row lock of the transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from django.db import connections

from flespi_site.constants import LockSpace, lock_id


class MembershipFollower(Protocol):
    def members_changed(self, *, alias: str, device_ids: Collection[int], created: bool) -> None:
        """The group membership of ``device_ids`` (devices in database ``alias``) may have changed:
        bring what follows from it in line with the current state, in the caller's transaction.
        ``created``: the devices were created by this transaction (nothing followed from them yet)."""
        ...


_followers: list[MembershipFollower] = []


def follower_provide(follower: MembershipFollower) -> None:
    """Install a follower of membership changes (once, when the app registry is ready)."""
    if follower not in _followers:
        _followers.append(follower)


def members_changed(*, alias: str, device_ids: Iterable[int], created: bool = False) -> None:
    """Tell the followers, in the caller's transaction on ``alias``."""
    ids = sorted(set(device_ids))
    if not ids:
        return
    for follower in _followers:
        follower.members_changed(alias=alias, device_ids=ids, created=created)


def groups_lock(*, alias: str, account_ids: Iterable[int], exclusive: bool) -> None:
    """The accounts' groups locks, in the caller's transaction on ``alias`` (see the module's
    docstring): taken first, in key order."""
    keys = sorted({lock_id(account_id) for account_id in account_ids})
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise RuntimeError("groups_lock runs in the writer's transaction (transaction.atomic)")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {function}(%s, key) FROM unnest(%s::integer[]) AS key", [LockSpace.ACCOUNT_GROUPS, keys]
        )
