"""SFTP upload speed: our SshTransport.put against OpenSSH scp (same cipher) to one local sshd."""

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
from tests.support.sshd import SshServer, install_sshd_if_missing

from bench.payload import make_file
from selfheal.backup.transports.ssh import SshTransport
from selfheal.core.ssh_flags import parse_ssh_flags

CIPHER = "aes128-gcm@openssh.com"  # ours prefers it too; NOTES.md: the fair anchor
RESULTS = Path(__file__).parent / "results" / "sftp.json"
TARGET_RATIO = 0.9


@dataclass
class Run:
    """One timed upload."""

    method: str
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0


def settle(source: Path) -> None:
    """Same starting state before every timed run: no dirty pages, the source file cached.

    Without it the first run pays for writing the freshly made payload to disk, and each
    run for the previous run's file: whichever method comes next is penalized.
    """
    os.sync()
    with source.open("rb", buffering=0) as data:
        while data.read(8 << 20):
            pass


def run_scp(server: SshServer, source: Path, dest: Path) -> Run:
    """One OpenSSH scp upload, connection setup included, as a user would run it."""
    command = [
        "scp",
        "-q",
        "-c",
        CIPHER,
        "-P",
        str(server.port),
        "-i",
        str(server.user_key),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={server.known_hosts}",
        str(source),
        f"{server.host}:{dest}",
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, timeout=900, stdin=subprocess.DEVNULL)
    return Run("scp", time.monotonic() - started)


def run_ours(transport: SshTransport, source: Path, sha256: str, size: int) -> Run:
    """One SshTransport.put: connect, upload, fsync + verify (overlapped), rename."""

    async def upload() -> tuple[float, int]:
        delivery = await transport.put(
            source, PurePosixPath("bench/ours.bin"), sha256=sha256, size=size
        )
        assert delivery.verified and delivery.bytes == size
        return delivery.seconds, delivery.resumed_from

    seconds, resumed_from = anyio.run(upload)
    method = "resume" if resumed_from else "ours"
    return Run(method, seconds, dict(transport.last_phases), resumed_from)


def run_resume(
    transport: SshTransport, server: SshServer, source: Path, sha256: str, size: int
) -> Run:
    """An upload cut off halfway, continued: the first half is already in the
    `.partial` (as a lost connection leaves it), the put verifies it and sends the rest."""
    partial = server.remote_root / "bench" / "ours.bin.partial"
    with source.open("rb") as data, partial.open("wb") as out:
        out.write(data.read(size // 2))
    settle(source)
    run = run_ours(transport, source, sha256, size)
    assert run.resumed_from > 0, "the upload did not resume"
    return run


def summarize(runs: list[Run], size: int, hash_method: str | None) -> dict[str, Any]:
    """Best-of figures in MB/s (10^6 bytes) and the ratios against scp."""

    def best(values: list[float]) -> float:
        return size / min(values) / 1e6

    scp = best([r.seconds for r in runs if r.method == "scp"])
    ours = [r for r in runs if r.method == "ours"]
    resumed = [r for r in runs if r.method == "resume"]
    total = best([r.seconds for r in ours])
    # Without verification: no fsync + hash phase, i.e. what scp itself does.
    transfer = best([r.seconds - r.phases.get("sync_verify", 0.0) for r in ours])
    return {
        "scp_mb_s": round(scp, 1),
        "ours_transfer_mb_s": round(transfer, 1),
        "ours_verified_mb_s": round(total, 1),
        "ratio_transfer": round(transfer / scp, 3),
        "ratio_verified": round(total / scp, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": transfer / scp >= TARGET_RATIO,
        "hash_method": hash_method,
        # A half-sent upload continued (prefix hash on the NAS + the other half, verified
        # whole) against a whole verified upload: < 1 is what resuming saves.
        "resume_half_s": round(min(r.seconds for r in resumed), 3) if resumed else None,
        "full_verified_s": round(min(r.seconds for r in ours), 3),
        "ratio_resume_to_full": (
            round(min(r.seconds for r in resumed) / min(r.seconds for r in ours), 3)
            if resumed
            else None
        ),
    }


def main() -> None:
    """Run the benchmark and print (or --json) the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if not install_sshd_if_missing():
        raise SystemExit(
            "sshd is not installed (run scripts/lib/install-system-packages.sh as root)"
        )
    size = args.size_mib << 20
    # Same disk as the server's files, so both sides pay the same storage costs.
    work = Path(tempfile.mkdtemp(prefix="bench-sftp-", dir=tempfile.gettempdir()))
    server = SshServer(work / "sshd")
    try:
        source = work / "payload.bin"
        sha256 = make_file(source, size)
        server.start()
        options = parse_ssh_flags(server.flags())
        transport = SshTransport(server.host, options, str(server.remote_root))
        (server.remote_root / "bench").mkdir()
        runs: list[Run] = []
        for _ in range(args.repeats):
            # Interleaved, so background noise hits both methods alike.
            settle(source)
            runs.append(run_scp(server, source, server.remote_root / "bench" / "scp.bin"))
            (server.remote_root / "bench" / "scp.bin").unlink()
            settle(source)
            runs.append(run_ours(transport, source, sha256, size))
            (server.remote_root / "bench" / "ours.bin").unlink()
            runs.append(run_resume(transport, server, source, sha256, size))
            (server.remote_root / "bench" / "ours.bin").unlink()
        summary = summarize(runs, size, transport.hash_method)
    finally:
        server.stop(kill=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "sftp",
        "size_mib": args.size_mib,
        "repeats": args.repeats,
        "cipher": CIPHER,
        "block_size": transport.block_size,
        "max_requests": transport.max_requests,
        "lean_send": transport.lean_send_active,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    lean = "on" if transport.lean_send_active else "off"
    print(f"{args.size_mib} MiB, best of {args.repeats}, cipher {CIPHER}, lean send {lean}")
    print(f"{'method':<40} {'MB/s':>8}")
    print(f"{'OpenSSH scp':<40} {summary['scp_mb_s']:>8}")
    print(f"{'ours: transfer (no fsync/verify)':<40} {summary['ours_transfer_mb_s']:>8}")
    print(f"{'ours: put incl. fsync + sha256 verify':<40} {summary['ours_verified_mb_s']:>8}")
    ratios = f"transfer {summary['ratio_transfer']}, verified {summary['ratio_verified']}"
    print(f"ratio ours/scp: {ratios}")
    print(
        f"resume of a half-sent upload: {summary['resume_half_s']} s vs whole "
        f"{summary['full_verified_s']} s (ratio {summary['ratio_resume_to_full']})"
    )
    print(f"(target >= {TARGET_RATIO} for the transfer; results in {RESULTS})")


if __name__ == "__main__":
    main()
