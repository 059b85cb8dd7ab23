"""Message storage and ingestion through the REST API and the ingestion service."""

from __future__ import annotations

import json
import time

import pytest
from django.db import connections

from devices import storage
from devices.models import Device, DeviceIdent
from devices.services import device_create, messages_ingest, messages_ingest_batches, messages_purge_expired

pytestmark = pytest.mark.django_db(databases="__all__")

T0 = 1_700_000_000.0


def rows(device) -> list[dict]:
    return storage.messages_read(alias=device._state.db, device_ids=[device.pk])


def outbox(device) -> int:
    with connections[device._state.db].cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(array_length(stamps, 1)), 0) FROM outbox WHERE device_id = %s", [device.pk])
        return cursor.fetchone()[0]


def post(api, key, device, body, **kw):
    return api.call("POST", f"/gw/devices/{device.pk}/messages", key=key, body=body, **kw)


def get(api, key, device, query=""):
    response = api.call("GET", f"/gw/devices/{device.pk}/messages{query}", key=key)
    assert response.status_code == 200, response.content
    return response.json()["result"]


def test_equal_timestamps_merge_and_new_keys_overwrite(api, key, device):
    assert post(api, key, device, [{"timestamp": T0, "a": 1, "b": 1}]).status_code == 200
    assert post(api, key, device, [{"timestamp": T0, "b": 2, "c": 3}]).status_code == 200
    [message] = get(api, key, device)
    assert (message["a"], message["b"], message["c"]) == (1, 2, 3)
    assert message["device.id"] == device.pk and message["device.name"] == device.name
    assert message["ident"] == device.ident and isinstance(message["rest.timestamp"], float)


def test_equal_timestamps_within_one_batch_merge_in_order(device):
    result = messages_ingest(devices=[device], messages=[{"timestamp": T0, "a": 1}, {"timestamp": T0, "a": 2, "b": 1}])
    assert result.accepted == 2
    [message] = rows(device)
    assert (message["a"], message["b"]) == (2, 1)


def test_resending_a_batch_changes_nothing(device):
    batch = [{"timestamp": T0 + i, "x": i} for i in range(50)]
    first = messages_ingest(devices=[device], messages=batch, now=T0 + 100)
    before = rows(device)
    second = messages_ingest(devices=[device], messages=batch, now=T0 + 200)
    assert [(c.begin, c.end, c.count) for c in first.changes] == [(int(T0 * 1e6), int((T0 + 49) * 1e6), 50)]
    assert second.changes == []
    assert rows(device) == before
    assert outbox(device) == 50


def test_batches_of_several_devices_in_one_ingestion(account):
    """What an MQTT consumer's turn brought: each device its own messages, one result each, the
    valid ones stored, the refused ones reported by index or id, and every device's range."""
    one, two, off = (device_create(account=account, name=name, configuration={"ident": f"batch-{name}"})
                     for name in ("one", "two", "off"))
    Device.objects.using(off._state.db).filter(pk=off.pk).update(enabled=False)
    off.refresh_from_db()
    results = messages_ingest_batches(batches=[
        ([one], [{"timestamp": T0, "x": 1}, {"timestamp": T0 + 1, "x": 2}]),
        ([two], [{"timestamp": T0 + 5, "x": 3}, {"x": "no timestamp"}]),
        ([off], [{"timestamp": T0, "x": 4}]),
    ], source="mqtt")
    assert [r.accepted for r in results] == [2, 1, 0]
    assert results[0].errors == []
    assert [(e.index, e.kind) for e in results[1].errors] == [(1, "invalid_message")]
    assert [(e.id, e.kind) for e in results[2].errors] == [(off.pk, "device_disabled")]
    assert [(c.device_id, c.count) for c in results[0].changes] == [(one.pk, 2)]
    assert [(c.device_id, c.count) for c in results[1].changes] == [(two.pk, 1)]
    assert [m["x"] for m in rows(one)] == [1, 2] and [m["x"] for m in rows(two)] == [3] and rows(off) == []
    assert all(m["server.timestamp"] for m in rows(one))
    with pytest.raises(ValueError, match="in more than one batch"):
        messages_ingest_batches(batches=[([one], [{"timestamp": T0 + 9}]), ([one], [{"timestamp": T0 + 10}])])
    assert len(rows(one)) == 2  # nothing of that call stored


def test_out_of_order_arrival_is_stored_in_time_order_and_reports_the_range(device):
    late = messages_ingest(devices=[device], messages=[{"timestamp": T0 + 10, "x": 10}, {"timestamp": T0 + 30, "x": 30}])
    early = messages_ingest(devices=[device], messages=[{"timestamp": T0 + 20, "x": 20}, {"timestamp": T0, "x": 0}])
    assert [m["x"] for m in rows(device)] == [0, 10, 20, 30]
    assert (early.changes[0].begin, early.changes[0].end) == (int(T0 * 1e6), int((T0 + 20) * 1e6))
    assert late.changes[0].device_id == device.pk


def test_telemetry_keeps_the_newest_value_of_each_parameter(api, key, device):
    post(api, key, device, [{"timestamp": T0 + 10, "speed": 50, "fuel": 30}])
    post(api, key, device, [{"timestamp": T0 + 5, "speed": 99, "odometer": 7}])  # older: speed stays
    post(api, key, device, [{"timestamp": T0 + 20, "fuel": 29}])
    response = api.call("GET", f"/gw/devices/{device.pk}/telemetry", key=key)
    telemetry = response.json()["result"][0]["telemetry"]
    assert telemetry["speed"] == {"value": 50, "ts": T0 + 10}
    assert telemetry["fuel"] == {"value": 29, "ts": T0 + 20}
    assert telemetry["odometer"] == {"value": 7, "ts": T0 + 5}
    assert telemetry["timestamp"] == {"value": T0 + 20, "ts": T0 + 20}


def test_iso_timestamps_and_microseconds(device):
    messages_ingest(devices=[device], messages=[
        {"timestamp": "2023-11-14T22:13:20.123456Z"}, {"timestamp": "2023-11-14T23:13:20+01:00", "x": 1},
        {"timestamp": T0 + 0.000001},
    ])
    stamps = [m["timestamp"] for m in rows(device)]
    assert stamps == [T0, T0 + 0.000001, T0 + 0.123456]
    assert rows(device)[0]["x"] == 1  # +01:00 is the same instant as T0


def test_read_parameters_begin_end_count_reverse_fields_filter(api, key, device):
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "speed": i * 10} for i in range(10)])
    assert [m["speed"] for m in get(api, key, device, f"?begin={T0 + 2}&end={T0 + 4}")] == [20, 30, 40]
    assert [m["speed"] for m in get(api, key, device, "?count=3&reverse=true")] == [90, 80, 70]
    assert get(api, key, device, "?count=1&fields=speed,timestamp") == [{"speed": 0, "timestamp": T0}]
    data = '{"filter": "speed >= 50 && speed < 80", "fields": "speed"}'
    from urllib.parse import quote

    assert get(api, key, device, f"?data={quote(data)}") == [{"speed": 50}, {"speed": 60}, {"speed": 70}]


def test_delete_messages_in_a_range(api, key, device):
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + i} for i in range(10)])
    response = api.call("DELETE", f"/gw/devices/{device.pk}/messages?begin={T0 + 3}&end={T0 + 5}", key=key)
    assert response.status_code == 200
    assert [m["timestamp"] - T0 for m in rows(device)] == [0, 1, 2, 6, 7, 8, 9]


def test_ttl_purge_deletes_only_expired_messages_in_batches(account):
    short = device_create(account=account, configuration={"ident": "short"}, messages_ttl=3600)
    long = device_create(account=account, configuration={"ident": "long"})
    now = time.time()
    old = [{"timestamp": now - 7200 - i} for i in range(25)]
    fresh = [{"timestamp": now - 60}]
    messages_ingest(devices=[short, long], messages=old + fresh, now=now)
    deleted = messages_purge_expired(alias=short._state.db, now=now, batch=10)
    assert deleted == 25
    assert len(rows(short)) == 1 and len(rows(long)) == 26


def test_selectors_on_devices(api, key, account):
    for ident, name in [("352600001", "truck 1"), ("352600002", "truck 2"), ("999", "van")]:
        device_create(account=account, configuration={"ident": ident}, name=name)
    def names(selector):
        response = api.call("GET", f"/gw/devices/{selector}?fields=name", key=key)
        assert response.status_code == 200, response.content
        return [item["name"] for item in response.json()["result"]]
    assert names("configuration.ident=3526*") == ["truck 1", "truck 2"]
    assert names("name=truck%3F2") == ["truck 2"]
    assert names("name=truck*,configuration.ident=*1") == ["truck 1"]
    assert names("all") == ["truck 1", "truck 2", "van"]


def test_ident_rules(api, key, account, make_account):
    response = api.call("POST", "/gw/devices", key=key, body=[
        {"configuration": {"ident": "a/b"}}, {"configuration": {"ident": "a+b"}}, {"configuration": {"ident": "x\u0001"}},
        {"configuration": {}}, {"configuration": {"ident": "ok-1"}}, {"configuration": {"ident": "ok-1"}},
    ])
    assert response.status_code == 200
    body = response.json()
    assert [item["configuration"]["ident"] for item in body["result"]] == ["ok-1"]
    assert [error["field"] for error in body["errors"]] == [f"[{index}].configuration.ident" for index in (0, 1, 2, 3, 5)]
    assert "already exists" in body["errors"][-1]["reason"]
    # The same ident is taken in the whole region, across datacenters.
    other = make_account("other", datacenter="eu-2")
    with pytest.raises(Exception, match="already exists"):
        device_create(account=other, configuration={"ident": "ok-1"})
    # ...but is free in another region.
    root = make_account("root")
    ru = make_account("ru", parent=root, region="ru")
    assert device_create(account=ru, configuration={"ident": "ok-1"}).pk
    assert DeviceIdent.objects.filter(ident="ok-1").count() == 2


def test_devices_live_in_their_accounts_datacenter(make_account):
    root = make_account("root")
    eu2 = make_account("eu2", parent=root, datacenter="eu-2")
    ru = make_account("ru", parent=root, region="ru")
    d1 = device_create(account=root, configuration={"ident": "d1"})
    d2 = device_create(account=eu2, configuration={"ident": "d2"})
    d3 = device_create(account=ru, configuration={"ident": "d3"})
    assert (d1._state.db, d2._state.db, d3._state.db) == ("dc_eu_1", "dc_eu_2", "dc_ru_1")
    assert list(Device.objects.using("dc_eu_2").values_list("pk", flat=True)) == [d2.pk]
    assert not Device.objects.using("dc_eu_1").filter(pk__in=[d2.pk, d3.pk]).exists()
    assert (d1.pk % 1024, d2.pk % 1024, d3.pk % 1024) == (1, 2, 3)


def test_other_accounts_devices_are_404_for_everything(api, key, make_account, make_token):
    stranger = make_account("stranger")
    theirs = device_create(account=stranger, configuration={"ident": "theirs"})
    messages_ingest(devices=[theirs], messages=[{"timestamp": T0}])
    for method, path, body in [
        ("GET", f"/gw/devices/{theirs.pk}", None),
        ("PUT", f"/gw/devices/{theirs.pk}", {"name": "mine"}),
        ("DELETE", f"/gw/devices/{theirs.pk}", None),
        ("GET", f"/gw/devices/{theirs.pk}/messages", None),
        ("POST", f"/gw/devices/{theirs.pk}/messages", [{"timestamp": T0 + 1}]),
        ("DELETE", f"/gw/devices/{theirs.pk}/messages", None),
        ("GET", f"/gw/devices/{theirs.pk}/telemetry", None),
    ]:
        response = api.call(method, path, key=key, body=body)
        assert response.status_code == 404, (method, path, response.content)
        assert response.json()["errors"][0]["code"] == 404
    assert len(rows(theirs)) == 1
    theirs.refresh_from_db()
    assert theirs.name == ""


def test_moving_a_device_stays_in_the_region(api, key, account, make_account):
    device = device_create(account=account, configuration={"ident": "mover"})
    child = make_account("child", parent=account)
    ru = make_account("ru child", parent=account, region="ru")
    response = api.call("PUT", f"/gw/devices/{device.pk}", key=key, body={"cid": ru.pk})
    assert response.status_code == 400 and "region" in response.json()["errors"][0]["reason"]
    response = api.call("PUT", f"/gw/devices/{device.pk}", key=key, body={"cid": child.pk})
    assert response.status_code == 200, response.content
    assert response.json()["result"][0]["cid"] == child.pk
    assert DeviceIdent.objects.get(device_id=device.pk).account_id == child.pk


BAD_MESSAGES = [
    ({"x": 1}, "timestamp is required"),
    ({"timestamp": "yesterday"}, "ISO 8601"),
    ({"timestamp": True}, "boolean"),
    ({"timestamp": -5}, "out of range"),
    ({"timestamp": 4_102_444_800}, "future"),
    ({"timestamp": T0, "": 1}, "non-empty"),
    ({"timestamp": T0, "k" * 300: 1}, "longer than"),
    ({"timestamp": T0, "s": "a\u0000b"}, "NUL"),
    ([1, 2], "JSON object"),
    ("text", "JSON object"),
]


def test_bad_messages_are_reported_by_index_and_valid_ones_stored(api, key, device):
    batch = []
    for bad, _reason in BAD_MESSAGES:
        batch += [{"timestamp": T0 + len(batch), "ok": True}, bad]
    response = post(api, key, device, batch)
    assert response.status_code == 200, response.content
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == [f"[{index}]" for index in range(1, 2 * len(BAD_MESSAGES), 2)]
    for error, (_bad, reason) in zip(errors, BAD_MESSAGES, strict=True):
        assert reason in error["reason"], error
    stored = rows(device)
    assert len(stored) == len(BAD_MESSAGES) and all(m["ok"] for m in stored)


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        ('[{"timestamp": 1700000000,', 400, "not valid JSON"),
        ('{"timestamp": 1700000000}', 400, "JSON array"),
        ('[{"timestamp": NaN}]', 400, "NaN"),
        ('[{"timestamp": 1700000000, "x": Infinity}]', 400, "Infinity"),
        ("[" * 50 + "]" * 50, 400, "nested"),
        ('[{"timestamp": 1700000000, "x": ' + "[" * 30 + "]" * 30 + "}]", 400, "nested"),
    ],
)
def test_bad_bodies_store_nothing(api, key, device, raw, status, reason):
    response = api.call("POST", f"/gw/devices/{device.pk}/messages", key=key, raw=raw)
    assert response.status_code == status, response.content
    assert reason in response.json()["errors"][0]["reason"]
    assert rows(device) == []


def test_oversized_body_is_413(api, key, device, settings):
    settings.MAX_BODY_BYTES = 1000
    response = post(api, key, device, [{"timestamp": T0 + i, "pad": "x" * 100} for i in range(20)])
    assert response.status_code == 413
    assert rows(device) == []


def test_too_many_messages_in_one_batch(api, key, device, monkeypatch):
    monkeypatch.setattr("devices.services.MAX_MESSAGES_PER_BATCH", 5)
    response = post(api, key, device, [{"timestamp": T0 + i} for i in range(6)])
    assert response.status_code == 400 and "at most 5" in response.json()["errors"][0]["reason"]
    assert rows(device) == []


@pytest.mark.parametrize(
    "query", ["?begin=abc", "?count=0", "?count=x", "?reverse=maybe", "?data=%7Bbad", "?data=%5B%5D", "?unknown=1",
              "?filter=speed%20%3E", "?data=%7B%22count%22%3A%20%225%22%7D"],
)
def test_bad_read_parameters(api, key, device, query):
    response = api.call("GET", f"/gw/devices/{device.pk}/messages{query}", key=key)
    assert response.status_code == 400, (query, response.content)
    assert response.json()["errors"][0]["reason"]


@pytest.mark.parametrize(
    "body",
    [
        [{"configuration": "x"}],
        [{"configuration": {"ident": 5}}],
        [{"configuration": {"ident": "a"}, "enabled": "yes"}],
        [{"configuration": {"ident": "a"}, "messages_ttl": -1}],
        [{"configuration": {"ident": "a"}, "messages_ttl": 1.5}],
        [{"configuration": {"ident": "a"}, "colour": "red"}],
        [{"name": "no configuration"}],
        ["string"],
    ],
)
def test_bad_devices_are_refused_and_nothing_is_stored(api, key, account, body):
    response = api.call("POST", "/gw/devices", key=key, body=body)
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"].startswith("[0]")
    assert not Device.objects.using("dc_eu_1").exists()
    assert not DeviceIdent.objects.exists()


def test_filtered_reads_walk_the_history_in_chunks(account):
    from devices.selectors import messages_matching

    class Even:
        def matches(self, message):
            return message["n"] % 2 == 0

    a = device_create(account=account, configuration={"ident": "chunk-a"})
    b = device_create(account=account, configuration={"ident": "chunk-b"})
    messages_ingest(devices=[a, b], messages=[{"timestamp": T0 + i, "n": i} for i in range(25)])
    found = messages_matching(devices=[a, b], begin=None, end=None, count=100, reverse=False, condition=Even(), chunk=4)
    assert [(m["n"], m["device.id"]) for m in found] == [(n, d) for n in range(0, 25, 2) for d in sorted([a.pk, b.pk])]
    found = messages_matching(devices=[a], begin=None, end=None, count=3, reverse=True, condition=Even(), chunk=4)
    assert [m["n"] for m in found] == [24, 22, 20]


def test_deleting_a_device_frees_its_ident_and_drops_its_messages(api, key, account, device):
    messages_ingest(devices=[device], messages=[{"timestamp": T0, "x": 1}])
    device_id = device.pk
    response = api.call("DELETE", f"/gw/devices/{device_id}", key=key)
    assert response.status_code == 200, response.content
    assert not DeviceIdent.objects.filter(device_id=device_id).exists()
    assert storage.messages_read(alias="dc_eu_1", device_ids=[device_id]) == []
    again = device_create(account=account, configuration={"ident": "352625690000001"})
    assert again.pk != device_id


def test_a_disabled_device_takes_no_messages_from_any_entry_point(api, key, account, device):
    enabled = device_create(account=account, configuration={"ident": "on"})
    device.enabled = False
    device.save(update_fields=["enabled"])
    response = post(api, key, device, [{"timestamp": T0}])
    assert response.status_code == 409
    assert response.json()["errors"][0]["code"] == 409
    assert "enable it" in response.json()["errors"][0]["reason"]
    # With several devices selected, the enabled ones store the batch, the disabled one is named.
    response = api.call("POST", f"/gw/devices/{device.pk},{enabled.pk}/messages", key=key, body=[{"timestamp": T0}])
    assert response.status_code == 200
    assert [error["id"] for error in response.json()["errors"]] == [device.pk]
    result = messages_ingest(devices=[device], messages=[{"timestamp": T0 + 1}], source="mqtt")
    assert result.accepted == 0 and result.errors[0].id == device.pk
    assert rows(device) == [] and len(rows(enabled)) == 1


# --- the write path: rows after the newest stored one go straight in, the others merge ---------


def outbox_rows(device) -> list[list[int]]:
    with connections[device._state.db].cursor() as cursor:
        # the message rows (telemetry topics are events apart)
        cursor.execute("SELECT stamps FROM outbox WHERE device_id = %s AND stamps IS NOT NULL ORDER BY id", [device.pk])
        return [row[0] for row in cursor.fetchall()]


def us(seconds: float) -> int:
    return round(seconds * 1_000_000)


@pytest.fixture
def appending(monkeypatch):
    """What each straight COPY into ``messages`` did: True when it went in, False when it met a
    stored row and was rolled back."""
    outcomes: list[bool] = []
    original = storage._copy_appending

    def spy(*args, **kwargs):
        outcomes.append(original(*args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(storage, "_copy_appending", spy)
    return outcomes


def test_new_rows_go_straight_in_and_an_older_batch_in_the_same_call_merges(account, appending):
    fresh = device_create(account=account, configuration={"ident": "fresh"})
    stored = device_create(account=account, configuration={"ident": "stored"})
    messages_ingest(devices=[stored], messages=[{"timestamp": T0 + i, "a": i} for i in range(5)])
    result = messages_ingest(
        devices=[stored, fresh], messages=[{"timestamp": T0 + i, "a": i, "b": 1} for i in range(3)]
    )
    assert appending == [True, True]  # the first batch, then ``fresh`` of the second one
    ranges = {c.device_id: (c.begin, c.end, c.count) for c in result.changes}
    assert ranges == {d.pk: (us(T0), us(T0 + 2), 3) for d in (stored, fresh)}
    assert [(m["a"], m.get("b")) for m in rows(stored)] == [(0, 1), (1, 1), (2, 1), (3, None), (4, None)]
    assert [(m["a"], m["b"]) for m in rows(fresh)] == [(0, 1), (1, 1), (2, 1)]
    stamps = [us(T0 + i) for i in range(3)]
    assert outbox_rows(stored)[1:] == [stamps] and outbox_rows(fresh) == [stamps]


def test_a_batch_overlapping_the_stored_ones_merges_the_old_part_and_appends_the_rest(device, appending):
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "x": i} for i in range(10)], now=T0 + 100)
    # 5..7 are resent unchanged, 8..9 change, 10..13 are new.
    batch = [{"timestamp": T0 + i, "x": i if i < 8 else -i} for i in range(5, 14)]
    result = messages_ingest(devices=[device], messages=batch, now=T0 + 200)
    assert appending == [True, True]
    assert [(c.begin, c.end, c.count) for c in result.changes] == [(us(T0 + 8), us(T0 + 13), 6)]
    assert outbox_rows(device) == [[us(T0 + i) for i in range(10)], [us(T0 + i) for i in range(8, 14)]]
    stored = rows(device)
    assert [m["x"] for m in stored] == [0, 1, 2, 3, 4, 5, 6, 7, -8, -9, -10, -11, -12, -13]
    assert {m["rest.timestamp"] for m in stored[5:8]} == {T0 + 100}  # unchanged rows were not touched
    assert {m["rest.timestamp"] for m in stored[8:]} == {T0 + 200}


def test_a_batch_wholly_before_the_newest_stored_message_only_merges(device, appending):
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "x": i} for i in (0, 2, 4)])
    result = messages_ingest(devices=[device], messages=[{"timestamp": T0 + 1, "x": 1}, {"timestamp": T0 + 2, "y": 2}])
    assert appending == [True]  # nothing of the second batch could go straight in
    assert [(c.begin, c.end, c.count) for c in result.changes] == [(us(T0 + 1), us(T0 + 2), 2)]
    assert [(m["x"], m.get("y")) for m in rows(device)] == [(0, None), (1, None), (2, 2), (4, None)]
    assert outbox_rows(device)[1:] == [[us(T0 + 1), us(T0 + 2)]]


def test_a_row_stored_meanwhile_rolls_the_straight_copy_back_and_the_batch_merges(device, appending, monkeypatch):
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "a": 1, "b": 1} for i in range(3)])
    # As if a concurrent write stored its rows after this one looked for the newest stored message.
    monkeypatch.setattr(storage, "_NEWEST", "SELECT id, NULL::bigint FROM unnest(%s::bigint[]) AS d(id)")
    result = messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "b": 2, "c": 3} for i in range(1, 5)])
    assert appending == [True, False]
    assert [(c.begin, c.end, c.count) for c in result.changes] == [(us(T0 + 1), us(T0 + 4), 4)]
    assert [(m.get("a"), m["b"], m.get("c")) for m in rows(device)] == [
        (1, 1, None), (1, 2, 3), (1, 2, 3), (None, 2, 3), (None, 2, 3),
    ]
    assert outbox_rows(device)[1:] == [[us(T0 + i) for i in range(1, 5)]]
    # The transaction goes on after the rollback to the savepoint: a resend merges to nothing.
    again = messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "b": 2, "c": 3} for i in range(1, 5)])
    assert again.changes == [] and len(outbox_rows(device)) == 2


def test_merges_in_one_transaction_do_not_see_each_others_staged_rows(device):
    from django.db import transaction

    with transaction.atomic(using=device._state.db):
        messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "x": i} for i in range(3)])
        first = messages_ingest(devices=[device], messages=[{"timestamp": T0 + i, "x": 10 + i} for i in range(2)])
        second = messages_ingest(devices=[device], messages=[{"timestamp": T0 + 2, "x": 99}])
    assert [(c.begin, c.count) for c in first.changes] == [(us(T0), 2)]
    assert [(c.begin, c.count) for c in second.changes] == [(us(T0 + 2), 1)]
    assert [m["x"] for m in rows(device)] == [10, 11, 99]


def test_the_platform_stamps_win_over_keys_of_the_same_name_and_text_survives_copy(device):
    text = 'back\\slash "quoted" tab\t newline\n ünïcode \u2028 \\u0000'
    messages_ingest(devices=[device], messages=[
        {"timestamp": T0, "device.id": 1, "ident": "spoofed", "rest.timestamp": 5, "s": text, "big": 2**70},
        {"timestamp": T0, "nested": {"k": [text, 1.5, None]}},
    ])
    [message] = rows(device)
    assert (message["device.id"], message["ident"]) == (device.pk, device.ident)
    assert message["rest.timestamp"] != 5
    assert message["s"] == text and message["nested"] == {"k": [text, 1.5, None]}
    assert message["big"] == 2**70
    telemetry = storage.telemetry_read(alias=device._state.db, device_ids=[device.pk])[device.pk]
    assert telemetry["ident"]["value"] == device.ident and telemetry["s"]["value"] == text
    with connections[device._state.db].cursor() as cursor:  # the stored text names each key once
        cursor.execute("SELECT body::text FROM messages WHERE device_id = %s", [device.pk])
        stored = cursor.fetchone()[0]
    assert stored.count('"ident"') == stored.count('"device.id"') == stored.count('"rest.timestamp"') == 1


def test_values_that_cannot_be_stored_are_refused_by_index(device):
    nan, inf = float("nan"), float("inf")
    batch = [
        {"timestamp": T0, "ok": 1.5, "s": "text", "n": None, "b": True, "list": [1, "x"]},
        {"timestamp": T0 + 1, "x": nan},
        {"timestamp": T0 + 2, "x": -inf},
        {"timestamp": T0 + 3, "deep": {"a": [1, {"b": inf}]}},
        {"timestamp": T0 + 4, "deep": ["a\u0000"]},
        {"timestamp": T0 + 5, "s": "\u0000", "new\u0001name": 1},  # the first problem is named
        {"timestamp": T0 + 6, "ok": 2.5},
    ]
    result = messages_ingest(devices=[device], messages=batch)
    assert [(e.index, e.reason) for e in result.errors] == [
        (1, "x is not a finite number"),
        (2, "x is not a finite number"),
        (3, "deep: nested values may not contain NUL characters, lone surrogates or non-finite numbers"),
        (4, "deep: nested values may not contain NUL characters, lone surrogates or non-finite numbers"),
        (5, "s: string values may not contain the NUL character"),
    ]
    assert [m["ok"] for m in rows(device)] == [1.5, 2.5]


@pytest.mark.parametrize("text", ["", "[{" * 40], ids=["plain", "brackets-in-strings"])
def test_the_depth_limit_counts_containers_not_brackets_inside_strings(api, key, device, settings, text):
    def nested(levels):
        value: object = text
        for _ in range(levels):
            value = [value]
        return value

    # The body is one level, a message another: a parameter may nest MAX_JSON_DEPTH - 1 more.
    deepest = [{"timestamp": T0, "v": nested(settings.MAX_JSON_DEPTH - 1), "s": text}]
    assert post(api, key, device, deepest).status_code == 200
    too_deep = [{"timestamp": T0 + 1, "v": nested(settings.MAX_JSON_DEPTH), "s": text}]
    response = post(api, key, device, too_deep)
    assert response.status_code == 400 and "nested deeper" in response.json()["errors"][0]["reason"]
    assert [m["timestamp"] for m in rows(device)] == [T0]


def test_an_integer_timestamp_beyond_any_float_is_refused_by_index(api, key, device):
    response = api.call(
        "POST", f"/gw/devices/{device.pk}/messages", key=key,
        raw='[{"timestamp": 1' + "0" * 400 + '}, {"timestamp": 1700000000}]',
    )
    assert response.status_code == 200, response.content
    assert response.json()["errors"] == [
        {"code": 400, "reason": "timestamp is out of range", "field": "[0]"}
    ]
    assert [m["timestamp"] for m in rows(device)] == [T0]


def test_integers_beyond_64_bits_are_kept_exactly(api, key, device):
    big, negative = 123456789012345678901234567890, -(2**64) - 1
    raw = f'[{{"timestamp": 1700000000, "big": {big}, "nested": {{"n": [{negative}]}}, "f": 0.1234567890123456789012}}]'
    response = api.call("POST", f"/gw/devices/{device.pk}/messages", key=key, raw=raw)
    assert response.status_code == 200, response.content
    [message] = get(api, key, device)
    assert (message["big"], message["nested"]["n"][0]) == (big, negative)
    assert message["f"] == 0.1234567890123456789012
    response = api.call("GET", f"/gw/devices/{device.pk}/telemetry", key=key)
    assert response.json()["result"][0]["telemetry"]["big"]["value"] == big


def test_an_integer_beyond_64_bits_is_out_of_range_not_a_type_error(api, key, device):
    response = api.call("PUT", f"/gw/devices/{device.pk}", key=key, raw='{"messages_ttl": 18446744073709551616}')
    assert response.status_code == 400
    assert "messages_ttl" in str(response.json()["errors"]) and "integer" not in response.json()["errors"][0]["reason"]


def test_a_gzip_body_is_decompressed_within_the_size_limit(api, key, device, settings):
    import gzip

    batch = json.dumps([{"timestamp": T0 + i, "v": i} for i in range(100)]).encode()
    response = api.generic(
        "POST", f"/gw/devices/{device.pk}/messages", gzip.compress(batch), content_type="application/json",
        HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"FlespiToken {key}", HTTP_CONTENT_ENCODING="gzip",
    )
    assert response.status_code == 200, response.content
    assert len(rows(device)) == 100

    def send(body: bytes, encoding: str = "gzip"):
        return api.generic(
            "POST", f"/gw/devices/{device.pk}/messages", body, content_type="application/json",
            HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"FlespiToken {key}", HTTP_CONTENT_ENCODING=encoding,
        )

    settings.MAX_BODY_BYTES = 10_000  # a small body that inflates beyond the limit
    bomb = gzip.compress(b"[" + b" " * 50_000 + b"]")
    assert len(bomb) < 10_000
    response = send(bomb)
    assert response.status_code == 413 and "once decompressed" in response.json()["errors"][0]["reason"]
    response = send(batch)  # says gzip, is not
    assert response.status_code == 400 and "not valid gzip" in response.json()["errors"][0]["reason"]
    response = send(gzip.compress(batch)[:-20])
    assert response.status_code == 400 and "cut short" in response.json()["errors"][0]["reason"]
    response = send(batch, encoding="br")
    assert response.status_code == 415
    assert response.json()["errors"][0]["reason"] == "Content-Encoding 'br' is not supported: send the body as gzip or plain"
    assert len(rows(device)) == 100


def test_a_resend_is_told_from_a_change_wherever_the_reception_stamp_appears(device):
    # The merge skips a row whose text differs only in the reception stamp; a member of that name
    # nested inside the message, or a value after it, must not fool it.
    nested = {"timestamp": T0, "n": {"a": 0, "rest.timestamp": 1, "server.timestamp": 2}, "v": 1}
    messages_ingest(devices=[device], messages=[nested, {"timestamp": T0 + 1, "v": 1}], now=T0 + 10)
    assert messages_ingest(devices=[device], messages=[nested], now=T0 + 20).changes == []
    changed = messages_ingest(devices=[device], messages=[{**nested, "v": 2}], now=T0 + 30)
    assert [(c.begin, c.count) for c in changed.changes] == [(int(T0 * 1e6), 1)]
    assert rows(device)[0]["v"] == 2 and rows(device)[0]["n"] == nested["n"]
    # Stored over REST, resent over MQTT (another stamp): the content is the same, nothing changes.
    assert messages_ingest(devices=[device], messages=[{"timestamp": T0 + 1, "v": 1}], source="mqtt").changes == []
    assert messages_ingest(devices=[device], messages=[{"timestamp": T0 + 1, "v": 3}], source="mqtt").changes
    assert messages_ingest(devices=[device], messages=[{"timestamp": T0 + 1, "v": 3}], source="rest").changes == []
    # A merged row (stored through jsonb) resent as it is: still nothing.
    assert messages_ingest(devices=[device], messages=[{**nested, "v": 2}], now=T0 + 40).changes == []
    assert outbox(device) == 4 and [m["v"] for m in rows(device)] == [2, 3]
