"""The platform's MQTT broker: MQTT 3.1, 3.1.1 and 5.0 over TCP and WebSocket, with the
platform's access policy decided on every connect, subscribe, publish and delivery.

One process per region (``flespi broker``), asyncio, one thread (as Mosquitto). What it asks of
the platform is an ``Access`` (``accounts.mqtt_access.BrokerAccess``: the policy of
``flespi_site.mqtt.policy`` with the control database's facts, cached); this package imports no
app. docs/mqtt.md says what clients see; the shape of the code:

- ``Connection``: one client's byte stream (an ``asyncio.Protocol``; over WebSocket the
  ``websocket.WebSocketTransport`` unframes it). Packets are handled in order; a packet whose
  decision needs facts the cache lacks pauses that connection's reading until they arrive, and
  only that connection's.
- ``Session``: what outlives a connection: subscriptions, the messages in flight and queued.
  A session is keyed by its *owner* (the token's account, or the platform) and the client id, so
  two accounts choosing the same client id never take over each other's session.
- ``Broker``: sessions, the subscription tree, retained messages, shared groups (keyed by owner
  too), wills, keepalive, the periodic re-check of every session's token, and the store.

Everything a handler writes (to any connection, and to the store) is collected and sent by
``Broker.flush`` once the handler is done: the store commits first, so an acknowledgement never
leaves before what it acknowledges is written.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from flespi_site.mqtt.broker import codec
from flespi_site.mqtt.broker.codec import ProtocolError
from flespi_site.mqtt.broker.routing import (
    Group,
    Retained,
    Subscriptions,
    expand,
    filter_problem,
    topic_problem,
)
from flespi_site.mqtt.broker.store import Store
from flespi_site.mqtt.broker.websocket import WebSocketTransport
from flespi_site.mqtt.policy import Decision, Principal
from flespi_site.mqtt.topics import SHARE_PREFIX

logger = logging.getLogger("flespi.mqtt_broker")

NEVER = 0xFFFFFFFF  # a session expiry interval that never ends
# The first level of a topic in an account's own namespace, inside the broker only: U+0000 is in no
# topic a client can send, so no client topic or filter reaches another account's namespace, and
# wildcards at the first level skip it as they skip '$' topics.
NAMESPACE = "\x00"


def namespaced(principal: Principal, topic: str) -> str:
    """The broker's name of an account's own topic or filter."""
    return f"{NAMESPACE}{principal.account_id}/{topic}"


def public_topic(topic: str) -> str:
    """The topic a client sees of the broker's name of a topic."""
    return topic.partition("/")[2] if topic.startswith(NAMESPACE) else topic


class Access(Protocol):
    """The platform's decisions, with its facts (``accounts.mqtt_access.BrokerAccess``). The
    ``*_now`` methods answer from the cache and return None when they lack a fact; the broker
    then awaits ``learn`` with what the packets it is about to handle need, and asks again."""

    async def connect(
        self, username: str | None, password: bytes | None
    ) -> tuple[Decision, Principal | None]: ...

    async def recheck(self, token_ids: set[int]) -> dict[int, str]:
        """Of ``token_ids``, those that may no longer be used, with the reason."""
        ...

    def publish_now(self, principal: Principal, topic: str) -> Decision | None: ...

    def subscribe_now(self, principal: Principal, topic_filter: str, cid: int | None) -> Decision | None: ...

    def owner_now(self, topic: str) -> str | Literal[False] | None:
        """The account path of the device ``topic`` is about; None when it is about none; False
        when the cache does not know."""
        ...

    def receives(self, principal: Principal, topic: str, owner: str | None, cid: int | None) -> bool: ...

    async def learn(
        self, *, topics: Iterable[str] = (), filters: Iterable[str] = (), accounts: Iterable[int] = ()
    ) -> None:
        """Fetch the facts the decisions about these topics (devices, idents), filters and cid
        accounts need."""
        ...

    def published(self, topic: str) -> None:
        """The platform published ``topic``: a change of what the cache holds, maybe."""
        ...

    async def sessions_seen(self, sessions: list[tuple[Principal, str]], at: float) -> None:
        """These connections (a token's principal and the client id) were alive at ``at`` (unix
        seconds): a client id that is the ident of a device its token may publish for is that
        device's MQTT session, which keeps the device connected."""
        ...


@dataclass
class Limits:
    max_packet: int = 1_048_576 * 16  # what a client may send
    max_inflight: int = 100  # QoS 1/2 messages awaiting acknowledgement per session (3.1.1)
    max_queued: int = 100_000  # per session, beyond the in-flight window
    max_write_buffer: int = 8 * 1_048_576  # QoS 0 to a client that does not read are dropped beyond
    keepalive_grace: float = 1.5
    recheck_seconds: float = 2.0
    connect_timeout: float = 10.0
    # How often the live sessions are reported to ``Access.sessions_seen`` (besides at each
    # connect and disconnect); well within the time after which a device is no longer connected.
    activity_seconds: float = 60.0


class Message:
    """An application message as routed: one object whatever the number of receivers."""

    __slots__ = ("_topic_bytes", "expires", "forwarded", "payload", "qos", "retain", "sender", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        forwarded: bytes = b"",
        expires: float | None = None,
        sender: Hashable = None,
    ):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.forwarded = forwarded  # the encoded properties that travel with it (MQTT 5), no length
        self.expires = expires  # unix time, or None
        self.sender = sender
        self._topic_bytes: bytes | None = None

    @property
    def topic_bytes(self) -> bytes:
        if self._topic_bytes is None:
            self._topic_bytes = codec.text(public_topic(self.topic))
        return self._topic_bytes

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def fields(self) -> dict:
        return {
            "topic": self.topic,
            "qos": self.qos,
            "forwarded": self.forwarded.hex(),
            "expires": self.expires,
        }

    @classmethod
    def from_fields(cls, fields: dict, payload: bytes, *, retain: bool = False) -> Message:
        return cls(
            fields["topic"],
            payload,
            fields["qos"],
            retain,
            bytes.fromhex(fields["forwarded"]),
            fields["expires"],
        )


class Subscription:
    __slots__ = (
        "branches", "cid", "filter", "group", "no_local", "private", "qos", "rap", "retain_handling", "sub_id"
    )

    def __init__(
        self,
        topic_filter: str,
        branches: list[str],
        options: int,
        sub_id: int | None,
        cid: int | None,
        group: Hashable,
        private: bool = False,
    ):
        self.filter = topic_filter
        self.private = private
        self.branches = branches
        self.qos = options & 0x03
        self.no_local = bool(options & 0x04)
        self.rap = bool(options & 0x08)
        self.retain_handling = (options >> 4) & 0x03
        self.sub_id = sub_id
        self.cid = cid
        self.group = group

    def options(self) -> dict:
        return {
            "options": self.qos | (self.no_local << 2) | (self.rap << 3) | (self.retain_handling << 4),
            "sub_id": self.sub_id,
            "cid": self.cid,
            "private": self.private,
        }


class Session:
    __slots__ = (
        "client_id",
        "connection",
        "disconnected",
        "dropped",
        "expiry",
        "incoming",
        "inflight",
        "key",
        "next_id",
        "principal",
        "queue",
        "subscriptions",
        "version",
        "will_task",
    )

    def __init__(self, key: str, client_id: str, principal: Principal | None, version: int, expiry: int):
        self.key = key
        self.client_id = client_id
        self.principal = principal  # None: its token lost access; it receives nothing
        self.version = version
        self.expiry = expiry  # seconds it outlives its connection; 0: it ends with it
        self.subscriptions: dict[str, Subscription] = {}
        # packet id -> [message, qos, retain, sub_ids, released (PUBREL sent), row in the store or None]
        self.inflight: dict[int, list] = {}
        # (message, qos, retain, sub_ids, row): row is the message's in the store, or None
        self.queue: deque = deque()
        self.next_id = 1
        self.connection: Connection | None = None
        self.incoming: set[int] = set()  # QoS 2 packet ids received, PUBREL not yet
        self.disconnected: float | None = None
        self.will_task: asyncio.TimerHandle | None = None
        self.dropped = 0

    @property
    def persistent(self) -> bool:
        return self.expiry > 0

    def packet_id(self) -> int:
        for _ in range(65_535):
            ident = self.next_id
            self.next_id = ident % 65_535 + 1
            if ident not in self.inflight:
                return ident
        raise RuntimeError("no free packet id")


def _principal_fields(principal: Principal | None) -> dict:
    if principal is None:
        return {}
    return {
        "platform": principal.platform,
        "token_id": principal.token_id,
        "account_id": principal.account_id,
        "account_path": principal.account_path,
        "region": principal.region,
    }


def owner_of(principal: Principal) -> str:
    """The namespace of a principal's client ids and shared groups."""
    return "platform" if principal.platform else f"account-{principal.account_id}"


class Broker:
    def __init__(
        self,
        access: Access,
        *,
        store_path: str | None = None,
        limits: Limits | None = None,
        name: str = "broker",
    ):
        self.access = access
        self.limits = limits or Limits()
        self.name = name
        self.sessions: dict[str, Session] = {}
        self.subscriptions = Subscriptions()
        self.retained = Retained()
        self.store = Store(store_path) if store_path else None
        self.dirty: set[Connection] = set()
        self.connections: set[Connection] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.stats = {"connections": 0, "received": 0, "sent": 0, "dropped": 0, "refused": 0}
        self._tasks: set[asyncio.Future] = set()
        self._stopping = False

    # --- start and stop ---

    async def start(
        self,
        *,
        host: str,
        port: int,
        ws_port: int | None = None,
    ) -> None:
        if self.store is not None:
            await self._restore()
        loop = asyncio.get_running_loop()
        self.servers.append(
            await loop.create_server(lambda: Connection(self), host, port, reuse_address=True)
        )
        if ws_port is not None:
            self.servers.append(
                await loop.create_server(
                    lambda: WebSocketTransport(lambda: Connection(self), self.limits.max_packet + 16),
                    host,
                    ws_port,
                    reuse_address=True,
                )
            )
        self._task(self._every_second())
        self._task(self._recheck_forever())
        self._task(self._sessions_seen_forever())

    def _task(self, coroutine: Any) -> None:
        """Run ``coroutine`` in the background, kept until it is done (and cancelled at stop)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def addresses(self) -> list[tuple[str, int]]:
        return [server.sockets[0].getsockname()[:2] for server in self.servers if server.sockets]

    async def stop(self) -> None:
        """Close every connection (MQTT 5 clients hear why), keep what persistent sessions have
        in flight and queued, and close the store."""
        self._stopping = True
        for server in self.servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.connections):
            connection.close(codec.SERVER_SHUTTING_DOWN, "the broker is shutting down", will=False)
        for session in self.sessions.values():
            self._park(session)
        self.flush()
        if self.store is not None:
            self.store.close()

    async def _restore(self) -> None:
        assert self.store is not None
        loaded = self.store.load()
        now = time.time()
        for key, client_id, principal, expiry, version, disconnected in loaded.sessions:
            if expiry != NEVER and disconnected is not None and now - disconnected >= expiry:
                self.store.session_forget(key)
                continue
            restored = Principal(**principal) if principal else None
            session = Session(key, client_id, restored, version, expiry)
            session.disconnected = disconnected or now
            self.sessions[key] = session
        for key, topic_filter, options in loaded.subscriptions:
            subscriber = self.sessions.get(key)
            if subscriber is not None and subscriber.principal is not None:
                self._subscription_add(
                    subscriber, topic_filter, options["options"], options["sub_id"], options["cid"],
                    options.get("private", False),
                )
        for row, key, fields, payload in loaded.queued:
            receiver = self.sessions.get(key)
            if receiver is not None:
                receiver.queue.append(
                    (
                        Message.from_fields(fields, payload),
                        fields["qos"],
                        fields.get("retain", False),
                        fields.get("sub_ids"),
                        row,
                    )
                )
        for topic, fields, payload in loaded.retained:
            self.retained.put(topic, Message.from_fields(fields, payload, retain=True))
        await self._recheck()
        self.flush()
        logger.info(
            "%s: restored %d sessions, %d queued and %d retained messages",
            self.name,
            len(self.sessions),
            len(loaded.queued),
            self.retained.count,
        )

    # --- output ---

    def flush(self) -> None:
        """Commit the store, then send what every connection has waiting."""
        if self.store is not None and self.store.dirty:
            self.store.commit()
        dirty, self.dirty = self.dirty, set()
        for connection in dirty:
            connection.flush()

    # --- sessions ---

    def session_open(
        self, connection: Connection, connect: codec.Connect, principal: Principal
    ) -> tuple[Session, bool]:
        """The session of a connection that was let in: taken over, resumed or new."""
        key = f"{owner_of(principal)}/{connect.client_id}"
        if connect.version == codec.MQTT5:
            expiry = connect.props.get(codec.SESSION_EXPIRY, 0)
            clean = connect.clean
        else:
            expiry = 0 if connect.clean else NEVER
            clean = connect.clean
        session = self.sessions.get(key)
        if session is not None and session.connection is not None:
            session.connection.close(
                codec.SESSION_TAKEN_OVER, "another connection took this session over", will=True
            )
        if session is not None and session.will_task is not None:
            session.will_task.cancel()
            session.will_task = None
        present = session is not None and not clean
        if session is not None and clean:
            self.session_end(session)
            session = None
        if session is None:
            session = Session(key, connect.client_id, principal, connect.version, expiry)
            self.sessions[key] = session
        session.principal = principal
        session.version = connect.version
        session.expiry = expiry
        session.connection = connection
        session.disconnected = None
        if self.store is not None:
            if session.persistent:
                self.store.session_keep(
                    key, connect.client_id, _principal_fields(principal), expiry, connect.version
                )
            else:
                self.store.session_forget(key)
        self._seen([session])
        return session, present

    def session_end(self, session: Session) -> None:
        groups = {subscription.group for subscription in session.subscriptions.values() if subscription.group is not None}
        for topic_filter in list(session.subscriptions):
            self._subscription_remove(session, topic_filter)
        self.sessions.pop(session.key, None)
        # what it had not acknowledged (a QoS 2 message it has, released, excepted)
        pending = [entry[0] for entry in session.inflight.values() if not entry[4]]
        pending += [entry[0] for entry in session.queue]
        session.queue.clear()
        session.inflight.clear()
        if self.store is not None:
            self.store.session_forget(session.key)
        if groups and pending:
            self._regroup(groups, pending)

    def _regroup(self, groups: set[Hashable], messages: list[Message]) -> None:
        """Messages a session ended without acknowledging go to another member of each of its
        shared groups (``groups``: their keys) that matches them (MQTT 5, 4.8.2: a member that
        leaves does not take its share with it). A message it had from a subscription of its
        own as well as from a group goes to the group again: QoS 1 allows the duplicate."""
        now = time.time()
        for message in messages:
            if message.expired(now):
                continue
            access = _OWN_NAMESPACE if message.topic.startswith(NAMESPACE) else self.access
            owner = None if message.topic.startswith(NAMESPACE) else self.access.owner_now(message.topic)
            if owner is False:
                owner = None  # not known now: only members allowed without it get it
            _found, matching = self.subscriptions.match(message.topic)
            for group in matching:
                if group.key not in groups:
                    continue
                chosen = self._group_member(group, message, owner, access)
                if chosen is None:
                    continue
                member, subscription = chosen
                self.offer(member, message, min(subscription.qos, message.qos), message.retain and subscription.rap,
                           [subscription.sub_id] if subscription.sub_id else None, now)

    def session_detach(self, session: Session) -> None:
        """The connection of ``session`` is gone: end it, or keep it with its queue in the store."""
        if not self._stopping:
            self._seen([session])  # alive until now: a device's timeout counts from here
        session.connection = None
        session.disconnected = time.time()
        if not session.persistent:
            self.session_end(session)
            return
        self._park(session)

    def _park(self, session: Session) -> None:
        """Keep a persistent session's undelivered messages (in flight first) for its return: in
        the store too, those that are not there yet."""
        if not session.persistent or self.store is None or session.principal is None:
            return
        self.store.session_disconnected(session.key, session.disconnected or time.time())
        pending = [
            (message, qos, retain, sub_ids, row)
            for message, qos, retain, sub_ids, _released, row in session.inflight.values()
        ]
        session.inflight.clear()
        session.queue = deque(
            entry if entry[4] is not None else (*entry[:4], self._store_queued(session, *entry[:4]))
            for entry in pending + list(session.queue)
        )

    def _store_queued(self, session: Session, message: Message, qos: int, retain: bool, sub_ids: list | None) -> int:
        """Write a message queued for ``session`` to the store; its row there."""
        assert self.store is not None
        fields = message.fields()
        fields.update(qos=qos, retain=retain, sub_ids=sub_ids)
        return self.store.queue(session.key, fields, message.payload)

    def acknowledged(self, session: Session, ident: int) -> None:
        """The client acknowledged message ``ident`` (PUBACK, PUBCOMP, or a refusing PUBREC): it
        leaves the in-flight window, and the store when it was queued there."""
        entry = session.inflight.pop(ident, None)
        if entry is None:
            return
        if entry[5] is not None and self.store is not None:
            self.store.queued_delete(entry[5])
        if session.queue:
            self.drain(session)

    # --- subscriptions ---

    def _subscription_add(
        self, session: Session, topic_filter: str, options: int, sub_id: int | None, cid: int | None,
        private: bool = False,
    ) -> Subscription:
        """Subscribe ``session`` to ``topic_filter``; ``private``: a filter of its account's own
        namespace (``flespi_site.mqtt.policy.PRIVATE``)."""
        principal = session.principal
        assert principal is not None
        plain, group = topic_filter, None
        if topic_filter.startswith(SHARE_PREFIX):
            name, _, plain = topic_filter[len(SHARE_PREFIX) :].partition("/")
            group = (owner_of(principal), name)
        if topic_filter in session.subscriptions:
            self._subscription_remove(session, topic_filter)
        branches = expand(plain)
        if private:
            branches = [namespaced(principal, branch) for branch in branches]
        subscription = Subscription(topic_filter, branches, options, sub_id, cid, group, private)
        session.subscriptions[topic_filter] = subscription
        self.subscriptions.add(subscription.branches, session.key, subscription, group)
        return subscription

    def _subscription_remove(self, session: Session, topic_filter: str) -> bool:
        subscription = session.subscriptions.pop(topic_filter, None)
        if subscription is None:
            return False
        self.subscriptions.remove(subscription.branches, session.key, subscription.group)
        return True

    # --- routing ---

    def route(self, message: Message, owner: str | None) -> bool:
        """Deliver ``message`` to every session allowed to receive it; ``owner`` is the account
        path of the device its topic is about. Whether anyone matched."""
        access = self.access
        found, groups = self.subscriptions.match(message.topic)
        if message.topic.startswith(NAMESPACE):
            # an account's own topic: only its own subscriptions are in its namespace
            access = _OWN_NAMESPACE  # type: ignore[assignment]
        targets: dict[str, list] = {}
        for key, subscription in found:
            session = self.sessions.get(key)
            if session is None or session.principal is None:
                continue
            if subscription.no_local and message.sender == key:
                continue
            if not access.receives(session.principal, message.topic, owner, subscription.cid):
                continue
            self._target(targets, session, subscription, message)
        for group in groups:
            chosen = self._group_member(group, message, owner, access)
            if chosen is not None:
                self._target(targets, *chosen, message)
        now = time.time()
        for session, qos, retain, sub_ids in targets.values():
            self.offer(session, message, qos, retain, sub_ids, now)
        return bool(targets)

    @staticmethod
    def _target(targets: dict, session: Session, subscription: Subscription, message: Message) -> None:
        qos = min(subscription.qos, message.qos)
        retain = message.retain and subscription.rap
        target = targets.get(session.key)
        if target is None:
            targets[session.key] = [
                session,
                qos,
                retain,
                [subscription.sub_id] if subscription.sub_id else None,
            ]
            return
        target[1] = max(target[1], qos)
        target[2] = target[2] or retain
        if subscription.sub_id:
            target[3] = (target[3] or []) + [subscription.sub_id]

    def _group_member(
        self, group: Group, message: Message, owner: str | None, access: Any
    ) -> tuple[Session, Subscription] | None:
        """The member of a shared group that gets ``message``: the next connected one allowed to
        receive it, else an offline persistent one."""
        fallback = None
        for subscription in group.ordered():
            session = self._member_session(group, subscription)
            if session is None or session.principal is None:
                continue
            if not access.receives(session.principal, message.topic, owner, subscription.cid):
                continue
            if session.connection is not None:
                return session, subscription
            if fallback is None and session.persistent:
                fallback = session, subscription
        return fallback

    def _member_session(self, group: Group, subscription: Subscription) -> Session | None:
        for key, member in group.members.items():
            if member is subscription:
                return self.sessions.get(key)
        return None

    def offer(
        self, session: Session, message: Message, qos: int, retain: bool, sub_ids: list | None, now: float
    ) -> None:
        """Send ``message`` to ``session`` now, or queue it."""
        connection = session.connection
        if connection is None:
            if session.persistent and qos > 0:
                if len(session.queue) >= self.limits.max_queued:
                    self._drop(session)
                    return
                row = self._store_queued(session, message, qos, retain, sub_ids) if self.store is not None else None
                session.queue.append((message, qos, retain, sub_ids, row))
            return
        if qos == 0:
            if connection.transport_buffered() > self.limits.max_write_buffer:
                self._drop(session)
                return
            connection.send_publish(message, 0, retain, 0, sub_ids, now)
            return
        if session.queue or len(session.inflight) >= connection.send_window:
            if len(session.queue) >= self.limits.max_queued:
                self._drop(session)
                return
            session.queue.append((message, qos, retain, sub_ids, self._kept(session, message, qos, retain, sub_ids)))
            return
        ident = session.packet_id()
        session.inflight[ident] = [message, qos, retain, sub_ids, False, self._kept(session, message, qos, retain, sub_ids)]
        connection.send_publish(message, qos, retain, ident, sub_ids, now)

    def _kept(self, session: Session, message: Message, qos: int, retain: bool, sub_ids: list | None) -> int | None:
        """A persistent session's row in the store of a message it has not acknowledged yet, also
        while it is connected: written before the publisher's acknowledgement leaves (``flush``),
        so that a kill loses nothing acknowledged; None for a session that ends with its connection."""
        if not session.persistent or self.store is None:
            return None
        return self._store_queued(session, message, qos, retain, sub_ids)

    def _drop(self, session: Session) -> None:
        session.dropped += 1
        self.stats["dropped"] += 1
        if session.dropped in (1, 100, 10_000) or session.dropped % 100_000 == 0:
            logger.warning(
                "%s: %d messages dropped for client %r: it does not read fast enough (limit %d queued)",
                self.name,
                session.dropped,
                session.client_id,
                self.limits.max_queued,
            )

    def drain(self, session: Session) -> None:
        """Fill the in-flight window of a connected session from its queue."""
        connection = session.connection
        if connection is None:
            return
        now = time.time()
        while session.queue and len(session.inflight) < connection.send_window:
            message, qos, retain, sub_ids, row = session.queue.popleft()
            if message.expired(now):
                if row is not None and self.store is not None:
                    self.store.queued_delete(row)
                continue
            ident = session.packet_id()
            session.inflight[ident] = [message, qos, retain, sub_ids, False, row]
            connection.send_publish(message, qos, retain, ident, sub_ids, now)

    def retain(self, message: Message) -> None:
        if message.payload:
            stored = Message(
                message.topic, message.payload, message.qos, True, message.forwarded, message.expires
            )
            self.retained.put(message.topic, stored)
            if self.store is not None:
                self.store.retain(message.topic, stored.fields(), message.payload)
        else:
            self.retained.delete(message.topic)
            if self.store is not None:
                self.store.retain(message.topic, None)

    # --- wills ---

    def will_schedule(self, session: Session, connection: Connection) -> None:
        will = connection.will
        connection.will = None
        if will is None or session.principal is None:
            return
        delay = will.props.get(codec.WILL_DELAY, 0) if connection.version == codec.MQTT5 else 0
        if session.persistent and session.expiry != NEVER:
            delay = min(delay, session.expiry)
        principal = session.principal
        if delay <= 0:
            self._will_publish(session.key, principal, will)
            return
        loop = asyncio.get_running_loop()
        session.will_task = loop.call_later(delay, self._will_publish, session.key, principal, will)

    def _will_publish(self, sender: str, principal: Principal, will: codec.Will) -> None:
        session = self.sessions.get(sender)
        if session is not None:
            session.will_task = None
        decision = self.access.publish_now(principal, will.topic)
        if decision is None:  # what the cache knew at CONNECT has expired since
            self._task(self._will_learn_publish(sender, principal, will))
            return
        if not decision.allowed:
            logger.info("%s: the will of %r to %r is not published: %s", self.name, sender, will.topic,
                        decision.reason)
            return
        topic = namespaced(principal, will.topic) if decision.private else will.topic
        message = Message(
            topic,
            will.payload,
            will.qos,
            will.retain,
            _forwarded(will.props),
            _expires(will.props),
            sender,
        )
        owner = self.access.owner_now(will.topic)
        if owner is False:
            owner = None
        if message.retain:
            self.retain(message)
        self.route(message, owner)
        self.flush()

    async def _will_learn_publish(self, sender: str, principal: Principal, will: codec.Will) -> None:
        try:
            await self.access.learn(topics=[will.topic])
        except Exception:
            logger.exception("%s: the will of %r is lost: the platform's facts could not be read", self.name, sender)
            return
        if self.access.publish_now(principal, will.topic) is not None:
            self._will_publish(sender, principal, will)

    # --- periodic work ---

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self._sweep(time.time(), time.monotonic())
            except Exception:
                logger.exception("%s: the periodic sweep failed", self.name)

    def _sweep(self, now: float, clock: float) -> None:
        for connection in list(self.connections):
            connection.check_alive(clock)
        for session in list(self.sessions.values()):
            if (
                session.connection is None
                and session.expiry != NEVER
                and session.disconnected is not None
                and now - session.disconnected >= session.expiry
            ):
                self.session_end(session)
        self.flush()

    def _seen(self, sessions: Iterable[Session]) -> None:
        """Report these sessions' connections alive now (in the background: the platform's
        database is not awaited on the connection's path)."""
        alive = [
            (session.principal, session.client_id)
            for session in sessions
            if session.principal is not None and not session.principal.platform
        ]
        if alive:
            self._task(self._report_seen(alive, time.time()))

    async def _report_seen(self, alive: list[tuple[Principal, str]], at: float) -> None:
        try:
            await self.access.sessions_seen(alive, at)
        except Exception:
            logger.exception("%s: reporting %d live sessions failed", self.name, len(alive))

    async def _sessions_seen_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.activity_seconds)
            self._seen([session for session in self.sessions.values() if session.connection is not None])

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.recheck_seconds)
            try:
                await self._recheck()
            except Exception:
                logger.exception("%s: the periodic token check failed; trying again", self.name)

    async def _recheck(self) -> None:
        """Check every session's token again: those that lost access get nothing more, and their
        connections are closed."""
        token_ids = {
            session.principal.token_id
            for session in self.sessions.values()
            if session.principal is not None and session.principal.token_id is not None
        }
        if not token_ids:
            return
        refused = await self.access.recheck(token_ids)
        for session in list(self.sessions.values()):
            principal = session.principal
            if principal is None or principal.token_id not in refused:
                continue
            reason = refused[principal.token_id]
            logger.info("%s: client %r loses access: %s", self.name, session.client_id, reason)
            session.principal = None
            if session.connection is not None:
                session.connection.close(codec.NOT_AUTHORIZED, reason, will=False)
            self.session_end(session)
        self.flush()


class _OwnNamespace:
    """The receive check of an account's own topics: whoever subscribed in the namespace is the
    account (the broker put the filter there), so everyone matched receives."""

    @staticmethod
    def receives(principal: Principal, topic: str, owner: str | None, cid: int | None) -> bool:
        return True


_OWN_NAMESPACE = _OwnNamespace()


def _forwarded(props: dict) -> bytes:
    """The encoded properties of a PUBLISH that its receivers get too."""
    if not props:
        return b""
    return codec.property_bytes({ident: props[ident] for ident in codec.FORWARDED if ident in props})


def _expires(props: dict) -> float | None:
    interval = props.get(codec.MESSAGE_EXPIRY)
    return time.time() + interval if interval is not None else None


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.transport: Any = None
        self.buffer = b""
        self.packets: deque = deque()
        self.checked = 0  # the packets at the front of ``packets`` whose facts were looked for
        self.out: list[bytes] = []
        self.version = codec.MQTT311
        self.session: Session | None = None
        self.principal: Principal | None = None
        self.will: codec.Will | None = None
        self.keepalive = 0
        self.last_seen = time.monotonic()
        self.opened = self.last_seen
        self.busy = False
        self._waiting: asyncio.Future | None = None
        self.closed = False
        self.send_window = broker.limits.max_inflight
        self.max_out_packet = codec.MAX_VARINT
        self.problem_info = True
        self.peer = ""

    # --- asyncio.Protocol ---

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.broker.connections.add(self)
        self.broker.stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_seen = time.monotonic()
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        try:
            packets, used = codec.split_packets(data, self.broker.limits.max_packet)
        except ProtocolError as error:
            self.close(error.code, error.reason, will=True)
            self.broker.flush()
            return
        if used < len(data):
            self.buffer = data[used:]
        if packets:
            self.packets.extend(packets)
        if not self.busy:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.connections.discard(self)
        if not self.closed:
            self.closed = True
            self._detach(will=True)
            self.broker.flush()

    # --- output ---

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.out.append(data)
        self.broker.dirty.add(self)

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            out, self.out = self.out, []
            self.transport.write(b"".join(out)) if len(out) > 1 else self.transport.write(out[0])
        else:
            self.out = []

    def transport_buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        ident: int,
        sub_ids: list | None,
        now: float,
        dup: bool = False,
    ) -> None:
        props = None
        if self.version == codec.MQTT5:
            extra = b""
            if message.expires is not None:
                extra += codec.varint(codec.MESSAGE_EXPIRY) + max(0, int(message.expires - now)).to_bytes(
                    4, "big"
                )
            if sub_ids:
                for sub_id in sub_ids:
                    extra += codec.varint(codec.SUBSCRIPTION_ID) + codec.varint(sub_id)
            content = message.forwarded + extra
            props = codec.varint(len(content)) + content
        data = codec.publish(
            message.topic_bytes,
            message.payload,
            qos=qos,
            retain=retain,
            packet_id=ident,
            dup=dup,
            props=props,
        )
        if len(data) > self.max_out_packet:
            return  # MQTT 5: a client that said it cannot take it does not get it
        self.broker.stats["sent"] += 1
        self.send(data)

    def close(self, code: int, reason: str, *, will: bool) -> None:
        """Close the connection; MQTT 5 clients get a DISCONNECT with ``code`` and ``reason``."""
        if self.closed:
            return
        if self.version == codec.MQTT5 and self.session is not None:
            self.send(codec.disconnect(code, reason if self.problem_info else ""))
        self.flush()
        self.closed = True
        self._detach(will=will)
        if self.transport is not None:
            self.transport.close()

    def _detach(self, *, will: bool) -> None:
        session, self.session = self.session, None
        if session is None or session.connection is not self:
            return
        if will:
            self.broker.will_schedule(session, self)
        self.broker.session_detach(session)

    def check_alive(self, clock: float) -> None:
        if self.session is None:
            if clock - self.opened > self.broker.limits.connect_timeout and not self.busy:
                self.close(codec.MALFORMED_PACKET, "no CONNECT in time", will=False)
            return
        if self.keepalive and clock - self.last_seen > self.keepalive * self.broker.limits.keepalive_grace:
            self.close(codec.KEEP_ALIVE_TIMEOUT, "keep alive timeout", will=True)

    # --- input ---

    def _process(self) -> None:
        broker = self.broker
        while self.packets and not self.closed:
            if self.checked < len(self.packets):
                missing = self._missing()
                if missing is not None:
                    self._wait(missing)
                    return
            first, body = self.packets.popleft()
            self.checked -= 1
            try:
                waiting = self._handle(first, body)
            except ProtocolError as error:
                self.close(error.code, error.reason, will=True)
                break
            if waiting is not None:
                self._wait(waiting)
                return
        broker.flush()

    def _wait(self, awaitable: Any) -> None:
        self.busy = True
        self.transport.pause_reading()
        self.broker.flush()
        self._waiting = asyncio.ensure_future(self._resume(awaitable))

    async def _resume(self, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception:
            logger.exception(
                "%s: client %s: the platform's facts could not be read", self.broker.name, self.peer
            )
            self.close(
                codec.SERVER_UNAVAILABLE, "the platform cannot decide access now; try again", will=False
            )
            self.broker.flush()
            return
        self.busy = False
        if self.closed:
            return
        self.transport.resume_reading()
        self._process()

    def _missing(self) -> Any:
        """An awaitable fetching the facts that the waiting PUBLISH packets need (all of them at
        once: a batch costs one lookup), or None."""
        unchecked = itertools.islice(self.packets, self.checked, None)
        self.checked = len(self.packets)
        if self.principal is None:
            return None
        access = self.broker.access
        topics = []
        for first, body in unchecked:
            if first >> 4 != codec.PUBLISH:
                continue
            try:
                topic = codec.Reader(body).text()
            except ProtocolError:
                break
            if access.publish_now(self.principal, topic) is None or (
                self.principal.platform and access.owner_now(topic) is False
            ):
                topics.append(topic)
        return access.learn(topics=topics) if topics else None

    def _handle(self, first: int, body: bytes) -> Any:
        kind = first >> 4
        if self.session is None:
            if kind != codec.CONNECT:
                raise ProtocolError("the first packet must be a CONNECT", codec.PROTOCOL_ERROR)
            return self._connect(body)
        if kind == codec.PUBLISH:
            return self._publish(first & 0x0F, body)
        if kind == codec.PUBACK or kind == codec.PUBCOMP:
            ident, _code = codec.decode_ack(body, self.version)
            self.broker.acknowledged(self.session, ident)
            return None
        if kind == codec.PUBREC:
            ident, code = codec.decode_ack(body, self.version)
            entry = self.session.inflight.get(ident)
            if entry is None:
                self.send(codec.ack(codec.PUBREL, ident, self.version, codec.PACKET_ID_NOT_FOUND))
            elif code >= 0x80:
                self.broker.acknowledged(self.session, ident)
            else:
                entry[4] = True
                self.send(codec.ack(codec.PUBREL, ident, self.version))
            return None
        if kind == codec.PUBREL:
            ident, _code = codec.decode_ack(body, self.version)
            found = ident in self.session.incoming
            self.session.incoming.discard(ident)
            self.send(
                codec.ack(
                    codec.PUBCOMP, ident, self.version, codec.SUCCESS if found else codec.PACKET_ID_NOT_FOUND
                )
            )
            return None
        if kind == codec.SUBSCRIBE:
            if first & 0x0F != 0x02:
                raise ProtocolError("bad SUBSCRIBE flags")
            return self._subscribe(codec.decode_subscribe(body, self.version))
        if kind == codec.UNSUBSCRIBE:
            if first & 0x0F != 0x02:
                raise ProtocolError("bad UNSUBSCRIBE flags")
            ident, filters = codec.decode_unsubscribe(body, self.version)
            codes = []
            for topic_filter in filters:
                removed = self.broker._subscription_remove(self.session, topic_filter)
                if removed and self.broker.store is not None and self.session.persistent:
                    self.broker.store.subscription_forget(self.session.key, topic_filter)
                codes.append(codec.SUCCESS if removed else codec.NO_SUBSCRIPTION_EXISTED)
            self.send(codec.unsuback(ident, codes, self.version))
            return None
        if kind == codec.PINGREQ:
            self.send(codec.PINGRESP_PACKET)
            return None
        if kind == codec.DISCONNECT:
            code, props = codec.decode_disconnect(body, self.version)
            session = self.session
            if self.version == codec.MQTT5 and codec.SESSION_EXPIRY in props:
                if session.expiry == 0 and props[codec.SESSION_EXPIRY]:
                    raise ProtocolError(
                        "session expiry set on DISCONNECT after 0 on CONNECT", codec.PROTOCOL_ERROR
                    )
                session.expiry = props[codec.SESSION_EXPIRY]
            if code != 0x04:  # "disconnect with will message"
                self.will = None
            self.closed = True
            self._detach(will=code == 0x04)
            self.flush()
            self.transport.close()
            return None
        if kind == codec.AUTH:
            raise ProtocolError("extended authentication is not supported", codec.BAD_AUTHENTICATION_METHOD)
        raise ProtocolError(f"unexpected packet type {kind}", codec.PROTOCOL_ERROR)

    # CONNECT

    def _connect(self, body: bytes) -> Any:
        try:
            connect = codec.decode_connect(body)
        except ProtocolError as error:
            if error.code == codec.UNSUPPORTED_PROTOCOL_VERSION:
                self.send(codec.connack(codec.MQTT311, session_present=False, code=codec.V3_BAD_VERSION))
                self.flush()
                self.closed = True
                self.transport.close()
                return None
            raise
        self.version = connect.version
        return self._authenticate(connect)

    async def _authenticate(self, connect: codec.Connect) -> None:
        broker = self.broker
        v5 = connect.version == codec.MQTT5
        if v5 and codec.AUTH_METHOD in connect.props:
            return self._refuse(
                connect,
                codec.BAD_AUTHENTICATION_METHOD,
                codec.V3_NOT_AUTHORIZED,
                "extended authentication is not supported: send the token as username",
            )
        if not connect.client_id and not connect.clean and not v5:
            return self._refuse(
                connect,
                codec.CLIENT_ID_NOT_VALID,
                codec.V3_BAD_CLIENT_ID,
                "an empty client id needs a clean session",
            )
        decision, principal = await broker.access.connect(connect.username, connect.password)
        if self.closed:
            return None
        if principal is None:
            broker.stats["refused"] += 1
            logger.info("%s: connect from %s refused: %s", broker.name, self.peer, decision.reason)
            moved = {codec.SERVER_REFERENCE: decision.server_reference} if decision.server_reference else None
            code = codec.SERVER_MOVED if decision.server_reference else codec.NOT_AUTHORIZED
            return self._refuse(connect, code, codec.V3_NOT_AUTHORIZED, decision.reason, moved)
        props: dict[int, Any] = {}
        if not connect.client_id:
            connect.client_id = f"auto-{secrets.token_hex(8)}"
            props[codec.ASSIGNED_CLIENT_ID] = connect.client_id
        self.principal = principal
        self.keepalive = connect.keepalive
        self.will = connect.will
        if v5:
            self.send_window = min(connect.props.get(codec.RECEIVE_MAXIMUM, 65_535), 65_535)
            self.max_out_packet = connect.props.get(codec.MAXIMUM_PACKET_SIZE, codec.MAX_VARINT)
            self.problem_info = bool(connect.props.get(codec.REQUEST_PROBLEM_INFO, 1))
        if connect.will is not None:
            # a will the token may not publish is refused now, not dropped when the client is gone
            problem = topic_problem(connect.will.topic)
            if problem is None:
                await broker.access.learn(topics=[connect.will.topic])
                will_decision = broker.access.publish_now(principal, connect.will.topic)
                if will_decision is not None and not will_decision.allowed:
                    problem = will_decision.reason
            if problem is not None:
                return self._refuse(connect, codec.NOT_AUTHORIZED, codec.V3_NOT_AUTHORIZED, f"the will: {problem}")
            if self.closed:
                return None
        session, present = broker.session_open(self, connect, principal)
        self.session = session
        if v5:
            props.update(
                {
                    codec.RECEIVE_MAXIMUM: broker.limits.max_inflight,
                    codec.MAXIMUM_PACKET_SIZE: broker.limits.max_packet,
                    codec.TOPIC_ALIAS_MAXIMUM: 0,
                    codec.RETAIN_AVAILABLE: 1,
                    codec.WILDCARD_AVAILABLE: 1,
                    codec.SUBSCRIPTION_ID_AVAILABLE: 1,
                    codec.SHARED_AVAILABLE: 1,
                }
            )
            if session.expiry != connect.props.get(codec.SESSION_EXPIRY, 0):
                props[codec.SESSION_EXPIRY] = session.expiry
        self.send(
            codec.connack(connect.version, session_present=present, code=codec.SUCCESS, props=props or None)
        )
        if present:
            now = time.time()
            for ident, (message, qos, retain, sub_ids, released, _row) in list(session.inflight.items()):
                if released:
                    self.send(codec.ack(codec.PUBREL, ident, self.version))
                else:
                    self.send_publish(message, qos, retain, ident, sub_ids, now, dup=True)
            broker.drain(session)
        return None

    def _refuse(
        self, connect: codec.Connect, code: int, v3_code: int, reason: str, props: dict | None = None
    ) -> None:
        if connect.version == codec.MQTT5:
            props = dict(props or {})
            if connect.props.get(codec.REQUEST_PROBLEM_INFO, 1):
                props[codec.REASON_STRING] = reason
            self.send(codec.connack(codec.MQTT5, session_present=False, code=code, props=props))
        else:
            self.send(codec.connack(connect.version, session_present=False, code=v3_code))
        self.flush()
        self.closed = True
        self.transport.close()
        return None

    # PUBLISH

    def _publish(self, flags: int, body: bytes) -> Any:
        packet = codec.decode_publish(flags, body, self.version)
        broker, session, principal = self.broker, self.session, self.principal
        assert session is not None and principal is not None
        broker.stats["received"] += 1
        if self.version == codec.MQTT5 and codec.TOPIC_ALIAS in packet.props:
            raise ProtocolError(
                "topic aliases are not supported (Topic Alias Maximum is 0)", codec.TOPIC_ALIAS_INVALID
            )
        problem = topic_problem(packet.topic)
        if problem:
            raise ProtocolError(problem, codec.TOPIC_NAME_INVALID)
        if packet.qos == 2 and packet.packet_id in session.incoming:
            self.send(codec.ack(codec.PUBREC, packet.packet_id, self.version))  # a resend: routed already
            return None
        access = broker.access
        decision = access.publish_now(principal, packet.topic)
        if decision is None or (principal.platform and access.owner_now(packet.topic) is False):
            # The facts came and went (a log event earlier in the same read forgot its entity's
            # owner, ``Access.published``): fetch them for this one.
            return self._publish_later(packet)
        return self._publish_decided(packet, decision)

    async def _publish_later(self, packet: codec.Publish) -> None:
        await self.broker.access.learn(topics=[packet.topic])
        assert self.principal is not None
        decision = self.broker.access.publish_now(self.principal, packet.topic)
        self._publish_decided(packet, decision or Decision(False, "the platform's facts could not be read"))

    def _publish_decided(self, packet: codec.Publish, decision: Decision) -> None:
        broker, session = self.broker, self.session
        assert session is not None
        code = codec.SUCCESS
        if not decision.allowed:
            code = codec.NOT_AUTHORIZED
            logger.info(
                "%s: publish of %r to %r refused: %s",
                broker.name,
                session.client_id,
                packet.topic,
                decision.reason,
            )
        else:
            owner = (
                broker.access.owner_now(packet.topic) if self.principal and self.principal.platform else None
            )
            if owner is False:
                owner = None
            topic = packet.topic
            if decision.private:
                assert self.principal is not None
                topic = namespaced(self.principal, topic)
            message = Message(
                topic,
                packet.payload,
                packet.qos,
                packet.retain,
                _forwarded(packet.props),
                _expires(packet.props),
                session.key,
            )
            if packet.retain:
                broker.retain(message)
            if self.principal is not None and self.principal.platform:
                broker.access.published(packet.topic)
            if not broker.route(message, owner):
                code = codec.NO_MATCHING_SUBSCRIBERS
        if packet.qos == 1:
            reason = decision.reason if (code >= 0x80 and self.problem_info) else ""
            self.send(
                codec.ack(
                    codec.PUBACK,
                    packet.packet_id,
                    self.version,
                    code if self.version == codec.MQTT5 else 0,
                    {codec.REASON_STRING: reason} if reason and self.version == codec.MQTT5 else None,
                )
            )
        elif packet.qos == 2:
            if code < 0x80:
                session.incoming.add(packet.packet_id)
            self.send(
                codec.ack(
                    codec.PUBREC, packet.packet_id, self.version, code if self.version == codec.MQTT5 else 0
                )
            )
        return None

    # SUBSCRIBE

    def _subscribe(self, packet: codec.Subscribe) -> Any:
        cid = None
        for name, value in packet.props.get(codec.USER_PROPERTY, []):
            if name == "cid":
                cid = value
        sub_ids = packet.props.get(codec.SUBSCRIPTION_ID, [])
        if len(sub_ids) > 1 or (sub_ids and sub_ids[0] == 0):
            raise ProtocolError("bad subscription identifier", codec.PROTOCOL_ERROR)
        return self._subscribe_decided(packet, cid, sub_ids[0] if sub_ids else None)

    async def _subscribe_decided(
        self, packet: codec.Subscribe, cid_text: str | None, sub_id: int | None
    ) -> None:
        broker, session, principal, access = self.broker, self.session, self.principal, self.broker.access
        assert session is not None and principal is not None
        codes, reasons = [], []
        cid = None
        if cid_text is not None:
            cid = int(cid_text) if cid_text.isascii() and cid_text.isdigit() and len(cid_text) <= 18 else -1
        filters = [topic_filter for topic_filter, _options in packet.filters]
        await access.learn(filters=filters, accounts=[cid] if cid and cid > 0 else [])
        granted = []
        for topic_filter, options in packet.filters:
            reason, code = self._subscribe_problem(topic_filter, cid)
            decision = Decision(False, reason or "")
            if reason is None:
                decision = access.subscribe_now(principal, topic_filter, cid) or Decision(
                    False, "the platform's facts could not be read"
                )
                if not decision.allowed:
                    reason, code = decision.reason, codec.NOT_AUTHORIZED
            if reason is not None:
                logger.info(
                    "%s: subscribe of %r to %r refused: %s",
                    broker.name,
                    session.client_id,
                    topic_filter,
                    reason,
                )
                codes.append(code if self.version == codec.MQTT5 else codec.V3_SUBACK_FAILURE)
                reasons.append(f"{topic_filter}: {reason}")
                continue
            existed = topic_filter in session.subscriptions
            subscription = broker._subscription_add(
                session, topic_filter, options, sub_id, cid, decision.private
            )
            if broker.store is not None and session.persistent:
                broker.store.subscription_keep(session.key, topic_filter, subscription.options())
            codes.append(subscription.qos)
            granted.append((subscription, existed))
        props = None
        if reasons and self.version == codec.MQTT5 and self.problem_info:
            props = {codec.REASON_STRING: "; ".join(reasons)[:1000]}
        self.send(codec.suback(packet.packet_id, codes, self.version, props))
        now = time.time()
        for subscription, existed in granted:
            if subscription.group is not None or subscription.retain_handling == 2:
                continue
            if subscription.retain_handling == 1 and existed:
                continue
            self._send_retained(subscription, now)
        return None

    def _subscribe_problem(self, topic_filter: str, cid: int | None) -> tuple[str | None, int]:
        plain = topic_filter
        if topic_filter.startswith(SHARE_PREFIX):
            name, _, plain = topic_filter[len(SHARE_PREFIX) :].partition("/")
            if not name or "+" in name or "#" in name or not plain:
                return (
                    f"{topic_filter!r} is not a valid shared subscription ($share/<group>/<filter>)",
                    codec.TOPIC_FILTER_INVALID,
                )
        problem = filter_problem(plain)
        if problem:
            return problem, codec.TOPIC_FILTER_INVALID
        try:
            expand(plain)
        except ValueError as error:
            return str(error), codec.TOPIC_FILTER_INVALID
        if cid is not None and cid <= 0:
            return "the user property cid must be an account id", codec.NOT_AUTHORIZED
        return None, codec.SUCCESS

    def _send_retained(self, subscription: Subscription, now: float) -> None:
        session, access = self.session, self.broker.access
        assert session is not None and session.principal is not None
        if subscription.private:
            access = _OWN_NAMESPACE  # type: ignore[assignment]
        seen = set()
        for branch in subscription.branches:
            for message in self.broker.retained.matching(branch):
                if message.topic in seen or message.expired(now):
                    continue
                seen.add(message.topic)
                owner = self.broker.access.owner_now(message.topic)
                if owner is False:
                    owner = None  # not known now: a device topic is refused, and that is safe
                if not access.receives(session.principal, message.topic, owner, subscription.cid):
                    continue
                self.broker.offer(
                    session,
                    message,
                    min(subscription.qos, message.qos),
                    True,
                    [subscription.sub_id] if subscription.sub_id else None,
                    now,
                )


def run(
    access: Access,
    *,
    host: str,
    port: int,
    ws_port: int | None,
    store_path: str | None,
    limits: Limits | None = None,
    name: str = "broker",
    ready: Any = None,
) -> None:
    """Run a broker until SIGTERM or SIGINT; ``ready`` is called with it once it listens."""
    import signal

    async def main() -> None:
        broker = Broker(access, store_path=store_path, limits=limits, name=name)
        await broker.start(host=host, port=port, ws_port=ws_port)
        logger.info(
            "%s: MQTT on %s:%d%s (pid %d)",
            name,
            host,
            port,
            f", WebSocket on {host}:{ws_port}" if ws_port else "",
            os.getpid(),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(broker)
        await stop.wait()
        await broker.stop()

    asyncio.run(main())


class BrokerThread:
    """A broker running in a thread of this process (tests and benchmarks): ``start`` returns once
    it listens; ``stop`` stops it as SIGTERM would."""

    def __init__(self, access: Access, **options: Any):
        self.access = access
        self.options = options
        self.broker: Broker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-broker", daemon=True)

    def start(self, timeout: float = 10.0) -> BrokerThread:
        started = threading.Event()
        self._started = started
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeError("the broker did not start")
        if self.broker is None:
            raise RuntimeError(f"the broker did not start: {self._error}")
        return self

    def _run(self) -> None:
        self._error: BaseException | None = None

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            options = dict(self.options)
            listen = {key: options.pop(key) for key in ("host", "port", "ws_port") if key in options}
            broker = Broker(self.access, **options)
            try:
                await broker.start(**listen)
            except BaseException as error:
                self._error = error
                self._started.set()
                return
            self.broker = broker
            self._started.set()
            await self._stop.wait()
            await broker.stop()

        asyncio.run(main())
        self._stopped.set()

    def call(self, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` in the broker's loop and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self.loop is not None and not self._stopped.is_set():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._stopped.wait(15)
