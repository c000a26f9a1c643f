"""What the idle daemon costs: wakeups per thread, CPU, RSS, and how fast a config edit lands.

Run: python -m bench.bench_idle [--seconds S] [--reloads N] [--json]

The daemon's watchdog probes one real worker (at its default interval), and its
embedded redis-server is sampled beside it.

The real daemon (`python -m selfheal run`, embedded Redis, a temporary HOME) is
started and left alone until it is ready and settled; then, over S seconds, each
of its threads' context switches (Linux /proc: a switch is a wake-up), its CPU
time and its RSS are read. The anchor, measured the same way in the same run, is
a bare asyncio process sleeping: what "doing nothing" costs this interpreter.
Then N config edits (atomic renames, as editors save) are timed from the rename
to the daemon reporting the new generation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from tests.support.worker import Worker

from bench.daemon import bench_env, running_daemon, stop
from selfheal.control.client import ControlClient

WATCHED: dict[str, Any] | None = None

SETTLE_S = 10.0


def _switches(pid: int) -> dict[str, int]:
    """Context switches per thread (tid:name) from /proc."""
    found: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        total = 0
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
        found[f"{task.name}:{name}"] = total
    return found


def sample(pid: int, seconds: float) -> dict[str, Any]:
    """Wakeups/s per thread (the busiest first), CPU % and RSS over `seconds`."""
    return sample_many([pid], seconds)[0]


def sample_many(pids: list[int], seconds: float) -> list[dict[str, Any]]:
    """`sample` for several processes over the same `seconds`."""
    procs = [psutil.Process(pid) for pid in pids]
    before = [(_switches(p.pid), p.cpu_times()) for p in procs]
    time.sleep(seconds)
    found = []
    for proc, (switches, cpu_before) in zip(procs, before, strict=True):
        after, cpu_after = _switches(proc.pid), proc.cpu_times()
        rates = sorted(
            ((after[t] - switches[t]) / seconds for t in after if t in switches), reverse=True
        )
        cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        found.append(
            {
                "threads": len(after),
                "wakeups_per_s_by_thread": [round(r, 2) for r in rates],
                "wakeups_per_s_total": round(sum(rates), 2),
                "cpu_percent": round(cpu / seconds * 100, 3),
                "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            }
        )
    return found


def _write_config(path: Path, retries: int, worker: dict[str, Any] | None = None) -> None:
    tmp = path.with_name(".bench.tmp")
    doc: dict[str, Any] = {"backupFailureRouter": {"maxRetries": retries}}
    if worker is not None:
        doc["selfheal"] = {"watchdog": {"enabled": True, "workers": [worker]}}
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def reload_latency_ms(client: ControlClient, config: Path, edits: int) -> list[float]:
    """Milliseconds from an atomic-rename save to the new generation in `status`."""
    found: list[float] = []
    for n in range(edits):
        generation = client.call("status", {})["config"]["generation"]
        started = time.perf_counter()
        _write_config(config, 6 + n % 4, WATCHED)
        deadline = started + 10
        while client.call("status", {})["config"]["generation"] == generation:
            if time.perf_counter() > deadline:
                raise SystemExit("a config edit was not applied within 10 s")
            time.sleep(0.005)
        found.append(round((time.perf_counter() - started) * 1000, 1))
        time.sleep(0.3)
    return found


def main(seconds: float, edits: int, as_json: bool) -> None:
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("bench_idle reads per-thread wakeups from /proc (Linux only)")
    global WATCHED
    home = Path(tempfile.mkdtemp(prefix="idle-", dir="/tmp"))
    config = home / ".joelclaw" / "system-bus.config.json"
    config.parent.mkdir(parents=True)
    # The watchdog probes one real worker, at its default interval, as in use.
    worker = Worker(home / "worker")
    worker.start()
    WATCHED = worker.settings(probeIntervalSeconds=30, probeTimeoutSeconds=5, failureThreshold=3)
    _write_config(config, 5, WATCHED)
    anchor = subprocess.Popen(
        [sys.executable, "-c", "import asyncio; asyncio.run(asyncio.sleep(3600))"]
    )
    try:
        with running_daemon(home, bench_env(home, worker.env())) as (daemon, client):
            time.sleep(SETTLE_S)
            [redis_server] = [
                c for c in psutil.Process(daemon.pid).children() if "redis-server" in c.name()
            ]
            ours, redis_idle = sample_many([daemon.pid, redis_server.pid], seconds)
            bare = sample(anchor.pid, seconds)
            latencies = reload_latency_ms(client, config, edits)
    finally:
        stop(anchor)
        worker.stop()
        shutil.rmtree(home, ignore_errors=True)
    result = {
        "seconds": seconds,
        "daemon": ours,
        "embedded_redis": redis_idle,
        "watched_workers": 1,
        "anchor_bare_asyncio": bare,
        "reload_latency_ms": latencies,
        "reload_latency_ms_median": statistics.median(latencies),
    }
    out = Path(__file__).parent / "results" / "idle.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for key in (
        "threads",
        "wakeups_per_s_total",
        "wakeups_per_s_by_thread",
        "cpu_percent",
        "rss_mb",
    ):
        print(f"{key:28} {ours[key]!s:28} anchor {bare[key]}")
    r = redis_idle
    print(
        f"{'embedded redis-server':28} {r['cpu_percent']}% CPU, {r['rss_mb']} MB, "
        f"{r['wakeups_per_s_total']} wakeups/s"
    )
    print(f"{'reload_latency_ms':28} {latencies} (median {result['reload_latency_ms_median']})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    main(args.seconds, args.reloads, args.json)
