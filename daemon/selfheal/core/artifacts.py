"""Artifact names: unique, sortable, and recognisable as ours (retention touches nothing else)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

TARGET_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
UNIQUE_PATTERN = re.compile(r"^[0-9a-f]{6}$")
# <target>-<UTC yyyymmddThhmmssZ>-<milliseconds>-<6 hex>.<ext>; ext is what our sources
# write: tar or rdb, maybe .gz or .zst. Two runs in one second (or one millisecond) get
# different names; names still sort by time. Names from before the suffix (no
# "-<ms>-<hex>") are still ours. Anything else (a ".rdb.tmp", a ".bak") is not.
_NAME = re.compile(
    r"^(?P<target>[a-z][a-z0-9_-]{0,31})-(?P<stamp>\d{8}T\d{6}Z)"
    r"(?:-(?P<ms>\d{3})-(?P<unique>[0-9a-f]{6}))?"
    r"\.(?P<ext>(?:tar|rdb)(?:\.gz|\.zst)?)$"
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


def artifact_stamp(created: datetime, unique: str) -> str:
    """`<yyyymmddThhmmssZ>-<ms>-<unique>`: the time part of an artifact name."""
    if created.tzinfo is None:
        raise ValueError("created must be timezone-aware")
    if not UNIQUE_PATTERN.fullmatch(unique):
        raise ValueError(f"unique part must be 6 lowercase hex digits, got {unique!r}")
    moment = created.astimezone(UTC)
    return f"{moment.strftime(STAMP_FORMAT)}-{moment.microsecond // 1000:03d}-{unique}"


def artifact_name(target: str, created: datetime, ext: str, *, unique: str) -> str:
    """The artifact's file name for a UTC creation time and a random `unique` part."""
    validate_target(target)
    name = f"{target}-{artifact_stamp(created, unique)}.{ext}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid artifact extension {ext!r}")
    return name


@dataclass(frozen=True)
class ParsedName:
    """The parts of one of our artifact names."""

    target: str
    created: datetime  # to the millisecond (whole seconds for names without the suffix)
    ext: str


def parse_artifact_name(name: str) -> ParsedName | None:
    """Parse our own artifact name; None for anything else (manifests, `.partial` included)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        created = datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    if match["ms"] is not None:
        created = created.replace(microsecond=int(match["ms"]) * 1000)
    return ParsedName(target=match["target"], created=created, ext=match["ext"])


def manifest_name(artifact: str) -> str:
    """The manifest that travels with an artifact."""
    return artifact + MANIFEST_SUFFIX


def unfinished_artifact(name: str) -> str | None:
    """The artifact an unfinished upload belongs to: `<artifact>.partial` or
    `<artifact>.manifest.json.partial` of one of our names; None for anything else."""
    if not name.endswith(PARTIAL_SUFFIX):
        return None
    base = name.removesuffix(PARTIAL_SUFFIX)
    base = base.removesuffix(MANIFEST_SUFFIX)
    return base if parse_artifact_name(base) is not None else None
