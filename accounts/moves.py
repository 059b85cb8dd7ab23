"""Live moves of an account (with its subtree) between the datacenters of its region.

The procedure (docs/regions.md, "Moving an account to another datacenter"):

1. **Prepare.** The move takes the region's move lock (one move per region at a time; a second
   command is refused while it is held), records itself (``AccountMove``, state ``copying``),
   deletes whatever an interrupted earlier attempt left in the target, and switches on the
   source's journal: the triggers the registry names (``accounts.regional_data.JournalTrigger``)
   note in ``move_journal`` every changed range of a device's rows (messages) and every changed
   key (intervals).
2. **Copy**, while the platform serves the account from the source: every table of the registry
   (``accounts.regional_data``) but its logs and derived tables, in copy order, streamed from one
   consistent snapshot of the
   source (``COPY (select) TO STDOUT`` in binary) into one transaction on the target that stays
   open, so that nothing of a partial copy is ever visible there.
3. **Switch**, with the account's writes paused: the move takes the placement guard's locks
   exclusively in the source (``accounts.placement_guard``), reads the source again from a snapshot taken
   under them, and brings the target in step, each table as its ``MoveKind`` says: the small
   tables of entities (devices, calculators, assignments) row by row, the journaled ranges of
   messages, the telemetry of their devices, the journaled intervals, the apps' derived data
   reset (``RegionalData.derived_reset``: message blocks), and the logs (outbox, change log:
   copied only now, renumbered by the target's sequences in their order). It commits the
   target, then flips the accounts' datacenter and the
   placement version in the control database (state ``switched``), then deletes the outbox and
   change-log rows it copied from the source and releases the locks.
4. **Clean up** after a grace period (processes that read placement before the switch keep
   reading the unchanged source meanwhile): delete the accounts' rows from the source, switch off
   its journal, state ``done``.

A move killed at any point leaves the accounts served from the datacenter the control database
names: before the flip the source (the target's copy is rolled back or deleted by the next
attempt), after it the target (the next attempt only cleans the source up). Running the command
again resumes or starts over.

The move names no table of another app: it walks the registry. A caller may pass ``checkpoint``,
called with the name of each point of ``CHECKPOINTS`` as the move reaches it (the tests stop a
real process there and kill it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from django.conf import settings
from django.db import transaction

from accounts import placement
from accounts.choices import MoveState
from accounts.models import Account, AccountMove
from accounts.regional_data import (
    DATACENTER,
    MoveKind,
    RegionalTable,
    regional_registrations,
    regional_tables,
)
from flespi_site.constants import LockSpace, lock_id
from flespi_site.errors import Conflict, DomainError
from regions.datacenters import alias_for_datacenter
from regions.models import Datacenter

# How long the source keeps its rows readable after the switch: longer than any process keeps
# reading a placement it read before (``accounts.placement.RECHECK_SECONDS``) and than a read
# request that started before the switch takes.
# Set ('on') in the target's transaction while the switch copies the logs (``_catch_up``).
MOVE_COPY_SETTING = "platform.move_copy"
GRACE_SECONDS = float(os.environ.get("FLESPI_MOVE_GRACE") or 2.0)
# How long the switch waits for writers that are inside their transaction when it starts.
SWITCH_LOCK_TIMEOUT = "30s"
# The points of a move at which it calls its ``checkpoint``, in their order.
CHECKPOINTS = ("prepared", "copying", "copied", "paused", "committed", "switched", "cleaning")

# Rows of a big table deleted from the source per statement in the clean-up.
DELETE_BATCH = 50_000


class MoveRefused(DomainError):
    """The move cannot be done as asked; nothing was changed."""


class Progress(Protocol):
    def update(self, rows: int, nbytes: int) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int], Progress]
# Called with the name of each point of ``CHECKPOINTS`` the move reaches.
Checkpoint = Callable[[str], None]


def _no_checkpoint(point: str) -> None:
    pass


@dataclass
class MoveReport:
    """What a move did (or, with ``dry_run``, would do)."""

    account_id: int
    source: str
    target: str
    account_ids: list[int]
    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    resumed: bool = False
    copy_seconds: float = 0.0
    pause_seconds: float = 0.0
    cleanup_seconds: float = 0.0


def account_move(
    *,
    account_id: int,
    target: str,
    dry_run: bool = False,
    progress: ProgressFactory | None = None,
    checkpoint: Checkpoint | None = None,
) -> MoveReport:
    """Move account ``account_id`` and the accounts of its subtree that live in the same
    datacenter to datacenter ``target`` of the same region (see the module's docstring).
    ``MoveRefused`` (nothing changed) for another region's datacenter, an unknown one, the one
    the account is in, or while another move runs in the region. ``checkpoint`` is called with
    each point of ``CHECKPOINTS`` the move reaches."""
    reached = checkpoint or _no_checkpoint
    account = Account.objects.select_related("region", "datacenter").filter(pk=account_id).first()
    if account is None:
        raise MoveRefused(f"account {account_id} does not exist", field="account")
    region = account.region
    known = [dc.code for dc in settings.TOPOLOGY.region(region.code).datacenters]
    destination = Datacenter.objects.select_related("region").filter(code=target).first()
    if destination is None or target not in {dc.code for dc in settings.TOPOLOGY.datacenters}:
        raise MoveRefused(
            f"datacenter {target!r} is unknown; account {account.pk} is in region {region.code}, whose "
            f"datacenters are {', '.join(known)}",
            field="to",
        )
    if destination.region_id != region.pk:
        raise MoveRefused(
            f"datacenter {target} is in region {destination.region.code}, account {account.pk} in region "
            f"{region.code}: an account moves only between the datacenters of its region ({', '.join(known)})",
            field="to",
        )
    with _region_lock(region.pk) as held:
        unfinished = AccountMove.objects.select_related("source", "target").filter(region=region).exclude(
            state=MoveState.DONE
        ).first()
        if not held:
            running = f": account {unfinished.account_id} to {unfinished.target.code}" if unfinished else ""
            raise MoveRefused(
                f"a move is running in region {region.code}{running}; one move runs at a time in a region: "
                "wait for it to finish",
                kind=Conflict.kind,
            )
        if unfinished is not None and unfinished.account_id != account.pk:
            raise MoveRefused(
                f"the move of account {unfinished.account_id} to {unfinished.target.code} was interrupted "
                f"({unfinished.state}); finish it first: account_move --account {unfinished.account_id} "
                f"--to {unfinished.target.code}",
                kind=Conflict.kind,
            )
        if unfinished is not None and unfinished.state == MoveState.SWITCHED:
            if unfinished.target.code != target:
                raise MoveRefused(
                    f"account {account.pk} was already switched to {unfinished.target.code} by an interrupted "
                    f"move; finish it: account_move --account {account.pk} --to {unfinished.target.code}",
                    kind=Conflict.kind,
                )
            report = _report(unfinished, dry_run=dry_run)
            report.resumed = True
            if not dry_run:
                _clean_up(unfinished, report, reached)
            return report
        if account.datacenter_id == destination.pk:
            raise MoveRefused(f"account {account.pk} is already in datacenter {target}", field="to")
        subtree = list(
            Account.objects.filter(path__startswith=account.path, region=region).select_related("datacenter")
        )
        astray = [other for other in subtree if other.datacenter_id not in (account.datacenter_id, destination.pk)]
        if astray:
            raise MoveRefused(
                f"account {astray[0].pk} of the subtree is in datacenter {astray[0].datacenter.code}: move it "
                f"to {target} (or to {account.datacenter.code}) first",
                field="account",
            )
        moving = sorted(other.pk for other in subtree if other.datacenter_id == account.datacenter_id)
        source_alias = alias_for_datacenter(account.datacenter.code)
        target_alias = alias_for_datacenter(target)
        if dry_run:
            report = MoveReport(account.pk, account.datacenter.code, target, moving, dry_run=True)
            with _connect(source_alias) as source:
                report.rows = _counts(source, moving)
            return report
        move = unfinished or AccountMove(account=account, region=region)
        move.source, move.target, move.account_ids = account.datacenter, destination, moving
        move.state, move.started = MoveState.COPYING, time.time()
        move.save()
        report = MoveReport(account.pk, account.datacenter.code, target, moving, resumed=unfinished is not None)
        _copy_and_switch(move, source_alias, target_alias, report, progress, reached)
        _clean_up(move, report, reached)
        return report


# --- the steps --------------------------------------------------------------------------------


def _copy_and_switch(
    move: AccountMove,
    source_alias: str,
    target_alias: str,
    report: MoveReport,
    progress: ProgressFactory | None,
    reached: Checkpoint,
) -> None:
    ids = move.account_ids
    tables = _copy_order()
    with _connect(source_alias) as admin, _connect(target_alias) as target:
        _journal_on(admin)
        _delete_rows(target, ids)  # what an interrupted attempt left
        target.commit()
        reached("prepared")
        started = time.monotonic()
        with _connect(source_alias, snapshot=True) as source:
            copied_devices = _device_ids(source, ids)
            copying = False
            for entry in tables:
                if entry.moves in (MoveKind.LOG, MoveKind.DERIVED):
                    continue
                total = _count(source, entry, ids)
                _stream(source, target, entry.select, [ids], f"COPY {entry.table} FROM STDIN (FORMAT binary)",
                        report, entry.table, total, progress)
                if not copying:
                    copying = True
                    reached("copying")
            source.commit()
        # The target's statistics still say its tables are as before the copy: the switch's
        # statements on them would be planned as on small tables.
        for entry in tables:
            target.execute(f"ANALYZE {entry.table}")
        report.copy_seconds = time.monotonic() - started
        reached("copied")
        with _connect(source_alias) as guard, _connect(source_alias, snapshot=True) as source:
            paused = time.monotonic()
            guard.execute(f"SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}'")
            for key in sorted({lock_id(account_id) for account_id in ids}):
                guard.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LockSpace.ACCOUNT_WRITE, key])
            reached("paused")
            copied_logs = _catch_up(source, target, tables, ids, copied_devices, report)
            target.commit()
            reached("committed")
            with transaction.atomic(using="default"):
                Account.objects.filter(pk__in=ids).update(datacenter=move.target)
                placement.placement_bump()
                move.state, move.switched = MoveState.SWITCHED, time.time()
                move.save(update_fields=["state", "switched"])
            placement.forget_all()
            reached("switched")
            for table, log_ids in copied_logs.items():
                guard.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", [log_ids])
            guard.commit()
            report.pause_seconds = time.monotonic() - paused
            source.commit()


def _catch_up(
    source: psycopg.Connection,
    target: psycopg.Connection,
    tables: Sequence[RegionalTable],
    ids: list[int],
    copied_devices: list[int],
    report: MoveReport,
) -> dict[str, list[int]]:
    """Under the switch's locks, from a snapshot taken under them: bring the target in step with
    the source, each table as its ``MoveKind`` says. Returns the ids of the log rows copied (to
    delete from the source)."""
    devices = _device_ids(source, ids)
    for entry in _of_kind(tables, MoveKind.ENTITIES):
        _upsert(source, target, entry, ids, report)
    gone = sorted(set(copied_devices) - set(devices))
    if gone:
        for entry in reversed(tables):  # the deletion order
            if entry.device_column is not None:
                target.execute(f"DELETE FROM {entry.table} WHERE {entry.device_column} = ANY(%s)", [gone])
    ranges = _merged(source.execute(
        "SELECT device_id, begin_ts, end_ts FROM move_journal WHERE begin_ts IS NOT NULL AND device_id = ANY(%s)",
        [devices],
    ).fetchall())
    if ranges:
        for entry in _of_kind(tables, MoveKind.RANGES):
            _recopy(source, target, entry.table, f"{entry.device_column} = {{}} AND {entry.range_column} BETWEEN {{}} AND {{}}",
                    ranges, report)
        changed = sorted({device_id for device_id, _begin, _end in ranges})
        for entry in _of_kind(tables, MoveKind.DEVICE_ROWS):
            target.execute(f"DELETE FROM {entry.table} WHERE {entry.device_column} = ANY(%s)", [changed])
            _stream(source, target, f"SELECT * FROM {entry.table} WHERE {entry.device_column} = ANY(%s)", [changed],
                    f"COPY {entry.table} FROM STDIN (FORMAT binary)", report, entry.table)
    keys = source.execute(
        "SELECT DISTINCT calc_id, device_id, interval_id FROM move_journal WHERE interval_id IS NOT NULL "
        "AND device_id = ANY(%s)",
        [devices],
    ).fetchall()
    if keys:
        for entry in _of_kind(tables, MoveKind.JOURNALED):
            assert entry.journal_key is not None
            condition = " AND ".join(f"{column} = {{}}" for column in entry.journal_key)
            _recopy(source, target, entry.table, condition, keys, report)
    moved_devices = sorted(set(devices) | set(copied_devices))
    for registration in regional_registrations():
        if registration.derived_reset is not None:
            registration.derived_reset(connection=target, device_ids=moved_devices)
    copied: dict[str, list[int]] = {}
    # The logs' rows are copies, not new rows: triggers that act on new rows (an app's feed of
    # its own) can tell them by this setting, until the target's transaction ends.
    target.execute(f"SET LOCAL {MOVE_COPY_SETTING} = 'on'")
    for entry in _of_kind(tables, MoveKind.LOG):
        # Rows the target's own triggers queued for these devices (a deleted assignment clears its
        # retained state) are the source's to publish: its rows come next, in their order.
        target.execute(f"DELETE FROM {entry.table} WHERE {entry.device_column} = ANY(%s)", [moved_devices])
        copied[entry.table] = _ids(
            source, f"SELECT id FROM {entry.table} WHERE {entry.device_column} = ANY(%s) ORDER BY id", [devices]
        )
        columns_of = ", ".join(column for column in _columns(target, entry.table) if column != "id")
        _stream(source, target, f"SELECT {columns_of} FROM {entry.table} WHERE id = ANY(%s) ORDER BY id",
                [copied[entry.table]], f"COPY {entry.table} ({columns_of}) FROM STDIN (FORMAT binary)", report,
                entry.table)
    return copied


def _recopy(source, target, table: str, condition: str, keys: Sequence[tuple[int, int, int]], report: MoveReport) -> None:
    """The rows of ``table`` that ``condition`` (three ``{}`` for the values of a key) selects for
    each key, deleted from the target and copied again from the source. One index scan per key:
    statements of their own, and a LATERAL subquery that OFFSET 0 keeps the planner from turning
    into a hash join over all the account's rows."""
    target.cursor().executemany(f"DELETE FROM {table} WHERE {condition.format('%s', '%s', '%s')}", keys)
    _stream(
        source,
        target,
        f"SELECT t.* FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS k(a, b, c) CROSS JOIN LATERAL "
        f"(SELECT * FROM {table} WHERE {condition.format('k.a', 'k.b', 'k.c')} OFFSET 0) AS t",
        [[key[0] for key in keys], [key[1] for key in keys], [key[2] for key in keys]],
        f"COPY {table} FROM STDIN (FORMAT binary)",
        report,
        table,
    )


def _upsert(source, target, entry: RegionalTable, ids: list[int], report: MoveReport) -> None:
    """The target's rows of ``entry`` made equal to the source's, row by row: a delete and a new
    insert would fire the target's triggers (a deleted assignment takes its intervals along)."""
    stage = f"move_stage_{entry.table}"
    columns = _columns(target, entry.table)
    target.execute(f"CREATE TEMP TABLE {stage} (LIKE {entry.table}) ON COMMIT DROP")
    _stream(source, target, entry.select, [ids], f"COPY {stage} FROM STDIN (FORMAT binary)", report, None)
    target.execute(f"DELETE FROM {entry.table} WHERE {entry.selection} AND id NOT IN (SELECT id FROM {stage})", [ids])
    updates = ", ".join(f'"{column}" = EXCLUDED."{column}"' for column in columns if column != "id")
    target.execute(f"INSERT INTO {entry.table} SELECT * FROM {stage} ON CONFLICT (id) DO UPDATE SET {updates}")


def _clean_up(move: AccountMove, report: MoveReport, reached: Checkpoint) -> None:
    """After the grace period: delete the accounts' rows from the source (the big tables' rows
    per device in batches), switch its journal off, record the move as done."""
    time.sleep(max(0.0, (move.switched or 0.0) + GRACE_SECONDS - time.time()))
    reached("cleaning")
    started = time.monotonic()
    ids = move.account_ids
    with _connect(move.target.alias) as target:
        report.rows = _counts(target, ids)
    with _connect(move.source.alias) as source:
        devices = _device_ids(source, ids)
        source.commit()
        for entry in _of_kind(_copy_order(), MoveKind.RANGES):
            for device_id in devices:
                while True:
                    deleted = source.execute(
                        f"DELETE FROM {entry.table} WHERE {entry.device_column} = %s AND {entry.range_column} IN "
                        f"(SELECT {entry.range_column} FROM {entry.table} WHERE {entry.device_column} = %s LIMIT %s)",
                        [device_id, device_id, DELETE_BATCH],
                    ).rowcount
                    source.commit()
                    if deleted < DELETE_BATCH:
                        break
        _journal_off(source)
        _delete_rows(source, ids)
        source.commit()
    move.state, move.finished, move.tables = MoveState.DONE, time.time(), report.rows
    move.save(update_fields=["state", "finished", "tables"])
    report.cleanup_seconds = time.monotonic() - started


def _report(move: AccountMove, *, dry_run: bool) -> MoveReport:
    return MoveReport(move.account_id, move.source.code, move.target.code, move.account_ids, dry_run=dry_run)


# --- the registry, as the move reads it ------------------------------------------------------


def _copy_order() -> list[RegionalTable]:
    """The datacenter tables of the registry, in copy order (the reverse of deletion order)."""
    return [entry for entry in reversed(regional_tables()) if entry.database == DATACENTER]


def _of_kind(tables: Iterable[RegionalTable], kind: MoveKind) -> list[RegionalTable]:
    return [entry for entry in tables if entry.moves == kind]


def _device_ids(connection: psycopg.Connection, ids: list[int]) -> list[int]:
    """The ids of the accounts' devices (the rows of the registry's entry that holds them)."""
    devices = [entry for entry in _copy_order() if entry.holds_devices]
    if not devices:
        return []
    return _ids(connection, f"SELECT id FROM {devices[0].table} WHERE {devices[0].selection}", [ids])


def _journal_triggers() -> list[tuple[str, str, str]]:
    """(name, table, events) of each trigger that writes the journal; a trigger is named after
    its function."""
    return [(entry.journal.function, entry.journal.table, entry.journal.events)
            for entry in _copy_order() if entry.journal is not None]


# --- SQL helpers ------------------------------------------------------------------------------


@contextmanager
def _region_lock(region_id: int):
    """The region's move lock, held on a connection of its own for as long as the block runs
    (a killed command's lock goes with its connection); yields whether it was taken."""
    with _connect("default", autocommit=True) as connection:
        held = connection.execute("SELECT pg_try_advisory_lock(%s, %s)", [LockSpace.REGION_MOVE, region_id]).fetchone()[0]
        yield held


@contextmanager
def _connect(alias: str, *, snapshot: bool = False, autocommit: bool = False):
    """A connection of its own to database ``alias``; with ``snapshot``, its transaction reads one
    snapshot (repeatable read, read only)."""
    config = settings.DATABASES[alias]
    connection = psycopg.connect(
        dbname=config["NAME"],
        user=config.get("USER") or None,
        password=config.get("PASSWORD") or None,
        host=config.get("HOST") or None,
        port=config.get("PORT") or None,
        autocommit=autocommit,
    )
    if snapshot:
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
    try:
        yield connection
    finally:
        connection.close()


def _ids(connection, sql: str, params: Sequence[Any]) -> list[int]:
    return [row[0] for row in connection.execute(sql, params).fetchall()]


def _columns(connection, table: str) -> list[str]:
    return [row[0] for row in connection.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s "
        "ORDER BY ordinal_position",
        [table],
    ).fetchall()]


def _count(connection, entry: RegionalTable, ids: list[int]) -> int:
    return connection.execute(f"SELECT count(*) FROM ({entry.select}) AS selected", [ids]).fetchone()[0]


def _counts(connection, ids: list[int]) -> dict[str, int]:
    """Rows of the accounts per table of the registry that a move copies, in copy order."""
    return {entry.table: _count(connection, entry, ids) for entry in _copy_order() if entry.moves != MoveKind.DERIVED}


def _stream(
    source,
    target,
    select: str,
    params: Sequence[Any],
    copy_in: str,
    report: MoveReport,
    table: str | None,
    total: int | None = None,
    progress: ProgressFactory | None = None,
) -> None:
    """``COPY (select) TO STDOUT`` on the source streamed into ``copy_in`` on the target, in
    PostgreSQL's binary format; bytes counted in the report under ``table``. Each chunk the
    source sends is one row (the binary header and trailer ride along)."""
    bar = progress(table, total or 0) if progress is not None and table is not None else None
    nbytes, shown, rows = 0, 0, 0
    with (
        source.cursor().copy(f"COPY ({select}) TO STDOUT (FORMAT binary)", params) as out,
        target.cursor().copy(copy_in) as into,
    ):
        for data in out:
            into.write(data)
            nbytes += len(data)
            rows += 1
            if bar is not None and rows % 2000 == 0:
                bar.update(2000, nbytes - shown)
                shown = nbytes
    if bar is not None:
        bar.update(max(0, (total or rows) - rows // 2000 * 2000), nbytes - shown)
        bar.close()
    if table is not None:
        report.bytes[table] = report.bytes.get(table, 0) + nbytes


def _delete_rows(connection, ids: list[int]) -> None:
    """Delete every row of the accounts from one datacenter database, in the registry's order
    (``accounts.regional_data``), in the connection's transaction."""
    for entry in regional_tables():
        if entry.database == DATACENTER:
            connection.execute(f"DELETE FROM {entry.table} WHERE {entry.selection}", [ids])


def _journal_on(connection) -> None:
    connection.execute("TRUNCATE move_journal")
    for name, table, events in _journal_triggers():
        connection.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        connection.execute(f"CREATE TRIGGER {name} {events} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
    connection.commit()


def _journal_off(connection) -> None:
    for name, table, _events in _journal_triggers():
        connection.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    connection.execute("TRUNCATE move_journal")


def _merged(ranges: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Per device, the union of the ranges as ranges that do not overlap."""
    out: list[tuple[int, int, int]] = []
    for device_id, begin, end in sorted(ranges):
        if out and out[-1][0] == device_id and begin <= out[-1][2]:
            out[-1] = (device_id, out[-1][1], max(out[-1][2], end))
        else:
            out.append((device_id, begin, end))
    return out

