"""One registry of the regional data an account owns, gathered from the apps' ``regional.py``.

Each installed app that owns rows of accounts declares them in ``<app>/regional.py`` as a list
``TABLES`` of ``RegionalTable`` entries: the table, where it lives (the datacenter database of the
account, or the control database) and how its rows are selected for a set of account ids:
directly by a column holding the account id, or through another entry (messages are keyed by
device id: ``device_id`` IN the ids of the selected rows of the devices table).

The registry serves every job that must reach all of an account's data: deleting it with the
account (``regional_data_delete``) and, with the same selections, copying it to another
datacenter. Its order is the deletion order: the apps in the reverse order of INSTALLED_APPS (an
app builds on those installed before it), each app's entries in the order it lists them, and an
entry always before the entry it is selected through. A copy walks it backwards. See
docs/regions.md, "The regional data of an account".
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module

from django.apps import apps
from django.db import connections, transaction
from django.utils.module_loading import module_has_submodule

DATACENTER = "datacenter"
CONTROL = "control"

REGISTRY_MODULE = "regional"


@dataclass(frozen=True)
class RegionalTable:
    """A table holding rows of accounts. ``column`` holds the account id, or with ``through``
    the id (``id``) of a row of that entry's table."""

    table: str
    column: str = "account_id"
    through: RegionalTable | None = None
    database: str = DATACENTER

    def __post_init__(self) -> None:
        if self.database not in (DATACENTER, CONTROL):
            raise ValueError(f"{self.table}: database must be {DATACENTER!r} or {CONTROL!r}")
        if self.through is not None and self.through.database != self.database:
            raise ValueError(f"{self.table}: selected through {self.through.table}, which is in another database")

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


@functools.cache
def regional_tables() -> tuple[RegionalTable, ...]:
    """Every app's entries, in deletion order."""
    entries: list[RegionalTable] = []
    for app_config in reversed(list(apps.get_app_configs())):
        if not module_has_submodule(app_config.module, REGISTRY_MODULE):
            continue
        module = import_module(f"{app_config.name}.{REGISTRY_MODULE}")
        entries.extend(module.TABLES)
    tables = [entry.table for entry in entries]
    for position, entry in enumerate(entries):
        if tables.count(entry.table) > 1:
            raise ValueError(f"{entry.table} is declared more than once in the apps' regional.py")
        if entry.through is not None and entry.through not in entries[position + 1 :]:
            raise ValueError(f"{entry.table} is selected through {entry.through.table}, which must come after it")
    return tuple(entries)


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
