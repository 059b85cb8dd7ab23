"""Which region serves a request, once its acting account is known (DESIGN 4, "Routing of
requests").

``regions.middleware.RegionHostMiddleware`` marks each request with the region its host names;
this module decides whether that region may serve it, and raises the redirect to the one that
must. It sits in the API package rather than beside the middleware because the decision reads
accounts (the acting account's region, a selection's region), and ``regions`` imports no app.
"""

from __future__ import annotations

from rest_framework.request import Request

from accounts.models import Account
from flespi_site.api.exceptions import RegionRedirect
from flespi_site.errors import Conflict, ErrorKind
from regions.selectors import region_config, region_is_served

# The region that must serve a request, and the account whose region it is (named in the
# redirect's reason).
Serving = tuple[str, int]


def host_region(request: Request) -> str | None:
    """The region the request's host names (set by the routing middleware)."""
    return getattr(request._request, "host_region", None)


def acting_region(account: Account) -> Serving:
    """By default a request is served in its acting account's region."""
    return account.region.code, account.pk


def region_check(request: Request, account: Account, serving: Serving) -> None:
    """Refuse an acting account whose region left the configuration; redirect a request that
    reached another region than ``serving`` (the central point included) to the one it names."""
    if region_config(code=account.region.code) is None:
        raise Conflict(
            f"account {account.pk} lives in region {account.region.code}, which is not in the platform's "
            "configuration (FLESPI_TOPOLOGY): an operator must add the region back and run "
            "`manage.py platform_setup` before the account can be used",
            kind=ErrorKind.REGION_NOT_CONFIGURED,
        )
    region, account_id = serving
    arrived = host_region(request)
    config = region_config(code=region)
    if arrived is None or arrived == region or config is None:
        return
    url = config.rest_url
    raise RegionRedirect(region=region, url=url, location=url + request.get_full_path(), account_id=account_id)


def region_of_regional_write(request: Request, acting: Serving, data: Serving | None) -> Serving:
    """The region that serves a write of regional data living in ``data``'s region (a subaccount
    delete), which a process that serves one region reaches only in its own. Data of one other
    region is written there (accepted there from an account of this region too) when the request
    arrived there or when this process does not serve that region; otherwise here."""
    if data is None or data[0] == acting[0]:
        return acting
    if data[0] == host_region(request):
        return data
    if region_config(code=data[0]) is not None and not region_is_served(code=data[0]):
        return data
    return acting
