"""Local copy speed: MountTransport.put (fsync + read-back verify) against `cp` + `sha256sum`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anyio

from bench.payload import make_file
from selfheal.backup.transports.mount import MountTransport, mark_nas

RESULTS = Path(__file__).parent / "results" / "copy.json"
TARGET_RATIO = 0.95
RUNS = 3
COMMAND_TIMEOUT_S = 900


@dataclass
class Method:
    """Timed runs of one way of copying and verifying."""

    name: str
    seconds: list[float] = field(default_factory=list)

    def best(self) -> float:
        """The fastest run: the least disturbed by other work on a shared machine."""
        return min(self.seconds)

    def mb_per_s(self, size: int) -> float:
        """Throughput of the best run in MB/s (10^6 bytes)."""
        return size / 1e6 / self.best()


def run_anchor(source: Path, dest: Path, sha256: str) -> float:
    """`cp SRC DST && sha256sum DST`, as argument lists, timed together."""
    started = time.monotonic()
    subprocess.run(["cp", str(source), str(dest)], check=True, timeout=COMMAND_TIMEOUT_S)
    out = subprocess.run(
        ["sha256sum", str(dest)], check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S
    )
    elapsed = time.monotonic() - started
    if out.stdout.split()[0].decode() != sha256:
        raise SystemExit("anchor produced a wrong copy")
    return elapsed


def run_ours(transport: MountTransport, source: Path, sha256: str, size: int) -> float:
    """One MountTransport.put: copy to .partial, fsync, read back and verify, link, fsync dir."""

    async def put() -> float:
        started = time.monotonic()
        delivery = await transport.put(
            source, PurePosixPath("bench/dst.bin"), sha256=sha256, size=size
        )
        if not delivery.verified:
            raise SystemExit("put returned an unverified delivery")
        return time.monotonic() - started

    return anyio.run(put)


def drop(*paths: Path) -> None:
    """Remove a destination and flush, so no run pays for the previous one's writeback."""
    for path in paths:
        path.unlink(missing_ok=True)
    os.sync()


def filesystem_of(path: Path) -> str:
    """The filesystem type holding `path` (Linux /proc/mounts; "unknown" elsewhere)."""
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and resolved.startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def measure(size: int, runs: int, base: Path | None) -> dict[str, Any]:
    """Run both methods `runs` times each, interleaved, on one file; return the report."""
    work = Path(tempfile.mkdtemp(prefix="selfheal-bench-copy-", dir=base))
    try:
        source = work / "src.bin"
        sha256 = make_file(source, size)
        nas = work / "nas"
        nas.mkdir()
        mark_nas(nas, "bench")
        transport = MountTransport(nas, require_mount_point=False)
        anchor, ours = Method("cp + sha256sum"), Method("MountTransport.put")
        anchor_dest, ours_dest = work / "dst.bin", nas / "bench" / "dst.bin"
        drop()
        for _ in range(runs):
            anchor.seconds.append(run_anchor(source, anchor_dest, sha256))
            drop(anchor_dest)
            ours.seconds.append(run_ours(transport, source, sha256, size))
            drop(ours_dest)
        fs = filesystem_of(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = ours.mb_per_s(size) / anchor.mb_per_s(size)
    return {
        "size_bytes": size,
        "runs": runs,
        "filesystem": fs,
        "host": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "methods": [
            {**asdict(m), "best_s": m.best(), "mb_per_s": m.mb_per_s(size)} for m in (anchor, ours)
        ],
        "ratio_ours_to_anchor": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "note": "ours fsyncs file and folder before verifying; the anchor does not fsync",
    }


def main() -> None:
    """Parse arguments, measure, print, and save bench/results/copy.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="test file size (MiB)")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs per method (best counts)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: TMPDIR)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if args.size_mib < 1 or args.runs < 1:
        parser.error("--size-mib and --runs must be >= 1")
    report = measure(args.size_mib << 20, args.runs, args.dir)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.size_mib} MiB random file on {report['filesystem']}, best of {args.runs}")
    print(f"{'method':<22} {'best s':>8} {'MB/s':>8}   runs (s)")
    for m in report["methods"]:
        runs = " ".join(f"{s:.2f}" for s in m["seconds"])
        print(f"{m['name']:<22} {m['best_s']:>8.2f} {m['mb_per_s']:>8.0f}   {runs}")
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"ratio ours/anchor: {report['ratio_ours_to_anchor']:.2f} ({verdict} >= {TARGET_RATIO})")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
