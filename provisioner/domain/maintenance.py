"""The maintenance window for disruptive work (RULES "Maintenance window", 002 §12).

Work that restarts customer-facing services (a hosting plan change, a node converge that
restarts daemons, a VPS resize) runs only inside the brand's window, 23:00-05:00 local
time (`BrandPolicy.maintenance_window`, Europe/Ljubljana), unless ops force it with a
reason. The window is wall-clock time in its zone: it may cross midnight, and on the
nights the clocks change it is shorter (spring, 5 h) or longer (autumn, 7 h) in real
time. Pure functions of aware datetimes; nothing here reads a clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from provisioner.errors import InvalidInput

DEFAULT_TZ = "Europe/Ljubljana"
Window = tuple[str, str]
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def _bounds(window: Window) -> tuple[time, time]:
    if len(window) != 2:
        raise InvalidInput(f"a maintenance window is (start, end), not {window!r}")
    parsed = []
    for bound in window:
        m = _HHMM.fullmatch(bound)
        if m is None:
            raise InvalidInput(f"maintenance window bound {bound!r} is not HH:MM")
        parsed.append(time(int(m.group(1)), int(m.group(2))))
    start, end = parsed
    if start == end:
        raise InvalidInput(f"maintenance window {window!r} is empty")
    return start, end


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"unknown time zone {tz!r}") from exc


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput("a naive datetime has no place in time; give an aware one")
    return at


def _open_at(t: time, start: time, end: time) -> bool:
    if start < end:
        return start <= t < end
    return t >= start or t < end  # crosses midnight


def in_window(at: datetime, window: Window = ("23:00", "05:00"), tz: str = DEFAULT_TZ) -> bool:
    """Whether the instant ``at`` lies inside ``window`` (start inclusive, end exclusive)
    as the wall clock of ``tz`` reads it."""
    start, end = _bounds(window)
    local = _aware(at).astimezone(zone(tz))
    return _open_at(local.time().replace(tzinfo=None), start, end)


def next_window_start(at: datetime, window: Window = ("23:00", "05:00"), tz: str = DEFAULT_TZ
                      ) -> datetime:
    """The earliest instant at or after ``at`` when the window is open (``at`` itself
    when it is open now), in UTC. The opening is the start's wall-clock time in ``tz``,
    whatever the UTC offset that night."""
    start, end = _bounds(window)
    at = _aware(at).astimezone(UTC)
    if in_window(at, window, tz):
        return at
    z = zone(tz)
    day = at.astimezone(z).date()
    for offset in range(3):
        opening = datetime.combine(day + timedelta(days=offset), start, tzinfo=z).astimezone(UTC)
        if opening >= at:
            return opening
    raise AssertionError("a daily window opens within two days")  # pragma: no cover


def window_end(at: datetime, window: Window = ("23:00", "05:00"), tz: str = DEFAULT_TZ) -> datetime:
    """When the window open at ``at`` closes (UTC); InvalidInput when it is not open."""
    start, end = _bounds(window)
    at = _aware(at).astimezone(UTC)
    if not in_window(at, window, tz):
        raise InvalidInput("the maintenance window is not open at that time")
    z = zone(tz)
    day = at.astimezone(z).date()
    for offset in range(3):
        closing = datetime.combine(day + timedelta(days=offset), end, tzinfo=z).astimezone(UTC)
        if closing > at:
            return closing
    raise AssertionError("a daily window closes within two days")  # pragma: no cover


def describe(window: Window, tz: str) -> str:
    start, end = _bounds(window)
    return f"{start:%H:%M}-{end:%H:%M} {tz}"
