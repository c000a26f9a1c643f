"""One table of every benchmark's latest result, each figure beside its anchor.

Run: python -m bench.table [--json] [--markdown]

Reads bench/results/*.json (written by `scripts/bench`), prints one row per
measurement (ours, the anchor measured in the same run, their ratio or
difference, the target), and writes bench/results/table.json. A benchmark that has
not run yet is listed as missing, never guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

Row = dict[str, Any]


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded


def _row(what: str, ours: str, anchor: str, relation: str, target: str) -> Row:
    return {"what": what, "ours": ours, "anchor": anchor, "relation": relation, "target": target}


def _copy(r: dict[str, Any]) -> list[Row]:
    anchor, ours = r["methods"]
    return [
        _row(
            "local copy + verify (MB/s)",
            f"{ours['mb_per_s']:.0f}",
            f"{anchor['mb_per_s']:.0f} (cp + sha256sum)",
            f"{r['ratio_ours_to_anchor']:.2f}x",
            f">= {r['target_ratio']}x",
        )
    ]


def _sftp(r: dict[str, Any]) -> list[Row]:
    s = r["summary"]
    rows = [
        _row(
            "SFTP upload, transfer (MB/s)",
            f"{s['ours_transfer_mb_s']}",
            f"{s['scp_mb_s']} (scp, {r['cipher']})",
            f"{s['ratio_transfer']}x",
            f">= {s['target_ratio']}x",
        ),
        _row(
            "SFTP upload, fsync + sha256 verified (MB/s)",
            f"{s['ours_verified_mb_s']}",
            f"{s['scp_mb_s']} (scp, no verify)",
            f"{s['ratio_verified']}x",
            "-",
        ),
    ]
    if s.get("resume_half_s") is not None:
        rows.append(
            _row(
                "SFTP resume of a half-sent upload (s)",
                f"{s['resume_half_s']}",
                f"{s['full_verified_s']} (whole upload)",
                f"{s['ratio_resume_to_full']}x",
                "< 1x",
            )
        )
    return rows


def _router(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            "routed decisions/s",
            f"{r['routed_decisions_per_s']}",
            f"{r['raw_msgs_per_s']} (raw XADD+XREADGROUP+XACK)",
            f"{r['ratio']}x",
            ">= 0.15x",
        ),
        _row(
            "decision latency p99 at half rate (ms)",
            f"{r['latency_p99_ms']}",
            "-",
            f"p50 {r['latency_p50_ms']}",
            "<= 20",
        ),
    ]


def _status(r: dict[str, Any]) -> list[Row]:
    clients, rate = r["clients"], r.get("rate_per_client", 10)
    paced, ping = r["paced_status"], r["paced_ping"]
    return [
        _row(
            f"status p50/p99, {clients} clients at {rate:g}/s each (ms)",
            f"{paced['p50_ms']} / {paced['p99_ms']}",
            f"{ping['p50_ms']} / {ping['p99_ms']} (ping)",
            f"+{paced['p99_ms'] - ping['p99_ms']:.2f} ms p99",
            "p99 <= 5",
        ),
        _row(
            f"status p50/p99, {clients} clients connecting at once (ms)",
            f"{r['burst_status']['p50_ms']} / {r['burst_status']['p99_ms']}",
            f"{r['burst_ping']['p50_ms']} / {r['burst_ping']['p99_ms']} (ping)",
            "-",
            "-",
        ),
    ]


def _idle(r: dict[str, Any]) -> list[Row]:
    d, a = r["daemon"], r["anchor_bare_asyncio"]
    return [
        _row(
            "idle daemon CPU (%) / RSS (MB), watchdog probing one worker",
            f"{d['cpu_percent']} / {d['rss_mb']}",
            f"{a['cpu_percent']} / {a['rss_mb']} (bare asyncio)",
            f"+{d['rss_mb'] - a['rss_mb']:.1f} MB",
            "CPU <= 0.2",
        ),
        _row(
            "idle embedded redis-server CPU (%) / RSS (MB)",
            f"{r['embedded_redis']['cpu_percent']} / {r['embedded_redis']['rss_mb']}"
            if "embedded_redis" in r
            else "not measured",
            "-",
            "-",
            "-",
        ),
        _row(
            "idle wakeups/s",
            f"{d['wakeups_per_s_total']}",
            f"{a['wakeups_per_s_total']} (bare asyncio)",
            "-",
            "-",
        ),
        _row(
            "config edit -> applied (ms, median)",
            f"{r['reload_latency_ms_median']}",
            "-",
            "-",
            "-",
        ),
    ]


def _watchdog(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            "worker death -> healthy (s)",
            f"{r['death_to_healthy_s']}",
            f"{r['anchor_worker_start_s']} (the worker's own start)",
            f"detection {r['detection_s']} s",
            f"detection <= {r['probe_interval_s'] + 1:g} s",
        )
    ]


def _cli(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            "`selfheal status` as a process (ms, median)",
            f"{r['status']['median_ms']}",
            f"{r['anchor_python_c_pass']['median_ms']} (python -c pass)",
            f"+{r['status']['over_anchor_ms']} ms",
            "<= 150",
        )
    ]


def _bigfile(r: dict[str, Any]) -> list[Row]:
    rows = []
    for mode in ("mount", "ssh"):
        sizes = [f"{g:g}gib" for g in r["sizes_gib"]]
        growth = " / ".join(f"{r[f'{mode}_{s}']['growth_mb']}" for s in sizes)
        rows.append(
            _row(
                f"{mode}: RSS growth moving {' / '.join(sizes)} (MB)",
                growth,
                f"{r[f'{mode}_anchor_1mib']['growth_mb']} (1 MiB)",
                "flat" if max(float(x) for x in growth.split(" / ")) <= 64 else "GROWS",
                "<= 64, size-independent",
            )
        )
    return rows


def _scheduler(r: dict[str, Any]) -> list[Row]:
    n = r["targets"]
    return [
        _row(
            f"scheduler, {n} targets: next fire time per target (µs)",
            f"{r['next_fire_us']}",
            f"{r['anchor_cronsim_us']} (bare cronsim step)",
            f"{r['ratio_next_fire_to_cronsim']}x",
            "-",
        ),
        _row(
            f"scheduler, {n} targets: tick with nothing due (ms)",
            f"{r['idle_tick_ms']}",
            f"{r['anchor_mget_ms']} (one MGET of every last tick)",
            f"{r['ratio_idle_tick_to_mget']}x",
            "-",
        ),
        _row(
            f"scheduler, {n} targets all due after a sleep: one tick (ms)",
            f"{r['all_due_tick_ms']}",
            f"{r['anchor_xadd_pipeline_ms']} (raw pipeline of {n} XADDs)",
            f"{r['ratio_due_tick_to_pipeline']}x",
            "-",
        ),
        _row(
            f"scheduler, {n} targets: tasks added",
            f"{r['tasks_added']}",
            "-",
            "-",
            "1",
        ),
    ]


def _soak(r: dict[str, Any]) -> list[Row]:
    first, last = r["samples"][0], r["samples"][-1]
    return [
        _row(
            f"soak: {r['runs']} backups in a row, RSS (MB) / fds, first -> last",
            f"{first['rss_mb']} -> {last['rss_mb']} / {first['fds']} -> {last['fds']}",
            "-",
            f"+{r['rss_growth_mb']} MB, {r['fd_growth']:+d} fds",
            "flat",
        )
    ]


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[Row]]]] = [
    ("copy", _copy),
    ("sftp", _sftp),
    ("router", _router),
    ("status", _status),
    ("idle", _idle),
    ("watchdog", _watchdog),
    ("cli", _cli),
    ("bigfile", _bigfile),
    ("scheduler", _scheduler),
    ("soak", _soak),
]


def build() -> dict[str, Any]:
    rows: list[Row] = []
    missing: list[str] = []
    for name, rows_of in SECTIONS:
        found = _load(name)
        if found is None:
            missing.append(name)
            continue
        rows += rows_of(found)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "rows": rows,
        "missing": missing,
    }


def markdown(table: dict[str, Any]) -> str:
    lines = [
        f"Measured {table['date']} on {table['machine']} (`scripts/bench`).",
        "",
        "| measurement | ours | anchor (same run) | ours vs anchor | target |",
        "|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        cells = (row["what"], row["ours"], row["anchor"], row["relation"], row["target"])
        lines.append("| " + " | ".join(cells) + " |")
    if table["missing"]:
        lines.append(f"\nNot run: {', '.join(table['missing'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    table = build()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    if args.json:
        print(json.dumps(table, indent=2))
    elif args.markdown:
        print(markdown(table))
    else:
        widths = [
            max(len(str(r[k])) for r in table["rows"]) if table["rows"] else 0
            for k in ("what", "ours", "anchor", "relation", "target")
        ]
        for row in table["rows"]:
            cells = [str(row[k]) for k in ("what", "ours", "anchor", "relation", "target")]
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if table["missing"]:
            print(f"not run: {', '.join(table['missing'])}")


if __name__ == "__main__":
    main()
