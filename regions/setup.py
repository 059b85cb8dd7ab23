"""``flespi migrate`` (``manage.py platform_setup``): what a deployment runs once per release,
before the new processes start (docs/operations.md, "Upgrade").

Several hosts may run it at once (a job per host, a restart loop): a session-level advisory lock
in the control database lets one migrate while the others wait for it and then find nothing left
to do. Migrations run on the control database and on every datacenter database of the topology.

The first superuser's password is never logged: it is ``ADMIN_PASSWORD`` when set, else generated
and written to ``<FLESPI_STATE_DIR>/admin-password`` (mode 600, its owner only).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections
from psycopg import sql

from flespi_site.constants import MIGRATE_LOCK
from regions.services import topology_sync

ADMIN_PASSWORD_FILE = "admin-password"


def _connect(alias: str, **overrides) -> psycopg.Connection:
    """A connection of its own to database ``alias`` (``dbname`` may be overridden), with
    everything Django's settings give it (password, SSL options), outside Django's connections
    (migrations close and reopen those)."""
    params = {**connections[alias].get_connection_params(), "connect_timeout": 10, **overrides}
    params.pop("cursor_factory", None)  # Django's own; a plain psycopg connection takes the default
    params.pop("context", None)
    return psycopg.connect(autocommit=True, **params)


def _lock_connection() -> psycopg.Connection:
    """The control database, for the migration lock: it lives exactly as long as the setup."""
    return _connect("default")


def _holder(connection: psycopg.Connection) -> str:
    row = connection.execute(
        "SELECT a.pid, coalesce(host(a.client_addr), 'local'), a.application_name FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.objid = %s AND l.classid = 0",
        [MIGRATE_LOCK],
    ).fetchone()
    return f"backend pid {row[0]} from {row[1]}" if row else "another session"


def databases_create(say: Callable[[str], None]) -> None:
    """Create the databases of the topology that are missing, where the user may; else say what to
    do. Each is tried first (a managed server may refuse connections to its maintenance database);
    one that another host created meanwhile counts as there."""
    for alias, db in settings.DATABASES.items():
        try:
            _connect(alias).close()
            continue
        except psycopg.OperationalError as error:
            if f'database "{db["NAME"]}" does not exist' not in str(error):
                raise SetupError(f"database {db['NAME']} cannot be reached ({_first_line(error)}): start PostgreSQL, "
                                 f"or correct its URL (DATABASE_URL, DATABASE_URL_<DATACENTER>)") from None
        try:
            with _connect(alias, dbname="postgres") as server:
                server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
        except psycopg.errors.DuplicateDatabase:
            continue  # another migration created it
        except psycopg.Error as error:
            raise SetupError(f"database {db['NAME']} does not exist and cannot be created ({_first_line(error)}): "
                             "create it yourself and give its URL a user that owns it") from None
        say(f"created database {db['NAME']}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class SetupError(Exception):
    """The setup cannot go on; the message says what to do."""


def platform_setup(*, say: Callable[[str], None], superuser: bool = True) -> None:
    databases_create(say)
    with _lock_connection() as lock:
        taken = lock.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK]).fetchone()
        if not (taken and taken[0]):
            say(f"waiting for another migration to finish ({_holder(lock)})")
            began = time.monotonic()
            lock.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK])
            say(f"the other migration finished after {time.monotonic() - began:.1f} s")
        aliases = list(settings.DATABASES)
        for number, alias in enumerate(aliases, start=1):
            say(f"[{number}/{len(aliases)}] migrating database {alias}")
            call_command("migrate", database=alias, interactive=False, verbosity=0)
        regions, datacenters = topology_sync()
        say(f"topology: {regions} regions, {datacenters} datacenters")
        if superuser:
            superuser_create(say)


def superuser_create(say: Callable[[str], None]) -> None:
    """The superuser ``admin``, unless there is a superuser already. A generated password is
    written to its file before the user exists, so that no crash in between can lose it."""
    User = get_user_model()
    if User.objects.filter(is_superuser=True).exists():
        return
    given = settings.ADMIN_PASSWORD
    password = given or secrets.token_urlsafe(12)
    path = Path(settings.STATE_DIR) / ADMIN_PASSWORD_FILE
    if not given:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(f".{ADMIN_PASSWORD_FILE}.new")
        fresh.unlink(missing_ok=True)
        descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
        fresh.replace(path)
    User.objects.create_superuser(username="admin", email="", password=password)
    if given:
        say("created superuser admin with the password in ADMIN_PASSWORD (/admin/)")
    else:
        say(f"created superuser admin; its password is in {path} (readable by its owner only; /admin/)")
