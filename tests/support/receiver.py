"""A real HTTP receiver of webhooks for the tests: a threaded HTTP/1.1 server (kept-alive
connections) on 127.0.0.1 that records every request, answers a status the test chooses, can be
slowed down, and can be killed (its listening socket and every open connection closed) and started
again on the same port."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self):
        return json.loads(self.body)


class Receiver:
    def __init__(self, port: int = 0):
        self.port = port
        self.received: list[Received] = []
        self.lock = threading.Lock()
        # (request) -> status to answer; 200 by default
        self.answer: Callable[[Received], int] = lambda _request: 200
        self.delay = 0.0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._sockets: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Received(self.command, self.path, dict(self.headers.items()), body, time.time())
                with receiver.lock:
                    receiver.received.append(request)
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.answer(request)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_PUT = do_GET = do_DELETE = do_PATCH = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request, client_address):
                receiver._sockets.add(request)
                super().process_request(request, client_address)

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def kill(self) -> None:
        """Stop listening and cut every open connection, as a receiver that went down."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets.clear()
        self._server = None

    def requests(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [request for request in self.received if path is None or request.path == path]

    def wait_for(self, count: int, *, path: str | None = None, timeout: float = 30) -> list[Received]:
        wait_until(lambda: len(self.requests(path)) >= count, timeout=timeout, every=0.02,
                   what=f"{count} requests to {path or 'any path'}")
        return self.requests(path)
