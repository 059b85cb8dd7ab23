"""What a role checks of its environment before it starts, so that a misconfigured process stops
at once with one line saying what to set, never with a traceback or later in its work
(docs/deployment.md, "Configuration errors").

``problems`` reads only settings and the file system (no database, no broker: a service that is
down is not a configuration error, and every role waits for it and says so on its readiness
endpoint). It is called by ``flespi <role>`` (``flespi_site.cli``) and by the WSGI application
before they do anything else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.conf import settings

from flespi_site import topology

# Roles that keep files: the setting and the variable that say where, and what for.
_WRITABLE = {
    "calc": ("CALC_DATA_DIR", "CALC_DATA_DIR", "the calc worker's shard caches"),
    "broker": ("STATE_DIR", "FLESPI_STATE_DIR", "the broker's sessions and retained messages"),
}
# The services each role talks to, beyond the databases (a role not named here: both).
_SERVICES = {
    "migrate": (),
    "calc": ("redis",),
    "pump": ("redis",),
    "broker": ("mqtt",),
    "webhooks": (),
}


def _writable(path: str) -> str | None:
    """Why ``path`` is not a directory this process can write into (created if missing), or None."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".writable-"):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def problems(role: str, *, production: bool) -> list[str]:
    """What keeps ``role`` from starting, one line each saying what to set. ``production``: the
    process was started as a role of a deployment (``flespi``), where no service URL has a default."""
    found = []
    if not settings.DEBUG and not settings.SECRET_KEY_GIVEN:
        found.append(
            "SECRET_KEY is not set: set it to a long random secret, the same on every web host "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(50))'), or DEBUG=1 for development"
        )
    codes = [region.code for region in settings.TOPOLOGY.regions]
    if settings.SERVED_REGION and settings.SERVED_REGION not in codes:
        found.append(f"REGION={settings.SERVED_REGION} is not a region of the topology; set one of {', '.join(codes)}")
    if production:
        found.extend(_missing_urls(_SERVICES.get(role, ("redis", "mqtt"))))
    if role == "broker" and not settings.MQTT_PLATFORM_PASSWORD:
        found.append("MQTT_PLATFORM_PASSWORD is not set: set a long random secret, the same for the broker and "
                     "every process of the platform (its relay and ingest log in with it)")
    for name, path, what in (("METRICS_DIR", settings.METRICS_DIR, "the process's metrics"),
                             *((variable, str(getattr(settings, setting)), what)
                               for key, (setting, variable, what) in _WRITABLE.items() if key == role)):
        if (why := _writable(path)) is not None:
            found.append(f"{name}={path} is not a writable directory ({why}): set {name} to a directory "
                         f"of this host that this user ({_user()}) may write, for {what}")
    return found


def _missing_urls(services: tuple[str, ...]) -> list[str]:
    """The service URLs a deployment must give (the databases', and those of ``services``): a role
    never falls back to localhost there."""
    env = os.environ
    found = []
    if not env.get("DATABASE_URL"):
        found.append(f"DATABASE_URL is not set: set it to the control database, like {topology.URL_KINDS['database'][1]}")
    codes = [region.code for region in settings.TOPOLOGY.regions]
    served = [settings.SERVED_REGION] if settings.SERVED_REGION in codes else codes
    defaults = {"redis": topology.DEFAULT_REDIS_URL, "mqtt": topology.DEFAULT_MQTT_URL}
    for kind, default in ((kind, defaults[kind]) for kind in services):
        variable = f"{kind.upper()}_URL"
        missing = [code for code in served
                   if getattr(settings.TOPOLOGY.region(code), f"{kind}_url") == default
                   and not env.get(variable) and not env.get(f"{variable}_{code.upper()}")]
        if missing:
            found.append(f"{variable} is not set: set the {kind} server, like {topology.URL_KINDS[kind][1]} "
                         f"(or {', '.join(f'{variable}_{code.upper()}' for code in missing)} per region)")
    return found


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())
