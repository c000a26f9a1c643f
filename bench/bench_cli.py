"""How long a CLI call takes as a whole process, next to the interpreter doing nothing.

Run: python -m bench.bench_cli [--runs N] [--json]

The real daemon (`python -m selfheal run`, embedded Redis, a temporary HOME) is
started; then each command below is run N times as a fresh process, alternating
with the anchor `python -c pass` (the interpreter's own start, measured in the
same run), and the median and 90th percentile wall times are reported. The
target for `selfheal status` is <= 150 ms on a 2-core VM.
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

from bench.daemon import bench_env, running_daemon
from bench.report import save_and_print

COMMANDS = {
    "status": ["status"],
    "status_json": ["status", "--json"],
    "incidents_list": ["incidents", "list"],
    "help": ["--help"],
}


def _selfheal() -> list[str]:
    """The console script users run, beside this interpreter (else `python -m selfheal`)."""
    script = Path(sys.executable).with_name("selfheal")
    return [str(script)] if script.exists() else [sys.executable, "-m", "selfheal"]


def _time_ms(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode not in (0, 5):  # 5: degraded, still a full answer
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
    }


def main(runs: int, as_json: bool) -> None:
    home = Path(tempfile.mkdtemp(prefix="cli-", dir="/tmp"))
    env = bench_env(home)
    cli = _selfheal()
    anchor: list[float] = []
    found: dict[str, list[float]] = {name: [] for name in COMMANDS}
    try:
        with running_daemon(home, env):
            for args in COMMANDS.values():  # warm the file cache and bytecode once
                _time_ms([*cli, *args], env)
            for _ in range(runs):
                anchor.append(_time_ms([sys.executable, "-c", "pass"], env))
                for name, args in COMMANDS.items():
                    found[name].append(_time_ms([*cli, *args], env))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    base = _summary(anchor)
    result: dict[str, Any] = {"runs": runs, "anchor_python_c_pass": base}
    for name, samples in found.items():
        result[name] = {
            **_summary(samples),
            "over_anchor_ms": round(statistics.median(samples) - base["median_ms"], 1),
        }
    result["status_target_met"] = result["status"]["median_ms"] <= 150
    save_and_print("cli", result, as_json=as_json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    main(args.runs, args.json)
