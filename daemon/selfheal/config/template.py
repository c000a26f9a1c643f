"""The complete config template, and `init_config` which writes it safely."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from selfheal.config.leaves import LEAVES
from selfheal.config.locate import read_raw
from selfheal.config.sources import (
    OUR_SECTION,
    OWN_SECTIONS,
    ROUTER_FILE_SECTIONS,
    TRANSPORT_FILE_SECTIONS,
)

FILE_MODE = 0o600
DIR_MODE = 0o700


def _group(section: str) -> dict[str, Any]:
    return {leaf.aliases[-1]: leaf.default for leaf in LEAVES if leaf.aliases[0] == section}


def _ours() -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for leaf in LEAVES:
        if leaf.key.startswith(f"{OUR_SECTION}."):
            node = nested
            for part in leaf.aliases[:-1]:
                node = node.setdefault(part, {})
            node[leaf.aliases[-1]] = leaf.default
    return nested


def render_template() -> dict[str, Any]:
    """Every key at its default, each written once: the router and transport keys in
    the original's strongest sections (`backupFailureRouter`, `backupTransport`; the
    weaker `selfHealing` section would only be shadowed), the rest under ours."""
    return {
        ROUTER_FILE_SECTIONS[0][0]: _group("router"),
        TRANSPORT_FILE_SECTIONS[0][0]: _group("transport"),
        OUR_SECTION: _ours(),
    }


def _make_parents(folder: Path) -> None:
    # Path.mkdir(parents=True) would give the intermediate folders default permissions.
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a synced temp file and rename; never leave a partial file."""
    _make_parents(path.parent)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, FILE_MODE)
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    # The rename is durable only once the folder entry itself is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def init_config(path: Path, *, force: bool) -> None:
    """Write the template; with force, rewrite only our sections and keep every other one."""
    if path.is_symlink():
        # Keep a dotfile manager's symlink: write through it to the real file.
        path = path.resolve()
    existing: dict[str, Any] = {}
    if path.exists():
        if not force:
            raise FileExistsError(
                f"{path} exists; use --force to rewrite selfheal's sections (others are kept)"
            )
        # An unparsable file raises ConfigError: its foreign sections could not be kept.
        existing, _ = read_raw(path)
    template = render_template()
    # Our sections are rewritten whole; a `selfHealing` section goes, since the
    # template's sections would shadow every key in it. Other programs' sections stay.
    merged = {
        key: template.get(key, value)
        for key, value in existing.items()
        if key in template or key not in OWN_SECTIONS
    }
    for key, value in template.items():
        merged.setdefault(key, value)
    write_atomic(path, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
