"""The daemon side of the control socket: safe binding, peer check, one task per connection."""

from __future__ import annotations

import inspect
import logging
import os
import socket
import stat
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from itertools import count
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketStream

from selfheal.control.peercred import peer_credentials
from selfheal.control.protocol import (
    FORBIDDEN,
    IDLE_TIMEOUT,
    INTERNAL,
    MAX_REQUEST_BYTES,
    TOO_LARGE,
    TOO_MANY_CONNECTIONS,
    UNKNOWN_METHOD,
    LineBuffer,
    Oversized,
    Request,
    RequestError,
    RequestId,
    encode_reply,
    error_reply,
    event_reply,
    parse_request,
    result_reply,
)
from selfheal.errors import ControlError, DaemonAlreadyRunning, SelfhealError
from selfheal.instance import lock_exclusively
from selfheal.redact import redact_text

log = logging.getLogger("selfheal.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# How long the liveness probe of an existing socket may take before we call it alive.
_PROBE_TIMEOUT_S = 2.0
# Client connections served at once. The CLI opens one per command and closes it;
# 256 leaves room for a hundred `status --watch` views and `backup run --follow`
# watchers at once. Each holds a descriptor: the daemon raises its nofile limit to at
# least 4x this at start (instance.raise_fd_limit), so a flood of idle connections
# still leaves descriptors for the spool drainer, config reloads and span writes.
MAX_CONNECTIONS: Final = 256
# A connection with no request in progress that sends nothing for this long is closed
# (the CLI sends its request as soon as it connects; a streaming reply or a slow
# method is a request in progress, never cut); so is one whose client has not read a
# reply for this long (a reply's write has waited on full socket buffers all that time).
IDLE_TIMEOUT_S: Final = 30.0
# Pause after a failed accept (e.g. EMFILE) so a persistent error does not spin the loop.
_ACCEPT_RETRY_S = 0.1
# While a condition that repeats many times a second lasts (accept failing, connections
# refused), it is logged when it starts, then at most this often, and when it ends.
_BURST_REMIND_S: Final = 60.0
# The most a parting reply (refused, idle) may take to write before the socket is closed.
_PARTING_S: Final = 1.0
_RECEIVE_CHUNK = 65536
# How often the socket file's presence is checked (one lstat, on the loop).
SOCKET_CHECK_S = 5.0


class SocketFileLost(SelfhealError, OSError):
    """Our socket file is no longer at its path; the service must bind again."""


class UnsafeSocketPath(SelfhealError, OSError):
    """The socket path or its directory cannot be used safely; nothing was changed."""


def _describe(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}")


def _stack(exc: BaseException) -> str:
    # Logged by hand so the traceback text goes through redaction too.
    return redact_text("".join(traceback.format_exception(exc)))


# How a client that went away shows when we write to it.
_GONE: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError)


async def _part(stream: SocketStream, reply: dict[str, Any]) -> None:
    """Send a last reply (best effort, briefly) and close the connection."""
    # Whatever the client did meanwhile, this must not fail: it runs in the accept loop.
    with anyio.move_on_after(_PARTING_S):
        try:
            await stream.send(encode_reply(reply))
        except (*_GONE, OSError):
            pass
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except OSError:
            pass


class _ClientGone(Exception):
    """Writing a reply failed because the client is gone: the conversation ends there
    (a handler's own ConnectionError, by contrast, is that request's error reply)."""


class _Burst:
    """Log a condition that can repeat many times a second once per burst: when it
    starts, again at most every _BURST_REMIND_S while it lasts, and when it ends, with
    how often it happened."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0  # in the current burst
        self._started = 0.0
        self._reminded = 0.0

    def happened(self, detail: str) -> None:
        now = time.monotonic()
        self.count += 1
        if self.count == 1:
            self._started = self._reminded = now
            log.warning("%s: %s (not logged again for %.0fs)", self.what, detail, _BURST_REMIND_S)
        elif now - self._reminded >= _BURST_REMIND_S:
            self._reminded = now
            log.warning(
                "%s: %s (%d times in %.0fs)", self.what, detail, self.count, now - self._started
            )

    def over(self) -> None:
        if self.count:
            elapsed = time.monotonic() - self._started
            log.info("%s ended: %d times in %.1fs", self.what, self.count, elapsed)
            self.count = 0


def prepare_socket_dir(directory: Path) -> None:
    """Create the socket directory 0700, or tighten ours; refuse one owned by another uid."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketPath(f"{directory} is not a directory")
    if st.st_uid != os.getuid():
        raise UnsafeSocketPath(
            f"control socket directory {directory} is owned by uid {st.st_uid}, not by us"
            f" (uid {os.getuid()}); choose a directory of our own"
        )
    if st.st_mode & 0o077:
        log.warning(
            "control socket directory %s had mode %o; tightening to 0700",
            directory,
            stat.S_IMODE(st.st_mode),
        )
        os.chmod(directory, 0o700)


def clear_stale_socket(path: Path) -> None:
    """Remove a dead socket at `path`; raise if a live daemon or a non-socket is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafeSocketPath(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT_S)
        try:
            probe.connect(os.fspath(path))
        except ConnectionRefusedError:
            log.info("removing stale control socket %s (nothing is listening)", path)
            os.unlink(path)
            return
        except FileNotFoundError:
            return  # removed between lstat and connect
        except (TimeoutError, BlockingIOError):
            pid = None  # accepted into a full backlog: someone is alive there
        else:
            try:
                pid = peer_credentials(probe)[0]
            except OSError:
                pid = None
    who = f" (pid {pid})" if pid else ""
    raise DaemonAlreadyRunning(f"another selfheal daemon{who} is already listening on {path}")


def _lock_socket_path(path: Path) -> int:
    """Hold an exclusive lock beside the socket so two daemons starting at once cannot
    both decide the socket is stale and bind it; returns the descriptor to keep open."""
    lock_path = path.with_name(path.name + ".lock")
    return lock_exclusively(
        lock_path, f"another selfheal daemon holds {lock_path}: it is already serving {path}"
    )


class ControlServer:
    """Serve newline-delimited JSON requests on a Unix socket until cancelled.

    At most `max_connections` clients are served at once. One more is still accepted,
    told `too_many_connections` and closed at once, rather than left unaccepted: it
    would wait in the listen backlog until its own timeout and then report no reply,
    which looks like a hung daemon; and accepting keeps the backlog moving.
    """

    # Lets the supervisor run it as a Service (name + run) as well as via serve().
    name = "control"

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        allowed_uid: int | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._accept_failing = _Burst("control socket accept failing")
        self._refusing = _Burst("control socket refusing connections")
        self._identity: tuple[int, int] | None = None
        self._connection_ids = count(1)
        self._open_connections = 0
        self._idle: anyio.Event | None = None

    @property
    def open_connections(self) -> int:
        """Number of client connections currently being served."""
        return self._open_connections

    @property
    def failed_accepts(self) -> int:
        """Accepts that failed since the last one that worked (0 when accepting)."""
        return self._accept_failing.count

    async def wait_idle(self) -> None:
        """Return once no client connection is open (for a drain before cancelling serve)."""
        while self._open_connections and self._idle is not None:
            await self._idle.wait()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind the socket, signal readiness, and serve connections until cancelled."""
        await anyio.to_thread.run_sync(prepare_socket_dir, self.path.parent)
        # First check names the live daemon's pid; the lock then closes the race
        # with a daemon starting at the same moment, and the second check runs under it.
        await anyio.to_thread.run_sync(clear_stale_socket, self.path)
        lock_fd = _lock_socket_path(self.path)
        try:
            await anyio.to_thread.run_sync(clear_stale_socket, self.path)
            listener = await anyio.create_unix_listener(self.path, mode=0o600)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            # Explicit even though mode= did it: the 0600 guarantee must not hinge on anyio.
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            log.info("control socket listening on %s", self.path)
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_socket_file, name="control-socket-watch")
                while True:
                    try:
                        stream = await listener.accept()
                    except (OSError, anyio.BrokenResourceError) as exc:
                        # anyio wraps e.g. EMFILE in BrokenResourceError; both are transient.
                        self._accept_failing.happened(repr(exc.__cause__ or exc))
                        await anyio.sleep(_ACCEPT_RETRY_S)
                        continue
                    self._accept_failing.over()
                    if self._open_connections >= self.max_connections:
                        self._refusing.happened(f"all {self.max_connections} in use")
                        await self._refuse(stream)
                        continue
                    self._refusing.over()
                    number = next(self._connection_ids)
                    self._connection_opened()
                    tg.start_soon(
                        self._serve_connection, stream, number, name=f"control-conn-{number}"
                    )
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            self._unlink_if_ours()
            os.close(lock_fd)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Alias of serve() matching the supervisor's Service protocol."""
        await self.serve(task_status=task_status)

    async def _watch_socket_file(self) -> None:
        """Raise SocketFileLost once our socket file is gone or replaced.

        A removed socket file (`rm -rf` of its folder) leaves the listener bound but
        unreachable; the supervisor's restart then binds it again, lock included.
        """
        while True:
            await anyio.sleep(SOCKET_CHECK_S)
            try:
                st = os.lstat(self.path)
                same = (st.st_dev, st.st_ino) == self._identity
            except FileNotFoundError:
                same = False
            if not same:
                raise SocketFileLost(
                    f"control socket {self.path} was removed or replaced; binding it again"
                )

    def _unlink_if_ours(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        # Another daemon may have replaced our file; removing its socket would orphan it.
        if (st.st_dev, st.st_ino) == self._identity:
            os.unlink(self.path)
        else:
            log.warning("control socket %s was replaced by another process; leaving it", self.path)

    def _peer_allowed(self, stream: SocketStream) -> bool:
        try:
            pid, uid = peer_credentials(stream.extra(SocketAttribute.raw_socket))
        except OSError as exc:
            # Fail closed: without credentials we cannot tell who is asking.
            log.warning("control socket: cannot read peer credentials (%s); refusing", exc)
            return False
        if uid != self.allowed_uid:
            log.warning("control socket: refused peer uid %d pid %s", uid, pid)
            return False
        return True

    async def _refuse(self, stream: SocketStream) -> None:
        message = f"too many connections (max {self.max_connections}); try again shortly"
        await _part(stream, error_reply(None, TOO_MANY_CONNECTIONS, message))

    def _connection_opened(self) -> None:
        # Counted at accept time so wait_idle() also covers tasks not yet started.
        self._open_connections += 1
        if self._open_connections == 1:
            self._idle = anyio.Event()

    async def _serve_connection(self, stream: SocketStream, number: int) -> None:
        try:
            await self._converse(stream)
        except Exception as exc:
            # Never into the server's task group: that would drop every client and
            # restart the service. (Cancellation, a BaseException, still goes through.)
            log.error("control connection %d failed: %s\n%s", number, _describe(exc), _stack(exc))
        finally:
            self._open_connections -= 1
            if not self._open_connections and self._idle is not None:
                self._idle.set()

    async def _converse(self, stream: SocketStream) -> None:
        async def send(reply: dict[str, Any]) -> None:
            data = encode_reply(reply)  # a reply that cannot be encoded is the request's error
            try:
                # A client that stops reading (its replies fill the socket buffers) is
                # given as long as an idle one, not its slot forever.
                with anyio.fail_after(self.idle_timeout_s):
                    await stream.send(data)
            except _GONE as exc:
                raise _ClientGone from exc
            except TimeoutError as exc:
                log.info("control client read no reply for %gs; closing", self.idle_timeout_s)
                raise _ClientGone from exc

        async with stream:
            try:
                if not self._peer_allowed(stream):
                    await send(error_reply(None, FORBIDDEN, "peer uid is not allowed"))
                    return
                lines = LineBuffer(self.max_request_bytes)
                while True:
                    # Only here, between requests, does the idle clock run: a request
                    # being answered (a stream included) is never cut by it.
                    with anyio.move_on_after(self.idle_timeout_s) as waiting:
                        try:
                            data = await stream.receive(_RECEIVE_CHUNK)
                        except anyio.EndOfStream:
                            return
                    if waiting.cancelled_caught:
                        message = f"closed after {self.idle_timeout_s:g}s without a request"
                        await _part(stream, error_reply(None, IDLE_TIMEOUT, message))
                        return
                    for line in lines.feed(data):
                        if isinstance(line, Oversized):
                            message = f"request line exceeds {self.max_request_bytes} bytes"
                            await send(error_reply(None, TOO_LARGE, message))
                        else:
                            await self._dispatch(line, send)
            except (_ClientGone, *_GONE):
                log.debug("control client went away mid-request")

    async def _dispatch(self, line: bytes, send: Send) -> None:
        """Answer one request line: whatever goes wrong is this request's error reply."""
        request_id: RequestId = None
        method = "(unparsed request)"
        try:
            request = parse_request(line)
            request_id, method = request.id, request.method
            await self._answer(request, send)
        except RequestError as exc:
            await send(error_reply(exc.request_id, exc.code, exc.message))
        except _ClientGone:
            raise
        except Exception as exc:
            self._log_failure(method, exc)
            await send(error_reply(request_id, INTERNAL, _describe(exc)))

    async def _answer(self, request: Request, send: Send) -> None:
        handler = self.handlers.get(request.method)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "(none)"
            message = f"unknown method {request.method!r}; known methods: {known}"
            await send(error_reply(request.id, UNKNOWN_METHOD, message))
            return
        try:
            outcome: Any = handler(request.params)
            # Accept both `async def` handlers and async generator functions (streams).
            result = await outcome if inspect.isawaitable(outcome) else outcome
        except ControlError as exc:
            await send(error_reply(request.id, exc.code, redact_text(exc.message)))
            return
        except Exception as exc:
            self._log_failure(request.method, exc)
            await send(error_reply(request.id, INTERNAL, _describe(exc)))
            return
        if isinstance(result, AsyncIterator):
            await self._stream(request.id, request.method, result, send)
        else:
            await send(result_reply(request.id, result))

    async def _stream(
        self, request_id: RequestId, method: str, events: AsyncIterator[Any], send: Send
    ) -> None:
        sent = 0
        try:
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                except ControlError as exc:
                    await send(error_reply(request_id, exc.code, redact_text(exc.message)))
                    return
                except Exception as exc:
                    self._log_failure(method, exc)
                    await send(error_reply(request_id, INTERNAL, _describe(exc)))
                    return
                await send(event_reply(request_id, event))
                sent += 1
        finally:
            # Close the producer even when the client vanished mid-stream.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        await send(result_reply(request_id, {"events": sent}))

    @staticmethod
    def _log_failure(method: str, exc: Exception) -> None:
        log.error("control method %r failed: %s\n%s", method, _describe(exc), _stack(exc))
