"""Writes of accounts and tokens."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from accounts import placement
from accounts.choices import AccessType
from accounts.constants import MAX_ACCOUNT_DEPTH, TOKEN_KEY_BYTES, TOKEN_PREFIX_LENGTH, TOKEN_TOUCH_INTERVAL
from accounts.models import Account, Token
from accounts.regional_data import regional_data_delete
from flespi_site.errors import Conflict, ErrorKind, InvalidInput, NotFound, Unauthorized
from flespi_site.mqtt.policy import token_refusal
from flespi_site.updates import locked_row, save_fields
from regions.datacenters import alias_for_datacenter
from regions.models import Datacenter, Region
from regions.selectors import region_config


def _default_region() -> Region:
    region = Region.objects.filter(is_default=True).first()
    if region is None:
        raise InvalidInput("no default region is configured: run `python manage.py platform_setup`")
    return region


def _configured_region(region: Region, *, field: str) -> Region:
    """``region``, which must still be in the configuration: its rows outlive it, and an account
    placed there could never reach its data."""
    if region_config(code=region.code) is None:
        raise Conflict(
            f"region {region.code} is not in the platform's configuration (FLESPI_TOPOLOGY): no account "
            "can be placed there until an operator adds it back and runs `manage.py platform_setup`",
            kind=ErrorKind.REGION_NOT_CONFIGURED,
            field=field,
        )
    return region


def _datacenter_in(region: Region, code: str | None) -> Datacenter:
    configured = {dc.code for dc in settings.TOPOLOGY.datacenters}
    if code is None:
        datacenter = region.datacenters.filter(is_default=True).first() or region.datacenters.first()
        if datacenter is None or datacenter.code not in configured:
            raise InvalidInput(
                f"region {region.code} has no default datacenter: run `manage.py platform_setup`", field="datacenter"
            )
        return datacenter
    datacenter = Datacenter.objects.filter(code=code).select_related("region").first()
    if datacenter is None or code not in configured:
        codes = ", ".join(dc.code for dc in settings.TOPOLOGY.region(region.code).datacenters)
        raise InvalidInput(f"unknown datacenter {code!r}; datacenters of region {region.code}: {codes}", field="datacenter")
    if datacenter.region_id != region.id:
        raise InvalidInput(
            f"datacenter {code} is in region {datacenter.region.code}, not in {region.code}", field="datacenter"
        )
    return datacenter


def account_placement(
    *, parent: Account | None, region_code: str | None = None, datacenter_code: str | None = None
) -> tuple[Region, Datacenter, int]:
    """The region, datacenter and depth of a new account under ``parent``, by the rules: only a
    first-level subaccount may choose its region (default: the parent's); a root account lives in
    the default region and deeper accounts inherit. Raises InvalidInput naming the broken rule."""
    if parent is None:
        region = _default_region()
        if region_code is not None and region_code != region.code:
            raise InvalidInput(
                f"a root account lives in the default region {region.code}; "
                "choose a region when creating a first-level subaccount",
                field="region",
            )
        depth = 0
    else:
        depth = parent.depth + 1
        if depth > MAX_ACCOUNT_DEPTH:
            raise InvalidInput(
                f"account {parent.pk} is at the deepest level ({MAX_ACCOUNT_DEPTH} below the root) "
                "and cannot have subaccounts",
                field="parent_id",
            )
        if depth == 1 and region_code is not None:
            chosen = Region.objects.filter(code=region_code).first()
            if chosen is None or region_config(code=region_code) is None:
                codes = ", ".join(config.code for config in settings.TOPOLOGY.regions)
                raise InvalidInput(f"unknown region {region_code!r}; regions: {codes}", field="region")
            region = chosen
        else:
            region = _configured_region(parent.region, field="parent_id")
            if region_code is not None and region_code != region.code:
                raise InvalidInput(
                    f"only a first-level subaccount chooses its region; this one inherits "
                    f"{region.code} from account {parent.pk}",
                    field="region",
                )
    return region, _datacenter_in(region, datacenter_code), depth


@transaction.atomic
def account_create(
    *,
    name: str,
    parent: Account | None = None,
    region_code: str | None = None,
    datacenter_code: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Account:
    """Create an account placed by ``account_placement``."""
    region, datacenter, depth = account_placement(
        parent=parent, region_code=region_code, datacenter_code=datacenter_code
    )
    account = Account.objects.create(
        name=name, parent=parent, region=region, datacenter=datacenter, depth=depth, metadata=metadata or {}
    )
    account.path = f"{parent.path if parent else ''}{account.pk}/"
    account.save(update_fields=["path"])
    return account


def account_update(*, account: Account, data: dict[str, Any]) -> Account:
    """Update ``name`` and ``metadata`` (``flespi_site.updates``: an account deleted meanwhile is
    a 404). The region and the place in the tree never change."""
    with locked_row(Account, pk=account.pk, using="default", name="account") as fresh:
        if "region" in data and data["region"] != fresh.region.code:
            raise InvalidInput(
                f"the region of account {fresh.pk} is {fresh.region.code} and can never change",
                field="region",
            )
        if "datacenter" in data and data["datacenter"] != fresh.datacenter.code:
            raise InvalidInput(
                "an account moves between datacenters only by the operator's move command, not through the API",
                field="datacenter",
            )
        if "parent_id" in data and data["parent_id"] != fresh.parent_id:
            raise InvalidInput(f"account {fresh.pk} cannot move in the account tree", field="parent_id")
        return save_fields(fresh, {name: data[name] for name in ("name", "metadata") if name in data}, name="account")


def account_delete(*, account: Account) -> None:
    """Delete an account, its subaccounts and their tokens and regional data; an account already
    gone is a 404. The account stays locked until its rows are gone, so that concurrent deletes
    and updates of it wait and then find nothing."""
    with locked_row(Account, pk=account.pk, using="default", name="account") as fresh:
        accounts_delete(accounts=[fresh])


def accounts_delete(*, accounts: Iterable[Account]) -> None:
    """Delete accounts with their subtrees: every row of the registry of regional data
    (``accounts.regional_data``) in each datacenter, the ident claims, the tokens and the
    accounts. An account inside the subtree of another one is deleted with it."""
    paths = sorted({account.path for account in accounts})
    roots = [path for position, path in enumerate(paths) if not any(path.startswith(earlier) for earlier in paths[:position])]
    if not roots:
        return
    within = Q()
    for path in roots:
        within |= Q(path__startswith=path)
    subtree = list(Account.objects.filter(within).values_list("pk", "datacenter__code"))
    by_alias: dict[str, list[int]] = {}
    for pk, code in subtree:
        by_alias.setdefault(alias_for_datacenter(code), []).append(pk)
    regional_data_delete(account_ids_by_alias=by_alias)
    Account.objects.filter(path__in=roots).delete()
    for pk, _code in subtree:
        placement.forget_account(pk)


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(
    *,
    account: Account,
    info: str = "",
    enabled: bool = True,
    expire: int = 0,
    ttl: int = 0,
    access_type: int = AccessType.STANDARD,
) -> tuple[Token, str]:
    """Create a token; returns it and its key, which is not stored and cannot be shown again."""
    key = secrets.token_urlsafe(TOKEN_KEY_BYTES)
    token = Token.objects.create(
        account=account,
        key_hash=_hash_key(key),
        key_prefix=key[:TOKEN_PREFIX_LENGTH],
        info=info,
        enabled=enabled,
        expire=expire,
        ttl=ttl,
        access_type=access_type,
        created=time.time(),
    )
    return token, key


def token_update(*, token: Token, data: dict[str, Any]) -> Token:
    """Update the named fields of a token (``flespi_site.updates``: a token deleted meanwhile is a
    404)."""
    with locked_row(Token, pk=token.pk, using="default", name="token") as fresh:
        changes = {name: data[name] for name in ("info", "enabled", "expire", "ttl", "access_type") if name in data}
        if "ttl" in data:
            # A new ttl counts from now, not from a use long ago.
            changes["last_used"] = time.time()
        token = save_fields(fresh, changes, name="token")
        return token


def token_delete(*, token: Token) -> None:
    """Delete a token; a token already gone is a 404."""
    with locked_row(Token, pk=token.pk, using="default", name="token") as fresh:
        fresh.delete()


def token_authenticate(*, key: str, now: float | None = None) -> Token:
    """The enabled, unexpired token with this key; records the use (for ``ttl``)."""
    now = time.time() if now is None else now
    token = Token.objects.select_related("account", "account__region").filter(key_hash=_hash_key(key)).first()
    if token is None:
        raise Unauthorized("unknown token")
    problem = token_refusal(
        token_id=token.pk, enabled=token.enabled, expire=token.expire, ttl=token.ttl,
        created=token.created, last_used=token.last_used, now=now,
    )
    if problem:
        raise Unauthorized(problem)
    touch_every = min(TOKEN_TOUCH_INTERVAL, token.ttl / 10) if token.ttl else TOKEN_TOUCH_INTERVAL
    if token.last_used is None or now - token.last_used >= touch_every:
        Token.objects.filter(pk=token.pk).update(last_used=now)
        token.last_used = now
    return token


def acting_account(*, token: Token, cid: str | None) -> Account:
    """The account a request acts for: the token's, or the descendant named by ``x-flespi-cid``.
    Any other id does not exist for this token."""
    if cid is None or cid.strip() == "":
        return token.account
    # Plain ASCII digits only: int() would also read "1_2" and other scripts' digits as an id.
    text = cid.strip().removeprefix("-")
    if not (text.isascii() and text.isdigit()):
        raise NotFound(f"x-flespi-cid {cid!r} is not an account id", kind=ErrorKind.ACCOUNT_NOT_FOUND)
    account_id = int(cid)
    if account_id == token.account_id:
        return token.account
    account = Account.objects.select_related("region").filter(pk=account_id).first()
    if account is None or not account.is_descendant_of(token.account):
        raise NotFound(f"account {account_id} not found", kind=ErrorKind.ACCOUNT_NOT_FOUND)
    return account
