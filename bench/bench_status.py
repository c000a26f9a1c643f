"""`status` over the control socket with many clients at once: latency p50/p99.

Run: python -m bench.bench_status [--clients 100] [--rate 10] [--seconds 10] [--json]

The real daemon (`python -m selfheal run`, embedded Redis, a temporary HOME) is
started. Two loads are measured, each from `--clients` client connections in a
separate process (so the clients do not share the daemon's CPU accounting):

- paced: each client keeps its connection and asks `status` `--rate` times a second
  (10 by default: 100 clients then ask 1,000 times a second, 20 times what 100
  `status --watch` views at their default 2 s interval ask), for `--seconds`;
- burst: every client connects and asks at the same instant, 20 times over.

The anchor, measured the same way in the same run, is the daemon's `ping` (the
socket, framing and dispatch without the status body): what a reply costs at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.daemon import bench_env, running_daemon
from bench.report import save_and_print

BURSTS = 20


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str) -> float:
    started = time.perf_counter()
    writer.write(json.dumps({"id": 1, "method": method, "params": {}}).encode() + b"\n")
    await writer.drain()
    line = await reader.readline()
    elapsed = time.perf_counter() - started
    if not json.loads(line).get("ok"):
        raise SystemExit(f"{method} failed: {line[:300]!r}")
    return elapsed * 1000


async def paced(
    socket_path: str, clients: int, seconds: float, method: str, rate: float = 10.0
) -> list[float]:
    found: list[float] = []
    deadline = time.perf_counter() + seconds
    pace = 1 / rate

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=1 << 24)
        await asyncio.sleep(pace * index / clients)  # spread the clients over the period
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            found.append(await _ask(reader, writer, method))
            await asyncio.sleep(max(0.0, pace - (time.perf_counter() - began)))
        writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return found


async def burst(socket_path: str, clients: int, method: str) -> list[float]:
    found: list[float] = []

    async def client() -> float:
        started = time.perf_counter()
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=1 << 24)
        await _ask(reader, writer, method)
        writer.close()
        return (time.perf_counter() - started) * 1000

    for _ in range(BURSTS):
        found += await asyncio.gather(*(client() for _ in range(clients)))
        await asyncio.sleep(0.2)
    return found


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
        "max_ms": round(ordered[-1], 2),
    }


def client_main(socket_path: str, clients: int, seconds: float, rate: float) -> None:
    """The load, in its own process; prints one JSON object."""
    result: dict[str, Any] = {}
    for method in ("ping", "status"):
        result[f"paced_{method}"] = _summary(
            asyncio.run(paced(socket_path, clients, seconds, method, rate))
        )
        result[f"burst_{method}"] = _summary(asyncio.run(burst(socket_path, clients, method)))
    print(json.dumps(result))


def main(clients: int, seconds: float, rate: float, as_json: bool) -> None:
    home = Path(tempfile.mkdtemp(prefix="st-", dir="/tmp"))
    socket_path = home / ".joelclaw" / "selfheal.sock"
    try:
        with running_daemon(home, bench_env(home)):
            time.sleep(2)  # let start-up work (the run-at-start checks, first probes) settle
            load = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.bench_status",
                    "--client-of",
                    str(socket_path),
                    "--clients",
                    str(clients),
                    "--seconds",
                    str(seconds),
                    "--rate",
                    str(rate),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        if load.returncode != 0:
            raise SystemExit(f"the load failed:\n{load.stderr[-3000:]}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result: dict[str, Any] = {
        "clients": clients,
        "rate_per_client": rate,
        "seconds": seconds,
        **json.loads(load.stdout),
    }
    result["status_p99_target_met"] = result["paced_status"]["p99_ms"] <= 5
    save_and_print("status", result, as_json=as_json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s per client")
    parser.add_argument("--client-of", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.client_of:
        client_main(args.client_of, args.clients, args.seconds, args.rate)
    else:
        main(args.clients, args.seconds, args.rate, args.json)
