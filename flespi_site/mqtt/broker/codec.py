"""MQTT 3.1, 3.1.1 and 5.0 packets: decoding what clients send, encoding what the broker sends.

Pure functions over bytes, no I/O. ``Reader`` walks one packet's body; a malformed packet raises
``ProtocolError`` with the reason code MQTT 5 has for it (the connection is then closed, with a
DISCONNECT carrying that code when the client speaks MQTT 5).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# packet types (the high nibble of the first byte)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# protocol levels
MQTT31, MQTT311, MQTT5 = 3, 4, 5

# MQTT 5 reason codes the broker uses
SUCCESS = 0x00
GRANTED_QOS = (0x00, 0x01, 0x02)
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_USERNAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_ID_IN_USE = 0x91
PACKET_ID_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99
QOS_NOT_SUPPORTED = 0x9B
SERVER_MOVED = 0x9D
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1
WILDCARDS_NOT_SUPPORTED = 0xA2

# MQTT 3.1.1 CONNACK return codes
V3_ACCEPTED, V3_BAD_VERSION, V3_BAD_CLIENT_ID, V3_UNAVAILABLE, V3_BAD_CREDENTIALS, V3_NOT_AUTHORIZED = range(
    6
)
V3_SUBACK_FAILURE = 0x80

# MQTT 5 property identifiers
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_AVAILABLE = 0x28
SUBSCRIPTION_ID_AVAILABLE = 0x29
SHARED_AVAILABLE = 0x2A

_BYTE, _TWO, _FOUR, _VARINT, _TEXT, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    PAYLOAD_FORMAT: _BYTE,
    MESSAGE_EXPIRY: _FOUR,
    CONTENT_TYPE: _TEXT,
    RESPONSE_TOPIC: _TEXT,
    CORRELATION_DATA: _BINARY,
    SUBSCRIPTION_ID: _VARINT,
    SESSION_EXPIRY: _FOUR,
    ASSIGNED_CLIENT_ID: _TEXT,
    SERVER_KEEP_ALIVE: _TWO,
    AUTH_METHOD: _TEXT,
    AUTH_DATA: _BINARY,
    REQUEST_PROBLEM_INFO: _BYTE,
    WILL_DELAY: _FOUR,
    REQUEST_RESPONSE_INFO: _BYTE,
    RESPONSE_INFO: _TEXT,
    SERVER_REFERENCE: _TEXT,
    REASON_STRING: _TEXT,
    RECEIVE_MAXIMUM: _TWO,
    TOPIC_ALIAS_MAXIMUM: _TWO,
    TOPIC_ALIAS: _TWO,
    MAXIMUM_QOS: _BYTE,
    RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR,
    MAXIMUM_PACKET_SIZE: _FOUR,
    WILDCARD_AVAILABLE: _BYTE,
    SUBSCRIPTION_ID_AVAILABLE: _BYTE,
    SHARED_AVAILABLE: _BYTE,
}
# the properties of a PUBLISH that travel with the message to its subscribers
FORWARDED = (PAYLOAD_FORMAT, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY)

MAX_VARINT = 268_435_455


class ProtocolError(Exception):
    """A packet the broker cannot accept; ``code`` is the MQTT 5 reason code to close with."""

    def __init__(self, reason: str, code: int = MALFORMED_PACKET):
        super().__init__(reason)
        self.reason = reason
        self.code = code


Properties = dict  # property id -> value; USER_PROPERTY -> list of (name, value); SUBSCRIPTION_ID -> list


class Reader:
    """The body of one packet, read front to back."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0):
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ProtocolError("packet ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def two(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolError("packet ends early")
        value = (self.data[self.pos] << 8) | self.data[self.pos + 1]
        self.pos += 2
        return value

    def four(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ProtocolError("packet ends early")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return value

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 21:
                raise ProtocolError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        size = self.two()
        if self.pos + size > len(self.data):
            raise ProtocolError("packet ends early")
        value = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return value

    def text(self) -> str:
        raw = self.binary()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a string is not valid UTF-8") from None
        if "\x00" in value:
            raise ProtocolError("a string contains U+0000")
        return value

    def rest(self) -> bytes:
        value = bytes(self.data[self.pos :])
        self.pos = len(self.data)
        return value

    def properties(self) -> Properties:
        size = self.varint()
        end = self.pos + size
        if end > len(self.data):
            raise ProtocolError("properties run past the packet")
        found: Properties = {}
        while self.pos < end:
            ident = self.varint()
            kind = _PROPERTY_TYPES.get(ident)
            value: Any
            if kind is None:
                raise ProtocolError(f"unknown property 0x{ident:02x}")
            if kind == _BYTE:
                value = self.byte()
            elif kind == _TWO:
                value = self.two()
            elif kind == _FOUR:
                value = self.four()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _TEXT:
                value = self.text()
            elif kind == _BINARY:
                value = self.binary()
            else:
                value = (self.text(), self.text())
            if ident in (USER_PROPERTY, SUBSCRIPTION_ID):
                found.setdefault(ident, []).append(value)
            elif ident in found:
                raise ProtocolError(f"property 0x{ident:02x} given twice", PROTOCOL_ERROR)
            else:
                found[ident] = value
        if self.pos != end:
            raise ProtocolError("properties run past their length")
        return found


# --- encoding ------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def binary(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def properties(props: Properties | None) -> bytes:
    """The encoded property block (length first) of ``props``."""
    if not props:
        return b"\x00"
    content = property_bytes(props)
    return varint(len(content)) + content


def property_bytes(props: Properties) -> bytes:
    """The encoded properties of ``props``, without the block's length."""
    out = bytearray()
    for ident, value in props.items():
        kind = _PROPERTY_TYPES[ident]
        values = value if ident in (USER_PROPERTY, SUBSCRIPTION_ID) else (value,)
        for one in values:
            out += varint(ident)
            if kind == _BYTE:
                out.append(one)
            elif kind == _TWO:
                out += one.to_bytes(2, "big")
            elif kind == _FOUR:
                out += one.to_bytes(4, "big")
            elif kind == _VARINT:
                out += varint(one)
            elif kind == _TEXT:
                out += text(one)
            elif kind == _BINARY:
                out += binary(one)
            else:
                out += text(one[0]) + text(one[1])
    return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def connack(version: int, *, session_present: bool, code: int, props: Properties | None = None) -> bytes:
    if version == MQTT5:
        return packet(CONNACK << 4, bytes((int(session_present), code)) + properties(props))
    return packet(CONNACK << 4, bytes((int(session_present), code)))


def ack(
    kind: int, packet_id: int, version: int, code: int = SUCCESS, props: Properties | None = None
) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""
    first = (kind << 4) | (0x02 if kind == PUBREL else 0)
    if version == MQTT5 and (code != SUCCESS or props):
        return packet(first, packet_id.to_bytes(2, "big") + bytes((code,)) + properties(props))
    return bytes((first, 2)) + packet_id.to_bytes(2, "big")


def suback(packet_id: int, codes: list[int], version: int, props: Properties | None = None) -> bytes:
    head = packet_id.to_bytes(2, "big") + (properties(props) if version == MQTT5 else b"")
    return packet(SUBACK << 4, head + bytes(codes))


def unsuback(packet_id: int, codes: list[int], version: int) -> bytes:
    if version == MQTT5:
        return packet(UNSUBACK << 4, packet_id.to_bytes(2, "big") + b"\x00" + bytes(codes))
    return bytes((UNSUBACK << 4, 2)) + packet_id.to_bytes(2, "big")


PINGRESP_PACKET = bytes((PINGRESP << 4, 0))


def disconnect(code: int, reason: str = "", props: Properties | None = None) -> bytes:
    props = dict(props or {})
    if reason:
        props[REASON_STRING] = reason
    return packet(DISCONNECT << 4, bytes((code,)) + properties(props))


def publish(
    topic: bytes,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    packet_id: int = 0,
    dup: bool = False,
    props: bytes | None = None,
) -> bytes:
    """A PUBLISH; ``topic`` already encoded (length first); ``props`` an encoded property block for
    MQTT 5 receivers, None for 3.1.1."""
    first = (PUBLISH << 4) | (qos << 1) | int(retain) | (0x08 if dup else 0)
    head = topic + (packet_id.to_bytes(2, "big") if qos else b"")
    if props is not None:
        head += props
    return bytes((first,)) + varint(len(head) + len(payload)) + head + payload


# --- decoding of the packets a client sends ------------------------------------------------


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Properties = field(default_factory=dict)


@dataclass
class Connect:
    version: int
    client_id: str
    clean: bool
    keepalive: int
    username: str | None
    password: bytes | None
    will: Will | None
    props: Properties


def decode_connect(body: bytes | memoryview) -> Connect:
    reader = Reader(body)
    name = reader.text()
    version = reader.byte()
    if (name, version) not in (("MQIsdp", MQTT31), ("MQTT", MQTT311), ("MQTT", MQTT5)):
        raise ProtocolError(f"unsupported protocol {name!r} level {version}", UNSUPPORTED_PROTOCOL_VERSION)
    flags = reader.byte()
    if flags & 0x01:
        raise ProtocolError("the reserved flag of CONNECT is set")
    keepalive = reader.two()
    props = reader.properties() if version == MQTT5 else {}
    client_id = reader.text()
    will = None
    if flags & 0x04:
        will_props = reader.properties() if version == MQTT5 else {}
        will_topic = reader.text()
        will_payload = reader.binary()
        will_qos = (flags >> 3) & 0x03
        if will_qos == 3:
            raise ProtocolError("will QoS 3")
        will = Will(will_topic, will_payload, will_qos, bool(flags & 0x20), will_props)
    elif flags & 0x38:
        raise ProtocolError("will QoS or retain set without a will")
    username = reader.text() if flags & 0x80 else None
    password = reader.binary() if flags & 0x40 else None
    return Connect(version, client_id, bool(flags & 0x02), keepalive, username, password, will, props)


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    props: Properties


def decode_publish(flags: int, body: bytes | memoryview, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    reader = Reader(body)
    topic = reader.text()
    packet_id = reader.two() if qos else 0
    if qos and not packet_id:
        raise ProtocolError("PUBLISH with QoS > 0 and packet id 0")
    props = reader.properties() if version == MQTT5 else {}
    return Publish(topic, reader.rest(), qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, props)


@dataclass
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]]  # filter, options byte (QoS in the low bits)
    props: Properties


def decode_subscribe(body: bytes | memoryview, version: int) -> Subscribe:
    reader = Reader(body)
    packet_id = reader.two()
    props = reader.properties() if version == MQTT5 else {}
    filters = []
    while reader.remaining():
        topic_filter = reader.text()
        options = reader.byte()
        if (
            (options & 0x03) == 3
            or (version == MQTT5 and options & 0xC0)
            or (version != MQTT5 and options & 0xFC)
        ):
            raise ProtocolError(f"bad subscription options 0x{options:02x}")
        if version == MQTT5 and (options >> 4) & 0x03 == 3:
            raise ProtocolError("retain handling 3", PROTOCOL_ERROR)
        filters.append((topic_filter, options))
    if not filters:
        raise ProtocolError("SUBSCRIBE without a filter", PROTOCOL_ERROR)
    return Subscribe(packet_id, filters, props)


def decode_unsubscribe(body: bytes | memoryview, version: int) -> tuple[int, list[str]]:
    reader = Reader(body)
    packet_id = reader.two()
    if version == MQTT5:
        reader.properties()
    filters = []
    while reader.remaining():
        filters.append(reader.text())
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without a filter", PROTOCOL_ERROR)
    return packet_id, filters


def decode_ack(body: bytes | memoryview, version: int) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK, PUBREC, PUBREL or PUBCOMP."""
    reader = Reader(body)
    packet_id = reader.two()
    code = reader.byte() if version == MQTT5 and reader.remaining() else SUCCESS
    return packet_id, code


def decode_disconnect(body: bytes | memoryview, version: int) -> tuple[int, Properties]:
    if version != MQTT5 or not body:
        return SUCCESS, {}
    reader = Reader(body)
    code = reader.byte()
    return code, reader.properties() if reader.remaining() else {}


def split_packets(buffer: bytes, max_size: int) -> tuple[list[tuple[int, bytes]], int]:
    """The complete packets at the front of ``buffer`` as (first byte, body), and how many bytes
    they took. A packet over ``max_size`` raises ``ProtocolError``."""
    packets: list[tuple[int, bytes]] = []
    pos, end = 0, len(buffer)
    while pos + 2 <= end:
        first = buffer[pos]
        size, shift, index = 0, 0, pos + 1
        while True:
            if index >= end:
                return packets, pos
            byte = buffer[index]
            size |= (byte & 0x7F) << shift
            index += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("remaining length longer than 4 bytes")
        if size > max_size:
            raise ProtocolError(
                f"packet of {size} bytes is over the broker's maximum of {max_size}", PACKET_TOO_LARGE
            )
        if index + size > end:
            return packets, pos
        packets.append((first, buffer[index : index + size]))
        pos = index + size
    return packets, pos
