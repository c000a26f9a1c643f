"""Retention planning: which of a target's artifacts on the NAS to keep, and why.

Pure: it sees file names and the current time, nothing else. Only names that are
our own artifacts of the given target are ever planned; every other name (foreign
files, other targets, `.partial` leftovers, orphan manifests) is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from selfheal.core.artifacts import ParsedName, manifest_name, parse_artifact_name


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep the newest `keep_last`, plus the newest per day, ISO week and month (UTC)."""

    keep_last: int
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        for name in ("keep_last", "daily", "weekly", "monthly"):
            if getattr(self, name) < 0:
                raise ValueError(f"retention {name} must not be negative")


@dataclass(frozen=True)
class RetentionPlan:
    """Names to keep and to delete (artifacts and their manifests), each with a reason."""

    keep: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


KeyFn = Callable[[datetime], Hashable]


def _ours(name: str, target: str) -> ParsedName | None:
    parsed = parse_artifact_name(name)  # never a `.partial` or manifest name
    return parsed if parsed is not None and parsed.target == target else None


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _week(moment: datetime) -> Hashable:
    year, week, _ = _day(moment).isocalendar()
    return (year, week)


def _month(moment: datetime) -> Hashable:
    day = _day(moment)
    return (day.year, day.month)


def _windows(today: date, policy: RetentionPolicy) -> list[tuple[str, set[Hashable], KeyFn]]:
    """For each calendar rule, the periods it covers (now's period first) and its key."""
    days: set[Hashable] = {today - timedelta(days=back) for back in range(policy.daily)}
    weeks: set[Hashable] = set()
    for back in range(policy.weekly):
        year, week, _ = (today - timedelta(weeks=back)).isocalendar()
        weeks.add((year, week))
    months: set[Hashable] = set()
    year, month = today.year, today.month
    for _ in range(policy.monthly):
        months.add((year, month))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return [("daily", days, _day), ("weekly", weeks, _week), ("monthly", months, _month)]


def _label(rule: str, period: Hashable) -> str:
    if rule == "weekly" and isinstance(period, tuple):
        return f"weekly {period[0]}-W{period[1]:02d}"
    if rule == "monthly" and isinstance(period, tuple):
        return f"monthly {period[0]}-{period[1]:02d}"
    return f"{rule} {period}"


def plan_retention(
    names: Sequence[str], target: str, policy: RetentionPolicy, now: datetime
) -> RetentionPlan:
    """Decide which of `target`'s artifacts (and their manifests) to keep and to delete."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    present = set(names)
    # Newest first; equal stamps are ordered by name so the plan is deterministic.
    artifacts = sorted(
        {(parsed.created, name) for name in present if (parsed := _ours(name, target))},
        reverse=True,
    )
    why: dict[str, list[str]] = {}
    for index, (_, name) in enumerate(artifacts[: max(policy.keep_last, 1)]):
        # The newest copy is kept even by a policy that asks for none.
        rule = f"last {index + 1}/{policy.keep_last}" if index < policy.keep_last else "newest"
        why.setdefault(name, []).append(rule)
    for rule, window, key in _windows(_day(now), policy):
        covered: set[Hashable] = set()
        for created, name in artifacts:
            period = key(created)
            if period in window and period not in covered:
                covered.add(period)
                why.setdefault(name, []).append(_label(rule, period))
    plan = RetentionPlan()
    for _, name in artifacts:
        kept = name in why
        names_out = plan.keep if kept else plan.delete
        names_out.append(name)
        plan.reasons[name] = ", ".join(why[name]) if kept else "beyond every retention rule"
        manifest = manifest_name(name)
        if manifest in present:
            names_out.append(manifest)
            plan.reasons[manifest] = f"manifest of {name} ({'kept' if kept else 'deleted'})"
    return plan
