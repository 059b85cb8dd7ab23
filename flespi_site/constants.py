"""Every PostgreSQL advisory-lock key of the platform, in one place (one searchable name each).

PostgreSQL advisory locks share one key space per database, so two subsystems that picked the
same number would block each other for no reason: every number is chosen here and nowhere else
(``tests/test_protocols.py`` fails on a lock number spelled outside this module). Two-key locks
(``pg_advisory_xact_lock(space, key)``) name their first key here; the second is an id that
``lock_id`` folds into PostgreSQL's 32-bit range. No Django here: migrations import it too.
"""

from __future__ import annotations

from enum import IntEnum


class LockSpace(IntEnum):
    """The first key of the platform's two-key advisory locks."""

    # Per account, in datacenter databases: writers take it shared, a move's switch exclusively
    # (``accounts.placement_guard``).
    ACCOUNT_WRITE = 0x0A3C
    # Per region, session-scoped in the control database: one move at a time (``accounts.moves``).
    REGION_MOVE = 0x0A3D
    # Per device, in datacenter databases: sealing message blocks against the change log's
    # trigger that removes them (``analytics.blocks``, migration ``analytics/0004``).
    DEVICE_BLOCKS = 0x0B10
    # Per account, in datacenter databases: a change of one device's group membership takes it
    # shared, a change of a group or of a calculator's group assignments exclusively
    # (``devices.membership``), so that no membership change misses a concurrent group change.
    ACCOUNT_GROUPS = 0x0C10
    # Per account, in datacenter databases: a calculator write that chains calculators or may be
    # chained (create, update, delete) takes it exclusively, so that no two writes close a cycle
    # or delete a calculator being chained (``analytics.services``).
    ACCOUNT_CHAINS = 0x0C11


# Single-key lock of the outbox relay of a datacenter database (one relay per database keeps the
# order of each device's events).
RELAY_LOCK = 0x0F1E5B1


# Single-key lock of the webhooks' delivery loop of a datacenter database (one loop per database
# keeps each webhook's events in order; ``webhooks.delivery``).
WEBHOOKS_LOCK = 0x0F1E5B3


# Single-key, session-scoped lock of ``flespi migrate`` in the control database: one migration of
# the platform's databases at a time, whichever host runs it (``regions.setup``).
MIGRATE_LOCK = 0x0F1E5B2


def lock_id(entity_id: int) -> int:
    """The second key of a two-key lock for ``entity_id`` (PostgreSQL's keys are 32-bit)."""
    return entity_id % 2**31
