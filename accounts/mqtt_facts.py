"""Reads of the control database that the MQTT access policy decides on: a token by its key
(and the connected tokens by id, at once), the account path of devices by id or ident, of
calculators by id and of accounts by id. The broker's access (``accounts.mqtt_access``) calls them for what its cache
lacks.

Which account owns which device is the devices app's to say (``DeviceIdent`` is the control
database's index of every device), and ``devices`` sits above ``accounts``: accounts never imports
it. The devices app provides its answers at start-up instead (``DevicesConfig.ready`` calls
``device_owners_provide`` with ``devices.mqtt_facts.DEVICE_OWNERS``), through the
``DeviceOwners`` protocol here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Protocol

from accounts.constants import TOKEN_TOUCH_INTERVAL
from accounts.models import Account, Token
from flespi_site.mqtt.policy import TokenFacts


class DeviceOwners(Protocol):
    """Which account owns which device (provided by the devices app, see the module's docstring)."""

    def owners_by_id(self, *, device_ids: list[int]) -> dict[int, int]:
        """Device id -> owning account id, for each of ``device_ids`` that exists."""
        ...

    def idents_of(self, *, regions: list[str], idents: list[str]) -> dict[str, tuple[int, int]]:
        """Ident -> (device id, owning account id), for each of ``idents`` claimed in one of ``regions``."""
        ...

    def sessions_seen(self, *, device_ids: list[int], at: float) -> None:
        """The devices held an MQTT session of their own at ``at`` (unix seconds): they count as
        active then (``last_active``, ``connected``)."""
        ...


class CalculatorOwners(Protocol):
    """Which account owns which calculator (provided by the analytics app, like ``DeviceOwners``)."""

    def owners_by_id(self, *, regions: list[str], calc_ids: list[int]) -> dict[int, int]:
        """Calculator id -> owning account id, for each of ``calc_ids`` in one of ``regions``."""
        ...


_device_owners: DeviceOwners | None = None
_calculator_owners: CalculatorOwners | None = None


def device_owners_provide(owners: DeviceOwners) -> None:
    """Install the devices app's answers (once, when the app registry is ready)."""
    global _device_owners
    _device_owners = owners


def device_owners() -> DeviceOwners:
    if _device_owners is None:
        raise RuntimeError("no app provides the owners of devices: is the devices app installed?")
    return _device_owners


def calculator_owners_provide(owners: CalculatorOwners) -> None:
    """Install the analytics app's answers (once, when the app registry is ready)."""
    global _calculator_owners
    _calculator_owners = owners


def calculator_paths(*, regions: Iterable[str], calc_ids: Iterable[int]) -> dict[int, str]:
    """The account path of each of ``calc_ids`` that exists in one of ``regions``; none when no
    app provides calculators."""
    if _calculator_owners is None:
        return {}
    owners = _calculator_owners.owners_by_id(regions=list(regions), calc_ids=list(calc_ids))
    paths = dict(Account.objects.filter(pk__in=set(owners.values())).values_list("pk", "path"))
    return {calc: paths[account] for calc, account in owners.items() if account in paths}


def token_facts(*, key: str) -> TokenFacts | None:
    """The token whose key is ``key``, with its account's path and region; None when unknown."""
    row = (
        Token.objects.filter(key_hash=hashlib.sha256(key.encode()).hexdigest())
        .values_list("id", "account_id", "account__path", "account__region__code", "enabled", "expire", "ttl",
                     "created", "last_used", "access_type")
        .first()
    )
    return TokenFacts(*row) if row is not None else None


def token_touch(*, token: TokenFacts, now: float | None = None) -> None:
    """Record a use of the token (an MQTT connection counts for its ``ttl``), at most as often as
    REST authentication does."""
    now = time.time() if now is None else now
    touch_every = min(TOKEN_TOUCH_INTERVAL, token.ttl / 10) if token.ttl else TOKEN_TOUCH_INTERVAL
    if token.last_used is None or now - token.last_used >= touch_every:
        Token.objects.filter(pk=token.id).update(last_used=now)


def device_paths(*, device_ids: Iterable[int]) -> dict[int, str]:
    """The account path of each of ``device_ids`` that exists."""
    owners = device_owners().owners_by_id(device_ids=list(device_ids))
    paths = dict(Account.objects.filter(pk__in=set(owners.values())).values_list("pk", "path"))
    return {device: paths[account] for device, account in owners.items() if account in paths}


def device_sessions_seen(*, device_ids: Iterable[int], at: float) -> None:
    """The devices held an MQTT session of their own at ``at`` (``DeviceOwners.sessions_seen``)."""
    device_owners().sessions_seen(device_ids=sorted(device_ids), at=at)


def tokens_facts(*, token_ids: Iterable[int]) -> dict[int, TokenFacts]:
    """The tokens of ``token_ids`` that exist, by id (one query)."""
    rows = Token.objects.filter(pk__in=list(token_ids)).values_list(
        "id", "account_id", "account__path", "account__region__code", "enabled", "expire", "ttl", "created",
        "last_used", "access_type",
    )
    return {row[0]: TokenFacts(*row) for row in rows}


def account_paths(*, account_ids: Iterable[int]) -> dict[int, str]:
    """The path of each of ``account_ids`` that exists."""
    return dict(Account.objects.filter(pk__in=list(account_ids)).values_list("pk", "path"))


def ident_owners(*, regions: Iterable[str], idents: Iterable[str]) -> dict[str, tuple[int, str]]:
    """The device id and account path of the device of each of ``idents`` in one of ``regions``."""
    owners = device_owners().idents_of(regions=list(regions), idents=list(idents))
    paths = dict(Account.objects.filter(pk__in={account for _device, account in owners.values()})
                 .values_list("pk", "path"))
    return {ident: (device, paths[account]) for ident, (device, account) in owners.items() if account in paths}
