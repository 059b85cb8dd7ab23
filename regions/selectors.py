"""Reads of regions and hosts."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from django.conf import settings

from flespi_site.topology import DatacenterConfig, RegionConfig


def region_config(*, code: str) -> RegionConfig | None:
    """The configuration of a region, or None when the region left the configuration (its rows
    stay while accounts still point at it)."""
    try:
        return settings.TOPOLOGY.region(code)
    except KeyError:
        return None


def region_is_served(*, code: str) -> bool:
    """Whether this process serves the region (a configured one: every region when it serves all)."""
    if region_config(code=code) is None:
        return False
    return not settings.SERVED_REGION or code == settings.SERVED_REGION


def region_for_host(*, host: str) -> tuple[str, bool]:
    """The region a request host names, and whether it is the central point.

    ``eu.<domain>`` names region ``eu``; any other host (``<domain>`` itself, an IP address) is the
    central point, an alias of the default region. The port is ignored.
    """
    topology = settings.TOPOLOGY
    if settings.SERVED_REGION:
        # A process that serves one region is that region whatever the host says: taking a host
        # that names another region at its word would serve that region's accounts here, where
        # their data is out of reach.
        return settings.SERVED_REGION, False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    suffix = "." + topology.domain
    if name.endswith(suffix):
        code = name[: -len(suffix)]
        if code in {region.code for region in topology.regions}:
            return code, False
    return topology.default_region, True


def mqtt_address(url: str) -> str:
    """``host:port`` of an MQTT URL, as flespi advertises its broker (``mqtt.flespi.io:8883``)."""
    parts = urlsplit(url)
    port = parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def regions_list() -> list[dict]:
    """The regions with flespi's keys (``region``, ``rest``, ``mqtt`` as ``host:port``,
    ``mqtt-ws``: the region's MQTT over WebSocket, ``MQTT_WS_URL[_<REGION>]``, or null) and the
    platform's (``code``, ``default``, ``mqtt_url`` with its scheme, ``datacenters``)."""
    topology = settings.TOPOLOGY
    websockets = getattr(settings, "MQTT_WS_URLS", {})
    return [
        {
            "region": region.code,
            "code": region.code,
            "default": region.code == topology.default_region,
            "rest": region.rest_url,
            "mqtt": mqtt_address(region.mqtt_url),
            "mqtt-ws": websockets.get(region.code),
            "mqtt_url": region.mqtt_url,
            "datacenters": [dc.code for dc in region.datacenters],
        }
        for region in topology.regions
    ]


def served_datacenters(*, codes: list[str] | None = None) -> Iterator[tuple[RegionConfig, DatacenterConfig]]:
    """The datacenters this process serves: the given codes, or every one of the served
    region (all regions when the process serves all)."""
    for region in settings.TOPOLOGY.regions:
        if settings.SERVED_REGION and region.code != settings.SERVED_REGION:
            continue
        for dc in region.datacenters:
            if not codes or dc.code in codes:
                yield region, dc
