"""Artifact names: unique within one second, sortable by time, old names still ours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from selfheal.backup.sources.archive import new_artifact_name
from selfheal.core.artifacts import (
    artifact_name,
    manifest_name,
    parse_artifact_name,
    unfinished_artifact,
)

MOMENT = datetime(2026, 11, 27, 3, 30, 0, 123_456, tzinfo=UTC)


def test_two_names_in_the_same_second_and_millisecond_differ() -> None:
    # Issue 11.6: `<target>-<UTC seconds>` gave two runs in one second the same name.
    names = {new_artifact_name("redis", MOMENT, "rdb")[0] for _ in range(200)}
    assert len(names) == 200
    for name in names:
        parsed = parse_artifact_name(name)
        assert parsed is not None and parsed.target == "redis" and parsed.ext == "rdb"
        assert parsed.created == MOMENT.replace(microsecond=123_000)


def test_names_sort_in_time_order() -> None:
    moments = [MOMENT + timedelta(milliseconds=ms) for ms in (0, 1, 999, 1000, 61_000)]
    names = [artifact_name("redis", m, "rdb", unique="ffffff") for m in moments]
    names[0] = artifact_name("redis", moments[0], "rdb", unique="000000")
    assert sorted(names) == names
    assert [parse_artifact_name(n).created for n in names] == [  # type: ignore[union-attr]
        m.replace(microsecond=m.microsecond // 1000 * 1000) for m in moments
    ]


def test_the_name_shape() -> None:
    name = artifact_name("typesense", MOMENT, "tar.gz", unique="0a1b2c")
    assert name == "typesense-20261127T033000Z-123-0a1b2c.tar.gz"
    stamp = new_artifact_name("redis", MOMENT, "rdb")[1]
    assert stamp.startswith("20261127T033000Z-123-") and len(stamp) == 27


def test_names_from_before_the_suffix_are_still_ours() -> None:
    parsed = parse_artifact_name("redis-20250101T033000Z.rdb.zst")
    assert parsed is not None
    assert parsed.created == datetime(2025, 1, 1, 3, 30, tzinfo=UTC) and parsed.ext == "rdb.zst"


@pytest.mark.parametrize(
    "name",
    [
        "redis-20250101T033000Z.rdb.partial",  # an unfinished upload, not an artifact
        "redis-20250101T033000Z-123-0a1b2c.rdb.partial",
        "redis-20250101T033000Z.rdb.manifest.json",
        "redis-20250101T033000Z-12-0a1b2c.rdb",  # milliseconds have three digits
        "redis-20250101T033000Z-123.rdb",  # the suffix comes whole or not at all
        "redis-20250101T033000Z-123-0A1B2C.rdb",
        "redis-20251301T033000Z.rdb",
        "redis-20250101T033000Z.rdb.tmp",  # not what our sources write
        "redis-20250101T033000Z.bak",
    ],
)
def test_other_names_are_not_artifacts(name: str) -> None:
    assert parse_artifact_name(name) is None


def test_bad_unique_parts_and_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="6 lowercase hex"):
        artifact_name("redis", MOMENT, "rdb", unique="xyz")
    with pytest.raises(ValueError, match="timezone-aware"):
        artifact_name("redis", MOMENT.replace(tzinfo=None), "rdb", unique="abcdef")
    with pytest.raises(ValueError, match="extension"):
        artifact_name("redis", MOMENT, "partial", unique="abcdef")


def test_unfinished_uploads_name_their_artifact() -> None:
    artifact = artifact_name("redis", MOMENT, "rdb", unique="abcdef")
    assert unfinished_artifact(artifact + ".partial") == artifact
    assert unfinished_artifact(manifest_name(artifact) + ".partial") == artifact
    assert unfinished_artifact("redis-20250101T033000Z.rdb.partial") == "redis-20250101T033000Z.rdb"
    for other in (artifact, manifest_name(artifact), "notes.partial", "x.rdb.partial"):
        assert unfinished_artifact(other) is None
