"""Follow a worker's log files for lines that say it cannot be reached.

Each file is followed from where it ended when watching began (old lines are not
news), by offset and inode: a file that shrank was truncated (read again from
its start), a file with another inode at the path was rotated (the rest of the
old one is not ours to chase; the new one is read from its start). A read takes
at most READ_LIMIT bytes per file, so a log flooding faster than the watchdog
looks cannot take its memory; what is skipped is counted.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

READ_LIMIT: Final = 1 << 20
# A matched line is kept up to this many characters as evidence.
LINE_LIMIT: Final = 500


@dataclass
class _Position:
    inode: int
    offset: int
    partial: bytes = b""  # the start of a line whose end has not been written yet


@dataclass
class LogTail:
    """Matches of `patterns` in the lines appended to `paths` since the last look."""

    paths: list[Path]
    patterns: list[str]
    skipped_bytes: int = 0
    _positions: dict[Path, _Position] = field(default_factory=dict)

    def start(self) -> None:
        """Remember where each existing file ends now (a missing one is read whole
        once it appears)."""
        for path in self.paths:
            try:
                info = os.stat(path)
            except OSError:
                continue
            self._positions[path] = _Position(info.st_ino, info.st_size)

    def poll(self) -> list[str]:
        """The new lines holding a pattern, each cut to LINE_LIMIT characters."""
        found: list[str] = []
        for path in self.paths:
            found += self._poll_one(path)
        return found

    def _poll_one(self, path: Path) -> list[str]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            return []  # not there (yet, or between a rotation's rename and create)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return []
            position = self._positions.get(path)
            if position is None or position.inode != info.st_ino:
                position = _Position(info.st_ino, 0)  # new or rotated: from its start
            elif info.st_size < position.offset:
                position = _Position(info.st_ino, 0)  # truncated in place
            self._positions[path] = position
            if info.st_size - position.offset > READ_LIMIT:
                self.skipped_bytes += info.st_size - position.offset - READ_LIMIT
                position.offset = info.st_size - READ_LIMIT
                position.partial = b""
            data = os.pread(fd, READ_LIMIT, position.offset)
        finally:
            os.close(fd)
        position.offset += len(data)
        text = position.partial + data
        lines = text.split(b"\n")
        position.partial = lines.pop()[-READ_LIMIT:]  # unfinished: looked at once it ends
        return [
            cut(line)
            for line in (raw.decode("utf-8", "replace").rstrip("\r") for raw in lines)
            if any(pattern in line for pattern in self.patterns)
        ]


def cut(line: str) -> str:
    """A matched line as evidence: at most LINE_LIMIT characters."""
    return line if len(line) <= LINE_LIMIT else line[: LINE_LIMIT - 1] + "…"
