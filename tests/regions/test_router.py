"""The placement router and helpers: control models on the control database, regional rows in
their account's datacenter, ids unique across datacenters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import connections

from accounts import placement
from accounts.models import Account, Token
from flespi_site.db_router import PlacementError, PlacementRouter
from flespi_site.topology import ID_STRIDE
from regions import datacenters
from regions.models import Datacenter, Region

pytestmark = pytest.mark.django_db(databases="__all__")

router = PlacementRouter()
DATACENTER_ALIASES = ["dc_eu_1", "dc_eu_2", "dc_ru_1"]
ALL_ALIASES = ["default", *DATACENTER_ALIASES]


class FakeRegional:
    """Stands for a regional model: the router only looks at ``regional`` and ``_meta``."""

    regional = True
    _meta = SimpleNamespace(label="tests.FakeRegional", model_name="fakeregional")


def fake_row(*, account_id: int | None, db: str | None = None):
    return SimpleNamespace(account_id=account_id, _state=SimpleNamespace(db=db))


def test_topology_has_one_alias_per_datacenter(settings):
    assert list(settings.DATABASES) == ALL_ALIASES
    assert {dc.alias: dc.number for dc in settings.TOPOLOGY.datacenters} == {
        "dc_eu_1": 1,
        "dc_eu_2": 2,
        "dc_ru_1": 3,
    }


@pytest.mark.parametrize(
    ("app_label", "model_name"),
    [
        ("accounts", "account"),
        ("accounts", "token"),
        ("regions", "region"),
        ("regions", "datacenter"),
        ("auth", "user"),
        ("contenttypes", "contenttype"),
        ("sessions", "session"),
    ],
)
def test_control_models_migrate_on_the_control_database_only(app_label, model_name):
    assert [db for db in ALL_ALIASES if router.allow_migrate(db, app_label, model_name=model_name)] == [
        "default"
    ]


def test_control_models_read_and_write_on_the_control_database():
    for model in (Account, Token, Region, Datacenter):
        assert router.db_for_read(model) == "default"
        assert router.db_for_write(model) == "default"


def test_run_sql_hinted_regional_runs_on_datacenters_only():
    assert [
        db for db in ALL_ALIASES if router.allow_migrate(db, "regions", target="regional")
    ] == DATACENTER_ALIASES
    # Without the hint an operation without a model belongs to the control database.
    assert [db for db in ALL_ALIASES if router.allow_migrate(db, "regions")] == ["default"]
    assert [db for db in ALL_ALIASES if router.allow_migrate(db, "regions", target="control")] == ["default"]


def test_entity_sequence_exists_in_datacenters_only():
    for alias in ALL_ALIASES:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [datacenters.ENTITY_SEQUENCE])
            assert cursor.fetchone()[0] is (alias != "default"), alias


def test_alias_for_account_follows_the_datacenter(make_account, django_assert_num_queries):
    root = make_account("root")
    on_eu_2 = make_account("eu-2", parent=root, datacenter="eu-2")
    on_ru_1 = make_account("ru", parent=root, region="ru")
    assert placement.alias_for_account(root.pk) == "dc_eu_1"
    assert placement.alias_for_account(on_eu_2.pk) == "dc_eu_2"
    assert placement.alias_for_account(on_ru_1.pk) == "dc_ru_1"
    with django_assert_num_queries(0):  # cached
        assert placement.alias_for_account(on_eu_2.pk) == "dc_eu_2"


def test_alias_for_an_unknown_account_is_refused(platform):
    with pytest.raises(placement.UnknownAccount):
        placement.alias_for_account(2**62)


def test_router_routes_a_regional_row_by_its_account(make_account):
    root = make_account("root")
    on_eu_2 = make_account("eu-2", parent=root, datacenter="eu-2")
    on_ru_1 = make_account("ru", parent=root, region="ru")
    assert router.db_for_write(FakeRegional, instance=fake_row(account_id=on_eu_2.pk)) == "dc_eu_2"
    assert router.db_for_read(FakeRegional, instance=fake_row(account_id=on_ru_1.pk)) == "dc_ru_1"
    # A row loaded from a datacenter stays there.
    assert (
        router.db_for_write(FakeRegional, instance=fake_row(account_id=on_ru_1.pk, db="dc_eu_2")) == "dc_eu_2"
    )


def test_router_never_sends_a_regional_row_to_the_control_database(make_account):
    root = make_account("root")
    # A row that says it came from the control database is routed by its account, not kept there.
    assert router.db_for_write(FakeRegional, instance=fake_row(account_id=root.pk, db="default")) == "dc_eu_1"


@pytest.mark.parametrize("hints", [{}, {"instance": fake_row(account_id=None)}])
def test_regional_query_without_placement_raises(hints):
    with pytest.raises(PlacementError, match=r"tests\.FakeRegional is a regional model"):
        router.db_for_read(FakeRegional, **hints)
    with pytest.raises(PlacementError):
        router.db_for_write(FakeRegional, **hints)


def test_regional_models_of_the_project_migrate_on_datacenters_only():
    from django.apps import apps

    from flespi_site.db_router import is_regional

    regional = [model for model in apps.get_models() if is_regional(model)]
    for model in regional:
        allowed = [
            db
            for db in ALL_ALIASES
            if router.allow_migrate(db, model._meta.app_label, model_name=model._meta.model_name)
        ]
        assert allowed == DATACENTER_ALIASES, model


def test_allocate_ids_are_unique_across_datacenters_and_name_their_datacenter(platform):
    ids = {alias: datacenters.allocate_ids(alias=alias, count=50) for alias in DATACENTER_ALIASES}
    numbers = {"dc_eu_1": 1, "dc_eu_2": 2, "dc_ru_1": 3}
    for alias, allocated in ids.items():
        assert len(set(allocated)) == 50
        assert {entity_id % ID_STRIDE for entity_id in allocated} == {numbers[alias]}
        assert {datacenters.datacenter_of_id(entity_id) for entity_id in allocated} == {numbers[alias]}
    everything = [entity_id for allocated in ids.values() for entity_id in allocated]
    assert len(set(everything)) == len(everything)


def test_allocate_ids_refuses_the_control_database(platform):
    with pytest.raises(LookupError, match="'default' is not a datacenter database"):
        datacenters.allocate_ids(alias="default", count=1)


def test_alias_for_datacenter():
    assert datacenters.alias_for_datacenter("eu-2") == "dc_eu_2"
    with pytest.raises(LookupError):
        datacenters.alias_for_datacenter("xx-1")


def test_a_regional_row_lands_in_its_accounts_datacenter_only(make_account):
    # The devices app's Device is the first regional model: a RegionalModel saved with no alias.
    from devices.models import Device

    root = make_account("root")
    on_eu_2 = make_account("eu-2", parent=root, datacenter="eu-2")
    on_ru_1 = make_account("ru", parent=root, region="ru")
    saved = {}
    for account in (on_eu_2, on_ru_1):
        device = Device(account_id=account.pk, ident=f"router-{account.pk}", shard=0, created=0.0)
        device.save()
        saved[account.pk] = device
    assert saved[on_eu_2.pk]._state.db == "dc_eu_2" and saved[on_eu_2.pk].pk % ID_STRIDE == 2
    assert saved[on_ru_1.pk]._state.db == "dc_ru_1" and saved[on_ru_1.pk].pk % ID_STRIDE == 3
    where = {
        alias: sorted(
            Device.objects.using(alias)
            .filter(ident__startswith="router-")
            .values_list("account_id", flat=True)
        )
        for alias in DATACENTER_ALIASES
    }
    assert where == {"dc_eu_1": [], "dc_eu_2": [on_eu_2.pk], "dc_ru_1": [on_ru_1.pk]}
    assert list(placement.using_account(Device, on_ru_1.pk).values_list("pk", flat=True)) == [
        saved[on_ru_1.pk].pk
    ]
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT to_regclass('devices_device') IS NOT NULL")
        assert cursor.fetchone()[0] is False
    with pytest.raises(PlacementError):
        list(Device.objects.all())
    # Updating a loaded row stays in its datacenter.
    device = placement.using_account(Device, on_eu_2.pk).get()
    device.name = "renamed"
    device.save()
    assert Device.objects.using("dc_eu_2").get(pk=device.pk).name == "renamed"
