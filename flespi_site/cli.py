"""``flespi``: the one command of a deployment (the console script of ``pip install .``, the
entry point of the container image; docs/deployment.md, "Roles").

    flespi web                      the REST API, the admin and /metrics, under gunicorn on $PORT
    flespi migrate                  migrations of every database under a lock, the topology, the first admin
    flespi relay | ingest | purge | webhooks
    flespi broker [--region R]      a region's MQTT broker (TCP and WebSocket)
    flespi pump [--region R]        a region's pump (REGION by default)
    flespi calc [--region R] [--name N]
    flespi probe URL                exit 0 when URL answers 200 (health checks; the image has no curl)
    flespi <command> [args]         any management command (flespi account_create --name X --token)

Before anything else a role checks its environment (``flespi_site.preflight``) and stops with one
line per problem, saying what to set, and status 2: never a traceback.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

USAGE_EXIT = 2


@dataclass(frozen=True)
class Role:
    """A long-running (or one-off) process of the platform and the management command it runs."""

    command: tuple[str, ...]
    what: str
    regional: bool = False  # takes ``--region``, by default REGION


ROLES: dict[str, Role] = {
    "migrate": Role(("platform_setup",), "migrate every database (under a lock), mirror the topology, first admin"),
    "relay": Role(("outbox_relay",), "publish every datacenter's outbox to the brokers"),
    "webhooks": Role(("webhook_delivery",), "deliver every datacenter's webhook events to their receivers"),
    "ingest": Role(("mqtt_ingest",), "store the messages devices publish to the brokers"),
    "purge": Role(("purge_messages", "--every", "3600"), "delete messages past each device's messages_ttl, hourly"),
    "broker": Role(("mqtt_broker",), "a region's MQTT broker, MQTT over TCP and WebSocket", regional=True),
    "pump": Role(("calc_pump",), "a region's due timers, reconciliation, purges, sealer, vacuum", regional=True),
    "calc": Role(("calc_worker",), "a calc worker of a region (a stable --name per host and slot)", regional=True),
}


def web_argv(env: os._Environ[str] | dict[str, str]) -> list[str]:
    """gunicorn serving the platform on ``PORT`` with ``WEB_WORKERS`` processes of ``WEB_THREADS``
    threads (docs/deployment.md, "Roles")."""
    return [
        sys.executable, "-m", "gunicorn", "flespi_site.wsgi:application",
        "--bind", f"0.0.0.0:{env.get('PORT') or '8000'}",
        "--workers", env.get("WEB_WORKERS") or "2",
        "--threads", env.get("WEB_THREADS") or "4",
        "--graceful-timeout", "10",
        "--access-logfile", "-",
        # gunicorn's largest request line (default 4094): room for a selector of many ids
        "--limit-request-line", "8190",
        # the default control socket is one path per user: two installations on a host would collide
        "--no-control-socket",
        # the addresses whose X-Forwarded-* headers are believed (the TLS proxy's)
        "--forwarded-allow-ips", env.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1",
    ]


def usage() -> str:
    lines = ["usage: flespi <role> [args] | flespi probe URL [SECONDS] | flespi <management command> [args]", "",
             "roles (docs/deployment.md):",
             "    web        the REST API, the admin and /metrics, under gunicorn on $PORT"]
    lines += [f"    {name:<10} {role.what}" + (" (--region R, or REGION)" if role.regional else "")
              for name, role in ROLES.items()]
    lines += ["", "`flespi help --commands` lists the management commands (flespi account_create --name X --token)."]
    return "\n".join(lines)


def probe(args: Sequence[str]) -> int:
    """``flespi probe URL [SECONDS]``: 0 when ``URL`` answers 200 within ``SECONDS`` (3), else 1."""
    if not args:
        print("flespi probe: name a URL, like http://127.0.0.1:8000/health/ready", file=sys.stderr)
        return USAGE_EXIT
    url = args[0]
    try:
        timeout = float(args[1]) if len(args) > 1 else 3.0
    except ValueError:
        print(f"flespi probe: {args[1]!r} is not a number of seconds", file=sys.stderr)
        return USAGE_EXIT
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        print(f"flespi probe: {url} answered {error.code}: {error.read(300).decode(errors='replace')}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"flespi probe: {url}: {getattr(error, 'reason', None) or error}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


def configuration_problems(role: str) -> list[str]:
    """The environment's problems for ``role`` (``flespi_site.preflight``), also those that stop
    the settings from loading at all (a malformed URL, a broken topology)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flespi_site.settings")
    from django.core.exceptions import ImproperlyConfigured

    from flespi_site.topology import TopologyError

    try:
        from flespi_site import preflight

        return preflight.problems(role, production=True)
    except (TopologyError, ImproperlyConfigured) as error:
        return [str(error)]


def _region_argument(args: Sequence[str]) -> str | None:
    """The value of ``--region R`` or ``--region=R`` in ``args``, if any."""
    for index, arg in enumerate(args):
        if arg.startswith("--region="):
            return arg.partition("=")[2]
        if arg == "--region" and index + 1 < len(args):
            return args[index + 1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args == ["help"]:
        print(usage())
        return 0 if args else USAGE_EXIT
    name, rest = args[0], args[1:]
    if name == "probe":
        return probe(rest)
    role = ROLES.get(name)
    if role and role.regional and (region := _region_argument(rest)) is not None:
        # the region named on the command line is the one this process serves
        if os.environ.get("REGION", region) != region:
            print(f"flespi {name}: --region {region} but REGION={os.environ['REGION']}: name one region",
                  file=sys.stderr)
            return USAGE_EXIT
        os.environ["REGION"] = region
    if name != "help" and (problems := configuration_problems(name)):
        for problem in problems:
            print(f"flespi {name}: {problem}", file=sys.stderr)
        return USAGE_EXIT
    if name == "web":
        argv_web = web_argv(os.environ) + rest
        os.execv(argv_web[0], argv_web)
    command = list(role.command) if role else [name]
    if role and role.regional and _region_argument(rest) is None:
        if not os.environ.get("REGION"):
            print(f"flespi {name}: name the region: --region <code>, or set REGION", file=sys.stderr)
            return USAGE_EXIT
        command += ["--region", os.environ["REGION"]]
    from django.core.management import execute_from_command_line

    execute_from_command_line(["flespi", *command, *rest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
