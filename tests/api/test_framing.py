"""How a request body is framed and encoded, over real connections: chunked bodies (raw sockets),
gzip members, trailing bytes and Content-Type patterns, under gunicorn (what `make run` serves
with) and Django's development/test server; a refused body stores nothing."""

from __future__ import annotations

import gzip
import json
import socket
import zlib

import pytest

from devices import storage
from tests.support.processes import WebServer

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

LIMIT = 4096  # MAX_BODY_BYTES of the servers under test


@pytest.fixture(scope="module")
def gunicorn(django_db_setup, django_db_blocker):
    server = WebServer(MAX_BODY_BYTES=str(LIMIT))
    yield ("127.0.0.1", server.port)
    server.stop()


@pytest.fixture(params=["gunicorn", "django"])
def server(request, settings):
    if request.param == "gunicorn":
        return request.getfixturevalue("gunicorn")
    settings.MAX_BODY_BYTES = LIMIT  # the test server runs in this process
    live = request.getfixturevalue("live_server")
    host, port = live.url.removeprefix("http://").rsplit(":", 1)
    return (host, int(port))


@pytest.fixture
def target(make_account, make_token):
    from devices.services import device_create

    account = make_account("fleet")
    device = device_create(account=account, name="truck", configuration={"ident": "35262569"})
    return device, make_token(account)


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)
        }

    def reason(self) -> str:
        return json.loads(self.body)["errors"][0]["reason"]


def exchange(
    server, target, body: bytes = b"", *, chunks: list[bytes] | None = None, **headers: str
) -> Response:
    """One POST of messages on a fresh connection, written byte for byte: ``chunks`` are sent as
    they are (their framing included) after the head, or else ``body`` with its Content-Length.
    ``headers`` are given with underscores (``Content_Type``)."""
    device, key = target
    fields = {"Content-Type": "application/json"}
    if chunks is None:
        fields["Content-Length"] = str(len(body))
    fields.update({name.replace("_", "-"): value for name, value in headers.items()})
    lines = [
        f"POST /gw/devices/{device.pk}/messages HTTP/1.1",
        "Host: localhost",
        f"Authorization: FlespiToken {key}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in fields.items()),
    ]
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for part in chunks if chunks is not None else [body]:
            sock.sendall(part)
        received = b""
        while data := sock.recv(65536):
            received += data
            if _complete(received):
                break
    return Response(received)


def _complete(received: bytes) -> bool:
    head, separator, body = received.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def chunked(body: bytes, size: int = 100, *, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    out = b"".join(
        b"%x%s\r\n%s\r\n" % (len(body[i : i + size]), extension, body[i : i + size])
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n" + trailer + b"\r\n"


def stored(device) -> list[float]:
    return [row["timestamp"] for row in storage.messages_read(alias=device._state.db, device_ids=[device.pk])]


def batch(count: int, start: int = 1_700_000_000) -> bytes:
    return json.dumps([{"timestamp": start + i, "n": i} for i in range(count)]).encode()


CHUNKED = {"Transfer_Encoding": "chunked"}
GZIP = {"Content_Encoding": "gzip"}


def test_a_chunked_body_is_read(server, target):
    device = target[0]
    body = batch(20)
    response = exchange(server, target, **CHUNKED, chunks=[chunked(body, 37, extension=b";note=1")])
    assert (response.status, json.loads(response.body)) == (200, {"result": []})
    assert stored(device) == [1_700_000_000 + i for i in range(20)]


def test_a_chunked_body_sent_piece_by_piece_with_a_trailer_is_read(server, target):
    device = target[0]
    framed = chunked(batch(5), 16, trailer=b"X-Checksum: none\r\n")
    response = exchange(
        server, target, **CHUNKED, chunks=[framed[i : i + 7] for i in range(0, len(framed), 7)]
    )
    assert response.status == 200, response.body
    assert len(stored(device)) == 5


def test_a_chunked_body_over_the_limit_is_413(server, target):
    device = target[0]
    body = batch(200)
    assert len(body) > LIMIT
    response = exchange(server, target, **CHUNKED, chunks=[chunked(body, 1000)])
    assert response.status == 413
    assert response.reason() == f"request body is larger than {LIMIT} bytes"
    assert stored(device) == []


def test_a_chunked_body_of_exactly_the_limit_is_read(server, target):
    device = target[0]
    body = batch(1)
    body = body[:-1] + b" " * (LIMIT - len(body)) + b"]"
    assert len(body) == LIMIT
    response = exchange(server, target, **CHUNKED, chunks=[chunked(body, 1000)])
    assert response.status == 200, response.body
    assert len(stored(device)) == 1


@pytest.mark.parametrize(
    "framing",
    [b"zz\r\n[]\r\n0\r\n\r\n", b"2\r\n[]XX0\r\n\r\n", b"-2\r\n[]\r\n0\r\n\r\n"],
    ids=["size not hex", "no CRLF after data", "negative size"],
)
def test_a_broken_chunked_framing_is_400(server, target, framing):
    device = target[0]
    response = exchange(server, target, **CHUNKED, chunks=[framing])
    assert response.status == 400
    assert response.reason().startswith("chunked body: ")
    assert stored(device) == []


def test_a_chunked_gzip_body_is_read(server, target):
    device = target[0]
    body = gzip.compress(batch(50))
    response = exchange(server, target, **CHUNKED, **GZIP, chunks=[chunked(body, 64)])
    assert response.status == 200, response.body
    assert len(stored(device)) == 50


def test_gzip_members_are_read_as_one_text(server, target):
    device = target[0]
    first, second = b'[{"timestamp": 1700000000}, ', b'{"timestamp": 1700000001}]'
    body = gzip.compress(first) + gzip.compress(second)
    response = exchange(
        server,
        target,
        body,
        **GZIP,
    )
    assert response.status == 200, response.body
    assert stored(device) == [1_700_000_000, 1_700_000_001]


def test_gzip_members_are_limited_together(server, target):
    half = b" " * (LIMIT // 2 + 10)
    body = gzip.compress(b"[" + half) + gzip.compress(half + b"]")
    response = exchange(
        server,
        target,
        body,
        **GZIP,
    )
    assert response.status == 413
    assert response.reason() == f"request body is larger than {LIMIT} bytes once decompressed"


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (
            b"garbage",
            "gzip body has 7 bytes after its end of stream (from byte {at}) that are not another gzip member",
        ),
        (
            b"\x00\x00\x00\x00",
            "gzip body has 4 bytes after its end of stream (from byte {at}) that are not another gzip member",
        ),
        (
            b"\x1f\x8bnot gzip",
            "body is not valid gzip (the member at byte {at}) (Error -3 while decompressing data: ",
        ),
        (gzip.compress(b"]")[:-3], "gzip body ends before its end of stream: it was cut short"),
    ],
    ids=["text", "zeros", "bad member", "cut member"],
)
def test_bytes_after_a_gzip_member_are_400(server, target, tail, reason):
    device = target[0]
    member = gzip.compress(batch(2))
    body = member + tail
    response = exchange(
        server,
        target,
        body,
        **GZIP,
    )
    assert response.status == 400
    assert response.reason().startswith(reason.format(at=len(member)))
    assert stored(device) == []


def test_a_raw_deflate_body_is_not_gzip(server, target):
    device = target[0]
    body = zlib.compress(batch(2))
    response = exchange(
        server,
        target,
        body,
        **GZIP,
    )
    assert response.status == 400 and "not valid gzip" in response.reason()
    assert stored(device) == []


@pytest.mark.parametrize("content_type", ["*/*", "application/*", "*/*; charset=utf-8"])
def test_a_content_type_pattern_is_415(server, target, content_type):
    device = target[0]
    body = batch(2)
    response = exchange(server, target, body, Content_Type=content_type)
    assert response.status == 415
    declared = content_type.split(";")[0]
    assert response.reason() == (
        f"Content-Type {declared!r} is a pattern (for Accept), not the type of a body; "
        "send the body as JSON with Content-Type: application/json (curl: --json)"
    )
    assert stored(device) == []


def test_what_curl_data_sends_is_415(server, target):
    device = target[0]
    body = batch(2)
    response = exchange(server, target, body, Content_Type="application/x-www-form-urlencoded", Accept="*/*")
    assert response.status == 415
    assert response.reason().endswith(
        "send the body as JSON with Content-Type: application/json (curl: --json)"
    )
    assert stored(device) == []


def test_content_length_and_chunked_together_are_400(server, target):
    device = target[0]
    body = batch(2)
    framed = chunked(body)
    response = exchange(server, target, **CHUNKED, Content_Length=str(len(framed)), chunks=[framed])
    assert response.status == 400
    assert stored(device) == []


def test_other_transfer_codings_are_refused(server, target):
    device = target[0]
    framed = chunked(gzip.compress(batch(2)))
    response = exchange(server, target, Transfer_Encoding="gzip, chunked", chunks=[framed])
    assert response.status == 501
    assert stored(device) == []
