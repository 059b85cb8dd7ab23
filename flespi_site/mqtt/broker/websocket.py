"""MQTT over WebSocket (RFC 6455, subprotocol ``mqtt``): the HTTP upgrade and the framing, as a
transport the broker's connection writes to like a TCP one.

Binary frames carry the MQTT byte stream (a packet may span frames, a frame may hold several);
pings are answered, a close is answered and ends the connection. No extension is negotiated.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from collections.abc import Callable
from typing import Any

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE = 16_384
CLOSE_WAIT = 2.0
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    pass


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def handshake_response(request: bytes) -> bytes:
    """The 101 answer to an upgrade request, or ``HandshakeError`` naming what is wrong."""
    head = request.decode("latin-1").split("\r\n")
    method, _, _rest = head[0].partition(" ")
    if method != "GET":
        raise HandshakeError("the WebSocket upgrade must be a GET")
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "websocket" not in headers.get("upgrade", "").lower():
        raise HandshakeError("this port speaks MQTT over WebSocket: send an Upgrade: websocket request")
    key = headers.get("sec-websocket-key")
    if not key:
        raise HandshakeError("Sec-WebSocket-Key is missing")
    offered = headers.get("sec-websocket-protocol", "").split(",")
    protocols = [protocol.strip() for protocol in offered if protocol.strip()]
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    for wanted in ("mqtt", "mqttv3.1"):
        if wanted in protocols:
            lines.append(f"Sec-WebSocket-Protocol: {wanted}")
            break
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(payload: bytes, opcode: int = _BINARY) -> bytes:
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 65_536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


class WebSocketTransport(asyncio.Protocol):
    """The server side of one WebSocket connection. ``inner`` is the MQTT connection's protocol:
    it gets ``connection_made(self)``, the unframed bytes in ``data_received``, and writes with
    ``write`` / ``writelines`` on this object as on a transport."""

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], max_frame: int):
        self.make_inner = make_inner
        self.max_frame = max_frame
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self.buffer = bytearray()
        self.message = bytearray()
        self.closing = False

    # --- asyncio.Protocol (the socket) ---

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.inner is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HANDSHAKE:
                    self._refuse("the upgrade request is too large")
                return
            request, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 4 :]
            try:
                answer = handshake_response(request)
            except (HandshakeError, UnicodeError) as error:
                self._refuse(str(error))
                return
            assert self.transport is not None
            self.transport.write(answer)
            self.inner = self.make_inner()
            self.inner.connection_made(self)  # type: ignore[arg-type]  # it is the MQTT connection's transport
        self._frames()

    def _refuse(self, reason: str) -> None:
        assert self.transport is not None
        body = (reason + "\n").encode()
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.transport.close()

    def _frames(self) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            opcode, masked, size, pos = first & 0x0F, second & 0x80, second & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, pos = struct.unpack_from("!H", buffer, 2)[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, pos = struct.unpack_from("!Q", buffer, 2)[0], 10
            if not masked:
                self._close(1002, "client frames must be masked")
                return
            if size > self.max_frame:
                self._close(1009, "frame too large")
                return
            if len(buffer) < pos + 4 + size:
                return
            mask = bytes(buffer[pos : pos + 4])
            payload = _unmask(bytes(buffer[pos + 4 : pos + 4 + size]), mask)
            del buffer[: pos + 4 + size]
            if opcode in (_BINARY, _TEXT, _CONTINUATION):
                self.message += payload
                if first & 0x80:
                    data, self.message = bytes(self.message), bytearray()
                    if data and self.inner is not None:
                        self.inner.data_received(data)
            elif opcode == _PING:
                self._write(frame(payload, _PONG))
            elif opcode == _CLOSE:
                self._close(1000, "")
                self._close_socket()
                return
            elif opcode != _PONG:
                self._close(1002, f"unknown opcode {opcode}")
                return

    def _close(self, code: int, reason: str) -> None:
        """Send a close frame; the socket closes when the client answers with its own, or after
        ``CLOSE_WAIT`` seconds (a client writing meanwhile gets no broken pipe)."""
        if self.closing:
            return
        self.closing = True
        self._write(frame(struct.pack("!H", code) + reason.encode()[:120], _CLOSE))
        assert self.transport is not None
        asyncio.get_running_loop().call_later(CLOSE_WAIT, self._close_socket)

    def _close_socket(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # --- what the MQTT connection sees as its transport ---

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write(self, data: bytes) -> None:
        if not self.closing:
            self._write(frame(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        self._close(1000, "")

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def is_closing(self) -> bool:
        return self.closing or self.transport is None or self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "websocket":
            return True
        return self.transport.get_extra_info(name, default) if self.transport is not None else default

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


def _unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    size = len(data)
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(size, "big")
