"""What the transfer benchmarks share: one incompressible payload file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def make_file(path: Path, size: int) -> str:
    """Random bytes (incompressible, like a compressed archive); returns their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 8 << 20))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()
