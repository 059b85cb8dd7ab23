"""The admin of calculators, assignments and intervals: pages over every served datacenter,
writes through the services, validation problems at their paths, pinned query counts."""

from __future__ import annotations

import json

import pytest
from django.db import connections

from analytics.engine import Diff
from tests.support.admin import HOST, fast_password_hashing, page_queries  # noqa: F401 (an autouse fixture)
from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def far(make_account):
    """An account in the second datacenter of the default region."""
    return make_account("far", datacenter="eu-2")


def _interval(begin: float, **counters) -> dict:
    return {
        "id": int(begin * 1_000_000),
        "begin": float(begin),
        "end": float(begin + 10),
        "duration": 10.0,
        **counters,
    }


def store_intervals(assignment, begins) -> None:
    from tests.support.intervals import diff_store

    created = [_interval(begin, max_speed=50.0 + begin, km=1.5) for begin in begins]
    diff_store(assignment=assignment, diff=Diff(created=created, reached_end=True), now=5000.0)


def calculator_rows(alias: str) -> list[tuple]:
    from analytics.models import Calculator

    return list(
        Calculator.objects.using(alias).order_by("pk").values_list("pk", "name", "version", "selectors")
    )


@pytest.mark.parametrize(
    "path",
    [
        "/admin/analytics/calculator/",
        "/admin/analytics/calculator/?datacenter=eu-2",
        "/admin/analytics/calculator/add/",
        "/admin/analytics/calculator/{calc}/change/",
        "/admin/analytics/calculator/{calc}/delete/",
        "/admin/analytics/assignment/",
        "/admin/analytics/assignment/?datacenter=eu-1&enabled__exact=1&state__exact=unsynced",
        "/admin/analytics/assignment/?calculator__id__exact={calc}",
        "/admin/analytics/assignment/{assignment}/change/",
        "/admin/analytics/assignment/{assignment}/delete/",
        "/admin/analytics/assignment/{assignment}/intervals/",
        "/admin/analytics/assignment/{assignment}/intervals/?before=15000000",
        "/admin/analytics/",
    ],
)
def test_pages_load(admin_client, assignment, calculator, path):
    store_intervals(assignment, [10, 20])
    response = admin_client.get(path.format(calc=calculator.pk, assignment=assignment.pk), **HOST)
    assert response.status_code == 200, response.content.decode()[:2000]


def test_unknown_datacenter_and_rows_are_not_errors(admin_client, calculator):
    response = admin_client.get("/admin/analytics/calculator/?datacenter=mars-1", **HOST)
    assert response.status_code == 302 and response["Location"].endswith("?e=1")
    response = admin_client.get("/admin/analytics/calculator/12345/change/", **HOST, follow=True)
    assert response.status_code == 200
    assert "doesn\u2019t exist" in response.content.decode()  # Django's message
    response = admin_client.get("/admin/analytics/assignment/99999/intervals/", **HOST)
    assert response.status_code == 404


def test_changelist_shows_the_chosen_datacenter(admin_client, calculator, far):
    from analytics.services import calculator_create

    far_calc = calculator_create(account=far, config={**TRIPS, "name": "far trips"})
    default = admin_client.get("/admin/analytics/calculator/", **HOST).content.decode()
    assert f"/admin/analytics/calculator/{calculator.pk}/change/" in default
    assert "far trips" not in default
    second = admin_client.get("/admin/analytics/calculator/?datacenter=eu-2", **HOST).content.decode()
    assert "far trips" in second and f"/admin/analytics/calculator/{far_calc.pk}/change/" in second
    assert f"far #{far.pk}" in second
    # A change page finds its row in whichever datacenter holds it.
    response = admin_client.get(f"/admin/analytics/calculator/{far_calc.pk}/change/", **HOST)
    assert response.status_code == 200
    assert "eu-2" in response.content.decode() and "far trips" in response.content.decode()


def post_calculator(admin_client, path: str, config, **fields):
    data = {"configuration": config if isinstance(config, str) else json.dumps(config), **fields}
    return admin_client.post(path, data, **HOST)


def test_calculator_created_and_edited_through_the_admin(admin_client, account, far):
    from accounts.placement import alias_for_account
    from analytics.models import Calculator

    response = post_calculator(admin_client, "/admin/analytics/calculator/add/", TRIPS, account=far.pk)
    assert response.status_code == 302, response.content.decode()[:3000]
    [(pk, name, version, selectors_)] = calculator_rows(alias_for_account(far.pk))
    assert (name, version, selectors_[0]["expression"]) == ("trips", 1, "position.speed > 5")
    assert calculator_rows(alias_for_account(account.pk)) == []
    created = Calculator.objects.using(alias_for_account(far.pk)).get(pk=pk)
    assert created.account_id == far.pk and created.update_delay == 30  # defaults filled in

    page = admin_client.get(f"/admin/analytics/calculator/{pk}/change/", **HOST).content.decode()
    assert "position.speed &gt; 5" in page
    edited = {**created.configuration(), "name": "trips, edited", "timezone": "Europe/Riga"}
    response = post_calculator(admin_client, f"/admin/analytics/calculator/{pk}/change/", edited)
    assert response.status_code == 302, response.content.decode()[:3000]
    created.refresh_from_db()
    assert (created.name, created.timezone, created.version) == ("trips, edited", "Europe/Riga", 2)
    # The field holds the whole configuration: a key left out takes its default.
    response = post_calculator(admin_client, f"/admin/analytics/calculator/{pk}/change/", TRIPS)
    assert response.status_code == 302
    created.refresh_from_db()
    assert (created.name, created.timezone, created.version) == ("trips", "UTC", 3)


@pytest.mark.parametrize(
    ("config", "shown"),
    [
        (
            {
                "name": "x",
                "selectors": [{"type": "expression", "expression": "a > )"}, {"type": "nope"}],
                "timezone": "Mars/Olympus",
            },
            ["selectors[0].expression: unexpected &#x27;)&#x27;", "selectors[1].type: ", "timezone: "],
        ),
        ('{"name": "x", "selectors": [', ["not valid JSON: Expecting value: line 1 column 29 (char 28)"]),
        ('{"name": "x", "update_delay": NaN}', ["not valid JSON: NaN is not a JSON number"]),
        ("[1]", ["the configuration is a JSON object"]),
        ({**TRIPS, "name": "a\x00b"}, ["the configuration must not contain NUL characters"]),
    ],
    ids=["engine-problems", "truncated", "nan", "array", "nul"],
)
def test_problems_are_shown_at_their_paths_and_nothing_is_saved(
    admin_client, account, calculator, config, shown
):
    from accounts.placement import alias_for_account

    alias = alias_for_account(account.pk)
    before = calculator_rows(alias)
    response = post_calculator(admin_client, "/admin/analytics/calculator/add/", config, account=account.pk)
    assert response.status_code == 200
    page = response.content.decode()
    assert all(text in page for text in shown), [text for text in shown if text not in page]
    response = post_calculator(admin_client, f"/admin/analytics/calculator/{calculator.pk}/change/", config)
    assert response.status_code == 200
    assert all(text in response.content.decode() for text in shown)
    assert calculator_rows(alias) == before


def test_add_needs_an_account(admin_client, account):
    from accounts.placement import alias_for_account

    response = post_calculator(admin_client, "/admin/analytics/calculator/add/", TRIPS)
    assert response.status_code == 200
    assert "choose the account the calculator belongs to" in response.content.decode()
    assert calculator_rows(alias_for_account(account.pk)) == []


def test_calculator_deleted_with_assignments_and_intervals(admin_client, calculator, assignment):
    from analytics.models import Assignment

    store_intervals(assignment, [10, 20, 30])
    page = admin_client.get(f"/admin/analytics/calculator/{calculator.pk}/delete/", **HOST).content.decode()
    assert "Intervals: 3" in page and "Assignments: 1" in page
    response = admin_client.post(
        f"/admin/analytics/calculator/{calculator.pk}/delete/", {"post": "yes"}, **HOST
    )
    assert response.status_code == 302
    assert calculator_rows(calculator.database) == []
    assert not Assignment.objects.using(calculator.database).exists()
    with connections[calculator.database].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM intervals")
        assert cursor.fetchone()[0] == 0


def test_assignments_list_counts_and_newest_interval(admin_client, assignment):
    store_intervals(assignment, [10, 20, 30])
    page = admin_client.get("/admin/analytics/assignment/", **HOST).content.decode()
    assert '<td class="field-interval_count">3</td>' in page
    assert '<td class="field-newest_interval">1970-01-01 00:00:40</td>' in page
    assert '<td class="field-state">Synced</td>' in page  # stored by the path a run stores by


def test_enable_disable_and_unassign_through_the_admin(admin_client, assignment):
    from analytics.models import Assignment

    alias = assignment.database
    url = "/admin/analytics/assignment/"
    response = admin_client.post(url, {"action": "disable", "_selected_action": [assignment.pk]}, **HOST)
    assert response.status_code == 302
    assert Assignment.objects.using(alias).get(pk=assignment.pk).enabled is False
    Assignment.objects.using(alias).filter(pk=assignment.pk).update(
        state="synced", pending_begin=None, pending_end=None
    )
    response = admin_client.post(url, {"action": "enable", "_selected_action": [assignment.pk]}, **HOST)
    row = Assignment.objects.using(alias).get(pk=assignment.pk)
    # Enabling goes through the service: the history is to be recalculated.
    assert (row.enabled, row.state, row.pending_begin, row.pending_end) == (
        True,
        "unsynced",
        float("-inf"),
        float("inf"),
    )
    response = admin_client.post(f"{url}{assignment.pk}/change/", {}, **HOST)  # "enabled" unticked
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Assignment.objects.using(alias).get(pk=assignment.pk).enabled is False
    store_intervals(assignment, [10])
    response = admin_client.post(
        url, {"action": "delete_selected", "_selected_action": [assignment.pk], "post": "yes"}, **HOST
    )
    assert response.status_code == 302
    assert not Assignment.objects.using(alias).exists()
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM intervals")
        assert cursor.fetchone()[0] == 0


def test_intervals_newest_first_by_pages(admin_client, assignment, monkeypatch):
    from analytics.admin import intervals
    from analytics.services import interval_user_update

    monkeypatch.setattr(intervals, "INTERVALS_PER_PAGE", 2)
    store_intervals(assignment, [10, 20, 30, 40, 50])
    interval_user_update(
        assignment=assignment,
        calculator=assignment.calculator,
        interval_id=20_000_000,
        fields={"driver": "Ann"},
    )
    url = f"/admin/analytics/assignment/{assignment.pk}/intervals/"
    first = admin_client.get(url, **HOST)
    assert [row["id"] for row in first.context["rows"]] == [50_000_000, 40_000_000]
    assert first.context["counters"] == ["max_speed", "km"] and first.context["rows"][0]["counters"] == [
        100.0,
        1.5,
    ]
    assert first.context["total"] == 5 and "5 stored intervals" in first.content.decode()
    assert f'href="?before={40_000_000}"' in first.content.decode()
    second = admin_client.get(f"{url}?before=40000000", **HOST)
    assert [row["id"] for row in second.context["rows"]] == [30_000_000, 20_000_000]
    assert second.context["rows"][1]["other"] == '{"driver": "Ann"}'
    last = admin_client.get(f"{url}?before=20000000", **HOST)
    assert [row["id"] for row in last.context["rows"]] == [10_000_000] and last.context["older"] is None


def test_changelist_query_counts_do_not_grow_with_rows(admin_client, account, calculator, assignment):
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create

    store_intervals(assignment, [10, 20])
    few = {
        path: page_queries(admin_client, path)
        for path in ("/admin/analytics/calculator/", "/admin/analytics/assignment/")
    }
    for number in range(2, 8):
        device = device_create(
            account=account, name=f"truck {number}", configuration={"ident": f"35262569000000{number}"}
        )
        other = calculator_create(account=account, config={**TRIPS, "name": f"trips {number}"})
        store_intervals(assignment_create(calculator=other, device=device)[0], [10 * number])
        assignment_create(calculator=calculator, device=device)
    many = {path: page_queries(admin_client, path) for path in few}
    assert many == few
    # session, user; the page, its count, the full count; account names (and interval counts)
    assert few == {
        "/admin/analytics/calculator/": {"default": 3, "dc_eu_1": 3},
        "/admin/analytics/assignment/": {"default": 3, "dc_eu_1": 4},
    }
