"""The MQTT access policy on its own (no broker, no database)."""

from __future__ import annotations

import pytest

from flespi_site.mqtt.policy import (
    PLATFORM,
    Principal,
    TokenFacts,
    connect_decision,
    publish_decision,
    receive_decision,
    subscribe_decision,
)

ROOT = "flespi"
# devices 11 and 12 of account 7 (under root 1), 13 of its child 9, 21 of another root 2
PATHS = {11: "1/7/", 12: "1/7/", 13: "1/7/9/", 21: "2/"}
IDENTS = {"a11": "1/7/", "a13": "1/7/9/", "b21": "2/"}
# calculators 5 of account 7, 6 of the other root
CALC_PATHS = {5: "1/7/", 6: "2/"}


def paths(entity: tuple[str, int]) -> str | None:
    return (PATHS if entity[0] == "device" else CALC_PATHS).get(entity[1])
ACCOUNT_7 = Principal(platform=False, token_id=5, account_id=7, account_path="1/7/", region="eu")
CHILD_9 = Principal(platform=False, token_id=6, account_id=9, account_path="1/7/9/", region="eu")


def token(**fields) -> TokenFacts:
    base = dict(id=5, account_id=7, account_path="1/7/", region="eu", enabled=True, expire=0, ttl=0,
                created=1000.0, last_used=None, access_type=0)
    return TokenFacts(**{**base, **fields})


def connect(username="key", password="", facts=None, now=2000.0, regions=frozenset({"eu"})):
    return connect_decision(
        username=username, password=password, platform_username="flespi-platform", platform_password="s3cret",
        token=facts, broker_regions=regions, region_mqtt_urls={"eu": "mqtt://eu", "ru": "mqtt://ru"}, now=now,
    )


def test_connect():
    decision, principal = connect(facts=token())
    assert decision.allowed and principal == ACCOUNT_7
    assert connect(password="key", facts=token())[0].allowed  # the token as password too
    # flespi's other forms: its libraries' username, and the token as password with no username
    assert connect(username="FlespiToken key", facts=token())[1] == ACCOUNT_7
    assert connect(username="", password="key", facts=token())[1] == ACCOUNT_7
    assert connect(username=None, password="FlespiToken key", facts=token())[1] == ACCOUNT_7
    assert connect(username="FlespiToken", password="key", facts=token())[1] == ACCOUNT_7
    assert connect(username="flespi-platform", password="s3cret")[1] == PLATFORM
    refusals = {
        "no username": connect(username="", password="", facts=token()),
        "unknown": connect(facts=None),
        "other password": connect(password="x", facts=token()),
        "disabled": connect(facts=token(enabled=False)),
        "expired": connect(facts=token(expire=1500)),
        "ttl": connect(facts=token(ttl=60, last_used=1900.0)),
        "platform password": connect(username="flespi-platform", password="nope"),
    }
    reasons = {name: decision.reason for name, (decision, principal) in refusals.items() if not decision.allowed
               and principal is None}
    assert reasons == {
        "no username": "a token key is required as the MQTT username (or as the password, with no username)",
        "unknown": "unknown token",
        "other password": "the password must be empty or the token itself",
        "disabled": "token 5 is disabled",
        "expired": "token 5 expired",
        "ttl": "token 5 expired: unused for more than its ttl of 60 s",
        "platform password": "bad password for the platform's user",
    }


def test_connect_to_another_regions_broker_names_the_right_endpoint():
    decision, principal = connect(facts=token(region="ru"))
    assert principal is None and decision.server_reference == "mqtt://ru"
    assert decision.reason == "the account of token 5 lives in region ru: connect to mqtt://ru"


@pytest.mark.parametrize("topic_filter", [
    "flespi/#", "flespi/+/gw/devices/+", "$share/g/flespi/#",
    "$SYS/#", "$CONTROL/dynamic-security/v1", "flespi/message/gw/devices/21",
    "$share/g/flespi/message/gw/devices/21", "flespi/state/gw/calcs/+/devices/21/#",
    "flespi/message/gw/devices/+/extra", "flespi/message/gw/devices", "flespi/message/#/x",
    "$share//flespi/message/#", "$share/g+/flespi/message/#", "flespi/message/gw/devices/x1", "flespi",
])
def test_refused_subscriptions(topic_filter):
    assert not subscribe_decision(principal=ACCOUNT_7, topic_filter=topic_filter, root=ROOT,
                                  entity_path=paths).allowed


@pytest.mark.parametrize("topic_filter", ["#", "+/#", "+/+/+/+/+", "$share/g/#", "ingest/+",
                                          "other/message/gw/devices/+", "flespix/#"])
def test_filters_outside_the_root_are_the_accounts_own(topic_filter):
    decision = subscribe_decision(principal=ACCOUNT_7, topic_filter=topic_filter, root=ROOT, entity_path=paths)
    assert decision.allowed and decision.private


@pytest.mark.parametrize("topic_filter", [
    "flespi/message/gw/devices/+", "flespi/message/#", "flespi/message/gw/devices/11",
    "flespi/message/gw/devices/13", "$share/g/flespi/message/gw/devices/+", "flespi/interval/#",
    "flespi/interval/gw/calcs/+/devices/11/created", "flespi/state/gw/calcs/3/devices/+/+",
    "flespi/state/+/+/+/+/+/last",
])
def test_allowed_subscriptions(topic_filter):
    assert subscribe_decision(principal=ACCOUNT_7, topic_filter=topic_filter, root=ROOT, entity_path=paths).allowed


def test_a_child_token_does_not_reach_its_parents_devices():
    assert not subscribe_decision(principal=CHILD_9, topic_filter="flespi/message/gw/devices/11", root=ROOT,
                                  entity_path=paths).allowed
    assert not receive_decision(principal=CHILD_9, topic="flespi/message/gw/devices/11", root=ROOT,
                                entity_path=paths).allowed
    assert receive_decision(principal=CHILD_9, topic="flespi/message/gw/devices/13", root=ROOT,
                            entity_path=paths).allowed


TOPICS = [
    "flespi/message/gw/devices/11", "flespi/message/gw/devices/13", "flespi/message/gw/devices/21",
    "flespi/message/gw/devices/99", "flespi/interval/gw/calcs/4/devices/11/created",
    "flespi/interval/gw/calcs/4/devices/21/created", "flespi/state/gw/calcs/4/devices/12/last",
    "flespi/state/gw/calcs/4/devices/21/active", "flespi/message/gw/devices/11/x", "flespi/other/11",
    "ingest/a11", "flespi/state/gw/calcs/x/devices/11/last",
]


def test_deliveries_are_exactly_the_subtrees_devices():
    allowed = [t for t in TOPICS if receive_decision(principal=ACCOUNT_7, topic=t, root=ROOT, entity_path=paths).allowed]
    assert allowed == [
        "flespi/message/gw/devices/11", "flespi/message/gw/devices/13",
        "flespi/interval/gw/calcs/4/devices/11/created", "flespi/state/gw/calcs/4/devices/12/last",
        "flespi/state/gw/calcs/x/devices/11/last",
    ]


def test_devices_telemetry_and_log_topics_and_calculators_log_topics():
    topics = {
        "flespi/state/gw/devices/11/telemetry/position.speed": True,
        "flespi/state/gw/devices/21/telemetry/position.speed": False,
        "flespi/log/gw/devices/13/updated": True,
        "flespi/log/gw/devices/21/created": False,
        "flespi/log/gw/calcs/5/created": True,
        "flespi/log/gw/calcs/6/deleted": False,
        "flespi/log/gw/calcs/404/deleted": False,
        "flespi/log/gw/other/5/created": False,
    }
    assert {t: receive_decision(principal=ACCOUNT_7, topic=t, root=ROOT, entity_path=paths).allowed
            for t in topics} == topics
    filters = {
        "flespi/state/gw/devices/+/telemetry/+": True, "flespi/state/gw/devices/11/telemetry/#": True,
        "flespi/state/gw/devices/21/telemetry/+": False, "flespi/log/gw/devices/+/+": True,
        "flespi/log/gw/calcs/5/+": True, "flespi/log/gw/calcs/6/+": False, "flespi/log/#": True,
        "flespi/log/gw/things/+/+": False,
    }
    assert {f: subscribe_decision(principal=ACCOUNT_7, topic_filter=f, root=ROOT, entity_path=paths).allowed
            for f in filters} == filters


@pytest.mark.parametrize(("topic", "allowed", "private"), [
    ("ingest/a11", True, False), ("ingest/a13", True, False), ("ingest/b21", False, False),
    ("ingest/zzz", False, False), ("flespi/message/gw/devices/11", False, False), ("flespi", False, False),
    ("$SYS/x", False, False), ("other", True, True), ("ingest/a11/x", True, True), ("ingest/", True, True),
])
def test_publish(topic, allowed, private):
    decision = publish_decision(principal=ACCOUNT_7, topic=topic, root=ROOT, ingest_pattern="ingest/+",
                                ident_path=IDENTS.get)
    assert (decision.allowed, decision.private) == (allowed, private), decision.reason


def test_the_platform_may_do_everything():
    assert publish_decision(principal=PLATFORM, topic="flespi/state/x", root=ROOT, ingest_pattern="ingest/+",
                            ident_path=IDENTS.get).allowed
    assert subscribe_decision(principal=PLATFORM, topic_filter="#", root=ROOT, entity_path=paths).allowed
    assert receive_decision(principal=PLATFORM, topic="ingest/x", root=ROOT, entity_path=paths).allowed


def test_cid_narrows_to_one_account_of_the_subtree():
    accounts = {7: "1/7/", 9: "1/7/9/", 2: "2/"}.get
    subscribe = dict(principal=ACCOUNT_7, topic_filter="flespi/message/gw/devices/+", root=ROOT,
                     entity_path=paths, account_path=accounts)
    assert subscribe_decision(**subscribe, cid=9).allowed
    assert subscribe_decision(**subscribe, cid=7).allowed
    refused = subscribe_decision(**subscribe, cid=2)
    assert not refused.allowed and refused.reason == "cid 2 is not an account in the subtree of token 5"
    assert not subscribe_decision(**subscribe, cid=404).allowed
    # a child's token cannot name its parent
    assert not subscribe_decision(**{**subscribe, "principal": CHILD_9}, cid=7).allowed
    delivered = [t for t in TOPICS
                 if receive_decision(principal=ACCOUNT_7, topic=t, root=ROOT, entity_path=paths, cid=9).allowed]
    assert delivered == ["flespi/message/gw/devices/13"]
    delivered = [t for t in TOPICS
                 if receive_decision(principal=ACCOUNT_7, topic=t, root=ROOT, entity_path=paths, cid=7).allowed]
    assert delivered == ["flespi/message/gw/devices/11", "flespi/interval/gw/calcs/4/devices/11/created",
                         "flespi/state/gw/calcs/4/devices/12/last", "flespi/state/gw/calcs/x/devices/11/last"]
