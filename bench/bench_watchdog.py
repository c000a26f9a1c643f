"""Time from a worker's death to its answering again, split into detection and restart.

Run: python -m bench.bench_watchdog [--runs N] [--interval S] [--json]

A real redis-server, a real daemon with the watchdog on, and a real worker
(tests/support/worker_app.py) under the launchctl stand-in. Each run SIGKILLs the
worker and times: detection (kill -> the watchdog's self-healing request, seen in
`watchdog.status`), and restart (request -> the worker answering again: the
router's decision and first retry delay, the guards, `kickstart -k`, the worker's
own start). The anchor, measured in the same run: the worker's own start time (a
fresh process until it answers). Medians of the runs, each run's figures too.
Targets: detection <= probe interval + 1 s; restart dominated by the worker's start.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProcess
from tests.support.servers import RedisServer, wait_until
from tests.support.worker import APP, Worker

from bench.report import save_and_print


def own_start_s(worker: Worker) -> float:
    """A fresh worker process on another port: spawn to first answer."""
    spare = Worker(worker.folder.parent / "anchor", name="anchor")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-P", str(APP), str(spare.port), str(spare.folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(spare.healthy, 30, "the anchor worker")
        return time.monotonic() - started
    finally:
        process.kill()
        process.wait()


def one_run(daemon: DaemonProcess, worker: Worker) -> tuple[float, float]:
    def requested() -> bool:
        [entry] = daemon.call("watchdog.status")["workers"]
        return bool(entry["requested"])

    wait_until(lambda: not requested(), 30, "the last incident to close")
    pid = worker.pid()
    killed = time.monotonic()
    worker.kill()
    wait_until(requested, 60, "the watchdog's request")
    detected = time.monotonic()
    wait_until(lambda: worker.healthy() and worker.pid() != pid, 60, "the worker back")
    healthy = time.monotonic()
    return detected - killed, healthy - detected


def main(runs: int, interval: float, as_json: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="shw-", dir="/tmp"))
    redis = RedisServer(folder / "redis").start()
    worker = Worker(folder / "worker")
    daemon: DaemonProcess | None = None
    try:
        worker.start()
        settings = worker.settings(
            probeIntervalSeconds=interval, failureThreshold=1, maxRestartsPerWindow=100
        )
        daemon = DaemonProcess(
            folder / "home",
            config={
                "selfheal": {
                    "redis": {"url": redis.url},
                    "watchdog": {"enabled": True, "workers": [settings]},
                }
            },
            env=worker.env(),
        ).start()
        anchors = [own_start_s(worker) for _ in range(runs)]
        detections, restarts = [], []
        for _ in range(runs):
            detection, restart = one_run(daemon, worker)
            detections.append(detection)
            restarts.append(restart)
    except AssertionError:
        if daemon is not None:
            print(daemon.log()[-6000:], file=sys.stderr)
        raise
    finally:
        if daemon is not None:
            daemon.kill()
        worker.stop()
        redis.stop(kill=True)
        shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {
        "runs": runs,
        "probe_interval_s": interval,
        "failure_threshold": 1,
        "detection_s": round(statistics.median(detections), 3),
        "restart_to_healthy_s": round(statistics.median(restarts), 3),
        "death_to_healthy_s": round(
            statistics.median(d + r for d, r in zip(detections, restarts, strict=True)), 3
        ),
        "anchor_worker_start_s": round(statistics.median(anchors), 3),
        "detection_runs": [round(x, 3) for x in detections],
        "restart_runs": [round(x, 3) for x in restarts],
        "anchor_runs": [round(x, 3) for x in anchors],
    }
    save_and_print("watchdog", result, as_json=as_json, width=24)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.runs < 1 or args.interval <= 0:
        raise SystemExit("bench_watchdog: --runs must be >= 1 and --interval > 0")
    main(args.runs, args.interval, args.json)
