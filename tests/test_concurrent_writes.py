"""Concurrent writes against a live server: requests of several threads released together on a
barrier, for several rounds, on every resource with PUT and DELETE. What must hold: a PUT
changes only the fields it names (no lost update); an update or delete of a row that is gone,
or goes while it runs, is a 404 for that item and never re-creates it; an ident is never freed
while its device exists and never claimed by two devices; no race gives a 500.

`make test` runs a few rounds; FLESPI_SLOW=1 runs the 20 rounds the races were found with.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit

import pytest

from accounts.models import Account, Token
from devices.models import Device, DeviceIdent
from devices.services import device_create

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

ROUNDS = 20 if os.environ.get("FLESPI_SLOW") else 4
DC = "dc_eu_1"


class Server:
    def __init__(self, url: str, key: str):
        parts = urlsplit(url)
        self.host, self.port, self.key = parts.hostname, parts.port, key

    def call(self, method: str, path: str, body=None, cid: int | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"Authorization": f"FlespiToken {self.key}", "Host": "localhost"}
        if cid is not None:
            headers["x-flespi-cid"] = str(cid)
        payload = None
        if body is not None:
            payload = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()


def race(calls: list[Callable[[], tuple[int, dict]]]) -> list[tuple[int, dict]]:
    """Run every call in its own thread, all released at once; their answers in call order."""
    barrier = threading.Barrier(len(calls))
    answers: list = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = calls[index]()
        except Exception as exc:  # the assertion below shows it
            answers[index] = (-1, {"exception": repr(exc)})

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def statuses(answers) -> Counter:
    return Counter(status for status, _body in answers)


def assert_a_404_names_the_item(answers, name: str, pk: int) -> None:
    for status, body in answers:
        if status == 404:
            reasons = " ".join(error["reason"] for error in body["errors"])
            assert name in reasons and str(pk) in reasons, body


def assert_idents_consistent() -> None:
    """Every device has its claim, with its ident; no claim without a device; no ident twice."""
    devices = dict(Device.objects.using(DC).values_list("pk", "ident"))
    claims = dict(DeviceIdent.objects.values_list("device_id", "ident"))
    assert claims == devices
    assert max(Counter(devices.values()).values(), default=1) == 1


@pytest.fixture
def server(live_server, root, root_key):
    return Server(live_server.url, root_key)


@pytest.mark.slow
def test_a_device_deleted_during_updates_stays_deleted_and_its_ident_is_never_shared(server, root):
    for round_ in range(ROUNDS):
        ident = f"race-{round_}"
        device = device_create(account=root, configuration={"ident": ident})
        path = f"/gw/devices/{device.pk}"
        calls = [partial(server.call, "DELETE", path)]
        calls += [partial(server.call, "PUT", path, {"name": f"name {n}"}) for n in range(3)]
        calls += [partial(server.call, "PUT", path, {"configuration": {"ident": f"{ident}-moved-{n}"}})
                  for n in range(2)]
        calls += [partial(server.call, "POST", "/gw/devices", [{"configuration": {"ident": ident}}])]
        calls += [partial(server.call, "POST", "/gw/devices", [{"configuration": {"ident": f"{ident}-moved-0"}}])]
        answers = race(calls)
        assert set(statuses(answers)) <= {200, 404, 409}, answers
        assert answers[0][0] == 200, answers[0]
        assert {status for status, _ in answers[1:6]} <= {200, 404, 409}, answers
        assert_a_404_names_the_item(answers[1:6], "device", device.pk)
        assert not Device.objects.using(DC).filter(pk=device.pk).exists(), f"round {round_}: the device came back"
        assert_idents_consistent()
        # The ident of the deleted device is free, and taken once.
        status, _ = server.call("POST", "/gw/devices", [{"configuration": {"ident": ident}}])
        assert status in (200, 409)
        assert DeviceIdent.objects.filter(ident=ident).count() == 1
        assert_idents_consistent()


@pytest.mark.slow
def test_a_device_deleted_twice_at_once_is_deleted_once_and_the_other_is_a_404(server, root):
    for round_ in range(ROUNDS):
        device = device_create(account=root, configuration={"ident": f"twice-{round_}"})
        answers = race([partial(server.call, "DELETE", f"/gw/devices/{device.pk}") for _ in range(4)])
        assert statuses(answers) == {200: 1, 404: 3}, answers
        assert_a_404_names_the_item(answers, "device", device.pk)
        assert_idents_consistent()


@pytest.mark.slow
def test_parallel_updates_of_different_fields_lose_nothing(server, root):
    for round_ in range(ROUNDS):
        device = device_create(account=root, configuration={"ident": f"fields-{round_}"})
        path = f"/gw/devices/{device.pk}"
        changes = [
            {"name": "renamed"},
            {"enabled": False},
            {"messages_ttl": 1234},
            {"metadata": {"group": "north"}},
            {"configuration": {"ident": f"fields-{round_}", "phone": "+100"}},
        ]
        answers = race([partial(server.call, "PUT", path, change) for change in changes])
        assert statuses(answers) == {200: len(changes)}, answers
        stored = Device.objects.using(DC).get(pk=device.pk)
        assert (stored.name, stored.enabled, stored.messages_ttl, stored.metadata, stored.configuration) == (
            "renamed", False, 1234, {"group": "north"}, {"ident": f"fields-{round_}", "phone": "+100"}
        ), f"round {round_}"


def two_deletes_racing(server, path: str, updates: list) -> list:
    """Two DELETEs of ``path`` and ``updates`` (calls) released together: one DELETE did it, the
    other is a 404, and nothing else than 200 or 404 is answered; returns every answer."""
    answers = race([partial(server.call, "DELETE", path), partial(server.call, "DELETE", path), *updates])
    assert set(statuses(answers)) <= {200, 404}, answers
    assert sorted(status for status, _ in answers[:2]) == [200, 404], answers[:2]
    return answers


@pytest.mark.slow
def test_a_subaccount_deleted_during_updates_stays_deleted(server, root, make_account):
    for round_ in range(ROUNDS):
        sub = make_account(f"sub {round_}", parent=root)
        path = f"/platform/subaccounts/{sub.pk}"
        updates = [partial(server.call, "PUT", path, {"name": f"renamed {n}"}) for n in range(3)]
        updates += [partial(server.call, "PUT", "/platform/customer", {"metadata": {"n": n}}, cid=sub.pk)
                    for n in range(3)]
        assert_a_404_names_the_item(two_deletes_racing(server, path, updates), "account", sub.pk)
        assert not Account.objects.filter(pk=sub.pk).exists(), f"round {round_}: the account came back"


@pytest.mark.slow
def test_a_token_deleted_during_updates_stays_deleted(server, root, make_token):
    for round_ in range(ROUNDS):
        make_token(root, info=f"race {round_}")
        token = Token.objects.get(info=f"race {round_}")
        path = f"/platform/tokens/{token.pk}"
        changes = [{"info": "renamed 1"}, {"info": "renamed 2"}, {"enabled": False}, {"ttl": 60}]
        updates = [partial(server.call, "PUT", path, change) for change in changes]
        assert_a_404_names_the_item(two_deletes_racing(server, path, updates), "token", token.pk)
        assert not Token.objects.filter(pk=token.pk).exists(), f"round {round_}: the token came back"


@pytest.mark.slow
def test_parallel_updates_of_different_token_fields_lose_nothing(server, root, make_token):
    for round_ in range(ROUNDS):
        make_token(root, info=f"fields {round_}")
        token = Token.objects.get(info=f"fields {round_}")
        path = f"/platform/tokens/{token.pk}"
        changes = [{"info": "renamed"}, {"enabled": False}, {"expire": 4_000_000_000}, {"ttl": 600}]
        answers = race([partial(server.call, "PUT", path, change) for change in changes])
        assert statuses(answers) == {200: len(changes)}, answers
        token.refresh_from_db()
        assert (token.info, token.enabled, token.expire, token.ttl) == ("renamed", False, 4_000_000_000, 600)
