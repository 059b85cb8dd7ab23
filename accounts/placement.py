"""Where an account's regional data lives: the datacenter database of an account.

Every query of a regional model goes through these helpers (or names its alias explicitly), so
that no regional query ever runs on the control database or on another datacenter.

The account → datacenter mapping is cached per process, and the cache is valid for one
**placement version**: a number in the control database (``PlacementVersion``) that grows in the
same transaction as any change of an account's datacenter (``accounts.moves``). A lookup reads
that number again when the last read is older than ``RECHECK_SECONDS`` and drops the whole cache
when it changed, so every process (web workers, the MQTT ingest consumer, calc workers, the
relay) sees a move within that time without being told. Writes do not rely on that bound: the
placement guard (``accounts.placement_guard``) reads the version inside every write transaction, after the
move's lock, and refuses a write to a datacenter the account has left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from django.db import connections

from accounts.models import Account
from regions.datacenters import alias_for_datacenter

# How stale a process's view of the placement may be for reads. A move keeps the source's rows
# readable for longer than this after its switch (``accounts.moves.GRACE_SECONDS``).
RECHECK_SECONDS = 0.1

_VERSION = "SELECT version FROM accounts_placementversion WHERE id = 1"
_BUMP = """
INSERT INTO accounts_placementversion (id, version) VALUES (1, 1)
ON CONFLICT (id) DO UPDATE SET version = accounts_placementversion.version + 1
RETURNING version
"""

Row = TypeVar("Row", bound=Any)

_cache_lock = threading.Lock()
_account_aliases: dict[int, str] = {}
_version: int | None = None
_checked = 0.0


class UnknownAccount(LookupError):
    """The account does not exist in the control database."""


def placement_version() -> int:
    """The control database's placement version (0 before the first move)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(_VERSION)
        row = cursor.fetchone()
    return 0 if row is None else row[0]


def placement_bump() -> int:
    """Grow the placement version, in the caller's transaction on the control database (the one
    that changes an account's datacenter); returns the new version."""
    with connections["default"].cursor() as cursor:
        cursor.execute(_BUMP)
        return cursor.fetchone()[0]


def recheck(*, force: bool = False) -> None:
    """Drop the cache if the placement version changed since it was read (at most every
    ``RECHECK_SECONDS`` unless ``force``)."""
    global _version, _checked
    now = time.monotonic()
    if not force and now - _checked < RECHECK_SECONDS:
        return
    version = placement_version()
    with _cache_lock:
        if version != _version:
            _account_aliases.clear()
            _version = version
        _checked = now


def alias_for_account(account_id: int) -> str:
    """The database alias of the datacenter that holds ``account_id``'s regional data."""
    recheck()
    alias = _account_aliases.get(account_id)
    if alias is not None:
        return alias
    read_at = _version
    code = Account.objects.filter(pk=account_id).values_list("datacenter__code", flat=True).first()
    if code is None:
        raise UnknownAccount(f"account {account_id} does not exist")
    alias = alias_for_datacenter(code)
    with _cache_lock:
        # Another thread that saw a newer version meanwhile may have cleared the cache: what this
        # one read may be older than that version, so it is not kept.
        if _version == read_at:
            _account_aliases[account_id] = alias
    return alias


def accounts_elsewhere(*, alias: str, account_ids: Iterable[int]) -> list[int]:
    """The accounts of ``account_ids`` whose data is no longer in ``alias``, by the control
    database's placement as of now (the placement guard's check)."""
    recheck(force=True)
    return [account_id for account_id in account_ids if alias_for_account(account_id) != alias]


def forget_account(account_id: int) -> None:
    """Drop the cached placement of an account (after it moved or was deleted)."""
    with _cache_lock:
        _account_aliases.pop(account_id, None)


def forget_all() -> None:
    """Drop every cached placement (after the configuration changed)."""
    with _cache_lock:
        _account_aliases.clear()


def using_account(model, account_id: int):
    """``model``'s manager bound to the datacenter of ``account_id``."""
    return model.objects.using(alias_for_account(account_id))


def rows_placed(rows: Sequence[Row]) -> list[Row]:
    """Regional rows read again from their accounts' datacenters as placed now (after a write was
    refused because an account moved); rows gone meanwhile are left out."""
    by_account: dict[int, list[int]] = {}
    for row in rows:
        by_account.setdefault(row.account_id, []).append(row.pk)
    fresh: dict[int, Row] = {}
    for account_id, pks in by_account.items():
        model = type(rows[0])
        fresh.update((row.pk, row) for row in using_account(model, account_id).filter(pk__in=pks))
    return [fresh[row.pk] for row in rows if row.pk in fresh]
