"""Stored intervals: diffs applied and read back, user fields through recalculation, the read
parameters, the TTL and rotate purges, and the names of an assignment's intervals kept on its row
(``Assignment.interval_names``) by every writer and by migration 0010."""

import importlib

import pytest

from analytics.engine import Diff

pytestmark = pytest.mark.django_db(databases="__all__")


def _iv(begin, end, **counters):
    return {"id": int(begin * 1_000_000), "begin": float(begin), "end": float(end), "duration": float(end - begin), **counters}


def _apply(assignment, *, created=(), updated=(), deleted=(), now=1000.0, active_id=None, reached_end=True):
    from tests.support.intervals import diff_store

    diff = Diff(created=list(created), updated=list(updated), deleted=list(deleted), active_id=active_id,
                reached_end=reached_end)
    return diff_store(assignment=assignment, diff=diff, now=now)


def test_diff_applied_and_read_back(assignment):
    from analytics.selectors import intervals_of

    changes = _apply(assignment, created=[_iv(10, 20, km=1.5), _iv(30, 40, km=2, name="a")], active_id=30_000_000)
    assert [row["id"] for row in changes.created] == [10_000_000, 30_000_000] and not changes.updated
    stored = intervals_of(assignments=[assignment])
    assert stored == [
        {"id": 10_000_000, "begin": 10.0, "end": 20.0, "duration": 10.0, "timestamp": 1000.0, "km": 1.5,
         "calc_id": assignment.calculator_id, "device_id": assignment.device_id},
        {"id": 30_000_000, "begin": 30.0, "end": 40.0, "duration": 10.0, "timestamp": 1000.0, "km": 2, "name": "a",
         "calc_id": assignment.calculator_id, "device_id": assignment.device_id},
    ]
    assignment.refresh_from_db()
    assert assignment.active_id == 30_000_000
    changes = _apply(assignment, updated=[_iv(30, 45, km=3)], deleted=[stored[0]], now=2000.0)
    assert [row["id"] for row in changes.updated] == [30_000_000]
    assert [row["id"] for row in changes.deleted] == [10_000_000]
    stored = intervals_of(assignments=[assignment])
    assert [(iv["id"], iv["end"], iv["km"], iv["timestamp"], "name" in iv) for iv in stored] == [
        (30_000_000, 45.0, 3, 2000.0, False)
    ]


def test_user_fields_survive_recalculation(assignment, calculator):
    from analytics.selectors import intervals_of
    from analytics.services import interval_user_update
    from flespi_site.errors import InvalidInput, NotFound

    _apply(assignment, created=[_iv(10, 20, km=1.5)])
    interval = interval_user_update(assignment=assignment, calculator=calculator, interval_id=10_000_000,
                                    fields={"driver": "Ann", "note": {"a": 1}})
    assert interval["driver"] == "Ann"
    _apply(assignment, updated=[_iv(10, 25, km=2.0)], now=3000.0)
    [stored] = intervals_of(assignments=[assignment])
    assert stored["driver"] == "Ann" and stored["note"] == {"a": 1} and stored["end"] == 25.0 and stored["km"] == 2.0
    interval_user_update(assignment=assignment, calculator=calculator, interval_id=10_000_000, fields={"note": None})
    [stored] = intervals_of(assignments=[assignment])
    assert "note" not in stored and stored["driver"] == "Ann"
    with pytest.raises(InvalidInput):
        interval_user_update(assignment=assignment, calculator=calculator, interval_id=10_000_000, fields={"km": 1})
    with pytest.raises(InvalidInput):
        interval_user_update(assignment=assignment, calculator=calculator, interval_id=10_000_000, fields={"begin": 1})
    with pytest.raises(NotFound):
        interval_user_update(assignment=assignment, calculator=calculator, interval_id=1, fields={"x": 1})
    # a deleted and re-created interval (same id) keeps nothing of the old one but its user fields
    _apply(assignment, deleted=[stored])
    assert intervals_of(assignments=[assignment]) == []


def test_read_parameters_over_the_api(api, key, assignment, calculator, device):
    _apply(assignment, created=[_iv(t, t + 5, km=float(t)) for t in range(0, 100, 10)])
    base = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals"
    result = api.call("GET", f"{base}/all", key=key).json()["result"]
    assert [iv["begin"] for iv in result] == [float(t) for t in range(0, 100, 10)]
    assert all(iv["calc_id"] == calculator.pk and iv["device_id"] == device.pk for iv in result)
    result = api.call("GET", f"{base}/all?begin=12&end=41", key=key).json()["result"]
    assert [iv["begin"] for iv in result] == [10.0, 20.0, 30.0, 40.0]  # overlapping the range
    result = api.call("GET", f"{base}/all?count=2&reverse=true&fields=id,km", key=key).json()["result"]
    assert result == [{"id": 90_000_000, "km": 90.0}, {"id": 80_000_000, "km": 80.0}]
    result = api.call("GET", f"{base}/all", key=key, data=None).json()["result"]
    result = api.call("GET", f"{base}/all?filter=km%20%3E%2055%20%26%26%20duration%20%3D%3D%205", key=key).json()["result"]
    assert [iv["km"] for iv in result] == [60.0, 70.0, 80.0, 90.0]
    result = api.call("GET", f"{base}/20000000,40000000", key=key).json()["result"]
    assert [iv["id"] for iv in result] == [20_000_000, 40_000_000]
    assert api.call("GET", f"{base}/123", key=key).status_code == 404
    response = api.call("GET", f"{base}/all?filter=km%20%3E", key=key)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "filter"
    assert api.call("GET", f"{base}/all?count=0", key=key).status_code == 400
    assert api.call("GET", f"{base}/all?bogus=1", key=key).status_code == 400
    assert api.call("GET", f"{base}/abc", key=key).status_code == 400


def test_filter_over_many_chunks(assignment):
    from analytics.engine import compile_expression
    from analytics.selectors import intervals_of

    _apply(assignment, created=[_iv(t, t + 1, n=t) for t in range(0, 250)])
    even = compile_expression("n % 2 == 0")
    found = intervals_of(assignments=[assignment], condition=even, chunk=7)
    assert [iv["n"] for iv in found] == list(range(0, 250, 2))
    found = intervals_of(assignments=[assignment], condition=even, chunk=7, count=5, reverse=True)
    assert [iv["n"] for iv in found] == [248, 246, 244, 242, 240]


def test_user_fields_over_the_api(api, key, assignment, calculator, device):
    _apply(assignment, created=[_iv(10, 20, km=1.0)])
    path = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/10000000"
    response = api.call("PUT", path, key=key, body={"driver": "Bob"})
    assert response.status_code == 200, response.content
    assert response.json()["result"][0]["driver"] == "Bob"
    assert api.call("PUT", path, key=key, body={"max_speed": 1}).status_code == 400
    assert api.call("PUT", path, key=key, body=[1]).status_code == 400
    assert api.call("PUT", path, key=key, body={"x": "\x00"}).status_code == 400
    assert api.call("PUT", f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/5", key=key,
                    body={"a": 1}).status_code == 404
    assert api.call("PUT", f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all", key=key,
                    body={"a": 1}).status_code == 400


def test_ttl_and_rotate_purges(assignment, calculator):
    from analytics.selectors import intervals_of
    from analytics.services import intervals_purge

    _apply(assignment, created=[_iv(t, t + 5) for t in range(0, 100, 10)])
    calculator.intervals_ttl = 60
    gone = intervals_purge(assignment=assignment, calculator=calculator, now=100.0)  # ended before 40
    assert [iv["begin"] for iv in gone] == [0.0, 10.0, 20.0, 30.0]
    calculator.intervals_rotate = 3
    gone = intervals_purge(assignment=assignment, calculator=calculator, now=100.0)
    assert [iv["begin"] for iv in gone] == [40.0, 50.0, 60.0]
    assert [iv["begin"] for iv in intervals_of(assignments=[assignment])] == [70.0, 80.0, 90.0]


def test_deleting_calculator_device_or_assignment_deletes_intervals(account, calculator, device):
    from django.db import connections

    from analytics.models import Assignment
    from analytics.services import assignment_create, assignment_delete, calculator_create, calculator_delete
    from devices.services import device_create, device_delete
    from tests.support.calculators import TRIPS

    def count():
        with connections[device.database].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM intervals")
            return cursor.fetchone()[0]

    second = device_create(account=account, configuration={"ident": "second"})
    other_calc = calculator_create(account=account, config=TRIPS)
    a1 = assignment_create(calculator=calculator, device=device)[0]
    a2 = assignment_create(calculator=calculator, device=second)[0]
    a3 = assignment_create(calculator=other_calc, device=second)[0]
    for a in (a1, a2, a3):
        _apply(a, created=[_iv(1, 2), _iv(3, 4)])
    assert count() == 6
    assignment_delete(assignment=a1)
    assert count() == 4
    device_delete(device=second)
    assert count() == 0 and Assignment.objects.using(device.database).count() == 0
    a1 = assignment_create(calculator=calculator, device=device)[0]
    _apply(a1, created=[_iv(1, 2)])
    calculator_delete(calculator=calculator)
    assert count() == 0 and Assignment.objects.using(device.database).count() == 0


def test_unassigning_clears_the_retained_state(assignment, calculator, device):
    from django.db import connections

    from analytics.services import assignment_delete

    assignment_delete(assignment=assignment)
    with connections[device.database].cursor() as cursor:
        # the assignment's state topics (the device's own log and telemetry topics apart)
        cursor.execute(
            "SELECT topic, payload, retain FROM outbox WHERE device_id = %s AND topic LIKE 'state/gw/calcs/%%' ORDER BY id",
            [device.pk],
        )
        rows = cursor.fetchall()
    base = f"state/gw/calcs/{calculator.pk}/devices/{device.pk}/"
    assert rows == [(base + "synced", None, True), (base + "last", None, True), (base + "active", None, True)]


def test_many_assignments_written_in_two_statements(account, calculator, assignment, device):
    """``intervals_write_many``: deletes and upserts of several assignments at once, answered per
    assignment, each by id, the other assignment's rows untouched."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from analytics import storage
    from analytics.services import assignment_create
    from devices.services import device_create

    other = device_create(account=account, configuration={"ident": "write-many-2"})
    assignment_create(calculator=calculator, device=other)
    alias = device.database
    a, b = (calculator.pk, device.pk), (calculator.pk, other.pk)
    storage.intervals_write_many(alias=alias, writes={a: ([_iv(10, 20), _iv(30, 40)], []), b: ([_iv(10, 15)], [])},
                                 stamp=1.0)
    with CaptureQueriesContext(connections[alias]) as captured:
        result = storage.intervals_write_many(
            alias=alias, writes={a: ([_iv(50, 60), _iv(30, 45)], [10_000_000]), b: ([], [])}, stamp=2.0
        )
    assert len(captured) == 2  # one DELETE, one INSERT, whatever the number of assignments
    written, deleted = result[a]
    assert [(row["id"], row["end"], row["timestamp"]) for row in written] == [(30_000_000, 45, 2.0), (50_000_000, 60, 2.0)]
    assert [row["id"] for row in deleted] == [10_000_000]
    assert result[b] == ([], [])
    assert [row["id"] for row in storage.intervals_read(alias=alias, pairs=[a])] == [30_000_000, 50_000_000]
    assert [(row["id"], row["timestamp"]) for row in storage.intervals_read(alias=alias, pairs=[b])] == [(10_000_000, 1.0)]


def test_counters_are_stored_as_their_exact_text_with_their_numbers_apart(account, calculator, assignment, device):
    """``intervals_write_many`` sends its rows as one JSON document: the counters' text is stored as
    written (key order, a route with backslashes and quotes, an integer beyond 64 bits, text beyond
    ASCII), and the numbers apart (``number_keys``/``number_values``) keep every key a ``text[]``
    literal would quote and every double exactly."""
    from django.db import connections

    from analytics import storage
    from flespi_site.jsontext import dumps_exact

    counters = {"z": 0.1 + 0.2, 'a "b", {c}\\d': 1e-300, "route": 'q\\"x}{,\\\\', "big": 2**70, "flag": True,
                "name": "Zürich ✓", "n": -0.0, "m": 2**53 + 1, "list": [1, {"k": None}]}
    storage.intervals_write_many(alias=device.database,
                                 writes={(calculator.pk, device.pk): ([_iv(10, 20.5, **counters)], [])}, stamp=1.0)
    with connections[device.database].cursor() as cursor:
        cursor.execute("SELECT counters::text, number_keys, number_values, \"begin\", \"end\", duration FROM intervals "
                       "WHERE calc_id = %s AND device_id = %s", [calculator.pk, device.pk])
        text, keys, values, begin, end, duration = cursor.fetchone()
    assert text == dumps_exact(counters).decode()
    assert keys == ["z", 'a "b", {c}\\d', "big", "n", "m"]
    assert values == [0.1 + 0.2, 1e-300, float(2**70), -0.0, float(2**53 + 1)]
    assert (begin, end, duration) == (10.0, 20.5, 10.5)


def test_counters_and_event_payloads_are_compressed_with_lz4_where_the_server_has_it(device):
    """Analytics migration 0011: the counters of every partition of ``intervals`` and the payloads
    of the outbox and the webhook feed, on a server with lz4 (the one the tests run on; without it:
    tests/test_embedded.py); backwards, pglz again."""
    from importlib import import_module

    from django.db import connections

    migration = import_module("analytics.migrations.0011_lz4_toast")

    def methods(cursor) -> dict[str, str]:
        cursor.execute("SELECT attrelid::regclass::text, attcompression FROM pg_attribute WHERE attname = %s "
                       "AND attrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'intervals'::regclass "
                       "UNION ALL SELECT 'intervals'::regclass UNION ALL SELECT 'outbox'::regclass "
                       "UNION ALL SELECT 'webhook_feed'::regclass)", ["counters"])
        found = dict(cursor.fetchall())
        cursor.execute("SELECT attrelid::regclass::text, attcompression FROM pg_attribute WHERE attname = 'payload' "
                       "AND attrelid IN ('outbox'::regclass, 'webhook_feed'::regclass)")
        return {**found, **dict(cursor.fetchall())}

    with connections[device.database].cursor() as cursor:
        cursor.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        if "lz4" not in cursor.fetchone()[0]:
            pytest.skip("this PostgreSQL has no lz4 (the embedded one's case is tested in tests/test_embedded.py)")
        stored = methods(cursor)
        assert len(stored) == 1 + 8 + 2 and set(stored.values()) == {"l"}, stored
        cursor.execute(migration.compression("pglz"))
        assert set(methods(cursor).values()) == {"p"}
        cursor.execute(migration.compression("lz4"))
        assert set(methods(cursor).values()) == {"l"}


# Names a byte-order sort and a language-aware one put in different orders, and a name with the
# characters a text[] literal quotes.
ODD = 'a "b", {c}\\d'


def _names(assignment) -> list[str]:
    assignment.refresh_from_db()
    return assignment.interval_names


def test_interval_names_recorded_by_every_writer_and_never_taken_away(api, key, assignment, calculator, device):
    """A stored run adds the counter names of the intervals it writes, a ``PUT`` the user fields
    it merges, each in its transaction, sorted as Python sorts; the row's names stay (a union with
    the row as the statement finds it, not the writer's names alone), and nothing takes one
    away: a rewrite without it, a user field set to null, a deletion, a purge."""
    from analytics.models import Assignment
    from analytics.services import intervals_purge

    assert _names(assignment) == []
    _apply(assignment, created=[_iv(10, 20, km=1.5, max_speed=40), _iv(30, 40, km=2, **{"Zeta": 1, ODD: 2})])
    assert _names(assignment) == sorted(["km", "max_speed", "Zeta", ODD]) == ["Zeta", ODD, "km", "max_speed"]
    # A name another writer recorded stays beside the run's new one.
    Assignment.objects.using(device.database).filter(pk=assignment.pk).update(interval_names=["zone"])
    _apply(assignment, updated=[_iv(30, 45, km=3, legacy=True)], now=2000.0)
    assert _names(assignment) == ["km", "legacy", "zone"]

    path = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/30000000"
    response = api.call("PUT", path, key=key, body={"driver": "Ann", "Note": {"a": 1}})
    assert response.status_code == 200, response.json()
    assert _names(assignment) == ["Note", "driver", "km", "legacy", "zone"]
    assert api.call("PUT", path, key=key, body={"Note": None}).status_code == 200
    _apply(assignment, updated=[_iv(30, 50, km=4)], now=3000.0)
    _apply(assignment, deleted=[_iv(30, 50)], created=[_iv(60, 70, max_speed=1)], now=4000.0)
    calculator.intervals_ttl = 1
    assert [row["id"] for row in intervals_purge(assignment=assignment, calculator=calculator, now=100.0)] == [10_000_000, 60_000_000]
    assert _names(assignment) == ["Note", "driver", "km", "legacy", "max_speed", "zone"]
    # A merge into no interval adds nothing.
    assert api.call("PUT", path, key=key, body={"gone": 1}).status_code == 404
    assert "gone" not in _names(assignment)


def test_a_batch_of_runs_records_its_names_in_one_statement(account, calculator, assignment, device):
    """``runs_store`` reads the names with the assignments' lock and writes them with their state:
    one UPDATE of the assignment rows for the batch, the new names on the rows that lacked them,
    the others as they were."""
    from django.db import connections, transaction
    from django.test.utils import CaptureQueriesContext

    from analytics.calculation import Run, runs_store
    from analytics.engine import Diff
    from analytics.services import assignment_create
    from devices.services import device_create
    from tests.support.intervals import StoredBefore

    alias = device.database
    second = assignment_create(calculator=calculator,
                               device=device_create(account=account, configuration={"ident": "names-2"}))[0]
    _apply(assignment, created=[_iv(10, 20, km=1.0)])
    _apply(second, created=[_iv(10, 20, km=1.0, extra="a")])
    for row in (assignment, second):
        row.refresh_from_db()
    runs = [
        Run(assignment=assignment, calculator=calculator, begin=0.0, end=100.0, was_state=assignment.state,
            diff=Diff(created=[_iv(30, 40, km=2.0, max_speed=9)], updated=[], deleted=[], active_id=None,
                      reached_end=True)),
        Run(assignment=second, calculator=calculator, begin=0.0, end=100.0, was_state=second.state,
            diff=Diff(created=[_iv(30, 40, km=2.0)], updated=[], deleted=[], active_id=None, reached_end=True)),
    ]
    with transaction.atomic(using=alias), CaptureQueriesContext(connections[alias]) as captured:
        runs_store(alias=alias, runs=runs, stamp=2000.0, before=lambda _run: StoredBefore(alias))
    assignment_updates = [query["sql"] for query in captured
                          if query["sql"].lstrip().startswith("UPDATE analytics_assignment")]
    assert len(assignment_updates) == 1
    assert (_names(assignment), _names(second)) == (["km", "max_speed"], ["extra", "km"])


def test_migration_fills_interval_names_from_the_stored_intervals_and_runs_backwards(
    account, assignment, calculator, device
):
    """Migration 0010 adds ``interval_names`` and fills it from the keys of every stored
    interval's counters and user fields, sorted as the writers sort them (so equal to what they
    recorded), ``{}`` for an assignment without intervals; backwards, it drops the column."""
    from django.db import connections

    from analytics.services import assignment_create, interval_user_update
    from devices.services import device_create

    migration = importlib.import_module("analytics.migrations.0010_assignment_interval_names")
    empty = assignment_create(calculator=calculator,
                              device=device_create(account=account, configuration={"ident": "names-3"}))[0]
    _apply(assignment, created=[_iv(10, 20, km=1.5), _iv(30, 40, max_speed=3, **{"Zeta": 1, ODD: None})])
    interval_user_update(assignment=assignment, calculator=calculator, interval_id=10_000_000,
                         fields={"driver": "Ann", "Note": 1})
    recorded = _names(assignment)
    assert recorded == ["Note", "Zeta", ODD, "driver", "km", "max_speed"]
    column = ("SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
              "AND table_name = 'analytics_assignment' AND column_name = 'interval_names'")
    with connections[device.database].cursor() as cursor:
        # The test's transaction holds the foreign keys' deferred checks: done now, as a
        # migration's transaction would have none pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(migration.DROP)
        cursor.execute(column)
        assert cursor.fetchone() == (0,)
        cursor.execute(migration.CREATE)
        cursor.execute(column)
        assert cursor.fetchone() == (1,)
        cursor.execute("SELECT id, interval_names FROM analytics_assignment WHERE calculator_id = %s ORDER BY id",
                       [calculator.pk])
        assert cursor.fetchall() == [(assignment.pk, recorded), (empty.pk, [])]
