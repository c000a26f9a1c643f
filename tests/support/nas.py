"""NAS set-ups daemon tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ssh_nowhere(home: Path, **extra: Any) -> dict[str, Any]:
    """A `backupTransport` section whose SSH leads nowhere (a closed port, an empty
    known_hosts, no prompts): the mount is the only way to the NAS."""
    known_hosts = home / "known_hosts"
    known_hosts.touch()
    return {
        "nasSshHost": "nobody@127.0.0.1",
        "nasSshFlags": f"-o BatchMode=yes -p 1 -o UserKnownHostsFile={known_hosts}",
        **extra,
    }
