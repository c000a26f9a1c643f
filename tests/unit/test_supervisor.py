"""The supervisor with real anyio tasks: ordering, readiness, crash restarts, drain, force."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from selfheal.errors import StartupError
from selfheal.supervisor import (
    EXIT_FORCED,
    EXIT_OK,
    EXIT_STARTUP_FAILED,
    LifecycleState,
    ServiceSpec,
    Supervisor,
)

pytestmark = pytest.mark.anyio


class Recorder:
    """A service that logs its life into a shared list and can be told to misbehave."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        crash_times: int = 0,
        startup_error: bool = False,
        ignore_stop: bool = False,
        ready_delay: float = 0.0,
        crash_with: type[Exception] = RuntimeError,
    ) -> None:
        self.name = name
        self.crash_with = crash_with
        self.log = log
        self.crash_times = crash_times
        self.startup_error = startup_error
        self.ignore_stop = ignore_stop
        self.ready_delay = ready_delay
        self.runs = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.startup_error:
            raise StartupError(f"{self.name} cannot start")
        await anyio.sleep(self.ready_delay)
        self.log.append(f"start {self.name}")
        task_status.started()
        try:
            if self.runs <= self.crash_times:
                raise self.crash_with(f"{self.name} crash {self.runs}")
            await anyio.sleep_forever()
        finally:
            self.log.append(f"stop {self.name}")


def spec(service: Recorder, **kw: object) -> ServiceSpec:
    return ServiceSpec(name=service.name, factory=lambda: service, **kw)  # type: ignore[arg-type]


async def wait_for(predicate: object, limit: float = 5.0) -> None:
    assert callable(predicate)
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - a bounded poll of a test predicate
            await anyio.sleep(0.01)


async def test_starts_in_order_and_stops_in_reverse() -> None:
    log: list[str] = []
    a, b, c = (Recorder(n, log, ready_delay=0.02) for n in "abc")
    sup = Supervisor([spec(a), spec(b), spec(c)], drain_timeout=lambda: 1.0)
    async with anyio.create_task_group() as tg:
        codes: list[int] = []
        tg.start_soon(lambda: _collect(sup, codes))
        await wait_for(lambda: sup.state is LifecycleState.RUNNING)
        assert log == ["start a", "start b", "start c"]
        sup.request_stop("test")
    assert codes == [EXIT_OK]
    assert log[3:] == ["stop c", "stop b", "stop a"]
    assert sup.state is LifecycleState.STOPPED


async def _collect(sup: Supervisor, codes: list[int]) -> None:
    codes.append(await sup.run())


async def test_not_running_until_every_service_is_ready() -> None:
    log: list[str] = []
    slow = Recorder("slow", log, ready_delay=0.3)
    sup = Supervisor([spec(Recorder("fast", log)), spec(slow)], drain_timeout=lambda: 1.0)
    async with anyio.create_task_group() as tg:
        codes: list[int] = []
        tg.start_soon(lambda: _collect(sup, codes))
        await wait_for(lambda: log == ["start fast"])
        assert sup.state is LifecycleState.STARTING
        await wait_for(lambda: sup.state is LifecycleState.RUNNING)
        assert "start slow" in log
        sup.request_stop("test")


async def test_crashing_service_is_restarted_and_daemon_stays_up() -> None:
    log: list[str] = []
    flaky = Recorder("flaky", log, crash_times=2)
    steady = Recorder("steady", log)
    sup = Supervisor([spec(steady), spec(flaky)], drain_timeout=lambda: 1.0)
    async with anyio.create_task_group() as tg:
        codes: list[int] = []
        tg.start_soon(lambda: _collect(sup, codes))
        await wait_for(lambda: flaky.runs == 3 and sup.records[1].state == "running", 10)
        rec = sup.records[1].public()
        assert rec["restarts"] == 2
        assert "crash 2" in rec["last_error"]
        assert sup.state is LifecycleState.RUNNING
        assert steady.runs == 1, "a crash elsewhere does not restart healthy services"
        sup.request_stop("test")
    assert codes == [EXIT_OK]


async def test_a_service_ended_by_an_outage_is_restarted_with_a_warning_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    cut_off = Recorder("cut-off", log, crash_times=1, crash_with=ConnectionError)
    broken = Recorder("broken", log, crash_times=1)
    sup = Supervisor(
        [spec(cut_off), spec(broken)], drain_timeout=lambda: 1.0, outages=(ConnectionError,)
    )
    with caplog.at_level("WARNING", logger="selfheal.supervisor"):
        async with anyio.create_task_group() as tg:
            codes: list[int] = []
            tg.start_soon(lambda: _collect(sup, codes))
            await wait_for(lambda: cut_off.runs == 2 and broken.runs == 2, 10)
            await wait_for(lambda: all(r.state == "running" for r in sup.records), 10)
            sup.request_stop("test")
    assert [r.public()["restarts"] for r in sup.records] == [1, 1]
    [outage] = [r for r in caplog.records if "cut-off" in r.getMessage()]
    assert (outage.levelname, outage.exc_info) == ("WARNING", None)
    assert "ConnectionError: cut-off crash 1" in outage.getMessage()
    [crash] = [r for r in caplog.records if "broken" in r.getMessage()]
    assert crash.levelname == "ERROR" and crash.exc_info is not None, "a bug keeps its traceback"


async def test_startup_error_stops_daemon_with_exit_1() -> None:
    log: list[str] = []
    first = Recorder("first", log)
    broken = Recorder("broken", log, startup_error=True)
    never = Recorder("never", log)
    sup = Supervisor([spec(first), spec(broken), spec(never)], drain_timeout=lambda: 1.0)
    with anyio.fail_after(5):
        code = await sup.run()
    assert code == EXIT_STARTUP_FAILED
    assert isinstance(sup.fatal_error, StartupError)
    assert never.runs == 0
    assert log == ["start first", "stop first"]
    assert sup.records[1].state == "failed"


async def test_drain_waits_for_draining_service_until_deadline() -> None:
    log: list[str] = []
    stubborn = Recorder("stubborn", log)
    sup = Supervisor([spec(stubborn, drains=True)], drain_timeout=lambda: 0.3)
    async with anyio.create_task_group() as tg:
        codes: list[int] = []
        tg.start_soon(lambda: _collect(sup, codes))
        await wait_for(lambda: sup.state is LifecycleState.RUNNING)
        began = anyio.current_time()
        sup.request_stop("test")
    elapsed = anyio.current_time() - began
    assert 0.25 <= elapsed < 3, elapsed
    assert codes == [EXIT_OK]
    assert log[-1] == "stop stubborn"


async def test_force_skips_the_drain() -> None:
    log: list[str] = []
    stubborn = Recorder("stubborn", log)
    sup = Supervisor([spec(stubborn, drains=True)], drain_timeout=lambda: 30)
    async with anyio.create_task_group() as tg:
        codes: list[int] = []
        tg.start_soon(lambda: _collect(sup, codes))
        await wait_for(lambda: sup.state is LifecycleState.RUNNING)
        sup.request_stop("test")
        await wait_for(lambda: sup.state is LifecycleState.STOPPING)
        sup.force_stop()
    assert codes == [EXIT_FORCED]
    assert log[-1] == "stop stubborn"


async def test_restart_changed_rebuilds_only_services_whose_dependency_changed() -> None:
    log: list[str] = []
    setting = {"value": 1}
    built: list[Recorder] = []

    def factory() -> Recorder:
        built.append(Recorder(f"dep{len(built)}", log))
        return built[-1]

    other = Recorder("other", log)
    sup = Supervisor(
        [
            ServiceSpec(name="dep", factory=factory, depends_on=lambda: setting["value"]),
            spec(other),
        ],
        drain_timeout=lambda: 1.0,
    )
    async with anyio.create_task_group() as tg:
        codes: list[int] = []
        tg.start_soon(lambda: _collect(sup, codes))
        await wait_for(lambda: sup.state is LifecycleState.RUNNING)
        assert await sup.restart_changed() == []
        setting["value"] = 2
        assert await sup.restart_changed() == ["dep"]
        assert len(built) == 2 and sup.records[0].state == "running"
        assert sup.records[0].restarts == 0 and sup.records[0].reloads == 1
        assert other.runs == 1
        sup.request_stop("test")
    assert "stop dep0" in log and "start dep1" in log


async def test_illegal_transition_is_refused() -> None:
    sup = Supervisor([], drain_timeout=lambda: 1.0)
    with pytest.raises(RuntimeError, match="created -> running"):
        sup._transition(LifecycleState.RUNNING)


async def test_services_that_start_work_stop_before_the_drain() -> None:
    """After a stop request nothing new begins: a work-starting service is stopped
    first, while a draining one still finishes its current work."""
    log: list[str] = []
    ticker = Recorder("ticker", log)
    busy = Recorder("busy", log)
    sup = Supervisor(
        [spec(ticker, starts_work=True), spec(busy, drains=True)], drain_timeout=lambda: 0.3
    )
    async with anyio.create_task_group() as tg:
        codes: list[int] = []
        tg.start_soon(lambda: _collect(sup, codes))
        await wait_for(lambda: sup.state is LifecycleState.RUNNING)
        sup.request_stop("test")
        await wait_for(lambda: "stop ticker" in log)
        assert "stop busy" not in log  # still draining while the ticker is already gone
    assert codes == [EXIT_OK]
    assert log.index("stop ticker") < log.index("stop busy")
