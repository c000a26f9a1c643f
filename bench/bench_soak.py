"""An accelerated soak: a day of minute ticks' worth of backups through one daemon.

Run: python -m bench.bench_soak [--runs 1440] [--json]

The real daemon (embedded Redis for its bus, a small real Redis as the backup
source, a marked local folder as the NAS) is asked for `--runs` Redis backups one
after another over its control socket — the request a scheduler tick publishes —
each waited for until delivered. Every `--runs`/6 runs the daemon's RSS, open
descriptors and the bus's stream lengths are sampled. What must hold: RSS and
descriptors flat (no growth per run), streams trimmed to their bound, the NAS
folder kept to its retention. The anchor is the first sample, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from tests.support.servers import RedisServer

from bench.daemon import bench_env, running_daemon
from bench.report import save_and_print
from selfheal.backup.transports.mount import mark_nas
from selfheal.control.client import ControlClient

WARM_UP_RUNS = 20


def snapshot(client: ControlClient, pid: int, nas: Path) -> dict[str, Any]:
    proc = psutil.Process(pid)
    stats = client.call("queue.stats", {})
    return {
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "longest_stream": max((s["length"] for s in stats["streams"]), default=0),
        "nas_files": len(list((nas / "redis").iterdir())) if (nas / "redis").exists() else 0,
    }


def one_run(client: ControlClient) -> None:
    """One requested backup, followed to its end (what `backup run --follow` does)."""
    final: dict[str, Any] = {}
    for item in client.stream("backup.run", {"target": "redis", "follow": True}, idle_timeout=60):
        if item.get("stage") == "done":
            final = item
    if final.get("status") != "delivered":
        raise SystemExit(f"a run ended {final}")


def main(runs: int, as_json: bool) -> None:
    home = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    source = RedisServer(home / "source").start()
    source.client().set("k", "v" * 1000)
    nas = home / "nas"
    nas.mkdir()
    mark_nas(nas, "soak")
    config = home / ".joelclaw" / "system-bus.config.json"
    config.parent.mkdir(parents=True)
    config.write_text(
        json.dumps(
            {
                "selfheal": {
                    "bus": {"streamMaxLen": 1000},
                    "backups": {
                        "redis": {
                            "source": source.url,
                            "mountRoot": str(nas),
                            "requireMountPoint": False,
                            "compression": "none",
                        },
                        "typesense": {"enabled": False},
                    },
                }
            }
        )
    )
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with running_daemon(home, bench_env(home)) as (daemon, client):
            for _ in range(WARM_UP_RUNS):
                one_run(client)
            every = max(1, runs // 6)
            for n in range(1, runs + 1):
                one_run(client)
                if n % every == 0 or n == 1:
                    samples.append({"run": n, **snapshot(client, daemon.pid, nas)})
    finally:
        source.stop(kill=True)
        shutil.rmtree(home, ignore_errors=True)
    first, last = samples[0], samples[-1]
    result = {
        "runs": runs,
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
        "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
        "fd_growth": last["fds"] - first["fds"],
        "longest_stream": max(s["longest_stream"] for s in samples),
        "nas_files_last": last["nas_files"],
    }
    save_and_print("soak", result, as_json=as_json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1440)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    main(args.runs, args.json)
