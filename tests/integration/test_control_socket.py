"""The control socket over real Unix sockets: path safety, protocol errors, streams, peers."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import select
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from selfheal.control.client import ControlClient, DaemonNotRunning
from selfheal.control.protocol import API_VERSION, MAX_REQUEST_DEPTH
from selfheal.control.server import ControlServer, UnsafeSocketPath
from selfheal.errors import ControlError, DaemonAlreadyRunning
from tests.support.servers import missing

pytestmark = pytest.mark.anyio

WAIT_S = 10


async def acall(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    """One call from async code: the blocking client in a worker thread."""
    client = ControlClient(path, timeout=WAIT_S)
    return await anyio.to_thread.run_sync(client.call, method, params or {})


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path short enough for AF_UNIX, in a directory that does not exist yet."""
    base = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    yield base / "run" / "control.sock"
    shutil.rmtree(base, ignore_errors=True)


class Probe:
    """Test-visible state shared with the handlers."""

    def __init__(self) -> None:
        self.stream_closed = anyio.Event()


async def echo(params: dict[str, Any]) -> Any:
    return params


async def explode(params: dict[str, Any]) -> Any:
    raise RuntimeError("redis://:hunter2@nas refused")


async def refuse(params: dict[str, Any]) -> Any:
    raise ControlError("invalid_params", "n must be positive")


def make_handlers(probe: Probe) -> dict[str, Any]:
    async def count(params: dict[str, Any]) -> AsyncIterator[int]:
        for index in range(params.get("n", 3)):
            yield index

    async def count_then_fail(params: dict[str, Any]) -> AsyncIterator[int]:
        yield 1
        raise ControlError("unavailable", "redis went away")

    async def forever(params: dict[str, Any]) -> AsyncIterator[int]:
        try:
            index = 0
            while True:
                yield index
                index += 1
                await anyio.sleep(0.01)
        finally:
            probe.stream_closed.set()

    async def slow(params: dict[str, Any]) -> Any:
        await anyio.sleep(params["s"])
        return {"slept": params["s"]}

    async def slow_count(params: dict[str, Any]) -> AsyncIterator[int]:
        for index in range(params["n"]):
            await anyio.sleep(params["gap"])
            yield index

    async def circular(params: dict[str, Any]) -> Any:
        loop: list[Any] = []
        loop.append(loop)
        return loop

    async def circular_event(params: dict[str, Any]) -> AsyncIterator[Any]:
        yield 1
        yield await circular(params)

    return {
        "echo": echo,
        "slow": slow,
        "slow_count": slow_count,
        "circular": circular,
        "circular_event": circular_event,
        "explode": explode,
        "refuse": refuse,
        "count": count,
        "count_then_fail": count_then_fail,
        "forever": forever,
    }


@pytest.fixture
def probe() -> Probe:
    return Probe()


@asynccontextmanager
async def serving(server: ControlServer) -> AsyncIterator[ControlServer]:
    """Run `server` until the block ends; readiness comes from task_status, not a sleep."""
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(WAIT_S):
            await tg.start(server.serve)
        yield server
        # Drain first: cancelling while a hung-up client's EOF is still pending trips an
        # asyncio-backend race in anyio's UNIX streams (set_result on a cancelled future).
        with anyio.fail_after(WAIT_S):
            await server.wait_idle()
        tg.cancel_scope.cancel()


def server_at(path: Path, probe: Probe, **options: Any) -> ControlServer:
    return ControlServer(path, make_handlers(probe), **options)


class Raw:
    """A hand-driven connection for sending arbitrary bytes."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)

    async def reply(self) -> dict[str, Any]:
        with anyio.fail_after(WAIT_S):
            reply: dict[str, Any] = json.loads(await self.reader.receive_until(b"\n", 1 << 22))
        assert reply["api_version"] == API_VERSION
        return reply

    async def ask(self, data: bytes) -> dict[str, Any]:
        await self.stream.send(data)
        return await self.reply()


@asynccontextmanager
async def raw_connection(path: Path) -> AsyncIterator[Raw]:
    with anyio.fail_after(WAIT_S):
        stream = await anyio.connect_unix(path)
    async with stream:
        yield Raw(stream)


async def test_socket_is_0600_in_a_0700_directory(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)):
        assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(socket_path.parent).st_mode) == 0o700


async def test_loose_directory_of_ours_is_tightened(socket_path: Path, probe: Probe) -> None:
    socket_path.parent.mkdir(mode=0o755)
    os.chmod(socket_path.parent, 0o755)
    async with serving(server_at(socket_path, probe)):
        assert stat.S_IMODE(os.stat(socket_path.parent).st_mode) == 0o700


async def test_directory_owned_by_another_uid_is_refused(socket_path: Path, probe: Probe) -> None:
    if os.getuid() != 0:
        missing("root, to give a directory to another uid")
    socket_path.parent.mkdir(mode=0o700)
    os.chown(socket_path.parent, os.getuid() + 4242, -1)
    with pytest.raises(UnsafeSocketPath, match="owned by uid"):
        await server_at(socket_path, probe).serve()
    assert not await anyio.Path(socket_path).exists()


async def test_round_trip_sync_and_async_clients(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)):
        client = ControlClient(socket_path, timeout=WAIT_S)
        result = await anyio.to_thread.run_sync(client.call, "echo", {"x": [1, 2]})
        assert result == {"x": [1, 2]}
        assert await acall(socket_path, "echo", {"y": "z"}) == {"y": "z"}
        async with raw_connection(socket_path) as conn:
            reply = await conn.ask(b'{"id": "a1", "method": "echo"}\n')
        assert reply == {"id": "a1", "ok": True, "result": {}, "api_version": API_VERSION}


@pytest.mark.parametrize(
    ("line", "reply_id", "mentions"),
    [
        (b"this is not json\n", None, "not valid JSON"),
        (b"[1, 2]\n", None, "JSON object"),
        (b'{"method": "echo"}\n', None, "'id'"),
        (b'{"id": true, "method": "echo"}\n', None, "'id'"),
        (b'{"id": 7}\n', 7, "'method'"),
        (b'{"id": 8, "method": 5}\n', 8, "'method'"),
        (b'{"id": 9, "method": "echo", "params": [1]}\n', 9, "'params'"),
    ],
)
async def test_bad_requests_are_answered_and_the_connection_survives(
    socket_path: Path, probe: Probe, line: bytes, reply_id: int | None, mentions: str
) -> None:
    async with serving(server_at(socket_path, probe)), raw_connection(socket_path) as conn:
        reply = await conn.ask(line)
        assert reply["ok"] is False
        assert reply["id"] == reply_id
        assert reply["error"]["code"] == "bad_request"
        assert mentions in reply["error"]["message"]
        good = await conn.ask(b'{"id": 2, "method": "echo", "params": {"k": 1}}\n')
        assert good["ok"] is True and good["id"] == 2 and good["result"] == {"k": 1}


async def test_oversized_line_is_refused_and_skipped(socket_path: Path, probe: Probe) -> None:
    server = server_at(socket_path, probe, max_request_bytes=1024)
    async with serving(server), raw_connection(socket_path) as conn:
        # Sent in pieces so the server must discard across several receives.
        await conn.stream.send(b'{"id": 1, "method": "echo", "params": {"pad": "')
        for _ in range(8):
            await conn.stream.send(b"x" * 1000)
        reply = await conn.reply()
        assert reply["error"]["code"] == "too_large" and reply["id"] is None
        await conn.stream.send(b'"}}\n')
        good = await conn.ask(b'{"id": 2, "method": "echo", "params": {"small": true}}\n')
        assert good == {"id": 2, "ok": True, "result": {"small": True}, "api_version": 1}
        # An over-long line arriving whole (newline included) is refused the same way.
        reply = await conn.ask(b'{"id": 3, "pad": "' + b"y" * 2000 + b'"}\n')
        assert reply["error"]["code"] == "too_large"
        assert (await conn.ask(b'{"id": 4, "method": "echo"}\n'))["ok"] is True


def nested(depth: int) -> bytes:
    """A request line whose nesting is `depth` levels in all (the request object is one)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return b'{"id": 1, "method": "echo", "params": {"x": ' + inner.encode() + b"}}\n"


async def test_deeply_nested_lines_are_refused_and_no_connection_is_dropped(
    socket_path: Path, probe: Probe
) -> None:
    echo_line = b'{"id": 2, "method": "echo"}\n'
    async with (
        serving(server_at(socket_path, probe)),
        raw_connection(socket_path) as bystander,
        raw_connection(socket_path) as sender,
    ):
        assert (await bystander.ask(echo_line))["ok"] is True
        # 971 brackets was enough for json.loads to raise RecursionError in a connection task.
        for line in (b"[" * 971 + b"\n", b'{"a":' * 20_000 + b"\n", nested(MAX_REQUEST_DEPTH + 1)):
            reply = await sender.ask(line)
            assert reply["ok"] is False and reply["id"] is None
            assert reply["error"] == {
                "code": "bad_request",
                "message": f"request is nested too deeply (max {MAX_REQUEST_DEPTH} levels)",
            }
            assert (await sender.ask(echo_line))["ok"] is True
        # At the limit, and with brackets inside strings (which are not nesting), it is served.
        assert (await sender.ask(nested(MAX_REQUEST_DEPTH)))["ok"] is True
        text = b'{"id": 3, "method": "echo", "params": {"s": "' + b"[{" * 5000 + b'\\"["}}\n'
        reply = await sender.ask(text)
        assert reply["result"] == {"s": "[{" * 5000 + '"['}
        assert (await bystander.ask(echo_line))["ok"] is True


async def test_unknown_method_lists_known_methods(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)), raw_connection(socket_path) as conn:
        reply = await conn.ask(b'{"id": 1, "method": "reboot"}\n')
    assert reply["id"] == 1
    assert reply["error"]["code"] == "unknown_method"
    assert "'reboot'" in reply["error"]["message"]
    assert "circular_event, count, count_then_fail, echo" in reply["error"]["message"]


async def test_handler_failures_become_replies(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)), raw_connection(socket_path) as conn:
        reply = await conn.ask(b'{"id": 1, "method": "explode"}\n')
        assert reply["error"] == {
            "code": "internal",
            "message": "RuntimeError: redis://:***@nas refused",
        }
        reply = await conn.ask(b'{"id": 2, "method": "refuse"}\n')
        assert reply["error"] == {"code": "invalid_params", "message": "n must be positive"}
        assert (await conn.ask(b'{"id": 3, "method": "echo"}\n'))["ok"] is True
    # The sync client turns the error reply into ControlError with the server's code.
    async with serving(server_at(socket_path, probe)):
        client = ControlClient(socket_path, timeout=WAIT_S)
        with pytest.raises(ControlError) as caught:
            await anyio.to_thread.run_sync(client.call, "refuse", {})
        assert caught.value.code == "invalid_params"
        with pytest.raises(ControlError, match="internal"):
            await acall(socket_path, "explode")


async def test_a_reply_that_cannot_be_written_becomes_an_error_reply(
    socket_path: Path, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        serving(server_at(socket_path, probe)),
        raw_connection(socket_path) as bystander,
        raw_connection(socket_path) as conn,
    ):
        assert (await bystander.ask(b'{"id": 1, "method": "echo"}\n'))["ok"] is True
        reply = await conn.ask(b'{"id": 2, "method": "circular"}\n')
        assert reply["id"] == 2 and reply["error"]["code"] == "internal"
        assert "RecursionError" in reply["error"]["message"]  # a circular structure
        await conn.stream.send(b'{"id": 3, "method": "circular_event"}\n')
        assert (await conn.reply())["event"] == 1
        reply = await conn.reply()
        assert reply["id"] == 3 and reply["error"]["code"] == "internal"
        # The connection and every other one carry on.
        assert (await conn.ask(b'{"id": 4, "method": "echo"}\n'))["ok"] is True
        assert (await bystander.ask(b'{"id": 5, "method": "echo"}\n'))["ok"] is True
    assert any("'circular'" in r.getMessage() for r in caplog.records)


class FlakyPeerCheck(ControlServer):
    """A server whose per-connection code fails once, as an unforeseen bug would."""

    failed = False

    def _peer_allowed(self, stream: SocketStream) -> bool:
        if not self.failed:
            self.failed = True
            raise RuntimeError("bug while holding redis://:hunter2@nas")
        return super()._peer_allowed(stream)


async def test_a_failing_connection_is_logged_redacted_and_the_server_serves_on(
    socket_path: Path, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    server = FlakyPeerCheck(socket_path, make_handlers(probe))
    async with serving(server):
        async with raw_connection(socket_path) as conn:
            with anyio.fail_after(WAIT_S), pytest.raises(anyio.EndOfStream):
                await conn.stream.receive()  # that connection is closed, and only it
        assert await acall(socket_path, "echo", {"still": "up"}) == {"still": "up"}
    [failure] = [r for r in caplog.records if "control connection" in r.getMessage()]
    assert "RuntimeError: bug while holding redis://:***@nas" in failure.getMessage()
    assert "hunter2" not in failure.getMessage()


async def test_streaming_method_sends_events_then_summary(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)):
        async with raw_connection(socket_path) as conn:
            await conn.stream.send(b'{"id": 5, "method": "count", "params": {"n": 2}}\n')
            replies = [await conn.reply() for _ in range(3)]
        assert replies == [
            {"id": 5, "ok": True, "event": 0, "api_version": 1},
            {"id": 5, "ok": True, "event": 1, "api_version": 1},
            {"id": 5, "ok": True, "result": {"events": 2}, "api_version": 1},
        ]
        client = ControlClient(socket_path, timeout=WAIT_S)
        events = await anyio.to_thread.run_sync(
            lambda: list(client.stream("count", {"n": 4}, idle_timeout=WAIT_S))
        )
        assert events == [0, 1, 2, 3]
        assert await anyio.to_thread.run_sync(client.call, "count", {"n": 4}) == {"events": 4}


async def test_stream_error_ends_the_stream(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)):
        async with raw_connection(socket_path) as conn:
            await conn.stream.send(b'{"id": 1, "method": "count_then_fail"}\n')
            assert (await conn.reply())["event"] == 1
            error = await conn.reply()
            assert error["ok"] is False and error["id"] == 1
            assert error["error"] == {"code": "unavailable", "message": "redis went away"}
            assert (await conn.ask(b'{"id": 2, "method": "echo"}\n'))["ok"] is True
        client = ControlClient(socket_path, timeout=WAIT_S)
        seen: list[Any] = []

        def consume() -> None:
            for event in client.stream("count_then_fail", idle_timeout=WAIT_S):
                seen.append(event)

        with pytest.raises(ControlError, match="unavailable"):
            await anyio.to_thread.run_sync(consume)
        assert seen == [1]


async def test_client_leaving_mid_stream_closes_the_producer(
    socket_path: Path, probe: Probe
) -> None:
    async with serving(server_at(socket_path, probe)):
        async with raw_connection(socket_path) as conn:
            await conn.stream.send(b'{"id": 1, "method": "forever"}\n')
            assert (await conn.reply())["event"] == 0
        with anyio.fail_after(WAIT_S):
            await probe.stream_closed.wait()
        # A half-sent request followed by a hang-up is just as harmless.
        async with raw_connection(socket_path) as conn:
            await conn.stream.send(b'{"id": 1, "meth')
        assert await acall(socket_path, "echo", {"still": "up"}) == {"still": "up"}


async def test_peer_with_another_uid_is_forbidden(socket_path: Path, probe: Probe) -> None:
    server = server_at(socket_path, probe, allowed_uid=os.getuid() + 4242)
    async with serving(server):
        async with raw_connection(socket_path) as conn:
            reply = await conn.reply()  # sent before we even ask
            assert reply["ok"] is False and reply["id"] is None
            assert reply["error"]["code"] == "forbidden"
            with anyio.fail_after(WAIT_S), pytest.raises(anyio.EndOfStream):
                await conn.stream.receive()
        client = ControlClient(socket_path, timeout=WAIT_S)
        with pytest.raises(ControlError) as caught:
            await anyio.to_thread.run_sync(client.call, "echo", {})
        assert caught.value.code == "forbidden"


async def test_stale_socket_is_replaced(
    socket_path: Path, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkdir(socket_path.parent, 0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(socket_path))  # a crashed daemon leaves exactly this behind
    assert stat.S_ISSOCK(os.lstat(socket_path).st_mode)
    with caplog.at_level(logging.INFO, logger="selfheal.control"):
        async with serving(server_at(socket_path, probe)):
            assert await acall(socket_path, "echo", {"a": 1}) == {"a": 1}
    assert any("stale control socket" in r.getMessage() for r in caplog.records)


async def test_second_server_on_a_live_socket_refuses(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)):
        inode = os.stat(socket_path).st_ino
        with anyio.fail_after(WAIT_S), pytest.raises(DaemonAlreadyRunning) as caught:
            await server_at(socket_path, probe).serve()
        assert str(socket_path) in str(caught.value)
        assert f"pid {os.getpid()}" in str(caught.value)
        # The first daemon is untouched and still answering.
        assert os.stat(socket_path).st_ino == inode
        assert await acall(socket_path, "echo", {"b": 2}) == {"b": 2}


async def test_a_daemon_holding_the_start_lock_blocks_a_second_start(
    socket_path: Path, probe: Probe
) -> None:
    # Another daemon between its stale check and its bind holds the lock beside the socket.
    socket_path.parent.mkdir(mode=0o700)
    lock = socket_path.with_name(socket_path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with anyio.fail_after(WAIT_S), pytest.raises(DaemonAlreadyRunning, match="holds"):
            await server_at(socket_path, probe).serve()
        assert not await anyio.Path(socket_path).exists()
    finally:
        os.close(fd)
    async with serving(server_at(socket_path, probe)):  # released: the next start works
        assert await acall(socket_path, "echo", {"c": 3}) == {"c": 3}


async def test_regular_file_at_the_path_is_never_deleted(socket_path: Path, probe: Probe) -> None:
    file = anyio.Path(socket_path)
    await file.parent.mkdir(mode=0o700)
    await file.write_text("precious")
    with anyio.fail_after(WAIT_S), pytest.raises(UnsafeSocketPath, match="not a socket"):
        await server_at(socket_path, probe).serve()
    assert await file.read_text() == "precious"


async def test_socket_is_removed_on_cancel(socket_path: Path, probe: Probe) -> None:
    async with serving(server_at(socket_path, probe)):
        assert await anyio.Path(socket_path).exists()
    assert not await anyio.Path(socket_path).exists()


async def test_replaced_socket_file_is_left_alone_on_cancel(
    socket_path: Path, probe: Probe
) -> None:
    file = anyio.Path(socket_path)
    async with serving(server_at(socket_path, probe)):
        await file.unlink()
        await file.write_text("someone else's")
    assert await file.read_text() == "someone else's"


async def test_clients_report_a_missing_daemon(socket_path: Path) -> None:
    client = ControlClient(socket_path, timeout=WAIT_S)
    with pytest.raises(DaemonNotRunning, match="start it with: selfheal run") as caught:
        await anyio.to_thread.run_sync(client.call, "status", {})
    assert str(socket_path) in str(caught.value)
    assert isinstance(caught.value, ConnectionError)
    with pytest.raises(DaemonNotRunning):
        await acall(socket_path, "status")


ECHO = b'{"id": 1, "method": "echo"}\n'


async def wait_for(condition: Any, what: str) -> None:
    """Poll `condition()` until true, failing after WAIT_S."""
    with anyio.fail_after(WAIT_S):
        while not condition():  # noqa: ASYNC110 - bounded poll of the server's state
            await anyio.sleep(0.01)


class SendsAfterHangUp(ControlClient):
    """A client that sends its request only once the daemon has answered and hung up:
    the order a busy client machine can produce, here made certain."""

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        poller = select.poll()
        poller.register(sock, select.POLLHUP)
        assert poller.poll(WAIT_S * 1000), "the daemon never hung up"
        return sock


async def test_connections_past_the_cap_are_told_so_and_closed(
    socket_path: Path, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_at(socket_path, probe, max_connections=3)
    with caplog.at_level(logging.INFO, logger="selfheal.control"):
        await refuse_past_the_cap(server, socket_path)
    # A flood of refusals is one warning when it starts and one line when it ends.
    refusing = [r.getMessage() for r in caplog.records if "refusing connections" in r.getMessage()]
    assert len(refusing) == 2, refusing
    assert "ended: 22 times" in refusing[1]


async def refuse_past_the_cap(server: ControlServer, socket_path: Path) -> None:
    """Hold the three connections `server` allows, and try more."""
    refusal = {
        "id": None,
        "ok": False,
        "error": {
            "code": "too_many_connections",
            "message": "too many connections (max 3); try again shortly",
        },
        "api_version": API_VERSION,
    }
    async with serving(server), AsyncExitStack() as held_open:
        held = [await held_open.enter_async_context(raw_connection(socket_path)) for _ in range(3)]
        for conn in held:
            assert (await conn.ask(ECHO))["ok"] is True
        async with raw_connection(socket_path) as extra:
            assert await extra.reply() == refusal  # told before asking anything
            with anyio.fail_after(WAIT_S), pytest.raises(anyio.EndOfStream):
                await extra.stream.receive()
        # Both clients report it by its code, however their request and the refusal cross.
        client = ControlClient(socket_path, timeout=WAIT_S)
        for _ in range(10):
            with pytest.raises(ControlError) as caught:
                await anyio.to_thread.run_sync(client.call, "echo", {})
            assert caught.value.code == "too_many_connections"
            with pytest.raises(ControlError) as caught:
                await acall(socket_path, "echo")
            assert caught.value.code == "too_many_connections"
        late = SendsAfterHangUp(socket_path)
        with pytest.raises(ControlError) as caught:
            await anyio.to_thread.run_sync(late.call, "echo", {})
        assert caught.value.code == "too_many_connections"
        assert server.open_connections == 3
        # Those held are served on, and one leaving makes room.
        assert (await held[0].ask(ECHO))["ok"] is True
        await held[2].stream.aclose()
        await wait_for(lambda: server.open_connections == 2, "a connection to close")
        assert await acall(socket_path, "echo", {"room": 1}) == {"room": 1}


async def test_idle_connections_are_closed_but_requests_in_progress_are_not(
    socket_path: Path, probe: Probe
) -> None:
    server = server_at(socket_path, probe, idle_timeout_s=0.5)
    async with serving(server):
        async with raw_connection(socket_path) as conn:
            started = anyio.current_time()
            assert (await conn.reply())["error"] == {
                "code": "idle_timeout",
                "message": "closed after 0.5s without a request",
            }
            assert anyio.current_time() - started >= 0.5
            with anyio.fail_after(WAIT_S), pytest.raises(anyio.EndOfStream):
                await conn.stream.receive()
        await wait_for(lambda: server.open_connections == 0, "the idle connection to close")
        async with raw_connection(socket_path) as conn:
            # A stream outlasting the idle time several times over is not cut...
            await conn.stream.send(
                b'{"id": 1, "method": "slow_count", "params": {"n": 8, "gap": 0.1}}\n'
            )
            replies = [await conn.reply() for _ in range(9)]
            assert [r.get("event") for r in replies[:8]] == list(range(8))
            assert replies[8]["result"] == {"events": 8}
            # ...nor a slow method...
            reply = await conn.ask(b'{"id": 2, "method": "slow", "params": {"s": 1.0}}\n')
            assert reply["result"] == {"slept": 1.0}
            # ...nor a request arriving in pieces, each within the idle time.
            line = b'{"id": 3, "method": "echo", "params": {"pieces": true}}\n'
            for start in range(0, len(line), 8):
                await anyio.sleep(0.1)
                await conn.stream.send(line[start : start + 8])
            assert (await conn.reply())["result"] == {"pieces": True}
            # And once it is idle again, it is closed.
            assert (await conn.reply())["error"]["code"] == "idle_timeout"


async def test_failing_accepts_are_logged_once_per_burst(
    socket_path: Path, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    server = server_at(socket_path, probe)
    fillers: list[int] = []
    with caplog.at_level(logging.INFO, logger="selfheal.control"):
        async with serving(server):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                try:
                    # Use up every descriptor, so the daemon's accept fails with EMFILE
                    # (those open above the new limit stay usable).
                    lowest_free = os.open(os.devnull, os.O_RDONLY)
                    os.close(lowest_free)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + 16, hard))
                    with pytest.raises(OSError, match="Too many open files"):
                        while True:
                            fillers.append(os.open(os.devnull, os.O_RDONLY))
                    client.connect(os.fspath(socket_path))
                    await wait_for(lambda: server.failed_accepts >= 5, "accept to fail 5 times")
                finally:
                    for fd in fillers:
                        os.close(fd)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                await wait_for(lambda: server.failed_accepts == 0, "accept to work again")
                client.settimeout(WAIT_S)
                await anyio.to_thread.run_sync(client.sendall, ECHO)
                answer = await anyio.to_thread.run_sync(client.recv, 4096)
                assert json.loads(answer)["ok"] is True
    failing = [r.getMessage() for r in caplog.records if "accept failing" in r.getMessage()]
    assert len(failing) == 2, failing  # when it started, and when it ended
    assert "Too many open files" in failing[0]
    assert "ended" in failing[1]
