"""Reads of the control database that the MQTT access policy decides on: a token by its key,
the account path of devices by id or ident (``DeviceIdent`` is the control database's index of
every device). The embedded broker calls them from its plugins; the Mosquitto sync from its
reconcile."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable

from accounts.constants import TOKEN_TOUCH_INTERVAL
from accounts.models import Account, Token
from devices.models import DeviceIdent
from flespi_site.mqtt.policy import TokenFacts


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
    ids = list(device_ids)
    owners = dict(DeviceIdent.objects.filter(device_id__in=ids).values_list("device_id", "account_id"))
    paths = dict(Account.objects.filter(pk__in=set(owners.values())).values_list("pk", "path"))
    return {device: paths[account] for device, account in owners.items() if account in paths}


def ident_paths(*, regions: Iterable[str], idents: Iterable[str]) -> dict[str, str]:
    """The account path of the device of each of ``idents`` in one of ``regions``."""
    owners = dict(
        DeviceIdent.objects.filter(region__in=list(regions), ident__in=list(idents)).values_list("ident", "account_id")
    )
    paths = dict(Account.objects.filter(pk__in=set(owners.values())).values_list("pk", "path"))
    return {ident: paths[account] for ident, account in owners.items() if account in paths}
