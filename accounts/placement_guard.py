"""The placement guard of a move between datacenters: every write of an account's regional data runs
``placement_guard`` inside its transaction on the datacenter database, before it commits.

The guard takes a shared PostgreSQL advisory lock per account (transaction-scoped) and then
checks, against the control database, that the account's data still lives in this database.
A move (``accounts.moves``) takes the same locks exclusively in the source database for its
final switch: writers that came before it commit first (the move then copies what they wrote),
writers that come during it wait, and when the move releases the locks the switch is committed
in the control database, so they find the account gone and raise ``AccountMoved`` (their
transaction rolls back; the caller writes again where the account lives now). A writer waits at
most ``WAIT_SECONDS``; beyond that it gets ``AccountMoving``, a 503 with ``Retry-After``. Nothing
a writer was told it stored is lost, and nothing is written where it would be left behind.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import OperationalError, connections
from psycopg import errors as pg_errors

from accounts import placement
from flespi_site.constants import LockSpace, lock_id
from flespi_site.errors import DomainError, ErrorKind

# How long a writer waits for a move's switch before it gets a 503.
WAIT_SECONDS = 30.0
RETRY_AFTER_SECONDS = 1


class AccountMoving(DomainError):
    """A move's switch held the account's writes for longer than a writer waits: send again."""

    status = 503
    kind = ErrorKind.ACCOUNT_MOVING

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


class AccountMoved(AccountMoving):
    """The account's data moved to another datacenter after this writer read where it was."""


_TRY = "SELECT bool_and(pg_try_advisory_xact_lock_shared(%s, k)) FROM unnest(%s::int[]) AS k"


def placement_guard(*, alias: str, account_ids: Iterable[int]) -> None:
    """Inside the caller's transaction on ``alias``: wait out a move's switch of these accounts and
    make sure their data is still here (``AccountMoved`` otherwise)."""
    ids = sorted(set(account_ids))
    if not ids:
        return
    keys = sorted({lock_id(account_id) for account_id in ids})
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise RuntimeError("placement_guard runs in the writer's transaction (transaction.atomic)")
    with connection.cursor() as cursor:
        cursor.execute(_TRY, [LockSpace.ACCOUNT_WRITE, keys])
        if not cursor.fetchone()[0]:
            _wait(cursor, keys)
    moved = placement.accounts_elsewhere(alias=alias, account_ids=ids)
    if moved:
        for account_id in moved:
            placement.forget_account(account_id)
        raise AccountMoved(
            f"account {moved[0]} moved to another datacenter while this write was on its way; it was not "
            "stored: send it again",
            id=moved[0],
        )


def _wait(cursor, keys: list[int]) -> None:
    cursor.execute("SELECT current_setting('lock_timeout')")
    before = cursor.fetchone()[0]
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(WAIT_SECONDS * 1000)}ms"])
    try:
        for key in keys:
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", [LockSpace.ACCOUNT_WRITE, key])
    except OperationalError as exc:
        if not isinstance(exc.__cause__, pg_errors.LockNotAvailable):
            raise
        raise AccountMoving(
            f"the account is being moved to another datacenter and its writes are paused for longer than "
            f"{WAIT_SECONDS:.0f} s; nothing was stored: send it again in {RETRY_AFTER_SECONDS} s"
        ) from None
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [before])
