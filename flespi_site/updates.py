"""The one way to update or delete a stored row, safe against concurrent requests.

Every service that changes a row a client named (devices, accounts, tokens; calculators,
assignments and intervals likewise) goes through ``locked_row``::

    from flespi_site.updates import locked_row, save_fields

    def calculator_update(*, calculator: Calculator, data: dict[str, Any]) -> Calculator:
        with locked_row(Calculator, pk=calculator.pk, using=calculator.database, name="calculator") as fresh:
            check(fresh, data)                      # decide on the fresh row, not the one read before
            return save_fields(fresh, data, name="calculator")

    def calculator_delete(*, calculator: Calculator) -> None:
        with locked_row(Calculator, pk=calculator.pk, using=calculator.database, name="calculator") as fresh:
            ...                                     # rows that go with it, in the same transaction
            fresh.delete()

What it guarantees, and why:

- ``locked_row`` opens a transaction on the row's database and locks the row (``SELECT ... FOR
  UPDATE``), so updates and deletes of one row run one after the other; what the caller reads
  from the yielded row is the committed state, not the copy the view selected earlier.
- A row that is gone, or that a concurrent delete removed while this request waited, is a
  ``NotFound`` naming the item (``"device 12 not found"``): the API answers 404 for that item.
  Nothing re-creates it: ``save_fields`` saves with ``update_fields``, an UPDATE that never falls
  back to an INSERT (a plain ``save()`` does, which brought deleted rows back).
- ``save_fields`` writes only the fields the request named, so two requests changing different
  fields of one row both keep their change (no lost update).
- An ``IntegrityError`` of the save (a unique constraint a concurrent write just took) becomes a
  ``Conflict`` naming the item; the transaction is rolled back.

Writes to another database that must follow the row (the control database's ident claim of a
device) are ordered by the caller; ``devices.services.device_update`` shows how.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import DatabaseError, IntegrityError, models, transaction

from flespi_site.errors import Conflict, NotFound

Row = TypeVar("Row", bound=models.Model)


@contextmanager
def locked_row(model: type[Row], *, pk: int, using: str, name: str) -> Iterator[Row]:
    """The row ``pk`` of ``model`` in database ``using``, fresh and locked until the block ends
    (the block is one transaction there). ``NotFound("<name> <pk> not found")`` when it is gone.
    ``name`` is how the API calls the item ("device", "account", "token")."""
    with transaction.atomic(using=using):
        row = model._default_manager.db_manager(using).select_for_update().filter(pk=pk).first()
        if row is None:
            raise NotFound(f"{name} {pk} not found")
        yield row


def save_fields(row: Row, changes: Mapping[str, Any], *, name: str) -> Row:
    """Set each field of ``changes`` on ``row`` (a row from ``locked_row``) and save those
    fields only; returns the row. A unique constraint broken by the change is a ``Conflict``."""
    if not changes:
        return row
    for field, value in changes.items():
        setattr(row, field, value)
    try:
        with transaction.atomic(using=row._state.db):
            row.save(update_fields=list(changes))
    except IntegrityError:
        raise Conflict(f"{name} {row.pk}: the change conflicts with another {name}") from None
    except DatabaseError as exc:
        # "Save with update_fields did not affect any rows": the row was not locked and is gone.
        if "did not affect any rows" not in str(exc):
            raise
        raise NotFound(f"{name} {row.pk} not found") from None
    return row


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` merged into ``target``, deep, as a PATCH does to a JSON field (RFC 7396, the
    deep merge flespi applies): an object merges key by key, a ``null`` removes its key, any
    other value replaces what was there."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


@contextmanager
def locked_merge(row: Row, patch: Mapping[str, Any], *, fields: tuple[str, ...], name: str) -> Iterator[dict[str, Any]]:
    """The changes of a PATCH of ``row``: its JSON ``fields`` merged (``merge_patch``) into the
    committed values of the row, locked until the block ends, and the other fields as sent; the
    block saves them (the row's update service, whose own ``locked_row`` joins this transaction),
    so a concurrent PATCH of another key of the same field keeps its key."""
    using = row._state.db or "default"
    with locked_row(type(row), pk=row.pk, using=using, name=name) as fresh:
        yield {
            field: merge_patch(getattr(fresh, field), value) if field in fields else value
            for field, value in patch.items()
        }
