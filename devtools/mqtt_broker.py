"""The embedded MQTT broker (amqtt, MQTT 3.1.1) with the platform's access control and
persistence.

- ``TokenAuthPlugin`` decides each CONNECT by the policy (``flespi_site.mqtt.policy``) and,
  every ``RECHECK_SECONDS``, checks every connected token again: a token disabled, expired or
  deleted meanwhile gets no more deliveries from that moment and its connection is closed.
- ``TopicAccessPlugin`` decides each SUBSCRIBE, PUBLISH and delivery (amqtt's RECEIVE check)
  with the same policy.
- ``SessionStorePlugin`` keeps persistent sessions (their subscriptions and the QoS 1/2
  messages queued for them while offline) and retained messages in a SQLite file, written as
  they change, so that a restart (also after ``kill -9``) keeps them.
- ``PlatformBroker`` fixes what amqtt 0.12 does not check: retained messages sent on subscribe
  and on reconnect go through the RECEIVE check and only for the session's own subscriptions.

The broker runs in a child process of the embedded services (``python -m devtools.embedded
mqtt-broker``), which sets Django up and gives the broker its ``Access``
(``settings.MQTT_BROKER_ACCESS``: ``accounts.mqtt_access.BrokerAccess``, reading the control
database).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import Session

from flespi_site.mqtt.policy import PLATFORM, Decision, Principal

logger = logging.getLogger("flespi.mqtt_broker")

RECHECK_SECONDS = 2.0
PRINCIPAL = "flespi.principal"  # the session attribute holding its Principal (None: refused)


class Access(Protocol):
    """The policy applied with the control database's facts (``accounts.mqtt_access.BrokerAccess``),
    given to ``PlatformBroker``: this module imports no app."""

    platform_username: str
    platform_password: str

    async def connect(self, username: str | None, password: str | None) -> tuple[Decision, Principal | None]: ...

    async def publish(self, principal: Principal, topic: str) -> Decision: ...

    async def subscribe(self, principal: Principal, topic_filter: str) -> Decision: ...

    async def receive(self, principal: Principal, topic: str) -> Decision: ...


class _PolicyPlugin:
    """What both access plugins share: the broker's ``Access``."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)  # type: ignore[call-arg]
        self.access: Access = context._broker_instance.access  # type: ignore[attr-defined]


class TokenAuthPlugin(_PolicyPlugin, BaseAuthPlugin):
    """CONNECT: a token key as username (or the platform's login), by the policy."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._sweeper: asyncio.Task | None = None

    async def authenticate(self, *, session: Session) -> bool:
        try:
            decision, principal = await self.access.connect(session.username, session.password)
        except Exception:
            logger.exception("connect of %s refused: the control database could not be read", session.client_id)
            return False
        session.attributes[PRINCIPAL] = principal
        if not decision.allowed:
            logger.info("connect of %s refused: %s", session.client_id, decision.reason)
        return decision.allowed

    async def on_broker_post_start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                await self.sweep()
            except Exception:
                logger.exception("the periodic token check failed; trying again")

    async def sweep(self) -> None:
        """Check every session's token again; refuse deliveries to and close the connections
        of those that may no longer connect."""
        broker = self.context._broker_instance  # type: ignore[attr-defined]
        for client_id, (session, handler) in list(broker.sessions.items()):
            principal = session.attributes.get(PRINCIPAL)
            if principal is None or principal.platform:
                continue
            decision, again = await self.access.connect(session.username, session.password)
            if again is not None:
                continue
            session.attributes[PRINCIPAL] = None
            logger.info("%s loses access: %s", client_id, decision.reason)
            if session.transitions.state == "connected" and handler is not None:
                await handler.handle_connection_closed()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


class TopicAccessPlugin(_PolicyPlugin, BaseTopicPlugin):
    """SUBSCRIBE, PUBLISH and every delivery, by the policy."""

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or topic is None or action is None:
            return False
        try:
            if PRINCIPAL not in session.attributes:
                # a persistent session restored after a restart, not connected since: it was
                # authenticated when it was made; its token is checked again like any other
                session.attributes[PRINCIPAL] = await self._restored_principal(session)
            principal = session.attributes[PRINCIPAL]
            if principal is None:
                return False
            if action == Action.PUBLISH:
                decision = await self.access.publish(principal, topic)
            elif action == Action.SUBSCRIBE:
                decision = await self.access.subscribe(principal, topic)
            else:
                decision = await self.access.receive(principal, topic)
        except Exception:
            logger.exception("%s on %s refused: the control database could not be read", action, topic)
            return False
        if not decision.allowed and action != Action.RECEIVE:
            logger.info("%s of %s on %r refused: %s", action, session.client_id, topic, decision.reason)
        return decision.allowed

    async def _restored_principal(self, session: Session) -> Principal | None:
        if not session.username:
            return None
        if session.username == self.access.platform_username:
            return PLATFORM if self.access.platform_password else None
        _decision, principal = await self.access.connect(session.username, None)
        return principal


class SessionStore:
    """Persistent sessions, their queued messages and retained messages in one SQLite file."""

    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, username TEXT);
            CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT, filter TEXT, qos INTEGER,
                PRIMARY KEY (client_id, filter));
            CREATE TABLE IF NOT EXISTS queued (id INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT,
                topic TEXT, data BLOB, qos INTEGER);
            CREATE INDEX IF NOT EXISTS queued_client ON queued (client_id, id);
            CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, data BLOB, qos INTEGER);
            """
        )

    def session_keep(self, client_id: str, username: str | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (client_id, username))

    def session_forget(self, client_id: str) -> None:
        with self.db:
            for table in ("sessions", "subscriptions", "queued"):
                self.db.execute(f"DELETE FROM {table} WHERE client_id = ?", (client_id,))

    def subscription_keep(self, client_id: str, topic_filter: str, qos: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?)", (client_id, topic_filter, qos))

    def subscription_forget(self, client_id: str, topic_filter: str) -> None:
        self.db.execute("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?", (client_id, topic_filter))

    def queue(self, client_id: str, messages: Iterable[tuple[str, bytes, int]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO queued (client_id, topic, data, qos) VALUES (?, ?, ?, ?)",
                [(client_id, topic, bytes(data), qos) for topic, data, qos in messages],
            )

    def queued_upto(self, client_id: str) -> int:
        row = self.db.execute("SELECT max(id) FROM queued WHERE client_id = ?", (client_id,)).fetchone()
        return row[0] or 0

    def queued_forget(self, client_id: str, upto: int) -> None:
        self.db.execute("DELETE FROM queued WHERE client_id = ? AND id <= ?", (client_id, upto))

    def retain(self, topic: str, data: bytes | bytearray | None, qos: int) -> None:
        if data:
            self.db.execute("INSERT OR REPLACE INTO retained VALUES (?, ?, ?)", (topic, bytes(data), qos))
        else:
            self.db.execute("DELETE FROM retained WHERE topic = ?", (topic,))

    def load(self) -> tuple[list[tuple[str, str | None]], list[tuple[str, str, int]], list[tuple[str, str, bytes, int]],
                            list[tuple[str, bytes, int]]]:
        return (
            self.db.execute("SELECT client_id, username FROM sessions").fetchall(),
            self.db.execute("SELECT client_id, filter, qos FROM subscriptions").fetchall(),
            self.db.execute("SELECT client_id, topic, data, qos FROM queued ORDER BY id").fetchall(),
            self.db.execute("SELECT topic, data, qos FROM retained").fetchall(),
        )


class SessionStorePlugin(BasePlugin[BaseContext]):
    """Keeps persistent sessions and retained messages across restarts (``SessionStore``)."""

    @dataclass
    class Config:
        path: str = "mqtt-sessions.sqlite3"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.store = SessionStore(self.config.path)
        broker = context._broker_instance  # type: ignore[attr-defined]
        if isinstance(broker, PlatformBroker):
            broker.store = self.store

    @staticmethod
    def _persistent(session: Session | None) -> bool:
        return session is not None and session.clean_session is False

    async def on_broker_post_start(self) -> None:
        broker = self.context._broker_instance  # type: ignore[attr-defined]
        sessions, subscriptions, queued, retained = self.store.load()
        for client_id, username in sessions:
            handler, session = broker.create_offline_session(client_id)
            session.clean_session = False
            session.username = username
            broker._sessions[client_id] = (session, handler)
        for client_id, topic_filter, qos in subscriptions:
            if client_id in broker._sessions:
                # restored as they were granted: the policy is applied again on every delivery
                broker._subscriptions.setdefault(topic_filter, []).append((broker._sessions[client_id][0], qos))
        for client_id, topic, data, qos in queued:
            if client_id in broker._sessions:
                broker._sessions[client_id][0].retained_messages.put_nowait(
                    RetainedApplicationMessage(None, topic, data, qos)
                )
        for topic, data, qos in retained:
            broker._retained_messages[topic] = RetainedApplicationMessage(None, topic, data, qos)
        logger.info("restored %d sessions, %d queued and %d retained messages", len(sessions), len(queued), len(retained))

    async def on_broker_client_connected(self, client_id: str, client_session: Session) -> None:
        if self._persistent(client_session):
            self.store.session_keep(client_id, client_session.username)
        else:
            self.store.session_forget(client_id)

    async def on_broker_client_subscribed(self, client_id: str, topic: str, qos: int) -> None:
        if self._persistent(self.context.get_session(client_id)):  # type: ignore[attr-defined]
            self.store.subscription_keep(client_id, topic, qos)

    async def on_broker_client_unsubscribed(self, client_id: str, topic: str) -> None:
        self.store.subscription_forget(client_id, topic)

    async def on_broker_retained_message(self, *, client_id: str | None, retained_message: RetainedApplicationMessage) -> None:
        if client_id is None:
            self.store.retain(retained_message.topic, retained_message.data, retained_message.qos or 0)
        else:
            self.store.queue(client_id, [(retained_message.topic, retained_message.data, retained_message.qos or 0)])


class PlatformBroker(Broker):
    """amqtt's broker with what amqtt 0.12 gets wrong for the platform put right:

    - retained messages sent on subscribe and on reconnect go through the RECEIVE check, and
      only for the session's own subscriptions;
    - routing iterates a snapshot of the subscriptions (``_run_broadcast``);
    - a publisher that disconnects has its acknowledged messages (PUBACK is sent on receipt)
      delivered first instead of dropped;
    - a shutdown keeps what connected persistent sessions have not acknowledged yet (sent again
      after the restart: QoS 1 is at least once), then closes every connection, which sends
      what publishers had delivered on to the sessions and the store;
    - the store forgets the queue of a reconnecting persistent session only once delivered.
    """

    store: SessionStore | None = None

    def __init__(self, config: dict[str, Any], *, access: Access) -> None:
        self.access = access  # before amqtt makes the plugins, which take it
        super().__init__(config)

    async def _run_broadcast(self, running_tasks: Any) -> None:
        """amqtt's routing of one message, over a snapshot of the subscriptions: amqtt iterates
        the live lists across the awaits of the RECEIVE check, so a session leaving meanwhile
        made it skip the next subscriber (a QoS 1 message lost, seen in bench/mqtt_acl.py)."""
        broadcast = await self._broadcast_queue.get()
        for topic_filter, subscriptions in list(self._subscriptions.items()):
            if not self._matches(broadcast["topic"], topic_filter):
                continue
            for target_session, sub_qos in list(subscriptions):
                qos = broadcast.get("qos", sub_qos)
                if not await self._topic_filtering(target_session, topic=broadcast["topic"], action=Action.RECEIVE):
                    continue
                connected = target_session.transitions.state == "connected"
                if not connected and not target_session.clean_session and qos in (1, 2) and not target_session.is_anonymous:
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                handler = self._get_handler(target_session) if connected else None
                if handler is not None:
                    running_tasks.append(asyncio.ensure_future(
                        handler.mqtt_publish(broadcast["topic"], broadcast["data"], qos, retain=False)
                    ))

    async def _handle_disconnect(self, client_session: Session, handler: Any, disconnect_waiter: Any) -> None:
        queue = client_session.delivered_message_queue
        while not queue.empty():
            delivered = asyncio.get_running_loop().create_future()
            delivered.set_result(queue.get_nowait())
            await self._handle_message_delivery(client_session, handler, delivered)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)

    async def shutdown(self) -> None:
        sessions = list(self._sessions.items())
        if self.store is not None:
            for client_id, (session, _handler) in sessions:
                if session.clean_session is False and session.inflight_out:
                    self.store.queue(
                        client_id,
                        [
                            (message.topic, message.data, message.qos or 1)
                            for message in session.inflight_out.values()
                        ],
                    )
        for _client_id, (session, handler) in sessions:
            if session.transitions.state == "connected" and handler is not None:
                await handler.handle_connection_closed()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and (
            not self._broadcast_queue.empty()
            or any(session.transitions.state == "connected" for session, _handler in self._sessions.values())
        ):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the broadcast of the last message taken off the queue
        await self.plugins_manager.wait_fired_events()
        await super().shutdown()

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Session) -> None:
        topic_filter, qos = subscription
        if all(own.client_id != session.client_id for own, _qos in self._subscriptions.get(topic_filter, [])):
            return  # amqtt calls this on reconnect for every filter of every session
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter) and await self._topic_filtering(session, topic, Action.RECEIVE):
                tasks.append(asyncio.ensure_future(
                    handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)
                ))
        if tasks:
            await asyncio.wait(tasks)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        upto = self.store.queued_upto(session.client_id) if self.store and session.client_id else 0
        await super()._publish_session_retained_messages(session)
        if self.store is not None and session.client_id and upto:
            self.store.queued_forget(session.client_id, upto)


def broker_config(*, port: int, store_path: str) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {
            f"{__name__}.TokenAuthPlugin": {},
            f"{__name__}.TopicAccessPlugin": {},
            f"{__name__}.SessionStorePlugin": {"path": store_path},
        },
    }
