"""Regions, datacenters and the service URLs they use, read from the environment.

This module imports no Django: settings build ``DATABASES`` from it, and the embedded-services
supervisor reads it before Django starts.

The topology comes from, in order of preference:

1. ``FLESPI_TOPOLOGY``: a JSON document (inline);
2. ``FLESPI_TOPOLOGY_FILE``: a path to a JSON file with the same document;
3. the default: region ``eu`` (default, datacenters ``eu-1`` and ``eu-2``) and region ``ru``
   (datacenter ``ru-1``).

Document shape::

    {"default_region": "eu",
     "domain": "localhost",
     "regions": [{"code": "eu", "rest_url": "...", "mqtt_url": "...", "redis_url": "...",
                  "datacenters": [{"code": "eu-1", "number": 1}, {"code": "eu-2", "number": 2}],
                  "default_datacenter": "eu-1"}, ...]}

Every URL is optional: a region's REST URL defaults to ``http://<code>.<domain>:<PORT>`` (the
default region's to ``http://localhost:<PORT>`` on the domain ``localhost``), its MQTT
and Redis URLs to ``MQTT_URL`` / ``REDIS_URL`` (overridable per region with ``MQTT_URL_<CODE>`` /
``REDIS_URL_<CODE>``). A datacenter's database URL is ``DATABASE_URL_<CODE>`` (``eu-1`` reads
``DATABASE_URL_EU_1``), or else ``DATABASE_URL`` with the database name suffixed by the datacenter
code (``flespi`` becomes ``flespi_eu_1``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from urllib.parse import unquote, urlsplit, urlunsplit

# Ids of regional entities are ``sequence * ID_STRIDE + datacenter.number``: unique across every
# datacenter without coordination, and unchanged when an account moves between datacenters.
ID_STRIDE = 1024

DEFAULT_TOPOLOGY = {
    "default_region": "eu",
    "domain": "localhost",
    "regions": [
        {
            "code": "eu",
            "datacenters": [{"code": "eu-1", "number": 1}, {"code": "eu-2", "number": 2}],
            "default_datacenter": "eu-1",
        },
        {
            "code": "ru",
            "datacenters": [{"code": "ru-1", "number": 3}],
            "default_datacenter": "ru-1",
        },
    ],
}

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/flespi"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"

_CODE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class TopologyError(ValueError):
    """The topology configuration is inconsistent; the message says what to fix."""


@dataclass(frozen=True)
class DatacenterConfig:
    code: str
    number: int
    region: str
    database_url: str

    @property
    def alias(self) -> str:
        """The Django database alias of this datacenter."""
        return datacenter_alias(self.code)


@dataclass(frozen=True)
class RegionConfig:
    code: str
    rest_url: str
    mqtt_url: str
    redis_url: str
    default_datacenter: str
    datacenters: tuple[DatacenterConfig, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Topology:
    default_region: str
    domain: str
    control_database_url: str
    regions: tuple[RegionConfig, ...]

    def region(self, code: str) -> RegionConfig:
        for region in self.regions:
            if region.code == code:
                return region
        raise KeyError(code)

    @property
    def datacenters(self) -> tuple[DatacenterConfig, ...]:
        return tuple(dc for region in self.regions for dc in region.datacenters)

    def datacenter(self, code: str) -> DatacenterConfig:
        for dc in self.datacenters:
            if dc.code == code:
                return dc
        raise KeyError(code)


def datacenter_alias(code: str) -> str:
    return "dc_" + code.replace("-", "_")


def _env_suffix(code: str) -> str:
    return code.upper().replace("-", "_")


def _with_database_name(url: str, suffix: str) -> str:
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "flespi"
    return urlunsplit(parts._replace(path=f"/{name}_{suffix}"))


# The schemes each kind of service URL may have, and an example for the error that names it.
URL_KINDS = {
    "database": (("postgres", "postgresql", "pgsql"), "postgres://user:password@host:5432/flespi"),
    "redis": (("redis", "rediss", "unix"), "redis://host:6379/0"),
    "mqtt": (("mqtt", "mqtts", "tcp", "ssl"), "mqtt://host:1883"),
}


def _checked_url(url: str, kind: str, where: str) -> str:
    """``url`` when it is a well-formed URL of ``kind``; else a ``TopologyError`` naming ``where``
    (the variable or document field that gave it) and what it should look like."""
    schemes, example = URL_KINDS[kind]
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number raises here
    except ValueError as exc:
        raise TopologyError(f"{where} is not a valid {kind} URL ({exc}); set it like {example}") from exc
    if parts.scheme not in schemes:
        accepted = ", ".join(scheme + "://" for scheme in schemes)
        raise TopologyError(f"{where} must be a {kind} URL ({accepted}), like {example}; got {url!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise TopologyError(f"{where} names no host; set it like {example}")
    if kind == "database" and not parts.path.strip("/"):
        raise TopologyError(f"{where} names no database; set it like {example}")
    del port
    return url


def load(env: Mapping[str, str] | None = None) -> Topology:
    """Read the topology from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    if env.get("FLESPI_TOPOLOGY"):
        document = _parse_json(env["FLESPI_TOPOLOGY"], "FLESPI_TOPOLOGY")
    elif env.get("FLESPI_TOPOLOGY_FILE"):
        path = env["FLESPI_TOPOLOGY_FILE"]
        try:
            with open(path, encoding="utf-8") as handle:
                document = _parse_json(handle.read(), path)
        except OSError as exc:
            raise TopologyError(f"cannot read FLESPI_TOPOLOGY_FILE {path!r}: {exc}") from exc
    else:
        document = DEFAULT_TOPOLOGY
    return _build(document, env)


def _parse_json(text: str, where: str) -> dict:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TopologyError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise TopologyError(f"{where} must be a JSON object")
    return document


def _optional_text(value, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TopologyError(f"{where} must be a string")
    return value


def _list(value, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TopologyError(f"{where} must be a JSON array")
    return value


def _build(document: dict, env: Mapping[str, str]) -> Topology:
    domain = _optional_text(document.get("domain"), "domain") or env.get("FLESPI_DOMAIN") or "localhost"
    port = env.get("PORT", "8000")
    database_url = _checked_url(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL, "database", "DATABASE_URL")
    redis_url = _checked_url(env.get("REDIS_URL") or DEFAULT_REDIS_URL, "redis", "REDIS_URL")
    mqtt_url = _checked_url(env.get("MQTT_URL") or DEFAULT_MQTT_URL, "mqtt", "MQTT_URL")
    regions: list[RegionConfig] = []
    numbers: dict[int, str] = {}
    dc_codes: set[str] = set()
    for index, raw in enumerate(_list(document.get("regions"), "regions")):
        code = raw.get("code") if isinstance(raw, dict) else None
        if not isinstance(code, str) or not _CODE_RE.match(code):
            raise TopologyError(f"regions[{index}].code must be a lowercase code like 'eu'")
        suffix = _env_suffix(code)
        datacenters = []
        for dc_index, dc in enumerate(_list(raw.get("datacenters"), f"regions[{index}].datacenters")):
            dc_code = dc.get("code") if isinstance(dc, dict) else None
            number = dc.get("number") if isinstance(dc, dict) else None
            where = f"regions[{index}].datacenters[{dc_index}]"
            if not isinstance(dc_code, str) or not _CODE_RE.match(dc_code):
                raise TopologyError(f"{where}.code must be a lowercase code like 'eu-1'")
            # JSON true is not the number 1, though Python's bool is an int.
            if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < ID_STRIDE:
                raise TopologyError(f"{where}.number must be an integer in 1..{ID_STRIDE - 1}")
            if dc_code in dc_codes:
                raise TopologyError(f"{where}.code {dc_code} is already used by another datacenter")
            dc_codes.add(dc_code)
            if number in numbers:
                raise TopologyError(f"{where}.number {number} is already used by {numbers[number]}")
            numbers[number] = dc_code
            variable = f"DATABASE_URL_{_env_suffix(dc_code)}"
            url = _checked_url(env[variable], "database", variable) if env.get(variable) else _with_database_name(
                database_url, _env_suffix(dc_code).lower()
            )
            datacenters.append(DatacenterConfig(dc_code, number, code, url))
        if not datacenters:
            raise TopologyError(f"regions[{index}] ({code}) needs at least one datacenter")
        default_dc = (
            _optional_text(raw.get("default_datacenter"), f"regions[{index}].default_datacenter")
            or datacenters[0].code
        )
        urls = {
            name: _optional_text(raw.get(name), f"regions[{index}].{name}")
            for name in ("rest_url", "mqtt_url", "redis_url")
        }
        if default_dc not in {dc.code for dc in datacenters}:
            raise TopologyError(f"regions[{index}].default_datacenter {default_dc!r} is not one of its datacenters")
        regions.append(
            RegionConfig(
                code=code,
                rest_url=(urls["rest_url"] or env.get(f"REST_URL_{suffix}") or f"http://{code}.{domain}:{port}").rstrip("/"),
                mqtt_url=_region_url(urls["mqtt_url"], f"regions[{index}].mqtt_url", env, f"MQTT_URL_{suffix}", "mqtt")
                or mqtt_url,
                redis_url=_region_url(urls["redis_url"], f"regions[{index}].redis_url", env, f"REDIS_URL_{suffix}", "redis")
                or redis_url,
                default_datacenter=default_dc,
                datacenters=tuple(datacenters),
            )
        )
    if not regions:
        raise TopologyError("the topology needs at least one region")
    codes = [region.code for region in regions]
    if len(set(codes)) != len(codes):
        raise TopologyError(f"region codes must be unique, got {codes}")
    default_region = _optional_text(document.get("default_region"), "default_region") or regions[0].code
    if default_region not in codes:
        raise TopologyError(f"default_region {default_region!r} is not one of {codes}")
    if domain == "localhost":
        # The default region is also the central point, which answers at the bare domain: on a
        # development machine that is "localhost", which every resolver knows, where glibc's and
        # Node's do not resolve "eu.localhost".
        regions = [
            replace(region, rest_url=f"http://localhost:{port}")
            if region.code == default_region and region.rest_url == f"http://{region.code}.localhost:{port}"
            else region
            for region in regions
        ]
    return Topology(default_region, domain, database_url, tuple(regions))


def _region_url(given: str | None, field: str, env: Mapping[str, str], variable: str, kind: str) -> str | None:
    """A region's own URL of ``kind``: from its document ``field``, else ``variable``; None when neither."""
    if given:
        return _checked_url(given, kind, field)
    if env.get(variable):
        return _checked_url(env[variable], kind, variable)
    return None


@cache
def current() -> Topology:
    """The topology of this process, read once."""
    return load()


def database_urls(env: Mapping[str, str]) -> list[str]:
    """The URLs of every database of the topology: control first, then each datacenter."""
    current = load(env)
    return [current.control_database_url, *(dc.database_url for dc in current.datacenters)]


def create_missing_databases(urls: list[str], *, only_port: int | None = None) -> list[str]:
    """Create the databases of ``urls`` that do not exist yet; returns the names created.

    With ``only_port``, only databases on that port of 127.0.0.1 are considered (the embedded
    server; a datacenter given its own external URL is left alone). A user without the right to
    create databases gets psycopg's error: the caller says what to do.
    """
    import psycopg
    from psycopg import sql

    by_server: dict[tuple, list[str]] = {}
    for url in urls:
        parts = urlsplit(url)
        if only_port is not None and (parts.hostname, parts.port) != ("127.0.0.1", only_port):
            continue
        server = (parts.hostname, parts.port or 5432, unquote(parts.username or "postgres"),
                  unquote(parts.password) if parts.password else None)
        by_server.setdefault(server, []).append(unquote(parts.path.lstrip("/")))
    created = []
    for (host, port, user, password), names in by_server.items():
        with psycopg.connect(host=host, port=port, user=user, password=password, dbname="postgres",
                             autocommit=True, connect_timeout=10) as connection:
            existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
            for name in names:
                if name not in existing:
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    created.append(name)
    return created
