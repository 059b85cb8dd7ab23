"""/platform/webhooks: create, read, update, delete; every bad input refused with its place named
and nothing saved; one account never reaches another's webhooks."""

from __future__ import annotations

import pytest

from devices.services import device_create
from tests.support.api import errors_of, result_of
from webhooks.models import Webhook
from webhooks.templates import DEFAULT_BODY

pytestmark = pytest.mark.django_db(databases="__all__")

HOOK = {
    "name": "crm",
    "triggers": [{"topic": "flespi/message/gw/devices/+"}],
    "configuration": {"type": "custom-server", "uri": "http://127.0.0.1:9/hooks", "method": "POST"},
}


def with_config(**changes):
    return {**HOOK, "configuration": {**HOOK["configuration"], **changes}}


def test_create_answers_the_secret_once_and_reads_back_flespis_shape(api, key, account):
    created = result_of(api.call("POST", "/platform/webhooks", key=key, body=[HOOK]))
    assert len(created) == 1 and len(created[0]["secret"]) >= 40
    hook = created[0]
    assert {name: hook[name] for name in ("cid", "name", "triggers", "enabled", "retry_seconds", "timeout")} == {
        "cid": account.pk, "name": "crm", "triggers": [{"topic": "flespi/message/gw/devices/+"}], "enabled": True,
        "retry_seconds": 86400, "timeout": 10,
    }
    assert hook["configuration"] == {
        "type": "custom-server", "uri": "http://127.0.0.1:9/hooks", "method": "POST", "headers": [],
        "body": DEFAULT_BODY,
    }
    read = result_of(api.call("GET", f"/platform/webhooks/{hook['id']}", key=key))
    assert "secret" not in read[0] and read[0]["configuration"] == hook["configuration"]
    assert Webhook.objects.get(pk=hook["id"]).secret == hook["secret"]


def test_update_replaces_the_named_fields_and_delete_removes(api, key):
    (hook,) = result_of(api.call("POST", "/platform/webhooks", key=key, body=[HOOK]))
    changed = result_of(api.call("PUT", f"/platform/webhooks/{hook['id']}", key=key, body={
        "enabled": False, "configuration": {"uri": "http://127.0.0.1:9/other/{{topic[4]}}", "body": "{{payload}}"},
        "retry_seconds": 60,
    }))
    assert (changed[0]["enabled"], changed[0]["retry_seconds"], changed[0]["configuration"]["uri"],
            changed[0]["configuration"]["body"], changed[0]["name"]) == (
        False, 60, "http://127.0.0.1:9/other/{{topic[4]}}", "{{payload}}", "crm")
    assert result_of(api.call("DELETE", f"/platform/webhooks/{hook['id']}", key=key)) == [{"id": hook["id"]}]
    assert not Webhook.objects.exists()


BAD = [
    # (the webhook, the field named, a part of the reason)
    (with_config(body="{{nope}}"), "[0].configuration.body", "unknown placeholder {{nope}}"),
    (with_config(body='{"a": {{payload.x}'), "[0].configuration.body", "'{{' without its closing '}}' at position 6"),
    (with_config(body="{{topic[99]}}"), "[0].configuration.body", "topic level 99 is beyond"),
    (with_config(headers=[{"name": "X-Id", "value": "{{id"}]), "[0].configuration.headers[0].value", "without its closing"),
    (with_config(headers=[{"name": "Bad Name", "value": "1"}]), "[0].configuration.headers[0].name", "not a header name"),
    (with_config(headers=[{"name": "X-Webhook-Signature", "value": "1"}]), "[0].configuration.headers[0].name",
     "set by the platform"),
    (with_config(headers=[{"name": "X-A", "value": "a\r\nHost: evil"}]), "[0].configuration.headers[0].value",
     "one line"),
    (with_config(uri="ftp://127.0.0.1/x"), "[0].configuration.uri", "the scheme must be http or https"),
    (with_config(uri="not a url"), "[0].configuration.uri", "the scheme must be http or https"),
    (with_config(uri="http://{{topic[4]}}.example.com/"), "[0].configuration.uri", "a fixed host"),
    (with_config(uri="http://127.0.0.1:99999/"), "[0].configuration.uri", "not a URL"),
    (with_config(uri="http://user:pw@127.0.0.1/"), "[0].configuration.uri", "credentials in the URL"),
    (with_config(uri="http://10.1.2.3/hook"), "[0].configuration.uri", "10.1.2.3 is a private address"),
    (with_config(uri="http://169.254.169.254/latest"), "[0].configuration.uri", "169.254.169.254 is a link-local"),
    (with_config(uri="http://[::1]:8080/"), "[0].configuration.uri", "::1 is a loopback address"),
    (with_config(uri="http://224.0.0.1/"), "[0].configuration.uri", "224.0.0.1 is a multicast address"),
    (with_config(uri="http://[::ffff:10.0.0.1]/"), "[0].configuration.uri", "10.0.0.1 is a private address"),
    (with_config(uri="http://0.0.0.0:80/"), "[0].configuration.uri", "0.0.0.0 is the unspecified address"),
    (with_config(type="flespi-platform"), "[0].configuration.type", "the only type is 'custom-server'"),
    (with_config(method="TRACE"), "[0].configuration.method", "not a valid choice"),
    ({**HOOK, "triggers": [{"topic": "flespi/#"}]}, "[0].triggers[0].topic", "flespi/#"),
    ({**HOOK, "triggers": [{"topic": "fleet/things"}]}, "[0].triggers[0].topic",
     "not a topic of the platform's events"),
    ({**HOOK, "triggers": [{"topic": "flespi/message/gw/devices/#/x"}]}, "[0].triggers[0].topic",
     "'#' must be a whole level and the last one"),
    ({**HOOK, "triggers": [{"topic": "flespi/message/gw/devi+ces"}]}, "[0].triggers[0].topic",
     "'+' must be a whole level"),
    ({**HOOK, "triggers": [{"topic": "flespi/message/gw/calcs/1"}]}, "[0].triggers[0].topic",
     "matches no topic of the platform"),
    ({**HOOK, "triggers": [{"topic": "$share/g/flespi/message/gw/devices/+"}]}, "[0].triggers[0].topic",
     "not a shared subscription"),
    ({**HOOK, "triggers": [HOOK["triggers"][0], {"topic": ""}]}, "[0].triggers[1].topic", "may not be blank"),
    ({**HOOK, "triggers": []}, "[0].triggers", "may not be empty"),
    ({**HOOK, "triggers": [HOOK["triggers"][0]] * 4}, "[0].triggers", "no more than 3"),
    ({**HOOK, "retry_seconds": -1}, "[0].retry_seconds", "greater than or equal to 0"),
    ({**HOOK, "timeout": 61}, "[0].timeout", "less than or equal to 60"),
    ({**HOOK, "colour": "red"}, "[0].colour", "unknown field"),
    ({"name": "x", "triggers": HOOK["triggers"]}, "[0].configuration", "required"),
]


@pytest.mark.parametrize(("hook", "field", "reason"), BAD, ids=[f"{field}:{reason[:30]}" for _h, field, reason in BAD])
def test_a_bad_webhook_is_refused_naming_what_and_where_and_nothing_is_saved(api, key, hook, field, reason):
    errors = errors_of(api.call("POST", "/platform/webhooks", key=key, body=[hook]), 400)
    assert [error["field"] for error in errors] == [field]
    assert reason in errors[0]["reason"], errors
    assert not Webhook.objects.exists()


def test_a_trigger_naming_a_device_of_another_account_is_refused(api, key, make_account):
    other = make_account("other")
    stranger = device_create(account=other, name="theirs", configuration={"ident": "999000111"})
    body = [{**HOOK, "triggers": [{"topic": f"flespi/message/gw/devices/{stranger.pk}"}]}]
    errors = errors_of(api.call("POST", "/platform/webhooks", key=key, body=body), 400)
    assert errors[0]["field"] == "[0].triggers[0].topic"
    assert errors[0]["reason"].startswith(f"device {stranger.pk} is not in the account subtree of account ")
    assert not Webhook.objects.exists()


def test_a_name_resolving_to_a_refused_address_is_refused(api, key, settings):
    settings.WEBHOOK_ALLOW = []
    errors = errors_of(api.call("POST", "/platform/webhooks", key=key, body=[with_config(uri="http://localhost:9/")]), 400)
    assert errors[0]["field"] == "[0].configuration.uri"
    assert "localhost resolves to " in errors[0]["reason"] and "is a loopback address" in errors[0]["reason"]


def test_a_batch_keeps_the_good_webhooks_and_names_the_bad_ones(api, key):
    response = api.call("POST", "/platform/webhooks", key=key, body=[HOOK, with_config(body="{{x}}"), HOOK])
    body = response.json()
    assert response.status_code == 200 and len(body["result"]) == 2
    assert [error["field"] for error in body["errors"]] == ["[1].configuration.body"]
    assert Webhook.objects.count() == 2


def test_a_bad_update_changes_nothing(api, key):
    (hook,) = result_of(api.call("POST", "/platform/webhooks", key=key, body=[HOOK]))
    errors = errors_of(api.call("PUT", f"/platform/webhooks/{hook['id']}", key=key, body={
        "name": "renamed", "configuration": {"uri": "http://192.168.1.1/"}}), 400)
    assert errors[0]["id"] == hook["id"] and "192.168.1.1 is a private address" in errors[0]["reason"]
    stored = Webhook.objects.get(pk=hook["id"])
    assert (stored.name, stored.configuration["uri"]) == ("crm", "http://127.0.0.1:9/hooks")


def test_webhooks_of_another_account_do_not_exist_for_it(api, key, make_account, make_token):
    other_key = make_token(make_account("other"))
    (hook,) = result_of(api.call("POST", "/platform/webhooks", key=other_key, body=[HOOK]))
    for method, path, body in (
        ("GET", f"/platform/webhooks/{hook['id']}", None),
        ("PUT", f"/platform/webhooks/{hook['id']}", {"name": "mine"}),
        ("DELETE", f"/platform/webhooks/{hook['id']}", None),
        ("GET", f"/platform/webhooks/{hook['id']}/logs", None),
        ("POST", f"/platform/webhooks/{hook['id']}/replay", {"begin": 0, "end": 10}),
    ):
        assert errors_of(api.call(method, path, key=key, body=body), 404)
    assert result_of(api.call("GET", "/platform/webhooks/all", key=key)) == []
    assert Webhook.objects.get(pk=hook["id"]).name == "crm"


def test_a_standard_token_cannot_manage_webhooks(api, account, make_token):
    standard = make_token(account, master=False)
    assert errors_of(api.call("POST", "/platform/webhooks", key=standard, body=[HOOK]), 403)


@pytest.mark.parametrize(("query", "field"), [
    ("count=0", "count"), ("status=lost", "status"), ("begin=-5", "begin"), ("colour=red", "colour"),
])
def test_bad_log_queries_are_refused(api, key, query, field):
    (hook,) = result_of(api.call("POST", "/platform/webhooks", key=key, body=[HOOK]))
    errors = errors_of(api.call("GET", f"/platform/webhooks/{hook['id']}/logs?{query}", key=key), 400)
    assert field in errors[0]["reason"] or errors[0].get("field") == field


@pytest.mark.parametrize(("body", "what"), [
    ({"begin": 10, "end": 5}, "end (5.0) is before begin (10.0)"),
    ({"end": 5}, "begin"),
    ({"begin": "yesterday", "end": 5}, "must be a number"),
    ([1], "must be a JSON object"),
])
def test_bad_replays_are_refused(api, key, body, what):
    (hook,) = result_of(api.call("POST", "/platform/webhooks", key=key, body=[HOOK]))
    response = api.call("POST", f"/platform/webhooks/{hook['id']}/replay", key=key, body=body)
    errors = errors_of(response, 400)
    assert what in " ".join(f"{error.get('field', '')} {error['reason']}" for error in errors)


def queries(api, key, path) -> int:
    """Queries on every database to answer ``GET path`` (as tests/api/test_query_counts.py counts
    them: the placement version's check left out)."""
    from contextlib import ExitStack

    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    with ExitStack() as stack:
        captured = [stack.enter_context(CaptureQueriesContext(connections[alias])) for alias in connections]
        result_of(api.call("GET", path, key=key))
    return sum(1 for c in captured for query in c.captured_queries if "accounts_placementversion" not in query["sql"])


def test_the_lists_cost_the_same_queries_whatever_their_length(api, key):
    counts = []
    for more in (1, 5):  # 1 webhook, then 6
        result_of(api.call("POST", "/platform/webhooks", key=key, body=[HOOK] * more))
        ids = ",".join(str(webhook.pk) for webhook in Webhook.objects.all())
        counts.append((queries(api, key, "/platform/webhooks/all"), queries(api, key, f"/platform/webhooks/{ids}/logs")))
    assert counts[0] == counts[1] == (PINNED_LIST, PINNED_LOGS)


# the token; the webhooks | the token, the webhooks, the log of each datacenter of the region (2)
PINNED_LIST, PINNED_LOGS = 2, 4
