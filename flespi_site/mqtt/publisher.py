"""A QoS 1 publisher over one MQTT 3.1.1 connection, driven by its caller: the outbox relay's.

paho-mqtt spends 50-100 µs of Python on each publish (its threads, locks, callbacks and message
objects), which caps a relay at about 8,000 publishes/s. This publisher is a plain socket (TLS for
``mqtts://``) and the broker's own codec: it encodes a batch of PUBLISH packets at once, writes
them in one call, and counts the PUBACKs that come back, a few µs per publish (docs/messages.md).

No thread: ``publish`` sends and reads until its batch is acknowledged, ``keep_alive`` (called
between batches) notices a lost connection and pings an idle broker. A connection that is lost,
or whose broker does not acknowledge in time, is closed; a later call connects again once a
short backoff has passed (``retry_in``). One thread drives a publisher.

Sessions are clean: what a connection had in flight is forgotten with it, and its caller, which
keeps what was not acknowledged, publishes it again (at least once).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence
from typing import NoReturn

from flespi_site.mqtt.broker import codec
from flespi_site.mqtt.client import broker_address, login_for

PINGREQ = bytes((codec.PINGREQ << 4, 0))
DISCONNECT = bytes((codec.DISCONNECT << 4, 0))
MAX_PACKET_ID = 65_535
# What the broker sends a publisher is small (CONNACK, PUBACK, PINGRESP): a bigger packet is a
# broker speaking another protocol.
_MAX_INCOMING = 1 << 16
# MQTT 3.1.1 CONNACK return codes, as the standard names them.
REFUSALS = {
    codec.V3_BAD_VERSION: "unacceptable protocol version",
    codec.V3_BAD_CLIENT_ID: "client identifier rejected",
    codec.V3_UNAVAILABLE: "server unavailable",
    codec.V3_BAD_CREDENTIALS: "bad user name or password",
    codec.V3_NOT_AUTHORIZED: "not authorized",
}

Publish = tuple[str, str | bytes | None, bool]  # topic, payload (str: UTF-8; None: empty), retain


class PublisherError(Exception):
    """The publisher is not connected: the broker cannot be reached, or it went away."""


class BrokerRefused(PublisherError):
    """The broker answered the CONNECT with a refusal (``code``: the CONNACK return code)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _Lost(Exception):
    """The connection is gone or unusable; the reason is the message."""


class Publisher:
    """QoS 1 publishes to the broker at ``url`` (``mqtt://`` or ``mqtts://``, with a verified
    certificate) over one clean MQTT 3.1.1 session.

    ``window``: how many publishes may await their PUBACK at once (at most 65,535, the packet ids
    of a connection). ``keepalive``: seconds, told to the broker; ``keep_alive`` pings after half
    of it without sending. ``io_timeout``: seconds a connect, a CONNACK or a write may take.
    """

    def __init__(
        self, url: str, *, client_id: str, credentials: tuple[str, str] | None = None, window: int = 1000,
        keepalive: int = 30, io_timeout: float = 10.0, backoff_first: float = 0.25, backoff_most: float = 5.0,
    ):
        if not 1 <= window <= MAX_PACKET_ID:
            raise ValueError(f"a window of {window} publishes: it must be 1 to {MAX_PACKET_ID}")
        self.url = url
        self.host, self.port, self.tls = broker_address(url)
        self.client_id = client_id
        self.credentials = login_for(url, credentials)
        self.window = window
        self.keepalive = keepalive
        self.io_timeout = io_timeout
        self.backoff_first, self.backoff_most = backoff_first, backoff_most
        # Why the publisher is not connected (None while it is): the refusal, the failed connect
        # or the lost connection.
        self.error: PublisherError | None = PublisherError(f"not connected to the broker at {self.where}")
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._failures = 0  # failed connects (or lost connections) in a row
        self._retry_at = 0.0  # monotonic time of the next connect a lost connection allows
        self._last_sent = 0.0
        self._ping_sent: float | None = None
        self._next_id = 0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def retry_in(self) -> float:
        """Seconds until ``ensure_connected`` tries to connect again (0 when connected or due)."""
        return 0.0 if self._sock is not None else max(0.0, self._retry_at - time.monotonic())

    # --- connection ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and log in now; raises ``BrokerRefused`` when the broker refuses, else
        ``PublisherError`` when it cannot be reached."""
        self.close()
        try:
            self._sock = self._open()
            self._send(self._connect_packet())
            first, body = self._read_packet(time.monotonic() + self.io_timeout)
        except (OSError, _Lost, codec.ProtocolError) as error:
            self._failed(PublisherError(f"cannot connect to the broker at {self.where}: {_reason(error)}"))
        if first >> 4 != codec.CONNACK or len(body) != 2:
            self._failed(PublisherError(f"the broker at {self.where} answered CONNECT with packet type {first >> 4}"))
        if body[1] != codec.V3_ACCEPTED:
            who = f"user {self.credentials[0]!r}" if self.credentials else "an anonymous client"
            refusal = REFUSALS.get(body[1], "an unknown reason")
            self._failed(BrokerRefused(
                f"the broker at {self.where} refused the connection of {who}: {refusal} (return code {body[1]})",
                body[1],
            ))
        self.error = None
        self._failures = 0
        self._ping_sent = None

    def ensure_connected(self) -> bool:
        """Whether the publisher is connected, connecting first when its backoff has passed; why
        it is not is in ``error``."""
        if self._sock is not None:
            return True
        if self.retry_in() > 0:
            return False
        try:
            self.connect()
        except PublisherError:
            return False
        return True

    def close(self) -> None:
        """Disconnect (politely when the connection still works)."""
        sock, self._sock = self._sock, None
        self._buffer = b""
        if sock is None:
            return
        try:
            sock.settimeout(0.5)
            sock.sendall(DISCONNECT)
        except OSError:
            pass
        sock.close()

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.io_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            # CERT_REQUIRED and the host name checked, as the platform's paho clients do
            return ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        return sock

    def _connect_packet(self) -> bytes:
        flags = 0x02  # clean session
        login = b""
        if self.credentials is not None:
            username, password = self.credentials
            flags |= 0x80 | 0x40
            login = codec.text(username) + codec.binary(password.encode())
        body = (codec.text("MQTT") + bytes((codec.MQTT311, flags)) + self.keepalive.to_bytes(2, "big")
                + codec.text(self.client_id) + login)
        return codec.packet(codec.CONNECT << 4, body)

    def _failed(self, error: PublisherError) -> NoReturn:
        """Close, schedule the next connect and raise ``error``."""
        self._lose(error)
        raise error

    def _lose(self, error: PublisherError) -> None:
        self.close()
        self.error = error
        self._failures += 1
        pause = min(self.backoff_most, self.backoff_first * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + pause

    # --- publishing ----------------------------------------------------------------------------

    def publish(self, messages: Sequence[Publish], *, timeout: float) -> int:
        """Publish ``messages`` in order with QoS 1, ``window`` of them unacknowledged at most;
        returns how many of them, from the first on, the broker acknowledged. Fewer than all means
        the connection was lost, or the broker acknowledged nothing for ``timeout`` seconds: the
        connection is then closed, and ``error`` says why. Raises ``PublisherError`` when not
        connected and unable to connect now."""
        if not messages:
            return 0
        if not self.ensure_connected():
            assert self.error is not None
            raise self.error
        deadline = time.monotonic() + timeout
        count = len(messages)
        acked = bytearray(count)  # 1 once the broker acknowledged the publish of that index
        inflight: dict[int, int] = {}  # packet id -> index
        topics: dict[str, bytes] = {}  # topic -> encoded (a device's topics come again and again)
        sent = done = 0
        try:
            while done < count:
                room = self.window - len(inflight)
                if sent < count and room > 0:
                    packets = []
                    for index in range(sent, min(count, sent + room)):
                        topic, payload, retain = messages[index]
                        encoded = topics.get(topic)
                        if encoded is None:
                            encoded = topics[topic] = codec.text(topic)
                        packet_id = self._packet_id(inflight)
                        inflight[packet_id] = index
                        if payload is None:  # an empty payload: a retained topic cleared
                            payload = b""
                        packets.append(codec.publish(
                            encoded, payload.encode() if isinstance(payload, str) else payload,
                            qos=1, retain=retain, packet_id=packet_id,
                        ))
                        sent = index + 1
                    self._send(b"".join(packets))
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise _Lost(f"nothing acknowledged for {timeout:g} s ({count - done} of {count} publishes waiting)")
                acks = self._receive(wait)
                if acks:
                    deadline = time.monotonic() + timeout
                for packet_id in acks:
                    index = inflight.pop(packet_id, -1)
                    if index >= 0:
                        acked[index] = 1
                while done < sent and acked[done]:
                    done += 1
        except (OSError, _Lost, codec.ProtocolError) as error:
            # Its packet ids may still be acknowledged late: the connection cannot be used again.
            self._lose(PublisherError(f"lost the connection to the broker at {self.where}: {_reason(error)}"))
        return done

    def _packet_id(self, inflight: dict[int, int]) -> int:
        packet_id = self._next_id
        while True:
            packet_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in inflight:
                self._next_id = packet_id
                return packet_id

    def keep_alive(self) -> None:
        """Between publishes: read what the broker sent (notice a lost connection), and ping it
        when nothing was sent for half the keepalive (a broker that does not answer the ping
        within the keepalive is lost)."""
        if self._sock is None:
            return
        try:
            self._receive(0.0)
            now = time.monotonic()
            if self._ping_sent is not None:
                if now - self._ping_sent > self.keepalive:
                    raise _Lost(f"no answer to a ping within {self.keepalive} s")
            elif now - self._last_sent >= self.keepalive / 2:
                self._send(PINGREQ)
                self._ping_sent = now
        except (OSError, _Lost, codec.ProtocolError) as error:
            self._lose(PublisherError(f"lost the connection to the broker at {self.where}: {_reason(error)}"))

    # --- the socket ----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.settimeout(self.io_timeout)
        self._sock.sendall(data)
        self._last_sent = time.monotonic()

    def _recv(self, wait: float) -> bool:
        """Append what arrives within ``wait`` seconds to the buffer; False when nothing did."""
        assert self._sock is not None
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(1 << 16)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return False
        if not data:
            raise _Lost("the broker closed the connection")
        self._buffer += data
        return True

    def _receive(self, wait: float) -> list[int]:
        """The packet ids of the PUBACKs that arrive within ``wait`` seconds (what is there
        already, without waiting, when 0)."""
        if not self._recv(wait):
            return []
        packets, used = codec.split_packets(self._buffer, _MAX_INCOMING)
        self._buffer = self._buffer[used:]
        acks = []
        for first, body in packets:
            kind = first >> 4
            if kind == codec.PUBACK and len(body) == 2:
                acks.append((body[0] << 8) | body[1])
            elif kind == codec.PINGRESP:
                self._ping_sent = None
            else:
                raise _Lost(f"unexpected packet type {kind}")
        return acks

    def _read_packet(self, deadline: float) -> tuple[int, bytes]:
        """The next packet (its first byte and body) arriving before ``deadline``."""
        while True:
            packets, _used = codec.split_packets(self._buffer, _MAX_INCOMING)
            if packets:
                first, body = packets[0]
                size = len(body) + len(codec.varint(len(body))) + 1
                self._buffer = self._buffer[size:]
                return first, body
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise _Lost("no answer in time")
            self._recv(wait)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
