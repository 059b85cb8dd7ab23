from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, EmbeddedBroker, Subscriber


@dataclass
class Fleet:
    """Root account A with device a, its subaccount C with device c; another root B with device
    b; a master and a standard token of A, a token of C and one of B."""

    a: object
    c: object
    b: object
    a_master: str
    a_standard: str
    c_token: str
    b_token: str
    accounts: dict


@pytest.fixture
def fleet(make_account, make_token):
    from devices.services import device_create

    a, b = make_account("A"), make_account("B")
    c = make_account("C", parent=a)
    return Fleet(
        a=device_create(account=a, name="a", configuration={"ident": "ident-a"}),
        c=device_create(account=c, name="c", configuration={"ident": "ident-c"}),
        b=device_create(account=b, name="b", configuration={"ident": "ident-b"}),
        a_master=make_token(a), a_standard=make_token(a, master=False), c_token=make_token(c),
        b_token=make_token(b), accounts={"A": a, "B": b, "C": c},
    )


@pytest.fixture
def embedded_broker(settings):
    # the platform's clients of this process (relay, ingest consumer) log in as the platform
    settings.MQTT_PLATFORM_USERNAME = PLATFORM_USER
    settings.MQTT_PLATFORM_PASSWORD = PLATFORM_PASSWORD
    broker = EmbeddedBroker(extra_env={"MQTT_URL_RU": "mqtt://ru.localhost:1883"})
    broker.start()
    yield broker
    broker.cleanup()


@pytest.fixture
def clients():
    """Token clients made by a test, closed after it."""
    made: list[Subscriber] = []

    def make(url, username, password="", **options):
        client = Subscriber(url, login=(username, password), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
