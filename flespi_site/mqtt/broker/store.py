"""What the broker keeps across restarts, in one SQLite file: persistent sessions (who they are,
their subscriptions, the messages queued for them) and retained messages.

Writes are collected while the broker handles what arrived and committed together before any
answer leaves (``Broker.flush``): a PUBACK is sent only once what the message changed here is
written, so a ``kill -9`` loses nothing that was acknowledged. A queued message stays here until
its receiver acknowledges it, also while that receiver is connected again. WAL with
``synchronous=NORMAL``: a commit survives the process, not a power cut.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, client_id TEXT NOT NULL, principal TEXT NOT NULL,
    expiry INTEGER NOT NULL, version INTEGER NOT NULL, disconnected REAL);
CREATE TABLE IF NOT EXISTS subscriptions (key TEXT NOT NULL, filter TEXT NOT NULL, options TEXT NOT NULL,
    PRIMARY KEY (key, filter));
CREATE TABLE IF NOT EXISTS queued (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, message TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS queued_key ON queued (key, id);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, message TEXT NOT NULL, payload BLOB NOT NULL);
"""


@dataclass
class Loaded:
    sessions: list[tuple[str, str, dict, int, int, float | None]]
    subscriptions: list[tuple[str, str, dict]]
    queued: list[tuple[int, str, dict, bytes]]
    retained: list[tuple[str, dict, bytes]]


class Store:
    """The broker's SQLite file. Changes wait in memory until ``commit``."""

    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._statements: list[tuple[str, tuple]] = []
        self._retained: dict[str, tuple[str, bytes] | None] = {}
        self._delivered: list[tuple[int]] = []
        # the rows of queued messages are numbered here, so that a message knows its row before
        # the commit (and leaves the store once acknowledged)
        self._next_row = (self.db.execute("SELECT max(id) FROM queued").fetchone()[0] or 0) + 1

    @property
    def dirty(self) -> bool:
        return bool(self._statements or self._retained or self._delivered)

    def session_keep(self, key: str, client_id: str, principal: dict, expiry: int, version: int) -> None:
        self._statements.append(
            (
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, NULL)",
                (key, client_id, json.dumps(principal), expiry, version),
            )
        )

    def session_disconnected(self, key: str, when: float) -> None:
        self._statements.append(("UPDATE sessions SET disconnected = ? WHERE key = ?", (when, key)))

    def session_forget(self, key: str) -> None:
        for table in ("sessions", "subscriptions", "queued"):
            self._statements.append((f"DELETE FROM {table} WHERE key = ?", (key,)))

    def subscription_keep(self, key: str, topic_filter: str, options: dict) -> None:
        self._statements.append(
            (
                "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?)",
                (key, topic_filter, json.dumps(options)),
            )
        )

    def subscription_forget(self, key: str, topic_filter: str) -> None:
        self._statements.append(
            ("DELETE FROM subscriptions WHERE key = ? AND filter = ?", (key, topic_filter))
        )

    def queue(self, key: str, message: dict, payload: bytes) -> int:
        """Queue a message for session ``key``; its row."""
        row, self._next_row = self._next_row, self._next_row + 1
        self._statements.append((
            "INSERT INTO queued (id, key, message, payload) VALUES (?, ?, ?, ?)",
            (row, key, json.dumps(message), payload),
        ))
        return row

    def queued_delete(self, row: int) -> None:
        self._delivered.append((row,))

    def retain(self, topic: str, message: dict | None, payload: bytes = b"") -> None:
        self._retained[topic] = None if message is None else (json.dumps(message), payload)

    def commit(self) -> None:
        if not self.dirty:
            return
        statements, self._statements = self._statements, []
        retained, self._retained = self._retained, {}
        delivered, self._delivered = self._delivered, []
        with self.db:
            for sql, args in statements:
                self.db.execute(sql, args)
            if delivered:
                self.db.executemany("DELETE FROM queued WHERE id = ?", delivered)
            kept = [(topic, *value) for topic, value in retained.items() if value is not None]
            if kept:
                self.db.executemany("INSERT OR REPLACE INTO retained VALUES (?, ?, ?)", kept)
            gone = [(topic,) for topic, value in retained.items() if value is None]
            if gone:
                self.db.executemany("DELETE FROM retained WHERE topic = ?", gone)

    def load(self) -> Loaded:
        db = self.db
        return Loaded(
            [
                (key, client_id, json.loads(principal), expiry, version, disconnected)
                for key, client_id, principal, expiry, version, disconnected in db.execute(
                    "SELECT key, client_id, principal, expiry, version, disconnected FROM sessions"
                )
            ],
            [
                (key, topic_filter, json.loads(options))
                for key, topic_filter, options in db.execute("SELECT key, filter, options FROM subscriptions")
            ],
            [
                (ident, key, json.loads(message), payload)
                for ident, key, message, payload in db.execute(
                    "SELECT id, key, message, payload FROM queued ORDER BY id"
                )
            ],
            [
                (topic, json.loads(message), payload)
                for topic, message, payload in db.execute("SELECT topic, message, payload FROM retained")
            ],
        )

    def close(self) -> None:
        self.commit()
        self.db.close()


def message_fields(message: Any) -> dict:
    """The fields of a message the store keeps besides its payload."""
    return {
        "topic": message.topic,
        "qos": message.qos,
        "props": message.props_list(),
        "expires": message.expires,
    }
