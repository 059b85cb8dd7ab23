"""Request bodies sent with ``Transfer-Encoding: chunked`` (no Content-Length).

Django reads a request body only up to its Content-Length, so a chunked body reads as empty. This
middleware (first in ``MIDDLEWARE``) reads it into memory, at most ``MAX_BODY_BYTES`` + 1 bytes,
and hands it on with its Content-Length, as if it had been sent with one: the parsers then apply
the same limit (413 beyond) and the same checks to both framings.

- gunicorn (what ``make run`` serves with) decodes the chunks itself and says so with
  ``wsgi.input_terminated``: ``wsgi.input`` is the body, ending after the last chunk.
- Django's development and test servers (``runserver``, ``LiveServerTestCase``; wsgiref) do not
  decode chunks and hand the application the connection's stream, limited to the Content-Length
  (none, so nothing). The chunks are read from the stream under that limit, here.
"""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse, JsonResponse

from flespi_site.errors import error_item

# A chunk size line (with any chunk extensions) or a trailer line longer than this is refused.
MAX_LINE = 4096
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class ChunkedFramingError(ValueError):
    """A chunked body that does not follow RFC 9112 section 7.1."""


def _refusal(status: int, reason: str) -> JsonResponse:
    response = JsonResponse({"errors": [error_item(code=status, reason=reason)]}, status=status)
    # this answer skips the other middleware, CommonMiddleware's Content-Length included
    response["Content-Length"] = str(len(response.content))
    return response


class ChunkedBodyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        codings = request.META.get("HTTP_TRANSFER_ENCODING", "")
        if codings:
            refusal = self._read_body(request, codings)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    def _read_body(self, request: HttpRequest, codings: str) -> JsonResponse | None:
        meta = request.META
        if [coding.strip().lower() for coding in codings.split(",")] != ["chunked"]:
            return _refusal(
                501,
                f"Transfer-Encoding {codings[:64]!r} is not supported: send the body chunked or with a "
                "Content-Length (compress it with Content-Encoding: gzip)",
            )
        if meta.get("CONTENT_LENGTH"):
            # RFC 9112 6.3: a message with both is a smuggling attempt or a broken proxy.
            return _refusal(
                400, "the request has both Content-Length and Transfer-Encoding: send one"
            )
        limit = settings.MAX_BODY_BYTES + 1
        stream = meta["wsgi.input"]
        try:
            if meta.get("wsgi.input_terminated"):
                body = _read_up_to(stream, limit)
            else:
                connection = _connection_stream(stream)
                if connection is None:
                    return _refusal(
                        411,
                        "this server does not read chunked request bodies: send the body with a Content-Length",
                    )
                body = read_chunked(connection, limit)
        except ChunkedFramingError as error:
            return _refusal(400, f"chunked body: {error}")
        except Exception as error:  # the server's own chunk decoder (gunicorn) refused the framing
            return _refusal(400, f"chunked body: {error or type(error).__name__}")
        meta["CONTENT_LENGTH"] = str(len(body))
        # What Django's WSGIRequest builds from wsgi.input and CONTENT_LENGTH, now both known.
        request._stream = LimitedStream(io.BytesIO(body), len(body))  # type: ignore[assignment]
        return None


def _read_up_to(stream: Any, limit: int) -> bytes:
    parts, size = [], 0
    while size < limit:
        part = stream.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _connection_stream(stream: Any) -> Any:
    """The connection's stream under the development server's ``LimitedStream`` of the request."""
    read = getattr(stream, "_read", None) if isinstance(stream, LimitedStream) else None
    connection = getattr(read, "__self__", None)
    return connection if hasattr(connection, "readline") else None


def read_chunked(stream: Any, limit: int) -> bytes:
    """The body of a chunked message read from ``stream``, with its trailer section; reading stops
    at ``limit`` bytes of body (the caller refuses the body then)."""
    body = bytearray()
    while True:
        size = _chunk_size(_line(stream, "chunk size line"))
        if size == 0:
            break
        wanted = min(size, limit - len(body))
        data = stream.read(wanted)
        body += data
        if len(data) < wanted:
            raise ChunkedFramingError(f"the connection ended inside a chunk ({len(body)} bytes of body read)")
        if len(body) >= limit:
            return bytes(body)
        if stream.read(2) != b"\r\n":
            raise ChunkedFramingError(
                f"a chunk of {size} bytes is not followed by CRLF (at body byte {len(body)})"
            )
    while _line(stream, "trailer line") not in (b"\r\n", b"\n"):
        pass
    return bytes(body)


def _line(stream: Any, what: str) -> bytes:
    line = stream.readline(MAX_LINE + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_LINE:
            raise ChunkedFramingError(f"a {what} is longer than {MAX_LINE} bytes")
        raise ChunkedFramingError(f"the connection ended before the last chunk (in a {what})")
    return line


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()
    if not digits or not _HEX_DIGITS.issuperset(digits):
        raise ChunkedFramingError(
            f"chunk size {digits[:32].decode(errors='replace')!r} is not a hexadecimal number"
        )
    return int(digits, 16)
