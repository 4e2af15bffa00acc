"""States of services, proformas and pipeline steps, and the dates of a service's life.

Service life (RULES "Renewal and expiry", "Retention and staged deletion after expiry"):
a service waits for payment, is provisioned, is active until its expiry, stops working
the day after expiry (shutdown), its data are deleted from the servers after the brand's
retention, and purged from the backups after the backup retention.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from datetime import date, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

from provisioner.domain.policy import BrandPolicy
from provisioner.errors import Conflict, InvalidInput


class ServiceState(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    FAILED = "failed"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    DELETED = "deleted"
    PURGED = "purged"
    CANCELLED = "cancelled"


class ProformaState(StrEnum):
    OPEN = "open"
    PAID = "paid"
    CANCELLED = "cancelled"


class StepState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


_E = TypeVar("_E", bound=StrEnum)

S = ServiceState

#: Allowed service moves. A move to the current state is always allowed (idempotent steps).
ALLOWED: Mapping[ServiceState, frozenset[ServiceState]] = MappingProxyType(
    {
        # paid -> provisioning; unpaid by the due date -> cancelled
        S.PENDING_PAYMENT: frozenset({S.PROVISIONING, S.CANCELLED}),
        S.PROVISIONING: frozenset({S.ACTIVE, S.FAILED}),
        # retry, or refund when a paid order cannot be carried out (001 §2.3)
        S.FAILED: frozenset({S.PROVISIONING, S.CANCELLED}),
        # over limits / abuse -> suspended; not renewed -> expired; withdrawal -> cancelled
        S.ACTIVE: frozenset({S.SUSPENDED, S.EXPIRED, S.CANCELLED}),
        S.SUSPENDED: frozenset({S.ACTIVE, S.EXPIRED, S.CANCELLED}),
        # paid late -> active again (from the original expiry); retention over -> deleted
        S.EXPIRED: frozenset({S.ACTIVE, S.DELETED}),
        # restore from the secondary backups while they exist; then purged
        S.DELETED: frozenset({S.PROVISIONING, S.PURGED}),
        S.PURGED: frozenset(),
        # a cancelled service that had resources still has to be removed
        S.CANCELLED: frozenset({S.DELETED}),
    }
)

PROFORMA_ALLOWED: Mapping[ProformaState, frozenset[ProformaState]] = MappingProxyType(
    {
        ProformaState.OPEN: frozenset({ProformaState.PAID, ProformaState.CANCELLED}),
        ProformaState.PAID: frozenset(),
        ProformaState.CANCELLED: frozenset(),
    }
)

STEP_ALLOWED: Mapping[StepState, frozenset[StepState]] = MappingProxyType(
    {
        StepState.PENDING: frozenset({StepState.QUEUED}),
        StepState.QUEUED: frozenset({StepState.RUNNING}),
        # a transient error puts the step back in the queue
        StepState.RUNNING: frozenset({StepState.DONE, StepState.FAILED, StepState.QUEUED}),
        StepState.DONE: frozenset(),
        # an operator retries a failed step
        StepState.FAILED: frozenset({StepState.QUEUED}),
    }
)


def _coerce(enum: type[_E], value: object, what: str) -> _E:
    if isinstance(value, enum):
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"unknown {what} {value!r}")
    try:
        return enum(value)
    except ValueError:
        raise InvalidInput(f"unknown {what} {value!r}") from None


def transition(current: ServiceState | str, target: ServiceState | str) -> ServiceState:
    """``target`` if the move is allowed (or a no-op), else Conflict."""
    cur = _coerce(ServiceState, current, "service state")
    tgt = _coerce(ServiceState, target, "service state")
    if tgt != cur and tgt not in ALLOWED[cur]:
        raise Conflict(f"a service cannot go from {cur.value} to {tgt.value}")
    return tgt


def proforma_transition(
    current: ProformaState | str, target: ProformaState | str
) -> ProformaState:
    """``target`` if the move is allowed (or a no-op), else Conflict."""
    cur = _coerce(ProformaState, current, "proforma state")
    tgt = _coerce(ProformaState, target, "proforma state")
    if tgt != cur and tgt not in PROFORMA_ALLOWED[cur]:
        raise Conflict(f"a proforma cannot go from {cur.value} to {tgt.value}")
    return tgt


def step_transition(current: StepState | str, target: StepState | str) -> StepState:
    """``target`` if the move is allowed (or a no-op), else Conflict."""
    cur = _coerce(StepState, current, "step state")
    tgt = _coerce(StepState, target, "step state")
    if tgt != cur and tgt not in STEP_ALLOWED[cur]:
        raise Conflict(f"a step cannot go from {cur.value} to {tgt.value}")
    return tgt


def add_period(d: date, months: int) -> date:
    """``d`` plus ``months`` calendar months; the day is clamped to the month's end.

    2026-01-31 + 1 -> 2026-02-28; 2024-02-29 + 12 -> 2025-02-28. Always compute from the
    original date (``add_period(start, 24)``), never by repeated one-month steps.
    """
    if isinstance(months, bool) or not isinstance(months, int):
        raise InvalidInput(f"months must be an integer, not {months!r}")
    index = d.year * 12 + (d.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    if not 1 <= year <= 9999:
        raise InvalidInput(f"date out of range: {d.isoformat()} + {months} months")
    day = min(d.day, calendar.monthrange(year, month)[1])
    return date(year, month, day)


def renewed_expiry(original_expiry: date, months: int) -> date:
    """The new expiry after a renewal: from the ORIGINAL expiry, even when paid late
    (RULES "Payment after expiry renews from the original expiry date", 001 §2.4)."""
    if isinstance(months, bool) or not isinstance(months, int) or months <= 0:
        raise InvalidInput(f"a renewal needs a positive number of months, not {months!r}")
    return add_period(original_expiry, months)


def renewal_notice_date(expiry: date, policy: BrandPolicy) -> date:
    """When the renewal proforma is e-mailed (RULES: >= 30 days before expiry)."""
    return expiry - timedelta(days=policy.renewal_notice_days)


def reminder_dates(expiry: date, policy: BrandPolicy) -> tuple[date, ...]:
    """Renewal reminder dates, earliest first."""
    days = sorted(set(policy.renewal_reminder_days), reverse=True)
    return tuple(expiry - timedelta(days=n) for n in days)


def shutdown_date(expiry: date, policy: BrandPolicy) -> date:
    """The day hosting stops working (RULES: the day after expiry)."""
    return expiry + timedelta(days=policy.shutdown_after_days)


def data_deletion_date(expiry: date, policy: BrandPolicy) -> date:
    """The day the data are removed from the servers (RULES retention table)."""
    return expiry + timedelta(days=policy.data_retention_days)


def backup_purge_date(expiry: date, policy: BrandPolicy) -> date:
    """The day the data are gone from every backup too (RULES retention table)."""
    return expiry + timedelta(days=max(policy.backup_retention_days, policy.data_retention_days))


def domain_renew_by(expiry: date, tld: str, policy: BrandPolicy) -> date:
    """The last day the provider renews a domain (.eu / .at: 5 days before expiry)."""
    return expiry - timedelta(days=policy.early_renew_days(tld))


def support_stopped(due: date, today: date, policy: BrandPolicy) -> bool:
    """RULES "Support stops when a payment is > 7 days late"."""
    return (today - due).days > policy.support_stop_days_late
