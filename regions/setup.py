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
from urllib.parse import quote

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

from flespi_site.constants import MIGRATE_LOCK
from flespi_site.topology import create_missing_databases
from regions.services import topology_sync

ADMIN_PASSWORD_FILE = "admin-password"


def _lock_connection() -> psycopg.Connection:
    """A connection of its own to the control database, outside Django's (migrations close and
    reopen those), so that the lock lives exactly as long as the setup."""
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"] or None, port=db["PORT"] or None, user=db["USER"] or None, password=db["PASSWORD"] or None,
        dbname=db["NAME"], autocommit=True, connect_timeout=10,
    )


def _holder(connection: psycopg.Connection) -> str:
    row = connection.execute(
        "SELECT a.pid, coalesce(host(a.client_addr), 'local'), a.application_name FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.objid = %s AND l.classid = 0",
        [MIGRATE_LOCK],
    ).fetchone()
    return f"backend pid {row[0]} from {row[1]}" if row else "another session"


def _url(db: dict) -> str:
    user = quote(db["USER"] or "postgres") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{quote(db['NAME'])}"


def databases_create(say: Callable[[str], None]) -> None:
    """Create the databases of the topology that are missing, where the user may; else say what to do."""
    try:
        created = create_missing_databases([_url(db) for db in settings.DATABASES.values()])
    except psycopg.Error as error:
        raise SetupError(
            f"the platform's databases cannot be checked or created ({str(error).strip().splitlines()[0]}): "
            "start PostgreSQL, or create them yourself (" + ", ".join(db["NAME"] for db in settings.DATABASES.values())
            + ") and give DATABASE_URL a user that owns them"
        ) from None
    if created:
        say(f"created databases {', '.join(created)}")


class SetupError(Exception):
    """The setup cannot go on; the message says what to do."""


def platform_setup(*, say: Callable[[str], None], superuser: bool = True) -> None:
    databases_create(say)
    with _lock_connection() as lock:
        if not lock.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK]).fetchone()[0]:
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
    """The superuser ``admin``, unless there is a superuser already."""
    User = get_user_model()
    if User.objects.filter(is_superuser=True).exists():
        return
    given = os.environ.get("ADMIN_PASSWORD")
    password = given or secrets.token_urlsafe(12)
    User.objects.create_superuser(username="admin", email="", password=password)
    if given:
        say("created superuser admin with the password in ADMIN_PASSWORD (/admin/)")
        return
    path = Path(settings.STATE_DIR) / ADMIN_PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    say(f"created superuser admin; its password is in {path} (readable by its owner only; /admin/)")
