"""Where an account's regional data lives: the datacenter database of an account.

Every query of a regional model goes through these helpers (or names its alias explicitly), so
that no regional query ever runs on the control database or on another datacenter.
"""

from __future__ import annotations

import threading

from accounts.models import Account
from regions.datacenters import alias_for_datacenter

_cache_lock = threading.Lock()
_account_aliases: dict[int, str] = {}


class UnknownAccount(LookupError):
    """The account does not exist in the control database."""


def alias_for_account(account_id: int) -> str:
    """The database alias of the datacenter that holds ``account_id``'s regional data."""
    alias = _account_aliases.get(account_id)
    if alias is not None:
        return alias
    code = Account.objects.filter(pk=account_id).values_list("datacenter__code", flat=True).first()
    if code is None:
        raise UnknownAccount(f"account {account_id} does not exist")
    alias = alias_for_datacenter(code)
    with _cache_lock:
        _account_aliases[account_id] = alias
    return alias


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
