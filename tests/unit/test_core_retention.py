"""Retention planning: keep rules, manifests that follow, and names that are never touched."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfheal.core.artifacts import artifact_name, manifest_name, parse_artifact_name
from selfheal.core.retention import RetentionPlan, RetentionPolicy, plan_retention

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def legacy_name(target: str, created: datetime, ext: str) -> str:
    """A name as artifacts were named before the unique suffix: still ours."""
    return f"{target}-{created:%Y%m%dT%H%M%SZ}.{ext}"


def daily_names(target: str, days: int, ext: str = "rdb") -> list[str]:
    """One artifact per day at 11:00 UTC, newest (today) first."""
    return [
        artifact_name(
            target, NOW.replace(hour=11) - timedelta(days=back), ext, unique=f"{back:06x}"
        )
        for back in range(days)
    ]


def day(name: str) -> str:
    parsed = parse_artifact_name(name)
    assert parsed is not None
    return parsed.created.strftime("%m-%d")


def test_daily_weekly_monthly_and_keep_last_rules() -> None:
    names = daily_names("redis", 100)
    policy = RetentionPolicy(keep_last=2, daily=7, weekly=4, monthly=3)
    plan = plan_retention(names, "redis", policy, NOW)
    kept = sorted(day(n) for n in plan.keep)
    # Days Nov 21-27; ISO weeks 47, 46, 45 end on Sundays Nov 22, 15, 8 (week 48 is
    # covered by Nov 27); months Oct and Sep by their last day.
    expected = [f"11-{d:02d}" for d in range(21, 28)] + ["11-15", "11-08", "10-31", "09-30"]
    assert kept == sorted(expected)
    assert len(plan.delete) == 100 - len(expected)
    assert plan.reasons[names[0]] == "last 1/2, daily 2026-11-27, weekly 2026-W48, monthly 2026-11"
    assert day(names[19]) == "11-08"
    assert plan.reasons[names[19]] == "weekly 2026-W45"
    assert all(plan.reasons[n] == "beyond every retention rule" for n in plan.delete)


def test_newest_of_each_day_wins() -> None:
    stamps = [NOW - timedelta(hours=h) for h in (1, 3, 5, 25, 27)]
    names = [artifact_name("typesense", s, "tar.gz", unique="00ff00") for s in stamps]
    plan = plan_retention(names, "typesense", RetentionPolicy(keep_last=1, daily=2), NOW)
    assert plan.keep == [names[0], names[3]]
    assert plan.delete == [names[1], names[2], names[4]]


def test_manifests_follow_their_artifact_and_orphans_stay() -> None:
    names = daily_names("redis", 3)
    orphan = manifest_name(artifact_name("redis", NOW - timedelta(days=30), "rdb", unique="abcdef"))
    listing = [*names, manifest_name(names[0]), manifest_name(names[2]), orphan]
    plan = plan_retention(listing, "redis", RetentionPolicy(keep_last=1), NOW)
    assert plan.keep == [names[0], manifest_name(names[0])]
    assert plan.delete == [names[1], names[2], manifest_name(names[2])]
    assert plan.reasons[manifest_name(names[2])] == f"manifest of {names[2]} (deleted)"
    assert orphan not in plan.keep + plan.delete


def test_foreign_partial_and_other_target_names_are_never_planned() -> None:
    ours = daily_names("redis", 10)
    untouchable = [
        f"{ours[5]}.partial",
        "redis-20261101T000000Z.rdb.partial",
        "redis-20261101T000000Z.manifest.json",
        *daily_names("typesense", 10, "tar.gz"),
        "redis-notes.txt",
        "README",
        ".DS_Store",
        "redis-20261301T000000Z.rdb",  # month 13: not a real stamp
    ]
    plan = plan_retention(ours + untouchable, "redis", RetentionPolicy(keep_last=1), NOW)
    assert set(plan.keep) | set(plan.delete) == set(ours)
    assert len(plan.delete) == 9


def test_a_policy_keeping_nothing_still_keeps_the_newest() -> None:
    names = daily_names("redis", 5)
    plan = plan_retention(names, "redis", RetentionPolicy(keep_last=0), NOW)
    assert plan.keep == [names[0]]
    assert plan.reasons[names[0]] == "newest"


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="daily"):
        RetentionPolicy(keep_last=1, daily=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_retention([], "redis", RetentionPolicy(keep_last=1), datetime(2026, 1, 1))
    assert plan_retention([], "redis", RetentionPolicy(keep_last=1), NOW) == RetentionPlan()


TARGET = "redis"
stamps = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)
uniques = st.text("0123456789abcdef", min_size=6, max_size=6)
extensions = st.sampled_from(["rdb", "rdb.gz", "rdb.zst"])
our_names = st.one_of(
    st.builds(artifact_name, st.just(TARGET), stamps, extensions, unique=uniques),
    st.builds(legacy_name, st.just(TARGET), stamps, extensions),
)
other_names = st.one_of(
    st.builds(
        artifact_name,
        st.sampled_from(["typesense", "redis2", "r"]),
        stamps,
        st.just("rdb"),
        unique=uniques,
    ),
    st.builds(lambda n: n + ".partial", our_names),
    st.builds(lambda n: manifest_name(n), our_names),  # orphans, unless drawn as ours too
    st.text(min_size=0, max_size=40),
)
policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(0, 10),
    daily=st.integers(0, 10),
    weekly=st.integers(0, 8),
    monthly=st.integers(0, 12),
)


@st.composite
def listings(draw: st.DrawFn) -> list[str]:
    ours = draw(st.lists(our_names, max_size=40))
    manifests = [manifest_name(n) for n in ours if draw(st.booleans())]
    return ours + manifests + draw(st.lists(other_names, max_size=20))


@settings(max_examples=400, deadline=None)
@given(names=listings(), policy=policies, now=stamps, seed=st.integers(0, 2**16))
def test_plan_properties(
    names: list[str], policy: RetentionPolicy, now: datetime, seed: int
) -> None:
    plan = plan_retention(names, TARGET, policy, now)
    ours = {
        n
        for n in names
        if (p := parse_artifact_name(n)) is not None
        and p.target == TARGET
        and not n.endswith((".partial", ".manifest.json"))
    }
    manifests = {manifest_name(n) for n in ours} & set(names)
    # Exactly our artifacts and their manifests are planned, each once, with a reason.
    assert set(plan.keep) | set(plan.delete) == ours | manifests
    assert not set(plan.keep) & set(plan.delete)
    assert len(plan.keep) + len(plan.delete) == len(ours | manifests)
    assert set(plan.reasons) == ours | manifests
    # So nothing foreign, of another target, partial or unparsable is ever deleted.
    for name in plan.delete:
        artifact = name.removesuffix(".manifest.json")
        assert artifact in ours
    if ours:
        newest = max(ours, key=lambda n: (parse_artifact_name(n).created, n))  # type: ignore[union-attr]
        assert newest in plan.keep
        kept_artifacts = [n for n in plan.keep if n in ours]
        assert len(kept_artifacts) >= min(max(policy.keep_last, 1), len(ours))
    # A manifest goes wherever its artifact goes.
    for manifest in manifests:
        artifact = manifest.removesuffix(".manifest.json")
        assert (manifest in plan.keep) == (artifact in plan.keep)
    # Deterministic: order and duplicates in the listing do not matter.
    shuffled = names + names[: len(names) // 2]
    random.Random(seed).shuffle(shuffled)
    assert plan_retention(shuffled, TARGET, policy, now) == plan
