"""The one place that reads the wall clock, so tests can move it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC)


def now_at(day: date) -> Callable[[], datetime]:
    """A clock fixed at noon UTC of ``day`` (for ``sweep --now`` and simulations)."""
    moment = datetime(day.year, day.month, day.day, 12, 0, tzinfo=UTC)
    return lambda: moment


def iter_days(start: date, end: date) -> Iterator[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)
