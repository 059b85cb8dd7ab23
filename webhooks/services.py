"""Writes of webhooks: create, update, delete (each checked whole before anything is saved), the
feed's switch in the region's datacenters, and replays of the delivery log.

A webhook's triggers are MQTT topic filters decided by the broker's own access policy
(``accounts.mqtt_access``): a filter the account's token could not subscribe to is refused, and
each event is checked again when it is fanned out (``webhooks.delivery``). Its URL must reach an
allowed address (``webhooks.addresses``), checked here and before every connection.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from accounts.models import Account
from accounts.mqtt_access import BrokerAccess
from flespi_site.errors import InvalidInput
from flespi_site.mqtt.broker.routing import filter_problem
from flespi_site.mqtt.policy import Principal
from flespi_site.mqtt.topics import strip_share
from flespi_site.updates import locked_row, save_fields
from webhooks import storage
from webhooks.addresses import AddressPolicy, AddressRefused, allowed_addresses
from webhooks.constants import CONFIGURATION_TYPE, MAX_HEADERS, MAX_TRIGGERS, MAX_URL, RESERVED_HEADERS
from webhooks.models import Webhook
from webhooks.signing import secret_new
from webhooks.templates import DEFAULT_BODY, TemplateError, parse

FIELDS = ("name", "triggers", "configuration", "enabled", "retry_seconds", "timeout", "secret")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def address_policy() -> AddressPolicy:
    """The operator's allow-list (``WEBHOOK_ALLOW``, ``WEBHOOK_ALLOW_PUBLIC``)."""
    try:
        return AddressPolicy.parse(settings.WEBHOOK_ALLOW, allow_public=settings.WEBHOOK_ALLOW_PUBLIC)
    except ValueError as error:
        raise ImproperlyConfigured(f"WEBHOOK_ALLOW: {error}") from None


def principal_of(account: Account) -> Principal:
    """Whom a webhook's events are decided for: its account's subtree, as a token of it."""
    return Principal(platform=False, account_id=account.pk, account_path=account.path, region=account.region.code)


def access_of(region: str) -> BrokerAccess:
    """The MQTT access of a region's broker (its caches of who owns what)."""
    return BrokerAccess(url="", regions=[region])


def triggers_check(*, account: Account, triggers: list[dict]) -> list[dict]:
    """The triggers, each an MQTT filter the account's tokens could subscribe to on its region's
    broker and that names the platform's topics; ``InvalidInput`` naming the first bad one."""
    if not triggers:
        raise InvalidInput("at least one trigger is required", field="triggers")
    if len(triggers) > MAX_TRIGGERS:
        raise InvalidInput(f"at most {MAX_TRIGGERS} triggers (joined with OR)", field="triggers")
    access = access_of(account.region.code)
    principal = principal_of(account)
    root = settings.MQTT_TOPIC_ROOT
    for index, trigger in enumerate(triggers):
        field = f"triggers[{index}].topic"
        topic_filter = trigger.get("topic")
        if topic_filter is None:
            raise InvalidInput("This field is required.", field=field)
        if strip_share(topic_filter) != topic_filter:
            raise InvalidInput(f"{topic_filter!r}: a trigger is a topic filter, not a shared subscription", field=field)
        problem = filter_problem(topic_filter)
        if problem is None and topic_filter.split("/", 1)[0] != root:
            problem = f"{topic_filter!r} is not a topic of the platform's events: a trigger starts with {root}/"
        if problem is None:
            try:
                access.learn_now(filters=[topic_filter])
                decision = access.subscribe_now(principal, topic_filter, None)
            except ValueError as error:  # too many comma alternatives
                raise InvalidInput(str(error), field=field) from None
            if decision is not None and not decision.allowed:
                problem = decision.reason
        if problem is not None:
            raise InvalidInput(problem, field=field)
    return [{"topic": trigger["topic"]} for trigger in triggers]


def _template(source: str, field: str) -> None:
    try:
        parse(source)
    except TemplateError as error:
        raise InvalidInput(f"{error.reason} at position {error.position}", field=field) from None


def configuration_check(configuration: Mapping[str, Any], *, policy: AddressPolicy | None = None) -> dict:
    """The request a webhook makes, checked: its type, method, URI (a template whose scheme and
    host are fixed, reaching an allowed address), headers and body (templates)."""
    policy = policy or address_policy()
    if configuration.get("type", CONFIGURATION_TYPE) != CONFIGURATION_TYPE:
        raise InvalidInput(f"the only type is {CONFIGURATION_TYPE!r}", field="configuration.type")
    uri = configuration.get("uri")
    if uri is None:
        raise InvalidInput("This field is required.", field="configuration.uri")
    if len(uri) > MAX_URL:
        raise InvalidInput(f"at most {MAX_URL} characters", field="configuration.uri")
    _template(uri, "configuration.uri")
    authority = uri.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0] if "://" in uri else ""
    if "{{" in authority:
        raise InvalidInput(f"{uri!r}: a URL with a fixed host is required (placeholders only in the path and "
                           "query)", field="configuration.uri")
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as error:
        raise InvalidInput(f"not a URL: {error}", field="configuration.uri") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"{uri!r}: the scheme must be http or https", field="configuration.uri")
    if not parts.hostname:
        raise InvalidInput(f"{uri!r}: a URL with a host is required", field="configuration.uri")
    if parts.username or parts.password:
        raise InvalidInput("credentials in the URL are not sent: use a header", field="configuration.uri")
    if parts.fragment:
        raise InvalidInput(f"{uri!r}: a URL with a fragment (#...) is not sent", field="configuration.uri")
    try:
        allowed_addresses(parts.hostname, port or (443 if parts.scheme == "https" else 80), policy=policy)
    except AddressRefused as error:
        raise InvalidInput(f"{parts.hostname} is not an allowed address: {error}", field="configuration.uri") from None
    headers = configuration.get("headers", [])
    if len(headers) > MAX_HEADERS:
        raise InvalidInput(f"at most {MAX_HEADERS} headers", field="configuration.headers")
    for index, header in enumerate(headers):
        for part in ("name", "value"):
            if part not in header:
                raise InvalidInput("This field is required.", field=f"configuration.headers[{index}].{part}")
        name = header["name"]
        if not name or not set(name) <= _TOKEN_CHARS:
            raise InvalidInput(f"{name!r} is not a header name", field=f"configuration.headers[{index}].name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidInput(f"{name} is set by the platform", field=f"configuration.headers[{index}].name")
        if any(ch in header["value"] for ch in "\r\n\x00"):
            raise InvalidInput("a header value is one line", field=f"configuration.headers[{index}].value")
        _template(header["value"], f"configuration.headers[{index}].value")
    body = configuration.get("body", DEFAULT_BODY)
    _template(body, "configuration.body")
    return {
        "type": CONFIGURATION_TYPE,
        "uri": uri,
        "method": configuration.get("method", "POST"),
        "headers": [{"name": header["name"], "value": header["value"]} for header in headers],
        "body": body,
    }


def webhook_create(*, account: Account, data: Mapping[str, Any]) -> Webhook:
    """A new webhook of ``account``; its secret is generated unless given."""
    webhook = Webhook(
        account=account,
        name=data["name"],
        triggers=triggers_check(account=account, triggers=data["triggers"]),
        configuration=configuration_check(data["configuration"]),
        enabled=data.get("enabled", True),
        secret=data.get("secret") or secret_new(),
        created=time.time(),
    )
    for name in ("retry_seconds", "timeout"):
        if name in data:
            setattr(webhook, name, data[name])
    webhook.save(using="default")
    transaction.on_commit(lambda: feeding_sync(region=account.region.code), using="default")
    return webhook


def webhook_update(*, webhook: Webhook, data: Mapping[str, Any]) -> Webhook:
    """Update the named fields (``triggers`` replaced whole; the fields of ``configuration`` given
    replace the stored ones)."""
    with locked_row(Webhook, pk=webhook.pk, using="default", name="webhook") as fresh:
        account = Account.objects.select_related("region").get(pk=fresh.account_id)
        changes = {name: data[name] for name in FIELDS if name in data}
        if "triggers" in changes:
            changes["triggers"] = triggers_check(account=account, triggers=changes["triggers"])
        if "configuration" in changes:
            # the fields given replace the stored ones, the others stay
            changes["configuration"] = configuration_check({**fresh.configuration, **changes["configuration"]})
        if "secret" in changes and not changes["secret"]:
            changes["secret"] = secret_new()
        updated = save_fields(fresh, changes, name="webhook")
    feeding_sync(region=account.region.code)
    return updated


def webhook_delete(*, webhook: Webhook) -> None:
    """Delete a webhook and, in its region's datacenters, its delivery log and queue."""
    region = Account.objects.filter(pk=webhook.account_id).values_list("region__code", flat=True).first()
    with locked_row(Webhook, pk=webhook.pk, using="default", name="webhook") as fresh:
        webhook_id = fresh.pk
        fresh.delete()
    if region is not None:
        for alias in _aliases(region):
            storage.deliveries_drop_webhooks(alias=alias, webhook_ids=[webhook_id])
        feeding_sync(region=region)


def _aliases(region: str) -> list[str]:
    """The database aliases of the region's datacenters."""
    try:
        return [dc.alias for dc in settings.TOPOLOGY.region(region).datacenters]
    except KeyError:
        return []


def feeding_sync(*, region: str) -> None:
    """The outbox of each datacenter of ``region`` feeds the webhooks while the region has an
    enabled one: switched on and off as webhooks come and go (and by the delivery loop now and
    then, for webhooks deleted with their account). Whether one is enabled is read under the
    switch's lock, so the last of two concurrent calls decides on what both committed."""
    for alias in _aliases(region):
        with transaction.atomic(using=alias):
            storage.feeding_lock(alias=alias)
            on = Webhook.objects.filter(account__region__code=region, enabled=True).exists()
            storage.feeding_set(alias=alias, on=on, now=time.time())


def deliveries_of_deleted_webhooks_drop(*, alias: str) -> int:
    """Delete the queues and logs of webhooks deleted with their accounts (whose events were not
    all of the accounts' devices: a calculator's log events)."""
    present = storage.webhooks_with_rows(alias=alias)
    existing = set(Webhook.objects.filter(pk__in=present).values_list("pk", flat=True))
    gone = [webhook_id for webhook_id in present if webhook_id not in existing]
    return storage.deliveries_drop_webhooks(alias=alias, webhook_ids=gone) if gone else 0


def webhook_replay(*, webhook: Webhook, begin: float, end: float, limit: int) -> int:
    """Queue the logged events of ``webhook`` queued in [begin, end] again (in order, after what
    is queued now); returns how many, at most ``limit``."""
    if end < begin:
        raise InvalidInput(f"end ({end}) is before begin ({begin})", field="end")
    region = Account.objects.filter(pk=webhook.account_id).values_list("region__code", flat=True).get()
    done = 0
    for alias in _aliases(region):
        with transaction.atomic(using=alias):
            done += storage.replay(alias=alias, webhook_id=webhook.pk, begin=begin, end=end, limit=limit - done)
        if done >= limit:
            break
    return done
