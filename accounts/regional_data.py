"""One registry of the regional data an account owns, gathered from the apps' ``regional.py``.

Each installed app that owns rows of accounts declares them in ``<app>/regional.py`` as one
``RegionalData`` named ``REGIONAL``: its tables (``RegionalTable`` entries) and, when some of
them are derived from the others, the hook that resets them in a move's target. An entry names
the table, where it lives (the datacenter database of the account, or the control database), how
its rows are selected for a set of account ids (directly by a column holding the account id, or
through another entry: messages are keyed by device id, ``device_id`` IN the ids of the selected
rows of the devices table) and, for a datacenter table, how a move between datacenters brings
its rows to the target (``MoveKind``, carried out by ``accounts.moves``, which names no table).

The registry serves every job that must reach all of an account's data: deleting it with the
account (``regional_data_delete``) and, with the same selections, moving it to another
datacenter. Its order is the deletion order: the apps in the reverse order of INSTALLED_APPS (an
app builds on those installed before it), each app's entries in the order it lists them, and an
entry always before the entry it is selected through. A copy walks it backwards. See
docs/regions.md, "The regional data of an account".
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

from django.apps import apps
from django.db import connections, transaction
from django.utils.module_loading import module_has_submodule

if TYPE_CHECKING:
    import psycopg

DATACENTER = "datacenter"
CONTROL = "control"

REGISTRY_MODULE = "regional"
REGISTRY_NAME = "REGIONAL"


class MoveKind(StrEnum):
    """How a move brings a datacenter table's rows of the moving accounts to the target
    (``accounts.moves``): a copy from one snapshot while the source serves them, then, with the
    accounts' writes paused, what changed in between."""

    # Few rows with an ``id``: copied, then made equal to the source's row by row at the switch
    # (an upsert, and a delete of the rows the source no longer has).
    ENTITIES = "entities"
    # Many rows per device, ordered by ``range_column``: copied, then the rows in each range of a
    # device that the source's journal noted copied again.
    RANGES = "ranges"
    # A few rows per device: copied, then every row of each device with a journaled range copied
    # again.
    DEVICE_ROWS = "device_rows"
    # Rows whose key the source's journal notes when they change: copied, then the rows of each
    # journaled key copied again.
    JOURNALED = "journaled"
    # Append-only, few, with a serial ``id``: copied at the switch only, renumbered by the target's
    # sequence in their order; the copied rows are deleted from the source.
    LOG = "log"
    # Built from the other tables: not copied; the app's ``RegionalData.derived_reset`` resets the
    # moved devices' rows in the target at the switch.
    DERIVED = "derived"


@dataclass(frozen=True)
class JournalTrigger:
    """The trigger that notes changes in the source's journal (``move_journal``) while a move
    copies: ``function`` (a trigger function of the migrations writing ``move_journal``) runs
    ``events`` on ``table``. The trigger exists only while a move copies out of the database."""

    table: str
    events: str
    function: str


@dataclass(frozen=True)
class RegionalTable:
    """A table holding rows of accounts.

    Selection: ``column`` holds the account id, or with ``through`` the id (``id``) of a row of
    that entry's table. Move (datacenter tables only, and required for them): ``moves`` says how,
    with what its kind needs:

    - ``holds_devices``: the rows are the devices (one entry of the registry; ``ENTITIES``): their
      ids are those the journal and every ``device_column`` name;
    - ``device_column``: the column naming the device a row belongs to: at the switch, the rows of
      devices deleted while the move copied are deleted from the target (required for
      ``RANGES``, ``DEVICE_ROWS`` and ``LOG``, which move by device);
    - ``range_column`` (``RANGES``): the column that the journal's ranges (``begin_ts``,
      ``end_ts``) bound;
    - ``journal_key`` (``JOURNALED``): the table's columns that match the journal's key
      (``calc_id``, ``device_id``, ``interval_id``), in that order;
    - ``journal`` (``RANGES``, ``JOURNALED``): the trigger that writes the journal for it.
    """

    table: str
    column: str = "account_id"
    through: RegionalTable | None = None
    database: str = DATACENTER
    moves: MoveKind | None = None
    holds_devices: bool = False
    device_column: str | None = None
    range_column: str | None = None
    journal_key: tuple[str, str, str] | None = None
    journal: JournalTrigger | None = None

    def __post_init__(self) -> None:
        if self.database not in (DATACENTER, CONTROL):
            raise ValueError(f"{self.table}: database must be {DATACENTER!r} or {CONTROL!r}")
        if self.through is not None and self.through.database != self.database:
            raise ValueError(f"{self.table}: selected through {self.through.table}, which is in another database")
        if self.database == CONTROL:
            if self.moves is not None:
                raise ValueError(f"{self.table}: a control table stays where it is in a move; it has no moves")
            return
        if self.moves is None:
            raise ValueError(
                f"{self.table}: a datacenter table must say how a move brings its rows to another datacenter "
                "(moves=MoveKind...; accounts.regional_data)"
            )
        needs = {
            "device_column": self.moves in (MoveKind.RANGES, MoveKind.DEVICE_ROWS, MoveKind.LOG),
            "range_column": self.moves == MoveKind.RANGES,
            "journal_key": self.moves == MoveKind.JOURNALED,
            "journal": self.moves in (MoveKind.RANGES, MoveKind.JOURNALED),
        }
        for name, needed in needs.items():
            given = getattr(self, name) is not None
            if needed and not given:
                raise ValueError(f"{self.table}: a table that moves as {self.moves} needs {name}")
            if given and not needed and name != "device_column":
                raise ValueError(f"{self.table}: {name} means nothing for a table that moves as {self.moves}")
        if self.holds_devices and self.moves != MoveKind.ENTITIES:
            raise ValueError(f"{self.table}: the devices move as {MoveKind.ENTITIES}")

    @property
    def selection(self) -> str:
        """The SQL condition that selects the rows of the accounts whose ids are its one
        parameter (an array: ``[ids]``)."""
        if self.through is None:
            return f"{self.column} = ANY(%s)"
        return f"{self.column} IN (SELECT id FROM {self.through.table} WHERE {self.through.selection})"

    @property
    def select(self) -> str:
        """All columns of the selected rows (``COPY (<select>) TO STDOUT`` reads them out)."""
        return f"SELECT * FROM {self.table} WHERE {self.selection}"


class DerivedReset(Protocol):
    """An app's hook for its derived tables in a move (``RegionalData.derived_reset``): called at
    the switch, in the target's open transaction (``connection``), with the ids of every moved
    device (those copied and those the source has at the switch, possibly none). It makes the
    target rebuild the devices' derived rows from the rows the move brings, none of them built
    from a partial copy."""

    def __call__(self, *, connection: psycopg.Connection, device_ids: list[int]) -> None: ...


@dataclass(frozen=True)
class RegionalData:
    """What an app's ``regional.py`` declares as ``REGIONAL``: its tables holding rows of accounts,
    in deletion order, and the hook that resets its ``DERIVED`` tables in a move's target (required
    exactly when it has some)."""

    tables: Sequence[RegionalTable]
    derived_reset: DerivedReset | None = None

    def __post_init__(self) -> None:
        derived = [entry.table for entry in self.tables if entry.moves == MoveKind.DERIVED]
        if derived and self.derived_reset is None:
            raise ValueError(f"{', '.join(derived)}: derived tables need the app's derived_reset")
        if self.derived_reset is not None and not derived:
            raise ValueError("derived_reset without a table that moves as derived")


@functools.cache
def regional_registrations() -> tuple[RegionalData, ...]:
    """Every app's ``REGIONAL``, in deletion order (the reverse of INSTALLED_APPS); checked as a
    whole (see ``_checked``)."""
    found = []
    for app_config in reversed(list(apps.get_app_configs())):
        if not module_has_submodule(app_config.module, REGISTRY_MODULE):
            continue
        registration = getattr(import_module(f"{app_config.name}.{REGISTRY_MODULE}"), REGISTRY_NAME)
        if not isinstance(registration, RegionalData):
            raise TypeError(f"{app_config.name}.{REGISTRY_MODULE}.{REGISTRY_NAME} must be a RegionalData")
        found.append(registration)
    return _checked(tuple(found))


def regional_tables() -> tuple[RegionalTable, ...]:
    """Every app's entries, in deletion order."""
    return tuple(entry for registration in regional_registrations() for entry in registration.tables)


def _checked(registrations: tuple[RegionalData, ...]) -> tuple[RegionalData, ...]:
    """``registrations`` once their entries agree as a whole: each table once, an entry before the
    entry it is selected through, one entry of devices when any entry moves by device, and one
    entry per journaled kind (the journal has one shape of change for each)."""
    entries = [entry for registration in registrations for entry in registration.tables]
    tables = [entry.table for entry in entries]
    for position, entry in enumerate(entries):
        if tables.count(entry.table) > 1:
            raise ValueError(f"{entry.table} is declared more than once in the apps' regional.py")
        if entry.through is not None and entry.through not in entries[position + 1 :]:
            raise ValueError(f"{entry.table} is selected through {entry.through.table}, which must come after it")
    devices = [entry.table for entry in entries if entry.holds_devices]
    if len(devices) > 1 or (not devices and any(entry.device_column for entry in entries)):
        raise ValueError(f"one table of the registry holds the devices that device columns name, not {devices}")
    for kind in (MoveKind.RANGES, MoveKind.JOURNALED):
        if len(journaled := [entry.table for entry in entries if entry.moves == kind]) > 1:
            raise ValueError(f"{', '.join(journaled)}: the move's journal holds changes of one table moving as {kind}")
    return registrations


def regional_data_delete(*, account_ids_by_alias: dict[str, list[int]]) -> None:
    """Delete every row the accounts own: in each datacenter database (one transaction each)
    those of its accounts, then the control rows of all of them (idents become free)."""
    every: list[int] = []
    for alias, account_ids in account_ids_by_alias.items():
        _delete(alias=alias, database=DATACENTER, account_ids=account_ids)
        every.extend(account_ids)
    _delete(alias="default", database=CONTROL, account_ids=every)


def _delete(*, alias: str, database: str, account_ids: Iterable[int]) -> None:
    ids = list(account_ids)
    if not ids:
        return
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        for entry in regional_tables():
            if entry.database == database:
                cursor.execute(f"DELETE FROM {entry.table} WHERE {entry.selection}", [ids])
