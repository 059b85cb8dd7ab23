"""Delivery of webhooks end to end: messages stored through the ingestion service, their outbox rows
fed to the delivery loop (running in a thread on the real databases), requests sent over real HTTP
to a real receiver that checks each signature. The receiver is killed, slowed, made to fail."""

from __future__ import annotations

import itertools
import time

import pytest

from devices.models import Device
from devices.services import device_create, messages_ingest
from tests.support.api import result_of
from tests.support.receiver import Receiver
from tests.support.waiting import wait_until
from tests.test_metrics import EU1, scrape, value
from webhooks import signing
from webhooks.models import Webhook

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

T0 = 1_700_000_000
MESSAGES = "flespi/message/gw/devices/+"


@pytest.fixture
def truck(account):
    return device_create(account=account, name="truck", configuration={"ident": "352625690000777"})


def hook(api, key, url: str, *, trigger: str = MESSAGES, **fields) -> dict:
    body = {"name": "hook", "triggers": [{"topic": trigger}], "configuration": {"uri": url}, **fields}
    (created,) = result_of(api.call("POST", "/platform/webhooks", key=key, body=[body]))
    return created


def send(device, numbers) -> None:
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + n, "n": n} for n in numbers])


def numbers_of(requests) -> list[int]:
    return [request.json()["payload"]["n"] for request in requests]


def logs(api, key, webhook_id: int, **query) -> list[dict]:
    params = "&".join(f"{name}={value}" for name, value in {"begin": 0, **query}.items())
    return result_of(api.call("GET", f"/platform/webhooks/{webhook_id}/logs?{params}", key=key))


def verified(request, secret: str) -> bool:
    return signing.verify(
        secret=secret, timestamp=request.headers[signing.TIMESTAMP_HEADER], body=request.body,
        signed=request.headers[signing.SIGNATURE_HEADER], now=time.time(),
    )


def test_every_event_arrives_once_in_order_signed(api, key, truck, receiver, delivery):
    created = hook(api, key, f"{receiver.url}/in")
    delivery()
    for batch in range(3):
        send(truck, range(batch * 100, batch * 100 + 100))
    requests = receiver.wait_for(300)
    time.sleep(0.3)  # nothing more comes
    requests = receiver.requests()
    assert numbers_of(requests) == list(range(300))
    assert all(verified(request, created["secret"]) for request in requests)
    assert not signing.verify(secret="another", timestamp=requests[0].headers[signing.TIMESTAMP_HEADER],
                              body=requests[0].body, signed=requests[0].headers[signing.SIGNATURE_HEADER],
                              now=time.time())
    first = requests[0]
    assert (first.method, first.path, first.headers["Content-Type"]) == ("POST", "/in", "application/json")
    assert first.json()["topic"] == f"flespi/message/gw/devices/{truck.pk}"
    assert (first.json()["payload"]["timestamp"], first.json()["payload"]["n"]) == (T0, 0)
    ids = [int(request.headers[signing.ID_HEADER]) for request in requests]
    assert ids == sorted(ids) and len(set(ids)) == 300
    log = wait_until(lambda: (rows := logs(api, key, created["id"], count=1000))
                     and all(row["status"] == "delivered" for row in rows) and rows, what="a delivered log")
    assert len(log) == 300 and {(row["attempts"], row["last_status"], row["last_error"]) for row in log} == {(1, 200, None)}
    assert [row["id"] for row in log] == ids


def test_a_receiver_down_for_a_while_loses_nothing(api, key, truck, receiver, delivery):
    created = hook(api, key, f"{receiver.url}/in")
    delivery()
    send(truck, range(5))
    receiver.wait_for(5)
    receiver.kill()
    send(truck, range(5, 50))
    # While it is down the first waiting event is tried again and again; nothing else goes.
    pending = wait_until(lambda: [row for row in logs(api, key, created["id"], status="pending") if row["attempts"] >= 3],
                         what="retries of the head of the queue")
    assert pending[0]["last_status"] is None and "Connection refused" in pending[0]["last_error"]
    assert len(pending) == 1  # only the head is tried
    receiver.start()
    receiver.wait_for(50)
    time.sleep(0.3)
    assert numbers_of(receiver.requests()) == list(range(50))


def test_a_slow_receiver_slows_only_its_own_webhook(api, key, truck, delivery):
    slow, fast = Receiver().start(), Receiver().start()
    try:
        slow.delay = 0.5
        hook(api, key, f"{slow.url}/slow")
        hook(api, key, f"{fast.url}/fast")
        delivery()
        began = time.time()
        send(truck, range(40))
        arrived = fast.wait_for(40, timeout=10)
        took = time.time() - began
        # All 40 reached the fast receiver while the slow one had answered at most a few.
        assert numbers_of(arrived) == list(range(40))
        assert took < 3 and len(slow.requests()) <= int(took / 0.5) + 2
        assert numbers_of(slow.requests()) == list(range(len(slow.requests())))
    finally:
        slow.kill()
        fast.kill()


def test_a_failing_receiver_is_retried_with_growing_pauses_then_delivered(api, key, truck, receiver, delivery):
    answers = iter([500, 500, 503, 500])
    receiver.answer = lambda request: next(answers, 200)
    created = hook(api, key, f"{receiver.url}/in")
    delivery(retry_first=0.2, retry_most=10)
    send(truck, [0, 1])
    requests = receiver.wait_for(6)
    assert numbers_of(requests) == [0, 0, 0, 0, 0, 1]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(requests[:5])]
    # the pauses double from 0.2 s: 0.2, 0.4, 0.8, 1.6 (each at least that, with some slack after)
    for gap, expected in zip(gaps, [0.2, 0.4, 0.8, 1.6], strict=True):
        assert expected - 0.02 <= gap <= expected + 0.5, gaps
    first = wait_until(lambda: [row for row in logs(api, key, created["id"]) if row["status"] == "delivered"][:1],
                       what="the first event delivered")
    assert (first[0]["attempts"], first[0]["last_status"]) == (5, 200)


def test_an_event_failing_beyond_the_retry_time_is_dropped_and_logged(api, key, truck, receiver, delivery, client):
    before = scrape(client)
    receiver.answer = lambda request: 500 if request.json()["payload"]["n"] == 0 else 200
    created = hook(api, key, f"{receiver.url}/in", retry_seconds=1)
    delivery(retry_first=0.2, retry_most=10)
    send(truck, [0, 1, 2])
    requests = receiver.wait_for(5)
    # attempts at 0, 0.2 and 0.6 s; the next would come at 1.4 s, beyond the second allowed: dropped
    assert numbers_of(requests) == [0, 0, 0, 1, 2]
    log = wait_until(lambda: (rows := logs(api, key, created["id"])) and rows[-1]["status"] == "delivered" and rows,
                     what="the log of all three")
    assert [(row["status"], row["attempts"], row["last_status"]) for row in log] == [
        ("dropped", 3, 500), ("delivered", 1, 200), ("delivered", 1, 200)]
    assert log[0]["last_error"] == "the receiver answered 500"
    assert [row["id"] for row in logs(api, key, created["id"], status="dropped")] == [log[0]["id"]]
    after = scrape(client)
    requests_total = "flespi_webhook_requests_total"
    assert {outcome: value(after, requests_total, **EU1, outcome=outcome)
            - value(before, requests_total, **EU1, outcome=outcome) for outcome in ("delivered", "failed", "dropped")} == {
        "delivered": 2, "failed": 2, "dropped": 1}


def test_a_range_of_the_log_is_replayed_in_order(api, key, truck, receiver, delivery):
    created = hook(api, key, f"{receiver.url}/in")
    delivery()
    send(truck, range(10))
    first = receiver.wait_for(10)
    wait_until(lambda: all(row["status"] == "delivered" for row in logs(api, key, created["id"])),
               what="all delivered")
    original = logs(api, key, created["id"])
    middle = original[3]["timestamp"], original[6]["timestamp"]
    # queued by the same write, the ten share a time: a range over it replays all ten
    replayed = result_of(api.call("POST", f"/platform/webhooks/{created['id']}/replay", key=key,
                                  body={"begin": middle[0], "end": middle[1]}))
    assert replayed == [{"id": created["id"], "replayed": 10}]
    again = receiver.wait_for(20)[10:]
    assert numbers_of(again) == list(range(10))
    assert {int(request.headers[signing.ID_HEADER]) for request in again}.isdisjoint(
        int(request.headers[signing.ID_HEADER]) for request in first)
    log = logs(api, key, created["id"])
    assert [row["replay_of"] for row in log if row["replay_of"] is not None] == [row["id"] for row in original]
    nothing = result_of(api.call("POST", f"/platform/webhooks/{created['id']}/replay", key=key,
                                 body={"begin": 0, "end": middle[0] - 1}))
    assert nothing == [{"id": created["id"], "replayed": 0}]


def test_a_webhook_gets_only_its_account_subtrees_events(api, make_account, make_token, receiver, delivery):
    root = make_account("root")
    child = make_account("child", parent=root)
    other = make_account("other")
    devices = {
        account.name: device_create(account=account, name=account.name, configuration={"ident": f"7000{index}"})
        for index, account in enumerate((root, child, other))
    }
    for account in (root, child, other):
        hook(api, make_token(account), f"{receiver.url}/{account.name}")
    delivery()
    for number, device in enumerate(devices.values()):
        send(device, [number])
    receiver.wait_for(4)
    time.sleep(0.5)
    got = {name: sorted(request.json()["payload"]["n"] for request in receiver.requests(f"/{name}"))
           for name in ("root", "child", "other")}
    assert got == {"root": [0, 1], "child": [1], "other": [2]}


def test_templates_shape_the_request(api, key, truck, receiver, delivery):
    hook(api, key, "", configuration={
        "uri": f"{receiver.url}/devices/{{{{topic[4]}}}}?n={{{{payload.n}}}}", "method": "PUT",
        "headers": [{"name": "X-Device", "value": "{{topic[4]}}"}, {"name": "Content-Type", "value": "text/plain"}],
        "body": "device {{topic[4]|text}} sent {{payload.n}} at {{payload.timestamp}}",
    })
    delivery()
    send(truck, [7])
    (request,) = receiver.wait_for(1)
    assert (request.method, request.path, request.headers["X-Device"], request.headers["Content-Type"]) == (
        "PUT", f"/devices/{truck.pk}?n=7", str(truck.pk), "text/plain")
    # the stored timestamp is a number with a fraction (unix seconds, microseconds kept)
    assert request.body == f"device {truck.pk} sent 7 at {T0 + 7}.0".encode()


def test_the_address_is_checked_again_when_sending(api, key, truck, receiver, delivery, settings):
    created = hook(api, key, f"{receiver.url}/in")
    settings.WEBHOOK_ALLOW = []  # the operator took 127.0.0.1 off the list since
    delivery()
    send(truck, [0])
    row = wait_until(lambda: [row for row in logs(api, key, created["id"]) if row["attempts"] >= 1],
                     what="an attempt")[0]
    assert row["last_error"] == ("refused: 127.0.0.1 is a loopback address, which WEBHOOK_ALLOW does not list")
    assert receiver.requests() == []


def test_a_disabled_webhook_queues_nothing_and_a_deleted_one_leaves_no_log(api, key, truck, receiver, delivery):
    created = hook(api, key, f"{receiver.url}/in", enabled=False)
    delivery()
    send(truck, [0])
    time.sleep(0.5)
    assert receiver.requests() == [] and logs(api, key, created["id"]) == []
    result_of(api.call("PUT", f"/platform/webhooks/{created['id']}", key=key, body={"enabled": True}))
    time.sleep(0.3)  # the loop reads the webhooks again
    send(truck, [1])
    assert numbers_of(receiver.wait_for(1)) == [1]
    wait_until(lambda: logs(api, key, created["id"]), what="a log")
    result_of(api.call("DELETE", f"/platform/webhooks/{created['id']}", key=key))
    assert not Webhook.objects.exists()
    from django.db import connections

    with connections["dc_eu_1"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = %s", [created["id"]])
        assert cursor.fetchone()[0] == 0


def test_the_loop_goes_on_after_losing_its_database_session(api, key, truck, receiver, delivery):
    """Its session (and with it the datacenter's delivery lock) ended by the server: the step that
    finds out fails, the runner logs and counts it, and the next steps connect and lock again."""
    from django.db import connections

    from flespi_site.constants import WEBHOOKS_LOCK

    hook(api, key, f"{receiver.url}/in")
    loop = delivery()
    created = result_of(api.call("GET", "/platform/webhooks/all", key=key))[0]
    send(truck, [0])
    receiver.wait_for(1)
    wait_until(lambda: [row["status"] for row in logs(api, key, created["id"])] == ["delivered"], what="marked")
    with connections["dc_eu_1"].cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
            "AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [WEBHOOKS_LOCK],
        )
        assert cursor.fetchall() == [(True,)]
    send(truck, [1, 2])
    assert numbers_of(receiver.wait_for(3)) == [0, 1, 2]
    assert loop.errors >= 1


def test_a_move_to_another_datacenter_delivers_each_event_once_in_order(api, key, account, truck, receiver, delivery):
    """Events delivered before the move, events queued and failing (the receiver is down) or
    still in the feed when the account moves, events after it: the receiver gets each once, in
    order. The delivery loops of both datacenters run throughout."""
    from accounts.moves import account_move

    created = hook(api, key, f"{receiver.url}/in")
    source = delivery(alias="dc_eu_1")
    delivery(alias="dc_eu_2")
    send(truck, range(10))
    receiver.wait_for(10)
    receiver.kill()
    send(truck, range(10, 30))
    wait_until(lambda: [row for row in logs(api, key, created["id"], status="pending") if row["attempts"] >= 1],
               what="a failing head of the queue")
    source.stop()  # what comes next stays in the source's feed until the move takes it along
    send(truck, range(30, 40))

    account_move(account_id=account.pk, target="eu-2")

    receiver.start()
    send(Device.objects.using("dc_eu_2").get(pk=truck.pk), range(40, 50))
    receiver.wait_for(50)
    time.sleep(1.0)  # nothing more comes
    requests = receiver.requests()
    assert numbers_of(requests) == list(range(50))
    assert all(verified(request, created["secret"]) for request in requests)



def test_events_in_flight_while_the_account_moves_are_delivered_once_in_order(api, key, account, truck, receiver,
                                                                             delivery):
    """The source's loop is sending (each request takes a while) when the move switches: the
    switch waits for the requests in flight and their outcomes, and the target sends only what
    the source had not delivered."""
    from accounts.moves import account_move

    created = hook(api, key, f"{receiver.url}/in")
    delivery(alias="dc_eu_1")
    delivery(alias="dc_eu_2")
    receiver.delay = 0.02
    send(truck, range(200))
    receiver.wait_for(5)
    account_move(account_id=account.pk, target="eu-2")
    assert 5 <= len(receiver.requests()) < 200  # the move came while the queue was being sent
    receiver.wait_for(200)
    time.sleep(1.0)  # nothing more comes
    requests = receiver.requests()
    assert numbers_of(requests) == list(range(200))
    assert all(verified(request, created["secret"]) for request in requests)
