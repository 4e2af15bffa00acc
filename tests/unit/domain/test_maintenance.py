"""The maintenance window (002 §12): 23:00-05:00 Europe/Ljubljana, DST-correct."""

from datetime import UTC, datetime, timedelta

import pytest

from provisioner.domain.maintenance import in_window, next_window_start, window_end
from provisioner.domain.policy import FCB, ISERVER
from provisioner.errors import InvalidInput

W = ("23:00", "05:00")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(("at", "open_"), [
    (utc(2026, 1, 15, 21, 59), False),  # 22:59 CET
    (utc(2026, 1, 15, 22, 0), True),  # 23:00 CET: start inclusive
    (utc(2026, 1, 15, 23, 30), True),  # 00:30 CET, after midnight
    (utc(2026, 1, 16, 3, 59), True),  # 04:59 CET
    (utc(2026, 1, 16, 4, 0), False),  # 05:00 CET: end exclusive
    (utc(2026, 7, 15, 21, 0), True),  # 23:00 CEST (summer: UTC+2)
    (utc(2026, 7, 15, 22, 0), True),
    (utc(2026, 7, 16, 3, 0), False),  # 05:00 CEST
    (utc(2026, 7, 16, 10, 0), False),  # midday
])
def test_in_window_reads_the_ljubljana_wall_clock(at: datetime, open_: bool) -> None:
    assert in_window(at, W, "Europe/Ljubljana") is open_


def test_next_window_start_crosses_midnight_and_is_now_when_open() -> None:
    # 10:00 CET: tonight 23:00 CET = 22:00 UTC
    assert next_window_start(utc(2026, 1, 15, 9, 0), W) == utc(2026, 1, 15, 22, 0)
    # 05:00 CET (just closed): the next opening is this evening, not the next day's
    assert next_window_start(utc(2026, 1, 16, 4, 0), W) == utc(2026, 1, 16, 22, 0)
    open_now = utc(2026, 1, 16, 1, 0)
    assert next_window_start(open_now, W) == open_now


def test_spring_forward_night_is_five_hours() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST. Opens 23:00 CET (22:00 UTC) on the 28th,
    # closes 05:00 CEST (03:00 UTC) on the 29th.
    opening = next_window_start(utc(2026, 3, 28, 12, 0), W)
    assert opening == utc(2026, 3, 28, 22, 0)
    closing = window_end(opening, W)
    assert closing == utc(2026, 3, 29, 3, 0)
    assert closing - opening == timedelta(hours=5)
    assert in_window(utc(2026, 3, 29, 1, 30), W)  # 03:30 CEST, right after the jump
    assert not in_window(utc(2026, 3, 29, 3, 0), W)
    # the next evening already in summer time: 23:00 CEST = 21:00 UTC
    assert next_window_start(utc(2026, 3, 29, 3, 0), W) == utc(2026, 3, 29, 21, 0)


def test_fall_back_night_is_seven_hours() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET. Opens 23:00 CEST (21:00 UTC) on the 24th,
    # closes 05:00 CET (04:00 UTC) on the 25th; 02:00-03:00 happens twice, both open.
    opening = next_window_start(utc(2026, 10, 24, 12, 0), W)
    assert opening == utc(2026, 10, 24, 21, 0)
    closing = window_end(opening, W)
    assert closing == utc(2026, 10, 25, 4, 0)
    assert closing - opening == timedelta(hours=7)
    assert in_window(utc(2026, 10, 25, 0, 30), W)  # 02:30 CEST, the first time
    assert in_window(utc(2026, 10, 25, 1, 30), W)  # 02:30 CET, the second time
    assert in_window(utc(2026, 10, 25, 3, 59), W)  # 04:59 CET
    assert not in_window(utc(2026, 10, 25, 4, 0), W)
    # that evening in winter time: 23:00 CET = 22:00 UTC
    assert next_window_start(utc(2026, 10, 25, 4, 0), W) == utc(2026, 10, 25, 22, 0)


def test_a_window_within_one_day() -> None:
    day = ("09:00", "17:00")
    assert in_window(utc(2026, 1, 15, 8, 0), day)  # 09:00 CET
    assert not in_window(utc(2026, 1, 15, 16, 0), day)  # 17:00 CET
    assert next_window_start(utc(2026, 1, 15, 16, 0), day) == utc(2026, 1, 16, 8, 0)


def test_the_brands_window_is_what_the_rules_say() -> None:
    assert FCB.maintenance_window == ISERVER.maintenance_window == W


@pytest.mark.parametrize("bad", [("23:00",), ("24:00", "05:00"), ("7pm", "05:00"), ("05:00", "05:00")])
def test_bad_windows_are_refused(bad: tuple[str, ...]) -> None:
    with pytest.raises(InvalidInput):
        in_window(utc(2026, 1, 1, 0, 0), bad, "Europe/Ljubljana")  # type: ignore[arg-type]


def test_naive_times_and_unknown_zones_are_refused() -> None:
    with pytest.raises(InvalidInput):
        in_window(datetime(2026, 1, 1, 23, 30), W)  # noqa: DTZ001 - the point of the test
    with pytest.raises(InvalidInput):
        in_window(utc(2026, 1, 1, 0, 0), W, "Europe/Nowhere")
