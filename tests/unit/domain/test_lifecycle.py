from datetime import date

import pytest

from provisioner.domain.lifecycle import (
    ALLOWED,
    ProformaState,
    ServiceState,
    StepState,
    add_period,
    backup_purge_date,
    data_deletion_date,
    domain_renew_by,
    proforma_transition,
    reminder_dates,
    renewal_notice_date,
    renewed_expiry,
    shutdown_date,
    step_transition,
    support_stopped,
    transition,
)
from provisioner.domain.policy import FCB, ISERVER
from provisioner.errors import Conflict, InvalidInput

S = ServiceState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PENDING_PAYMENT, S.PROVISIONING),
        (S.PENDING_PAYMENT, S.CANCELLED),
        (S.PROVISIONING, S.ACTIVE),
        (S.PROVISIONING, S.FAILED),
        (S.FAILED, S.PROVISIONING),
        (S.ACTIVE, S.SUSPENDED),
        (S.ACTIVE, S.EXPIRED),
        (S.SUSPENDED, S.ACTIVE),
        (S.EXPIRED, S.ACTIVE),
        (S.EXPIRED, S.DELETED),
        (S.DELETED, S.PURGED),
        (S.ACTIVE, S.ACTIVE),
        ("active", "expired"),
    ],
)
def test_allowed_transitions(current: S | str, target: S | str) -> None:
    assert transition(current, target) == ServiceState(target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PENDING_PAYMENT, S.ACTIVE),  # nothing is provisioned before payment
        (S.PENDING_PAYMENT, S.EXPIRED),
        (S.PURGED, S.ACTIVE),
        (S.PURGED, S.PROVISIONING),
        (S.CANCELLED, S.ACTIVE),
        (S.ACTIVE, S.PENDING_PAYMENT),
        (S.ACTIVE, S.PURGED),
        (S.EXPIRED, S.PURGED),
        (S.FAILED, S.ACTIVE),
    ],
)
def test_forbidden_transitions(current: S, target: S) -> None:
    with pytest.raises(Conflict, match=f"from {current.value} to {target.value}"):
        transition(current, target)


def test_every_state_has_a_rule() -> None:
    assert set(ALLOWED) == set(ServiceState)


@pytest.mark.parametrize("bad", ["running", 3, None])
def test_unknown_state(bad: object) -> None:
    with pytest.raises(InvalidInput, match="unknown service state"):
        transition(bad, S.ACTIVE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "target", "ok"),
    [
        (ProformaState.OPEN, ProformaState.PAID, True),
        (ProformaState.OPEN, ProformaState.CANCELLED, True),
        (ProformaState.PAID, ProformaState.PAID, True),
        (ProformaState.CANCELLED, ProformaState.PAID, False),
        (ProformaState.PAID, ProformaState.OPEN, False),
    ],
)
def test_proforma_transitions(current: ProformaState, target: ProformaState, ok: bool) -> None:
    if ok:
        assert proforma_transition(current, target) is target
    else:
        with pytest.raises(Conflict):
            proforma_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target", "ok"),
    [
        (StepState.PENDING, StepState.QUEUED, True),
        (StepState.QUEUED, StepState.RUNNING, True),
        (StepState.RUNNING, StepState.DONE, True),
        (StepState.RUNNING, StepState.QUEUED, True),
        (StepState.FAILED, StepState.QUEUED, True),
        (StepState.DONE, StepState.RUNNING, False),
        (StepState.PENDING, StepState.DONE, False),
    ],
)
def test_step_transitions(current: StepState, target: StepState, ok: bool) -> None:
    if ok:
        assert step_transition(current, target) is target
    else:
        with pytest.raises(Conflict):
            step_transition(current, target)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2026, 1, 15), 1, date(2026, 2, 15)),
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2024, 2, 29), 48, date(2028, 2, 29)),
        (date(2026, 12, 31), 1, date(2027, 1, 31)),
        (date(2026, 8, 31), 1, date(2026, 9, 30)),
        (date(2026, 1, 31), 24, date(2028, 1, 31)),
        (date(2026, 3, 31), -1, date(2026, 2, 28)),
        (date(2026, 5, 5), 0, date(2026, 5, 5)),
    ],
)
def test_add_period(start: date, months: int, expected: date) -> None:
    assert add_period(start, months) == expected


def test_add_period_refuses() -> None:
    with pytest.raises(InvalidInput):
        add_period(date(9999, 12, 1), 1)
    with pytest.raises(InvalidInput):
        add_period(date(2026, 1, 1), 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("original", "months", "expected"),
    [
        (date(2026, 3, 1), 12, date(2027, 3, 1)),  # paid late in April: still from 1 March
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
    ],
)
def test_renewed_expiry_from_original_date(original: date, months: int, expected: date) -> None:
    assert renewed_expiry(original, months) == expected


@pytest.mark.parametrize("months", [0, -12])
def test_renewed_expiry_needs_a_period(months: int) -> None:
    with pytest.raises(InvalidInput):
        renewed_expiry(date(2026, 1, 1), months)


def test_policy_dates() -> None:
    expiry = date(2026, 6, 30)
    assert renewal_notice_date(expiry, FCB) == date(2026, 5, 31)
    assert reminder_dates(expiry, FCB) == (
        date(2026, 5, 31), date(2026, 6, 16), date(2026, 6, 23), date(2026, 6, 29),
    )
    assert shutdown_date(expiry, FCB) == date(2026, 7, 1)
    assert data_deletion_date(expiry, FCB) == date(2026, 8, 30)
    assert data_deletion_date(expiry, ISERVER) == date(2026, 7, 31)
    assert backup_purge_date(expiry, FCB) == date(2026, 9, 29)
    assert backup_purge_date(expiry, ISERVER) == date(2026, 7, 31)
    assert domain_renew_by(expiry, "eu", FCB) == date(2026, 6, 25)
    assert domain_renew_by(expiry, "si", FCB) == expiry


@pytest.mark.parametrize(("days_late", "stopped"), [(0, False), (7, False), (8, True)])
def test_support_stops_when_more_than_7_days_late(days_late: int, stopped: bool) -> None:
    due = date(2026, 1, 1)
    assert support_stopped(due, date.fromordinal(due.toordinal() + days_late), FCB) is stopped
