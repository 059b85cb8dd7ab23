"""Requests of one webhook to its receiver: a kept-alive connection to an address checked against
the allow-list at connect time (``webhooks.addresses``), no redirects followed, a bounded read of
the answer. No Django here. The delivery loop (``webhooks.delivery``) gives each webhook one
``Sender``, used by one thread at a time.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from webhooks.addresses import AddressPolicy, AddressRefused, Resolver, allowed_addresses, system_resolve

MAX_ANSWER = 64 * 1024  # bytes of an answer read (the rest is dropped with the connection)
_FORBIDDEN_IN_HEADERS = str.maketrans({"\r": " ", "\n": " ", "\x00": " "})


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """An attempt: ``ok`` when the receiver answered 2xx; otherwise the status (None: no answer)
    and what went wrong."""

    ok: bool
    status: int | None
    error: str = ""


class _Connection(http.client.HTTPConnection):
    """An HTTP connection to the address ``target``, the URL's host in ``Host``."""

    def __init__(self, host: str, port: int, *, target: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.target = target

    def connect(self) -> None:
        self.sock = socket.create_connection((self.target, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _TLSConnection(_Connection):
    """HTTPS to the address ``target``, the certificate checked against the URL's host."""

    context = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


class Sender:
    """Sends requests to one origin (scheme, host, port) over one kept-alive connection, opened
    again to a freshly resolved and checked address whenever it closed."""

    def __init__(self, *, policy: AddressPolicy, timeout: float, resolve: Resolver = system_resolve):
        self.policy = policy
        self.timeout = timeout
        self.resolve = resolve
        self._connection: _Connection | None = None
        self._origin: tuple[str, str, int] | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        if self._connection is not None and self._origin == (scheme, host, port):
            return self._connection
        self.close()
        addresses = allowed_addresses(host, port, policy=self.policy, resolve=self.resolve)
        kind = _TLSConnection if scheme == "https" else _Connection
        self._connection = kind(host, port, target=addresses[0], timeout=self.timeout)
        self._origin = (scheme, host, port)
        return self._connection

    def send(self, request: Request) -> Outcome:
        parts = urllib.parse.urlsplit(request.url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            reused = self._connection is not None and self._origin == (scheme, host, port)
            try:
                connection = self._connect(scheme, host, port)
            except AddressRefused as error:
                return Outcome(False, None, f"refused: {error}")
            try:
                connection.putrequest(request.method, target, skip_accept_encoding=True)
                for name, value in request.headers:
                    connection.putheader(name, value.translate(_FORBIDDEN_IN_HEADERS))
                connection.putheader("Content-Length", str(len(request.body)))
                connection.endheaders(request.body)
                answer = connection.getresponse()
                answer.read(MAX_ANSWER)
                status = answer.status
                if answer.will_close or not answer.isclosed():
                    self.close()
            except (OSError, http.client.HTTPException) as error:
                self.close()
                # A kept-alive connection the receiver closed meanwhile: once more on a new one.
                if reused and attempt == 1 and isinstance(
                    error, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                ):
                    continue
                return Outcome(False, None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
            if 200 <= status < 300:
                return Outcome(True, status)
            return Outcome(False, status, f"the receiver answered {status}")
        return Outcome(False, None, "the connection closed twice")  # pragma: no cover - the loop returns
