"""Mosquitto's dynamic security plugin, kept in step with tokens, accounts and devices.

The rules are those of ``flespi_site.mqtt.policy``, written as dynamic-security objects:

- role ``flespi-subscriber``: subscribe under ``<root>/<kind>/#`` (``subscribe_patterns``);
- role ``account-<id>``: for each device of the account's subtree (its own and its
  descendants'), receive its topics (``device_receive_topics``) and publish to its ingest topic;
- a client per token, username = the token key (known only when the token is created, so the
  client is made then; ``textName`` is ``token <id>``, by which the platform finds it again),
  password = the key too (Mosquitto 2.0 cannot check an empty password), with the subscriber role
  and its account's role; disabled while the token cannot be used. A client's roles never change
  afterwards: Mosquitto disconnects a client whose roles change, a role's ACLs it does not.
- role ``flespi-platform`` and its client: everything, also ``$CONTROL/dynamic-security``;
- default access: nothing but unsubscribing.

The services call the ``*_changed``/``*_created``/``*_deleted`` functions after their writes
(incremental, each a few commands); ``dynsec_reconcile`` (``manage.py mqtt_sync``) compares
everything with the broker and repairs it, idempotently: run it periodically, it also disables
tokens that expired. Nothing here raises into a service: a broker that is down is logged and the
next reconcile catches up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from flespi_site.mqtt.policy import token_refusal
from flespi_site.mqtt.topics import device_ingest_topic, device_receive_topics, subscribe_patterns

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
SUBSCRIBER_ROLE = "flespi-subscriber"
PLATFORM_ROLE = "flespi-platform"
PW_ITERATIONS = 101  # Mosquitto's own default for the hashes it makes
DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}


def account_role(account_id: int) -> str:
    return f"account-{account_id}"


def token_textname(token_id: int) -> str:
    return f"token {token_id}"


def password_fields(password: str) -> dict[str, Any]:
    """A dynamic-security client's password as Mosquitto stores it (PBKDF2-SHA512)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PW_ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": PW_ITERATIONS}


def acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True, "priority": 0}


def device_acls(*, root: str, ingest_pattern: str, device_id: int, ident: str) -> list[dict[str, Any]]:
    return [
        *(acl("publishClientReceive", topic) for topic in device_receive_topics(root=root, device_id=device_id)),
        acl("publishClientSend", device_ingest_topic(ingest_pattern=ingest_pattern, ident=ident)),
    ]


def subscriber_acls(*, root: str) -> list[dict[str, Any]]:
    # Mosquitto checks a shared subscription with its $share/<group>/ prefix
    patterns = subscribe_patterns(root=root)
    return [acl("subscribePattern", pattern) for pattern in (*patterns, *(f"$share/+/{pattern}" for pattern in patterns))]


def platform_acls() -> list[dict[str, Any]]:
    return [
        acl(kind, topic)
        for topic in ("#", f"{CONTROL_TOPIC}/#")
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]


def base_config(*, root: str, platform_username: str, platform_password: str) -> dict[str, Any]:
    """The dynamic-security file a new Mosquitto starts with: the platform's client and roles."""
    return {
        "defaultACLAccess": DEFAULT_ACCESS,
        "clients": [{"username": platform_username, "textName": "the platform", "roles": [{"rolename": PLATFORM_ROLE}],
                     **password_fields(platform_password)}],
        "roles": [{"rolename": PLATFORM_ROLE, "acls": platform_acls()},
                  {"rolename": SUBSCRIBER_ROLE, "acls": subscriber_acls(root=root)}],
        "groups": [],
    }


def config_with_platform(config: dict[str, Any], *, root: str, platform_username: str, platform_password: str) -> dict[str, Any]:
    """``config`` (a stored dynamic-security file) with the platform's client, password and roles
    as they are now; the tokens' clients and the account roles stay."""
    base = base_config(root=root, platform_username=platform_username, platform_password=platform_password)
    config["defaultACLAccess"] = DEFAULT_ACCESS
    config["clients"] = [client for client in config.get("clients", []) if client.get("username") != platform_username] + base["clients"]
    config["roles"] = [role for role in config.get("roles", []) if role.get("rolename") not in (PLATFORM_ROLE, SUBSCRIBER_ROLE)] + base["roles"]
    config.setdefault("groups", [])
    return config


class DynsecError(RuntimeError):
    """The broker did not answer, or refused a command."""


class Control:
    """A connection to one broker's dynamic-security control topic, as the platform."""

    def __init__(self, url: str):
        from flespi_site.mqtt import client as mqtt

        self.url = url
        self._lock = threading.Lock()
        self._answers: dict[str, list[dict[str, Any]]] = {}
        self._arrived = threading.Condition()
        self._ready = threading.Event()
        self.client = mqtt.client_for(url, client_id=f"flespi-dynsec-{uuid.uuid4().hex[:10]}")
        self.client.on_connect = lambda client, *_: client.subscribe(RESPONSE_TOPIC, qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_disconnect = lambda *_: self._ready.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(*mqtt.broker_address(url)[:2], keepalive=30)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._arrived:
            for response in responses:
                correlation = response.get("correlationData")
                if correlation:
                    self._answers.setdefault(correlation, []).append(response)
            self._arrived.notify_all()

    def send(self, commands: list[dict[str, Any]], *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Run ``commands`` in order; their responses (each may carry an ``error``)."""
        if not commands:
            return []
        if not self._ready.wait(timeout):
            raise DynsecError(f"the broker {self.url} does not answer")
        batch = uuid.uuid4().hex
        for index, command in enumerate(commands):
            command["correlationData"] = f"{batch}-{index}"
        with self._lock:
            self.client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        deadline = time.monotonic() + timeout
        keys = [command["correlationData"] for command in commands]
        with self._arrived:
            while not all(key in self._answers for key in keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DynsecError(f"the broker {self.url} did not answer {len(commands)} commands in {timeout} s")
                self._arrived.wait(left)
            return [self._answers.pop(key)[0] for key in keys]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


_controls: dict[tuple[str, tuple[str, str] | None], Control] = {}
_controls_lock = threading.Lock()


def control_for(url: str) -> Control:
    """The control connection to the broker at ``url``, as the platform logs in now: a client made
    under other credentials (the platform's password changed) is not reused, since the broker
    would refuse its every reconnection."""
    from flespi_site.mqtt.client import platform_credentials

    key = (url, platform_credentials())
    with _controls_lock:
        if key not in _controls:
            _controls[key] = Control(url)
        return _controls[key]


def _broker_of(region: str) -> str:
    return settings.TOPOLOGY.region(region).mqtt_url


def _push(region: str, commands: list[dict[str, Any]], *, what: str) -> None:
    """Send ``commands`` after the current transaction commits; failures are logged only
    (``manage.py mqtt_sync`` repairs what did not arrive)."""
    if not settings.MQTT_DYNSEC or not commands:
        return

    def send() -> None:
        try:
            errors = [reply["error"] for reply in control_for(_broker_of(region)).send(commands) if reply.get("error")]
        except DynsecError as error:
            logger.warning("Mosquitto access for %s not pushed (%s); the next mqtt_sync repairs it", what, error)
            return
        tolerated = ("already exists", "not found", "Role not found", "Client not found")
        errors = [error for error in errors if not any(known in error for known in tolerated)]
        if errors:
            logger.warning("Mosquitto refused access commands for %s: %s", what, "; ".join(errors))

    transaction.on_commit(send, using="default")


def _token_commands(*, token, key: str | None = None, username: str | None = None) -> list[dict[str, Any]]:
    roles = [{"rolename": SUBSCRIBER_ROLE}, {"rolename": account_role(token.account_id)}]
    refused = token_refusal(token_id=token.pk, enabled=token.enabled, expire=token.expire, ttl=token.ttl,
                            created=token.created, last_used=token.last_used, now=time.time())
    if key is not None:
        return [*({"command": "createRole", "rolename": role["rolename"]} for role in roles[1:]),
                {"command": "createClient", "username": key, "password": key, "textname": token_textname(token.pk),
                 "roles": roles}, *([{"command": "disableClient", "username": key}] if refused else [])]
    assert username is not None
    return [{"command": "disableClient" if refused else "enableClient", "username": username}]


# -- incremental updates, called by the services ------------------------------------------


def token_created(*, token, key: str) -> None:
    _push(token.account.region.code, _token_commands(token=token, key=key), what=f"token {token.pk}")


def token_changed(*, token) -> None:
    if not settings.MQTT_DYNSEC:
        return
    region = token.account.region.code
    username = _usernames(region).get(token.pk)
    if username is not None:
        _push(region, _token_commands(token=token, username=username), what=f"token {token.pk}")


def token_deleted(*, token_id: int, region: str) -> None:
    if not settings.MQTT_DYNSEC:
        return
    username = _usernames(region).get(token_id)
    if username is not None:
        _push(region, [{"command": "deleteClient", "username": username}], what=f"token {token_id}")


def account_created(*, account) -> None:
    if settings.MQTT_DYNSEC:
        _push(account.region.code, [{"command": "createRole", "rolename": account_role(account.pk)}],
              what=f"account {account.pk}")


@dataclass(frozen=True)
class SubtreeAccess:
    region: str
    account_ids: list[int]
    token_ids: list[int]


def subtree_access(*, account) -> SubtreeAccess | None:
    """What the broker holds for ``account`` and its descendants (read before deleting them)."""
    if not settings.MQTT_DYNSEC:
        return None
    from accounts.models import Account, Token

    return SubtreeAccess(
        region=account.region.code,
        account_ids=list(Account.objects.filter(path__startswith=account.path).values_list("pk", flat=True)),
        token_ids=list(Token.objects.filter(account__path__startswith=account.path).values_list("pk", flat=True)),
    )


def account_deleted(*, access: SubtreeAccess | None) -> None:
    if access is None:
        return
    region, account_ids, token_ids = access.region, access.account_ids, access.token_ids
    usernames = _usernames(region)
    commands = [{"command": "deleteClient", "username": usernames[pk]} for pk in token_ids if pk in usernames]
    commands += [{"command": "deleteRole", "rolename": account_role(pk)} for pk in account_ids]
    _push(region, commands, what="deleted accounts")


def _chain_of(account_id: int) -> tuple[str, list[str]] | None:
    """The region of an account and the roles its devices belong to: its own and its ancestors'."""
    from accounts.models import Account

    row = Account.objects.filter(pk=account_id).values_list("region__code", "path").first()
    if row is None:
        return None
    return row[0], [account_role(int(pk)) for pk in row[1].split("/") if pk]


def device_granted(*, account_id: int, device_id: int, ident: str) -> None:
    if not settings.MQTT_DYNSEC or (chain := _chain_of(account_id)) is None:
        return
    region, roles = chain
    entries = device_acls(root=settings.MQTT_TOPIC_ROOT, ingest_pattern=settings.MQTT_INGEST_TOPIC,
                          device_id=device_id, ident=ident)
    _push(region, [
        *({"command": "createRole", "rolename": role} for role in roles),
        *({"command": "addRoleACL", "rolename": role, **entry} for role in roles for entry in entries),
    ], what=f"device {device_id}")


def device_revoked(*, account_id: int, device_id: int, ident: str) -> None:
    if not settings.MQTT_DYNSEC or (chain := _chain_of(account_id)) is None:
        return
    region, roles = chain
    entries = device_acls(root=settings.MQTT_TOPIC_ROOT, ingest_pattern=settings.MQTT_INGEST_TOPIC,
                          device_id=device_id, ident=ident)
    _push(region, [
        {"command": "removeRoleACL", "rolename": role, "acltype": entry["acltype"], "topic": entry["topic"]}
        for role in roles for entry in entries
    ], what=f"device {device_id}")


def _usernames(region: str) -> dict[int, str]:
    """Token id -> the username of its client on the region's broker."""
    try:
        return {token_id: client["username"] for token_id, client in _clients(control_for(_broker_of(region))).items()}
    except DynsecError as error:
        logger.warning("Mosquitto access not read (%s)", error)
        return {}


def _clients(control: Control) -> dict[int, dict[str, Any]]:
    response = control.send([{"command": "listClients", "verbose": True}])[0]
    clients: dict[int, dict[str, Any]] = {}
    for client in response.get("data", {}).get("clients", []):
        name = client.get("textname") or ""
        if name.startswith("token ") and name[6:].isdigit():
            clients[int(name[6:])] = client
    return clients


# -- the full reconcile ----------------------------------------------------------------------


@dataclass
class ReconcileReport:
    commands: int = 0
    tokens_without_client: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def dynsec_reconcile(*, url: str, regions: Iterable[str]) -> ReconcileReport:
    """Make the broker at ``url`` (the MQTT endpoint of ``regions``) hold exactly the roles and
    token clients the database implies. Idempotent; returns what it did."""
    from accounts.models import Account, Token
    from accounts.mqtt_facts import device_owners

    root, pattern = settings.MQTT_TOPIC_ROOT, settings.MQTT_INGEST_TOPIC
    regions = list(regions)
    control = control_for(url)
    report = ReconcileReport()
    accounts = dict(Account.objects.filter(region__code__in=regions).values_list("pk", "path"))
    wanted: dict[str, set[tuple[str, str]]] = {account_role(pk): set() for pk in accounts}
    for device in device_owners().devices_of(regions=regions):
        granted = device_acls(root=root, ingest_pattern=pattern, device_id=device.device_id, ident=device.ident)
        entries = {(entry["acltype"], entry["topic"]) for entry in granted}
        for owner in accounts.get(device.account_id, "").split("/"):
            if owner:
                wanted.setdefault(account_role(int(owner)), set()).update(entries)
    wanted[SUBSCRIBER_ROLE] = {(entry["acltype"], entry["topic"]) for entry in subscriber_acls(root=root)}

    commands: list[dict[str, Any]] = [{"command": "setDefaultACLAccess", "acls": [
        {"acltype": kind, "allow": allow} for kind, allow in DEFAULT_ACCESS.items()]}]
    roles = control.send([{"command": "listRoles", "verbose": True}])[0].get("data", {}).get("roles", [])
    present = {role["rolename"]: {(entry["acltype"], entry["topic"]) for entry in role.get("acls", [])} for role in roles}
    for name, acls in wanted.items():
        have = present.get(name)
        if have is None:
            commands.append({"command": "createRole", "rolename": name})
            have = set()
        commands += [{"command": "addRoleACL", "rolename": name, **acl(kind, topic)} for kind, topic in sorted(acls - have)]
        commands += [{"command": "removeRoleACL", "rolename": name, "acltype": kind, "topic": topic}
                     for kind, topic in sorted(have - acls)]
    commands += [{"command": "deleteRole", "rolename": name} for name in present
                 if name.startswith("account-") and name not in wanted]

    clients = _clients(control)
    now = time.time()
    tokens = Token.objects.filter(account__region__code__in=regions).values_list(
        "pk", "account_id", "enabled", "expire", "ttl", "created", "last_used"
    )
    for pk, account_id, enabled, expire, ttl, created, last_used in tokens:
        client = clients.pop(pk, None)
        if client is None:
            report.tokens_without_client.append(pk)
            continue
        username = client["username"]
        roles_wanted = {SUBSCRIBER_ROLE, account_role(account_id)}
        roles_have = {role["rolename"] for role in client.get("roles", [])}
        commands += [{"command": "addClientRole", "username": username, "rolename": rolename} for rolename in sorted(roles_wanted - roles_have)]
        commands += [{"command": "removeClientRole", "username": username, "rolename": rolename} for rolename in sorted(roles_have - roles_wanted)]
        refused = token_refusal(token_id=pk, enabled=enabled, expire=expire, ttl=ttl, created=created,
                                last_used=last_used, now=now)
        if bool(refused) != bool(client.get("disabled")):
            commands.append({"command": "disableClient" if refused else "enableClient", "username": username})
    commands += [{"command": "deleteClient", "username": client["username"]} for client in clients.values()]

    for start in range(0, len(commands), 5000):  # Mosquitto rewrites its file after each message
        for response in control.send(commands[start:start + 5000], timeout=300):
            if response.get("error"):
                report.errors.append(f"{response.get('command')}: {response['error']}")
    report.commands = len(commands)
    return report


# -- a Mosquitto of the platform's own ---------------------------------------------------------

PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def dynsec_plugin() -> str | None:
    """The dynamic security plugin of the installed Mosquitto (the Debian package ships it)."""
    return next((path for path in PLUGIN_PATHS if os.path.exists(path)), None)


def dynsec_file_write(*, directory, root: str, platform_username: str, platform_password: str):
    """Write the dynamic-security file ``dynsec.json`` into ``directory`` with the platform's client
    and roles as they are now, keeping the clients and roles a previous run (or the broker) left
    there; readable by its owner only, replaced whole. Returns its path."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dynsec = directory / "dynsec.json"
    stored = json.loads(dynsec.read_text()) if dynsec.exists() else {}
    config = config_with_platform(stored, root=root, platform_username=platform_username,
                                  platform_password=platform_password)
    fresh = directory / ".dynsec.json.new"
    fresh.write_text(json.dumps(config, indent=1))
    fresh.chmod(0o600)
    fresh.replace(dynsec)
    return dynsec


def mosquitto_setup(*, directory, port: int, root: str, platform_username: str, platform_password: str):
    """Write ``mosquitto.conf`` and the dynamic-security file into ``directory`` (keeping the
    clients and roles a previous run left there); returns the path of the configuration."""
    import pwd
    import shutil
    from pathlib import Path

    directory = Path(directory)
    dynsec = dynsec_file_write(directory=directory, root=root, platform_username=platform_username,
                               platform_password=platform_password)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"persistence true\npersistence_location {directory}/\nautosave_interval 1\n"
        # a subscriber catching up after an outage receives the whole backlog (docs/messages.md)
        "max_queued_messages 0\n"
        f"plugin {dynsec_plugin()}\nplugin_opt_config_file {dynsec}\n"
    )
    if os.geteuid() == 0:
        # started as root, Mosquitto runs as its own user, which writes these files
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return conf
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, user.pw_uid, user.pw_gid)
        for parent in directory.resolve().parents:  # as for the embedded PostgreSQL's user
            mode = parent.stat().st_mode
            if mode & 0o001 == 0:
                parent.chmod(mode | 0o001)
    return conf


@dataclass
class BrokerReconciled:
    """What reconciling one broker did (``report``), or why it could not (``problem``)."""

    url: str
    regions: list[str]
    report: ReconcileReport | None = None
    problem: str | None = None


def dynsec_reconcile_served() -> list[BrokerReconciled]:
    """Reconcile the broker of every region this process serves, once each (regions sharing a
    broker together); a broker that cannot be reached is reported and the others still done."""
    brokers: dict[str, list[str]] = {}
    for region in settings.TOPOLOGY.regions:
        if not settings.SERVED_REGION or region.code == settings.SERVED_REGION:
            brokers.setdefault(region.mqtt_url, []).append(region.code)
    done = []
    for url, regions in brokers.items():
        try:
            done.append(BrokerReconciled(url, regions, report=dynsec_reconcile(url=url, regions=regions)))
        except DynsecError as error:
            done.append(BrokerReconciled(url, regions, problem=str(error)))
    return done
