"""The registry of an account's regional data covers every table, and deleting an account (through
the API, the admin's "delete selected") leaves no row of it anywhere and frees its idents."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.db import connections

from accounts.models import Account
from accounts.regional_data import (
    CONTROL,
    DATACENTER,
    MoveKind,
    RegionalData,
    RegionalTable,
    _checked,
    regional_tables,
)
from analytics.engine import Diff
from analytics.services import assignment_create, calculator_create
from devices.models import Device, DeviceIdent
from devices.services import device_create, messages_ingest
from tests.support.admin import fast_password_hashing  # noqa: F401 (an autouse fixture)
from tests.support.api import result_of
from tests.support.intervals import diff_store

pytestmark = pytest.mark.django_db(databases="__all__")

DATACENTER_ALIASES = ["dc_eu_1", "dc_eu_2", "dc_ru_1"]

# Tables of a datacenter database that hold no data of any account.
NO_ACCOUNT_DATA = {
    "django_migrations",
    "shard_fence",  # the newest lease epoch per calculation shard (analytics)
    "shard_drains",  # the numbered drains of the change log per shard, kept for a while (devices)
    "move_journal",  # what changed in a move's source while it copied (accounts.moves), emptied after
    "webhook_feeding",  # whether the outbox feeds the webhooks (webhooks.storage)
}
# Control tables with an account id that are not regional data: tokens and the records of moves
# between datacenters go with the account row (their foreign keys cascade).
CONTROL_DELETED_WITH_THE_ACCOUNT = {"accounts_token", "accounts_accountmove", "webhooks_webhook"}

T0 = 1_700_000_000
CALCULATOR = {"name": "days", "selectors": [{"type": "datetime", "split": "day"}]}


def tables_of(alias: str) -> dict[str, str | None]:
    """Every table of the database, with the table it is a partition of (or None)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, parent.relname
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
            LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
            LEFT JOIN pg_class parent ON parent.oid = i.inhparent
            WHERE c.relkind IN ('r', 'p')
            """
        )
        return dict(cursor.fetchall())


def columns_of(alias: str, table: str) -> set[str]:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
            [table],
        )
        return {row[0] for row in cursor.fetchall()}


def registered(database: str) -> set[str]:
    return {entry.table for entry in regional_tables() if entry.database == database}


@pytest.mark.parametrize("alias", DATACENTER_ALIASES)
def test_every_table_of_a_datacenter_is_in_the_registry_or_holds_no_account_data(alias):
    tables = tables_of(alias)
    partitions = {name: parent for name, parent in tables.items() if parent is not None}
    assert {"messages", "telemetry", "outbox", "devices_device"} <= registered(DATACENTER)
    assert set(partitions.values()) <= registered(DATACENTER)
    missing = set(tables) - set(partitions) - registered(DATACENTER) - NO_ACCOUNT_DATA
    assert missing == set(), f"tables of {alias} missing from the apps' regional.py: {sorted(missing)}"
    assert registered(DATACENTER) <= set(tables)


def test_every_control_table_with_an_account_id_is_in_the_registry():
    holding = {name for name in tables_of("default") if "account_id" in columns_of("default", name)}
    assert holding - CONTROL_DELETED_WITH_THE_ACCOUNT == registered(CONTROL) == {DeviceIdent._meta.db_table}


def test_every_selection_runs_and_an_entry_comes_before_what_it_is_selected_through():
    entries = regional_tables()
    for position, entry in enumerate(entries):
        if entry.through is not None:
            assert entries.index(entry.through) > position
        alias = DATACENTER_ALIASES[0] if entry.database == DATACENTER else "default"
        with connections[alias].cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({entry.select}) AS rows", [[-1]])
            assert cursor.fetchone() == (0,)


def test_a_registration_that_does_not_say_all_a_move_needs_is_refused():
    devices = RegionalTable("things", moves=MoveKind.ENTITIES, holds_devices=True)
    with pytest.raises(ValueError, match="a_log: a table that moves as log needs device_column"):
        RegionalTable("a_log", column="thing_id", through=devices, moves=MoveKind.LOG)
    with pytest.raises(ValueError, match="a_control_table: a control table stays where it is"):
        RegionalTable("a_control_table", database=CONTROL, moves=MoveKind.ENTITIES)
    derived = RegionalTable("a_cache", column="thing_id", through=devices, moves=MoveKind.DERIVED)
    with pytest.raises(ValueError, match="a_cache: derived tables need the app's derived_reset"):
        RegionalData(tables=[derived, devices])
    with pytest.raises(ValueError, match="one table of the registry holds the devices"):
        _checked((RegionalData(tables=[devices]), RegionalData(tables=[RegionalTable(
            "more_things", moves=MoveKind.ENTITIES, holds_devices=True)])))


def rows_left(account_ids: list[int], device_ids: list[int]) -> dict[tuple[str, str], int]:
    """Rows naming one of the accounts or devices, in every table of every database, found by
    their columns (not by the registry's selections)."""
    found = {}
    for alias in ["default", *DATACENTER_ALIASES]:
        for table, parent in tables_of(alias).items():
            if parent is not None:
                continue
            columns = columns_of(alias, table)
            for column, ids in (("account_id", account_ids), ("device_id", device_ids)):
                if column in columns:
                    with connections[alias].cursor() as cursor:
                        cursor.execute(f"SELECT count(*) FROM {table} WHERE {column} = ANY(%s)", [ids])
                        found[(alias, table)] = found.get((alias, table), 0) + cursor.fetchone()[0]
            if table == "devices_device":
                with connections[alias].cursor() as cursor:
                    cursor.execute("SELECT count(*) FROM devices_device WHERE id = ANY(%s)", [device_ids])
                    found[(alias, table)] += cursor.fetchone()[0]
    return found


@pytest.fixture
def doomed(root, make_account):
    """A subaccount in eu-2 with a subaccount of its own (in the region's default datacenter,
    eu-1), each with a device that has messages, telemetry and outbox rows; and a sibling in eu-2
    whose rows must stay."""
    child = make_account("child", parent=root, datacenter="eu-2")
    grandchild = make_account("grandchild", parent=child)
    sibling = make_account("sibling", parent=root, datacenter="eu-2")
    devices = {
        account.name: device_create(account=account, configuration={"ident": f"ident-{account.name}"})
        for account in (child, grandchild, sibling)
    }
    result = messages_ingest(
        devices=list(devices.values()), messages=[{"timestamp": T0 + i, "v": i} for i in range(5)]
    )
    assert result.errors == [] and result.accepted == 5
    for account in (child, grandchild, sibling):
        calculator = calculator_create(account=account, config=CALCULATOR)
        assignment, _new = assignment_create(calculator=calculator, device=devices[account.name])
        diff_store(assignment=assignment, diff=Diff(created=[{"id": T0 * 10**6, "begin": float(T0), "end": T0 + 4.0,
                                                                     "duration": 4.0, "n": 5}]))
    account_ids = [child.pk, grandchild.pk]
    device_ids = [devices["child"].pk, devices["grandchild"].pk]
    before = rows_left(account_ids, device_ids)
    written = [
        (alias, table)
        for alias in ("dc_eu_1", "dc_eu_2")
        for table in ("messages", "telemetry", "outbox", "devices_device", "analytics_calculator", "analytics_assignment",
                      "intervals")
    ]
    assert [key for key in [*written, ("default", "devices_deviceident")] if not before[key]] == []
    return Doomed(child=child, sibling=sibling, account_ids=account_ids, device_ids=device_ids, kept=devices["sibling"])


@dataclass
class Doomed:
    child: Account
    sibling: Account
    account_ids: list[int]
    device_ids: list[int]
    kept: Device


def assert_gone(root, doomed: Doomed):
    sibling, kept = doomed.sibling, doomed.kept
    assert {key: count for key, count in rows_left(doomed.account_ids, doomed.device_ids).items() if count} == {}
    assert sorted(Account.objects.values_list("name", flat=True)) == ["root", "sibling"]
    kept_rows = rows_left([sibling.pk], [kept.pk])
    assert [
        table for table in ("messages", "telemetry", "outbox", "analytics_assignment", "intervals")
        if not kept_rows[("dc_eu_2", table)]
    ] == []
    # The idents are free again: in the same region, another datacenter claims them.
    again = [device_create(account=root, configuration={"ident": f"ident-{name}"}) for name in ("child", "grandchild")]
    assert [device.database for device in again] == ["dc_eu_1", "dc_eu_1"]
    assert Device.objects.using("dc_eu_2").filter(account_id=sibling.pk).count() == 1


def test_deleting_a_subaccount_through_the_api_deletes_all_of_its_regional_data(api, root, root_key, doomed):
    child = doomed.child
    assert result_of(api.call("DELETE", f"/platform/subaccounts/{child.pk}", key=root_key)) == [{"id": child.pk}]
    assert_gone(root, doomed)


def test_the_admins_delete_selected_deletes_all_of_their_regional_data(admin_client, root, doomed):
    response = admin_client.post(
        "/admin/accounts/account/",
        # The grandchild is selected too: it goes with its parent's subtree, once.
        {"action": "delete_selected", "_selected_action": doomed.account_ids, "post": "yes"},
        HTTP_HOST="localhost",
    )
    assert response.status_code == 302, response.content[:500]
    assert_gone(root, doomed)
