"""The client of the control socket: blocking, one connection per call (the CLI's;
async code calls it in a worker thread)."""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from selfheal.control.protocol import MAX_REQUEST_BYTES
from selfheal.errors import ControlError, SelfhealError

# Replies (e.g. a full status) can be much larger than requests.
MAX_REPLY_BYTES = 64 * MAX_REQUEST_BYTES
# Codes the client itself reports when the exchange broke down before a reply arrived.
DISCONNECTED = "disconnected"
TIMEOUT = "timeout"
PROTOCOL = "protocol"


class DaemonNotRunning(SelfhealError, ConnectionError):
    """Nothing is listening on the control socket."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"no selfheal daemon is listening on {path} ({reason}); start it with: selfheal run"
        )


def _request_line(request_id: int, method: str, params: Mapping[str, Any] | None) -> bytes:
    body = {"id": request_id, "method": method, "params": dict(params or {})}
    return (json.dumps(body, default=str) + "\n").encode()


def _decode(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ControlError(PROTOCOL, f"daemon sent invalid JSON: {exc}") from None
    if not isinstance(reply, dict):
        raise ControlError(PROTOCOL, "daemon sent a reply that is not a JSON object")
    return reply


def _is_event(reply: dict[str, Any], request_id: int) -> bool:
    """Classify a reply to our request: True for a stream event, False for the final reply."""
    # id is null on errors about the line itself (forbidden, too_large): those are final too.
    if reply.get("id") not in (request_id, None):
        raise ControlError(PROTOCOL, f"reply id {reply.get('id')!r} does not match {request_id}")
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise ControlError(str(error.get("code", "unknown")), str(error.get("message", "")))
    return "event" in reply


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class ControlClient:
    """Blocking client: one connection per call, used by the CLI."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fspath(self.path))
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as exc:
            sock.close()
            raise DaemonNotRunning(self.path, _reason(exc)) from exc
        except OSError:
            sock.close()
            raise
        return sock

    def _replies(
        self, method: str, params: Mapping[str, Any] | None, idle_timeout: float | None
    ) -> Generator[Any, None, Any]:
        """Send one request; yield its events, then return its result via StopIteration."""
        request_id = next(self._ids)
        with self._connect() as sock:
            try:
                try:
                    sock.sendall(_request_line(request_id, method, params))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # it may have answered before closing (too many connections): read on
                sock.settimeout(idle_timeout)
                reader: IO[bytes] = sock.makefile("rb")
                with reader:
                    while True:
                        line = reader.readline(MAX_REPLY_BYTES + 1)
                        if not line.endswith(b"\n"):
                            raise ControlError(
                                DISCONNECTED, f"daemon on {self.path} closed the connection"
                            )
                        reply = _decode(line)
                        if not _is_event(reply, request_id):
                            return reply.get("result")
                        yield reply["event"]
            except TimeoutError:
                raise ControlError(
                    TIMEOUT, f"no reply from {self.path} within {idle_timeout}s"
                ) from None
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ControlError(DISCONNECTED, f"daemon on {self.path}: {exc}") from None

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call `method` and return its result; raise ControlError on an error reply."""
        replies = self._replies(method, params, self.timeout)
        while True:
            try:
                next(replies)  # a streaming method called plainly: skip to the summary
            except StopIteration as done:
                return done.value

    def stream(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> Iterator[Any]:
        """Yield the events of a streaming method; idle_timeout=None waits forever between them."""
        yield from self._replies(method, params, idle_timeout)
