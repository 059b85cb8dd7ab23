"""Who may do what on a region's MQTT broker: the one policy of the platform's broker.

Pure functions over plain facts (no Django, no I/O): the broker (``flespi_site.mqtt.broker``)
asks them about every connect, subscribe, publish and delivery, through
``accounts.mqtt_access``, which reads and caches the facts. The topics are those of
``flespi_site.mqtt.topics``. docs/mqtt.md describes the model; in short:

- A client connects the ways flespi lets it (``token_key``): the token key as its username and an
  empty password (or the key again), ``FlespiToken <key>`` as its username, or the key as its
  password with no username. The platform's own clients (relay, ingest consumer) use the
  platform credentials.
- A token sees the topics of the devices of its account and of its descendants, master and
  standard alike (every MQTT topic is a telematics entity, which both types reach over REST).
- Subscriptions to the platform's topics must name the topic root and a kind
  (``flespi/message/...``, ``flespi/interval/...``, ``flespi/state/...``); wildcards in the id
  levels are narrowed: each delivery is checked, and only the token's own devices arrive.
  ``flespi/#`` and the like are refused, and so is a filter naming a device outside the subtree.
- Only the platform publishes under the topic root. A token publishes to the ingest topic of a
  device of its subtree, and to any other topic, which is its account's own: every topic and
  filter outside the root is in the account's namespace (``PRIVATE``), apart from every other
  account's (``#`` there is the account's own topics, never the platform's).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flespi_site.mqtt.topics import (
    KINDS,
    entity_of_topic,
    filter_entities,
    ident_of_topic,
    strip_share,
)

# Looks up the account path (``"1/7/"``) of a device by id, of a device by ident, or of an account
# by id; None when there is no such device or account. An entity is ``("device", id)`` or
# ``("calc", id)`` (``flespi_site.mqtt.topics.entity_of_topic``).
EntityPath = Callable[[tuple[str, int]], "str | None"]
IdentPath = Callable[[str], "str | None"]
AccountPath = Callable[[int], "str | None"]

TOKEN_PREFIX = "FlespiToken "


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # For a token of another region: the MQTT endpoint the client should use.
    server_reference: str | None = None
    # The topic or filter is in the account's own namespace (not the platform's): the broker keeps
    # it apart from every other account's.
    private: bool = False


ALLOW = Decision(True)
PRIVATE = Decision(True, private=True)


def refuse(reason: str, server_reference: str | None = None) -> Decision:
    return Decision(False, reason, server_reference)


@dataclass(frozen=True)
class TokenFacts:
    """What the policy needs to know of a token and its account."""

    id: int
    account_id: int
    account_path: str
    region: str
    enabled: bool
    expire: int
    ttl: int
    created: float
    last_used: float | None
    access_type: int


@dataclass(frozen=True)
class Principal:
    """A connected client: the platform itself, or a token's account subtree."""

    platform: bool
    token_id: int | None = None
    account_id: int | None = None
    account_path: str = ""
    region: str = ""

    def owns(self, path: str | None) -> bool:
        return path is not None and (self.platform or path.startswith(self.account_path))

    @property
    def who(self) -> str:
        """How a refusal names the principal: its token, or its account (a webhook's trigger,
        which the same policy decides, ``webhooks.services``)."""
        if self.token_id is not None:
            return f"token {self.token_id}"
        return "the platform" if self.platform else f"account {self.account_id}"


PLATFORM = Principal(platform=True)


def token_refusal(
    *, token_id: int, enabled: bool, expire: int, ttl: int, created: float, last_used: float | None, now: float
) -> str | None:
    """Why the token cannot be used now (disabled, expired, unused beyond its ttl), or None."""
    if not enabled:
        return f"token {token_id} is disabled"
    if expire and now >= expire:
        return f"token {token_id} expired"
    last = last_used or created
    if ttl and now - last >= ttl:
        return f"token {token_id} expired: unused for more than its ttl of {ttl} s"
    return None


def token_key(username: str | None, password: str | None) -> tuple[str | None, str | None]:
    """The token key a client logs in with, and why the login is malformed (or None).

    flespi's forms: the key as username with an empty password (or the key again), the username
    ``FlespiToken <key>`` (flespi's own libraries), or the key as password with no username (or
    with the username ``FlespiToken``)."""
    if username == TOKEN_PREFIX.strip():
        username = None
    if username and username.startswith(TOKEN_PREFIX):
        username = username[len(TOKEN_PREFIX):].strip()
    if password and password.startswith(TOKEN_PREFIX):
        password = password[len(TOKEN_PREFIX):].strip()
    if username:
        if password and not hmac.compare_digest(password.encode(), username.encode()):
            return None, "the password must be empty or the token itself"
        return username, None
    if password:
        return password, None
    return None, "a token key is required as the MQTT username (or as the password, with no username)"


def connect_decision(
    *,
    username: str | None,
    password: str | None,
    platform_username: str,
    platform_password: str,
    token: TokenFacts | None,
    broker_regions: frozenset[str],
    region_mqtt_urls: Mapping[str, str],
    now: float,
) -> tuple[Decision, Principal | None]:
    """May a client connect with these credentials, and as whom. ``token`` is the token whose
    key is the login's (``token_key``; None when there is none); ``broker_regions`` the regions
    whose MQTT endpoint this broker is."""
    if platform_password and username and hmac.compare_digest(username, platform_username):
        if hmac.compare_digest((password or "").encode(), platform_password.encode()):
            return ALLOW, PLATFORM
        return refuse("bad password for the platform's user"), None
    _key, malformed = token_key(username, password)
    if malformed:
        return refuse(malformed), None
    if token is None:
        return refuse("unknown token"), None
    problem = token_refusal(
        token_id=token.id, enabled=token.enabled, expire=token.expire, ttl=token.ttl,
        created=token.created, last_used=token.last_used, now=now,
    )
    if problem:
        return refuse(problem), None
    if token.region not in broker_regions:
        endpoint = region_mqtt_urls.get(token.region)
        return refuse(
            f"the account of token {token.id} lives in region {token.region}: connect to {endpoint}", endpoint
        ), None
    return ALLOW, Principal(
        platform=False, token_id=token.id, account_id=token.account_id, account_path=token.account_path,
        region=token.region,
    )


def subscribe_decision(
    *, principal: Principal, topic_filter: str, root: str, entity_path: EntityPath, cid: int | None = None,
    account_path: AccountPath | None = None,
) -> Decision:
    """May the client subscribe to ``topic_filter`` (one alternative of a filter with comma
    lists). A filter of the platform's topics names the root and a kind and can match one of
    them; a wildcard in place of a device or calculator is narrowed by ``receive_decision`` on
    every delivery, an id named must be of the token's subtree. ``cid`` (the MQTT 5 user
    property) must be the token's account or one of its descendants."""
    if principal.platform:
        return ALLOW
    if cid is not None:
        path = account_path(cid) if account_path is not None else None
        if not principal.owns(path):
            return refuse(f"cid {cid} is not an account in the subtree of {principal.who}")
    plain = strip_share(topic_filter)
    if plain is None:
        return refuse(f"{topic_filter!r} is not a valid shared subscription ($share/<group>/<filter>)")
    levels = plain.split("/")
    if levels[0] != root:
        if plain.startswith("$"):
            return refuse(f"no topic starting with '$' is served here: {plain!r}")
        return PRIVATE
    if len(levels) < 2 or levels[1] not in KINDS:
        kinds = ", ".join(f"{root}/{kind}/..." for kind in KINDS)
        return refuse(f"a token subscribes only to the platform's topics ({kinds}); {plain!r} is not one of them")
    fits, named = filter_entities(levels[1:])
    if not fits:
        return refuse(f"{plain!r} matches no topic of the platform")
    for kind, entity_id in named:
        if not principal.owns(entity_path((kind, entity_id))):
            what = "device" if kind == "device" else "calculator"
            return refuse(f"{what} {entity_id} is not in the account subtree of {principal.who}")
    return ALLOW


def receive_decision(
    *, principal: Principal, topic: str, root: str, entity_path: EntityPath, cid: int | None = None
) -> Decision:
    """May the client receive a message published on ``topic`` (checked on every delivery).
    With ``cid``, a subscription gets only the entities of that account itself."""
    if principal.platform and cid is None:
        return ALLOW
    entity = entity_of_topic(topic, root=root)
    if entity is None:
        return refuse(f"{topic!r} is not a topic of the platform's entities")
    what = "device" if entity[0] == "device" else "calculator"
    path = entity_path(entity)
    if not principal.owns(path):
        return refuse(f"{what} {entity[1]} is not in the account subtree of {principal.who}")
    if cid is not None and account_of_path(path) != cid:
        return refuse(f"{what} {entity[1]} is not of account {cid} (the subscription's cid)")
    return ALLOW


def account_of_path(path: str | None) -> int | None:
    """The account an account path (``"1/7/"``) ends with."""
    if not path:
        return None
    last = path.rstrip("/").rpartition("/")[2]
    return int(last) if last.isdigit() else None


def publish_decision(
    *, principal: Principal, topic: str, root: str, ingest_pattern: str, ident_path: IdentPath
) -> Decision:
    """May the client publish to ``topic``: only the platform under the root; a token to the
    ingest topic of a device of its subtree, or to any other topic of its account's own namespace
    (as on flespi's broker: "any topic except flespi/"), which only its account's clients see."""
    if principal.platform:
        return ALLOW
    if topic.split("/", 1)[0] == root:
        return refuse(f"only the platform publishes under {root}/")
    ident = ident_of_topic(topic, pattern=ingest_pattern)
    if ident is None:
        if topic.startswith("$"):
            return refuse(f"no topic starting with '$' is served here: {topic!r}")
        return PRIVATE
    if not principal.owns(ident_path(ident)):
        return refuse(f"no device with ident {ident!r} in the account subtree of {principal.who}")
    return ALLOW
