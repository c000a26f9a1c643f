"""Cron schedules with an optional `TZ=Zone ` prefix: next fire times, catch-up ticks, tick keys.

Pure: the moment to compute from is always passed in. DST follows cronsim, made
independent of where a computation starts: a local time skipped by a spring-forward
fires once at the next valid instant (02:30 -> 03:00), and a local time repeated by
a fall-back fires once, at its first occurrence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

TICK_KEY_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Cron fires on whole minutes; a step below that never skips a tick.
_RESOLUTION = timedelta(seconds=1)
# Walk back from an ambiguous (repeated) local time in these steps: cronsim reasons
# in wall-clock time and, started inside a repeated hour, may answer with instants
# before the start or out of order. From an unambiguous instant its walk is monotonic.
_FOLD_STEP = timedelta(minutes=15)
_FOLD_STEPS_MAX = 24
# A tick more than this many candidates away means cronsim is misbehaving.
_SCAN_MAX = 10_000
DEFAULT_CATCH_UP_LIMIT = 100


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _ambiguous(local: datetime) -> bool:
    """True when this wall-clock time happens twice in its zone (a fall-back hour)."""
    return local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset()


@dataclass(frozen=True)
class Schedule:
    """A parsed cron schedule: 5 fields evaluated in `zone`."""

    text: str
    expression: str
    zone: ZoneInfo

    def _candidates(self, start: datetime) -> CronSim:
        return CronSim(self.expression, start.astimezone(self.zone))

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment`, as an aware UTC datetime."""
        _require_aware(moment, "moment")
        moment = moment.astimezone(UTC)
        anchor = moment
        for _ in range(_FOLD_STEPS_MAX):
            if not _ambiguous(anchor.astimezone(self.zone)):
                break
            anchor -= _FOLD_STEP
        candidates = self._candidates(anchor)
        for _ in range(_SCAN_MAX):
            try:
                tick = next(candidates).astimezone(UTC)
            except StopIteration:
                break
            if tick > moment:
                return tick
        raise ValueError(f"schedule {self.text!r} has no fire time after {moment.isoformat()}")


def parse_schedule(text: str) -> Schedule:
    """Parse `[TZ=Zone ]m h dom mon dow`; raises ValueError naming the problem."""
    expression = text.strip()
    zone = ZoneInfo("UTC")
    if expression.startswith("TZ="):
        name, _, expression = expression[3:].partition(" ")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} in schedule {text!r} (use an IANA name like "
                "America/Los_Angeles)"
            ) from None
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"schedule {text!r} needs 5 cron fields after the optional 'TZ=Zone ' prefix, "
            f"got {len(fields)}"
        )
    expression = " ".join(fields)
    try:
        # A fixed start keeps parsing independent of the clock; cronsim checks lazily.
        next(CronSim(expression, datetime(2000, 1, 1, tzinfo=zone)))
    except (CronSimError, ValueError, IndexError, StopIteration) as exc:
        raise ValueError(
            f"invalid cron expression {expression!r}: {exc or 'never fires'}"
        ) from None
    return Schedule(text=text, expression=expression, zone=zone)


def ticks_between(
    schedule: Schedule,
    after: datetime,
    until: datetime,
    *,
    limit: int = DEFAULT_CATCH_UP_LIMIT,
) -> list[datetime]:
    """Fire times in (after, until], oldest first; only the newest `limit` when there are more."""
    _require_aware(after, "after")
    _require_aware(until, "until")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    after, until = after.astimezone(UTC), until.astimezone(UTC)
    if until <= after:
        return []
    # A long sleep under a dense schedule: jump near the end with a reverse walk
    # instead of stepping through every missed minute.
    start = after
    reverse = CronSim(schedule.expression, until.astimezone(schedule.zone) + _RESOLUTION, True)
    for count, tick in enumerate(reverse, start=1):
        moment = tick.astimezone(UTC)
        if moment <= after:
            break
        if count > limit + 1:
            start = max(after, moment)
            break
    found: deque[datetime] = deque(maxlen=limit)
    cursor = start
    for _ in range(_SCAN_MAX):
        tick = schedule.next_after(cursor)
        if tick > until:
            break
        found.append(tick)
        cursor = tick
    return list(found)


def tick_key(target: str, tick: datetime) -> str:
    """An idempotency key for one scheduled run, e.g. 'typesense@2026-11-27T11:00:00Z'."""
    _require_aware(tick, "tick")
    return f"{target}@{tick.astimezone(UTC).strftime(TICK_KEY_FORMAT)}"
