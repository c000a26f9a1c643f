"""Cron schedules: parsing, next fire times across DST, catch-up ticks and tick keys."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from selfheal.core.schedule import Schedule, parse_schedule, tick_key, ticks_between

LA = ZoneInfo("America/Los_Angeles")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_parse_defaults_to_utc_and_keeps_the_text() -> None:
    schedule = parse_schedule("  0 3 * * *  ")
    assert schedule.zone == ZoneInfo("UTC")
    assert schedule.expression == "0 3 * * *"
    assert parse_schedule("TZ=America/Los_Angeles 30 3 * * *").zone == LA


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("TZ=Mars/Olympus 0 3 * * *", "unknown time zone 'Mars/Olympus'"),
        ("0 3 * *", "needs 5 cron fields"),
        ("0 3 * * * *", "got 6"),
        ("61 3 * * *", "Bad minute"),
        ("0 0 31 2 *", "Bad day-of-month"),
        ("", "got 0"),
    ],
)
def test_parse_rejects_with_the_problem_named(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_schedule(text)


def test_next_after_is_strictly_after_and_utc() -> None:
    schedule = parse_schedule("TZ=America/Los_Angeles 0 3 * * *")
    first = schedule.next_after(utc(2026, 6, 1, 0, 0))
    assert first == utc(2026, 6, 1, 10, 0)  # 03:00 PDT
    assert first.tzinfo == UTC
    assert schedule.next_after(first) == utc(2026, 6, 2, 10, 0)
    assert schedule.next_after(first - timedelta(microseconds=1)) == first
    # Any aware input zone means the same instant.
    assert schedule.next_after(first.astimezone(ZoneInfo("Asia/Tokyo"))) == utc(2026, 6, 2, 10, 0)


def test_naive_datetimes_are_refused() -> None:
    schedule = parse_schedule("0 3 * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        tick_key("redis", datetime(2026, 1, 1))


def test_spring_forward_missing_time_fires_once_at_the_next_valid_instant() -> None:
    # 2026-03-08 02:00 PST jumps to 03:00 PDT: 02:30 does not exist that day.
    schedule = parse_schedule("TZ=America/Los_Angeles 30 2 * * *")
    ticks = ticks_between(schedule, utc(2026, 3, 6, 12), utc(2026, 3, 10, 0))
    assert ticks == [
        utc(2026, 3, 7, 10, 30),  # 02:30 PST
        utc(2026, 3, 8, 10, 0),  # 03:00 PDT, the first valid instant after the gap
        utc(2026, 3, 9, 9, 30),  # 02:30 PDT
    ]
    assert ticks[1].astimezone(LA).hour == 3


def test_fall_back_at_0230_fires_once() -> None:
    # 2026-11-01 02:00 PDT falls back to 01:00 PST; 02:30 happens once (PST).
    schedule = parse_schedule("TZ=America/Los_Angeles 30 2 * * *")
    ticks = ticks_between(schedule, utc(2026, 10, 31, 12), utc(2026, 11, 2, 0))
    assert ticks == [utc(2026, 11, 1, 10, 30)]


def test_fall_back_repeated_time_fires_once_whatever_the_start() -> None:
    # 01:30 happens twice on 2026-11-01: 08:30Z (PDT) and 09:30Z (PST). Once only.
    schedule = parse_schedule("TZ=America/Los_Angeles 30 1 * * *")
    assert ticks_between(schedule, utc(2026, 10, 31, 12), utc(2026, 11, 2, 0)) == [
        utc(2026, 11, 1, 8, 30)
    ]
    # cronsim alone, started inside the repeated hour, answers 08:30Z: before its start.
    inside = utc(2026, 11, 1, 9, 0)
    assert next(CronSim("30 1 * * *", inside.astimezone(LA))).astimezone(UTC) < inside
    for start in (
        utc(2026, 11, 1, 8, 30),
        inside,
        utc(2026, 11, 1, 9, 15),
        utc(2026, 11, 1, 9, 30),
    ):
        assert schedule.next_after(start) == utc(2026, 11, 2, 9, 30), start


def test_hourly_schedules_fire_in_both_repeated_hours() -> None:
    # Two different hours of real time share a wall clock; an hourly job runs in each.
    schedule = parse_schedule("TZ=America/Los_Angeles 0 * * * *")
    ticks = ticks_between(schedule, utc(2026, 11, 1, 7, 30), utc(2026, 11, 1, 10, 30))
    assert ticks == [utc(2026, 11, 1, 8), utc(2026, 11, 1, 9), utc(2026, 11, 1, 10)]


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe"])
@pytest.mark.parametrize("clock", ["30 1", "30 2", "0 2", "15 3"])
def test_daily_schedules_fire_exactly_once_per_local_day_all_year(zone: str, clock: str) -> None:
    schedule = parse_schedule(f"TZ={zone} {clock} * * *")
    ticks = ticks_between(schedule, utc(2025, 12, 31), utc(2027, 1, 2), limit=1000)
    days = [tick.astimezone(ZoneInfo(zone)).date() for tick in ticks]
    year = [d for d in days if d.year == 2026]
    assert len(year) == len(set(year)) == 365
    assert year[0] == date(2026, 1, 1) and year[-1] == date(2026, 12, 31)


def test_ticks_between_is_oldest_first_and_half_open() -> None:
    schedule = parse_schedule("*/15 * * * *")
    ticks = ticks_between(schedule, utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 1, 0))
    assert ticks == [utc(2026, 1, 1, 0, m) for m in (15, 30, 45)] + [utc(2026, 1, 1, 1, 0)]
    assert ticks_between(schedule, utc(2026, 1, 1, 1), utc(2026, 1, 1, 1)) == []
    assert ticks_between(schedule, utc(2026, 1, 1, 2), utc(2026, 1, 1, 1)) == []
    with pytest.raises(ValueError, match="limit"):
        ticks_between(schedule, utc(2026, 1, 1), utc(2026, 1, 2), limit=0)


def test_a_long_sleep_returns_only_the_newest_ticks_quickly() -> None:
    schedule = parse_schedule("TZ=America/Los_Angeles * * * * *")
    started = time.monotonic()
    ticks = ticks_between(schedule, utc(2025, 1, 1), utc(2026, 6, 1, 12, 0), limit=5)
    assert time.monotonic() - started < 2.0
    assert ticks == [utc(2026, 6, 1, 11, 56) + timedelta(minutes=n) for n in range(5)]


def test_tick_key_is_utc_and_stable() -> None:
    tick = datetime(2026, 11, 27, 3, 0, tzinfo=LA)
    assert tick_key("typesense", tick) == "typesense@2026-11-27T11:00:00Z"
    assert tick_key("redis", utc(2026, 1, 2, 3, 4, 5)) == "redis@2026-01-02T03:04:05Z"


EXPRESSIONS = ["30 1 * * *", "30 2 * * *", "*/20 * * * *", "0 * * * *", "45 0-3 * * 0"]
ZONES = ["America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "UTC"]
WINDOW_START = utc(2026, 3, 1)
WINDOW_END = utc(2026, 11, 10)
# DST changes in 2026 for the zones above (UTC instants).
TRANSITIONS = [
    utc(2026, 3, 8, 10),  # Los Angeles spring forward
    utc(2026, 11, 1, 9),  # Los Angeles fall back
    utc(2026, 3, 29, 1),  # Berlin spring forward
    utc(2026, 10, 25, 1),  # Berlin fall back
    utc(2026, 4, 4, 15),  # Lord Howe falls back 30 minutes
    utc(2026, 10, 3, 15, 30),  # Lord Howe springs forward 30 minutes
]


def reference_ticks(schedule: Schedule) -> list[datetime]:
    """cronsim walked forward from one unambiguous start: the ticks we must agree with."""
    candidates = CronSim(
        schedule.expression, (WINDOW_START - timedelta(days=2)).astimezone(schedule.zone)
    )
    found: list[datetime] = []
    while True:
        tick = next(candidates).astimezone(UTC)
        if tick > WINDOW_END + timedelta(days=10):
            return found
        found.append(tick)


REFERENCE: dict[tuple[str, str], list[datetime]] = {}


@settings(max_examples=300, deadline=None)
@given(
    expression=st.sampled_from(EXPRESSIONS),
    zone=st.sampled_from(ZONES),
    moment=st.one_of(
        st.datetimes(
            min_value=WINDOW_START.replace(tzinfo=None),
            max_value=WINDOW_END.replace(tzinfo=None),
            timezones=st.just(UTC),
        ),
        # Random instants rarely land in a one-hour fold; aim at the transitions too.
        st.builds(
            lambda at, minutes: at + timedelta(minutes=minutes),
            st.sampled_from(TRANSITIONS),
            st.integers(min_value=-240, max_value=240),
        ),
    ),
)
def test_next_after_agrees_with_a_forward_walk_from_anywhere(
    expression: str, zone: str, moment: datetime
) -> None:
    schedule = parse_schedule(f"TZ={zone} {expression}")
    key = (expression, zone)
    if key not in REFERENCE:
        REFERENCE[key] = reference_ticks(schedule)
    expected = next(t for t in REFERENCE[key] if t > moment)
    assert schedule.next_after(moment) == expected
