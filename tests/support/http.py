"""A real local HTTP server that plays an internet service (webhook, model endpoint).

It records every POST (path with query, headers, JSON body or else text) and GET
(body None), and answers with whatever the test's `respond` function returns.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Posted:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    """What to answer: status and a JSON body (None = empty)."""

    status: int = 204
    body: Any = None


@dataclass
class PlayedService:
    """The running server: its URL base, what it received, how it answers."""

    port: int
    respond: Callable[[Posted], Reply]
    posts: list[Posted] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def played_service(respond: Callable[[Posted], Reply] | None = None) -> Iterator[PlayedService]:
    """Serve on 127.0.0.1 on a free port until the block ends."""
    service = PlayedService(port=0, respond=respond or (lambda _posted: Reply()))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body: Any = json.loads(raw or b"null")
            except ValueError:  # ntfy posts the message as plain text
                body = raw.decode(errors="replace")
            self._answer(body)

        def do_GET(self) -> None:
            self._answer(None)

        def _answer(self, body: Any) -> None:
            posted = Posted(self.path, dict(self.headers.items()), body)
            service.posts.append(posted)
            reply = service.respond(posted)
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the caller is gone (a test killed it while it waited)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
