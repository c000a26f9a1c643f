"""Local-file side of the SFTP upload: read-ahead in whole SFTP blocks off the loop, and
the prefix hash a resumed upload is checked against."""

from __future__ import annotations

import hashlib
import os
from typing import Final, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectSendStream

Batch: TypeAlias = list[tuple[int, bytes]]  # (offset, data) blocks in file order
BATCH_BLOCKS: Final = 16  # blocks per worker-thread hop (~4 MiB of 255 KiB blocks)


def read_batch(fd: int, offset: int, block: int, count: int) -> Batch:
    """Up to `count` blocks from `offset` as (offset, bytes); fewer (or none) at end of file.

    Each block is its own pread, so the kernel copies straight into the bytes object the
    SFTP write sends, with the GIL released: no slicing copy on the event loop.
    """
    blocks: Batch = []
    for _ in range(count):
        data = os.pread(fd, block, offset)
        if not data:
            break
        blocks.append((offset, data))
        offset += len(data)
    return blocks


async def feed_blocks(
    fd: int,
    block: int,
    out: MemoryObjectSendStream[Batch],
    *,
    start: int = 0,
    batch_blocks: int = BATCH_BLOCKS,
) -> None:
    """Send batches of (offset, data) blocks of `fd` from `start` to `out` in order, then
    close it.

    The worker thread reads the next batch while the caller sends this one. A file that
    changes under us is caught by the size and sha256 checks on the NAS.
    """
    if block <= 0 or batch_blocks <= 0:
        raise ValueError("block and batch_blocks must be positive")
    offset = start
    async with out:
        while batch := await anyio.to_thread.run_sync(read_batch, fd, offset, block, batch_blocks):
            await out.send(batch)
            if len(batch) < batch_blocks:  # read_batch stopped at the end of the file
                return
            last_offset, last = batch[-1]
            offset = last_offset + len(last)


def prefix_sha256(path: str, length: int) -> str:
    """Hex sha256 of the first `length` bytes of a local file (blocking; run in a thread)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as source:
        left = length
        while left > 0:
            chunk = source.read(min(left, 8 << 20))
            if not chunk:
                raise ValueError(f"{path} is shorter than {length} bytes")
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()
