"""Artifact names: fixed, sortable, and recognisable as ours (retention touches nothing else)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

TARGET_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# <target>-<UTC yyyymmddThhmmssZ>.<ext>; ext is e.g. "tar", "tar.gz", "tar.zst", "rdb"
_NAME = re.compile(
    r"^(?P<target>[a-z][a-z0-9_-]{0,31})-(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>[a-z0-9]+(?:\.[a-z0-9]+)?)$"
)
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# The longest file name the file systems we write to take.
NAME_MAX = 255


def validate_target(target: str) -> str:
    """A target name safe as a folder and file prefix (no separators, no `..`)."""
    if not TARGET_PATTERN.fullmatch(target):
        raise ValueError(
            f"invalid backup target name {target!r}: lowercase letters, digits, '-' or '_', "
            "starting with a letter, at most 32 characters"
        )
    return target


def artifact_name(target: str, created: datetime, ext: str) -> str:
    """The artifact's file name for a UTC creation time."""
    validate_target(target)
    if created.tzinfo is None:
        raise ValueError("created must be timezone-aware")
    stamp = created.astimezone(UTC).strftime(STAMP_FORMAT)
    name = f"{target}-{stamp}.{ext}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid artifact extension {ext!r}")
    return name


@dataclass(frozen=True)
class ParsedName:
    """The parts of one of our artifact names."""

    target: str
    created: datetime
    ext: str


def parse_artifact_name(name: str) -> ParsedName | None:
    """Parse our own artifact name; None for anything else (manifests included)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        created = datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return ParsedName(target=match["target"], created=created, ext=match["ext"])


def manifest_name(artifact: str) -> str:
    """The manifest that travels with an artifact."""
    return artifact + MANIFEST_SUFFIX
