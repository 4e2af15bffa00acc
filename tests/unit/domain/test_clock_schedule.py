"""The clock's pure schedule: when each event of a term is due, for both brands."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from provisioner.domain.lifecycle import (
    ClockEvent,
    due_events,
    earliest_event,
    next_clock_on,
    quota_decision,
    term_schedule,
)
from provisioner.domain.policy import FCB, ISERVER

E = date(2027, 3, 31)


def test_fcb_schedule_of_a_hosting_term() -> None:
    got = {d.tag: d.on for d in term_schedule(E, "hosting", "example.si", FCB)}
    assert got == {
        "renewal": E - timedelta(days=30),
        "reminder-14": E - timedelta(days=14),
        "reminder-7": E - timedelta(days=7),
        "reminder-1": E - timedelta(days=1),
        "shutdown": E + timedelta(days=1),
        "delete_data": E + timedelta(days=61),
        "purge_backups": E + timedelta(days=91),
    }


def test_iserver_removes_files_and_backups_together() -> None:
    got = {d.tag: d.on for d in term_schedule(E, "hosting", "example.si", ISERVER)}
    # 002 §7: removed when payment is *more than* 30 days late: day 31, never day 30
    assert got["delete_data"] == got["purge_backups"] == E + timedelta(days=31)


@pytest.mark.parametrize(("name", "lead"), [("example.eu", 5), ("example.at", 5), ("example.si", 0)])
def test_domains_are_billed_30_days_before_the_registry_deadline(name: str, lead: int) -> None:
    got = {d.tag: d.on for d in term_schedule(E, "domain", name, FCB)}
    assert got["renewal"] == E - timedelta(days=lead + 30)
    assert got["shutdown"] == E + timedelta(days=1)


@pytest.mark.parametrize(("state", "events"), [
    ("active", {ClockEvent.RENEWAL, ClockEvent.REMINDER, ClockEvent.SHUTDOWN}),
    ("suspended", {ClockEvent.RENEWAL, ClockEvent.REMINDER, ClockEvent.SHUTDOWN}),
    ("expired", {ClockEvent.DELETE_DATA}),
    ("deleted", {ClockEvent.PURGE_BACKUPS}),
    ("purged", set()), ("cancelled", set()), ("provisioning", set()), ("pending_payment", set()),
])
def test_which_events_apply_in_which_state(state: str, events: set[ClockEvent]) -> None:
    far = E + timedelta(days=400)
    assert {d.event for d in due_events(state, E, "hosting", "x.si", FCB, far)} == events


def test_nothing_is_due_before_its_day() -> None:
    for d in term_schedule(E, "hosting", "x.si", FCB):
        state = {"delete_data": "expired", "purge_backups": "deleted"}.get(d.tag, "active")
        before = due_events(state, E, "hosting", "x.si", FCB, d.on - timedelta(days=1))
        assert d.tag not in {x.tag for x in before}
        on = due_events(state, E, "hosting", "x.si", FCB, d.on)
        assert d.tag in {x.tag for x in on}


def test_next_look_is_the_next_event_and_never_later() -> None:
    assert next_clock_on("active", E, "hosting", "x.si", FCB, E - timedelta(days=31)) == \
        E - timedelta(days=30)
    assert next_clock_on("active", E, "hosting", "x.si", FCB, E - timedelta(days=14)) == \
        E - timedelta(days=7)
    assert next_clock_on("expired", E, "hosting", "x.si", FCB, E + timedelta(days=1)) == \
        E + timedelta(days=61)
    assert next_clock_on("purged", E, "hosting", "x.si", FCB, E) is None
    assert next_clock_on("active", None, "hosting", "x.si", FCB, E) is None
    assert earliest_event(E) <= min(d.on for p in (FCB, ISERVER)
                                    for d in term_schedule(E, "domain", "x.eu", p))


def test_over_quota_warns_once_then_stops_free_backups_after_the_grace() -> None:
    day = date(2027, 5, 1)
    first = quota_decision(True, None, False, day, 7)
    assert (first.over_since, first.warn, first.backups_excluded) == (day, True, False)
    sixth = quota_decision(True, day, False, day + timedelta(days=6), 7)
    assert (sixth.warn, sixth.backups_excluded, sixth.alert_ops) == (False, False, False)
    seventh = quota_decision(True, day, False, day + timedelta(days=7), 7)
    assert (seventh.backups_excluded, seventh.alert_ops) == (True, True)
    later = quota_decision(True, day, True, day + timedelta(days=20), 7)
    assert (later.backups_excluded, later.alert_ops, later.warn) == (True, False, False)
    back = quota_decision(False, day, True, day + timedelta(days=21), 7)
    assert (back.over_since, back.backups_excluded) == (None, False)
