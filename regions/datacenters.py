"""Datacenter databases: the alias of a datacenter this process serves, and entity ids.

Which datacenter holds an account's data is the accounts app's business
(``accounts.placement``); this module knows only datacenters and imports no app.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connections

from flespi_site.errors import Conflict, DomainError
from flespi_site.topology import ID_STRIDE

ENTITY_SEQUENCE = "flespi_entity_id_seq"

class DatacenterNotConfigured(Conflict, LookupError):
    """The datacenter left the configuration (or its database is not configured) while accounts
    still live in it: nothing can reach their data until an operator restores it."""

    code = "datacenter_not_configured"


class DatacenterNotServed(DomainError, LookupError):
    """The datacenter belongs to a region this process does not serve: the request must go to
    that region's REST host."""

    status = 421
    code = "wrong_region"


def alias_for_datacenter(code: str) -> str:
    """The database alias of a datacenter this process serves; a domain error (which is also a
    LookupError) that says what to do for any other."""
    topology = settings.TOPOLOGY
    try:
        config = topology.datacenter(code)
    except KeyError:
        raise DatacenterNotConfigured(
            f"datacenter {code} is not in the platform's configuration (FLESPI_TOPOLOGY); the data of its "
            "accounts is unreachable until an operator adds it back and runs `manage.py platform_setup`",
            datacenter=code,
        ) from None
    if settings.SERVED_REGION and config.region != settings.SERVED_REGION:
        url = topology.region(config.region).rest_url
        raise DatacenterNotServed(
            f"datacenter {code} is in region {config.region}, which this server (region "
            f"{settings.SERVED_REGION}) does not serve: send the request to {url}",
            region=config.region,
            url=url,
        )
    if config.alias not in settings.DATABASES:
        raise DatacenterNotConfigured(
            f"datacenter {code} has no database configured in this process "
            f"(DATABASE_URL_{code.upper().replace('-', '_')}); an operator must configure it",
            datacenter=code,
        )
    return config.alias


def datacenter_number(alias: str) -> int:
    for dc in settings.TOPOLOGY.datacenters:
        if dc.alias == alias:
            return dc.number
    raise LookupError(f"{alias!r} is not a datacenter database")


def allocate_ids(*, alias: str, count: int) -> list[int]:
    """``count`` new entity ids from the datacenter's sequence: ``n * ID_STRIDE + number``."""
    number = datacenter_number(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT nextval('{ENTITY_SEQUENCE}') FROM generate_series(1, %s)", [count]
        )
        return [row[0] * ID_STRIDE + number for row in cursor.fetchall()]


def datacenter_of_id(entity_id: int) -> int:
    """The number of the datacenter where an entity was created (not where it lives now)."""
    return entity_id % ID_STRIDE
