"""Memory while moving a large artifact: RSS growth must not follow the file's size.

Run: python -m bench.bench_bigfile [--sizes-gib 1,10] [--json]

For each transport (the mount copy to a marked local folder, SFTP to a local sshd)
and each size, one process imports the transport, notes its RSS, moves a sparse
file of that size with the same verified `put` the daemon uses, and reports its
peak RSS (getrusage maxrss). The anchor is the same process moving a 1 MiB file:
what a transfer costs in memory at all. Target: growth <= 64 MB at every size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.sshd import SshServer, install_sshd_if_missing

from bench.report import save_and_print

CHILD = r"""
import json, resource, sys
from pathlib import Path, PurePosixPath
import anyio
mode, source, sha, size, root, flags, host = sys.argv[1:8]
def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if mode == "mount":
    from selfheal.backup.transports.mount import MountTransport
    transport = MountTransport(Path(root), require_mount_point=False)
else:
    from selfheal.backup.transports.ssh import SshTransport
    from selfheal.core.ssh_flags import parse_ssh_flags
    transport = SshTransport(host, parse_ssh_flags(flags), root)
before = peak_mb()
async def move() -> None:
    delivery = await transport.put(
        Path(source), PurePosixPath("big/artifact.bin"), sha256=sha, size=int(size)
    )
    assert delivery.verified
anyio.run(move)
print(json.dumps({"before_mb": round(before, 1), "peak_mb": round(peak_mb(), 1)}))
"""


def sparse(path: Path, size: int) -> str:
    """A sparse file of `size` zero bytes; its sha256."""
    with path.open("wb") as out:
        out.truncate(size)
    digest = hashlib.sha256()
    block = bytes(16 << 20)
    left = size
    while left:
        step = min(left, len(block))
        digest.update(block[:step] if step < len(block) else block)
        left -= step
    return digest.hexdigest()


def measure(mode: str, source: Path, sha: str, size: int, root: str, server: SshServer) -> Any:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), sha, str(size), root,
         server.flags(), server.host],
        capture_output=True, text=True, env=env, timeout=3600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{mode} {size}: {done.stderr[-2000:]}")
    found = json.loads(done.stdout)
    found["growth_mb"] = round(found["peak_mb"] - found["before_mb"], 1)
    return found


def main(sizes_gib: list[float], as_json: bool) -> None:
    if not install_sshd_if_missing():
        raise SystemExit("sshd is not installed (run scripts/lib/install-system-packages.sh)")
    work = Path(tempfile.mkdtemp(prefix="bench-big-", dir=tempfile.gettempdir()))
    server = SshServer(work / "sshd")
    result: dict[str, Any] = {"sizes_gib": sizes_gib}
    try:
        server.start()
        from selfheal.backup.transports.mount import mark_nas

        nas = work / "nas"
        nas.mkdir()
        mark_nas(nas, "bench")
        cases = [("anchor_1mib", 1 << 20)] + [(f"{g:g}gib", int(g * (1 << 30))) for g in sizes_gib]
        for label, size in cases:
            source = work / f"{label}.bin"
            sha = sparse(source, size)
            for mode, root in (("mount", str(nas)), ("ssh", str(server.remote_root))):
                result[f"{mode}_{label}"] = measure(mode, source, sha, size, root, server)
                shutil.rmtree(Path(root) / "big", ignore_errors=True)
            source.unlink()
    finally:
        server.stop(kill=True)
        shutil.rmtree(work, ignore_errors=True)
    growth = [v["growth_mb"] for k, v in result.items() if isinstance(v, dict)]
    result["max_growth_mb"] = max(growth)
    result["target_met"] = max(growth) <= 64
    save_and_print("bigfile", result, as_json=as_json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes-gib", default="1,10")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    main([float(x) for x in args.sizes_gib.split(",")], args.json)
