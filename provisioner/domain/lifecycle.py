"""States of services, proformas and pipeline steps, and the dates of a service's life.

Service life (RULES "Renewal and expiry", "Retention and staged deletion after expiry"):
a service waits for payment, is provisioned, is active until its expiry, stops working
the day after expiry (shutdown), its data are deleted from the servers after the brand's
retention, and purged from the backups after the backup retention.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

from provisioner.domain.policy import BRANDS, BrandPolicy
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
    """The day the data are removed from the servers (RULES retention table).

    ``data_retention_days`` are the days the data are *kept* after expiry; they may go
    the day after the last one: iSERVER's "removed when payment is more than 30 days
    late" (002 §7) is day 31 after expiry, never day 30; FCB keeps them 60 days.
    """
    return expiry + timedelta(days=policy.data_retention_days + 1)


def backup_purge_date(expiry: date, policy: BrandPolicy) -> date:
    """The day the data are gone from every backup too (RULES retention table): the day
    after the backup retention, never before the files go (iSERVER: the same day)."""
    kept = max(policy.backup_retention_days, policy.data_retention_days)
    return expiry + timedelta(days=kept + 1)


def domain_renew_by(expiry: date, tld: str, policy: BrandPolicy) -> date:
    """The last day the provider renews a domain (.eu / .at: 5 days before expiry)."""
    return expiry - timedelta(days=policy.early_renew_days(tld))


def support_stopped(due: date, today: date, policy: BrandPolicy) -> bool:
    """RULES "Support stops when a payment is > 7 days late"."""
    return (today - due).days > policy.support_stop_days_late


# -- the clock: what is due for a service, and when --------------------------------------
class ClockEvent(StrEnum):
    RENEWAL = "renewal"  # issue the renewal proforma and e-mail it
    REMINDER = "reminder"  # remind of the unpaid renewal proforma
    SHUTDOWN = "shutdown"  # not renewed: the service stops the day after expiry
    DELETE_DATA = "delete_data"  # stage 1: removed from the servers (after a last backup)
    PURGE_BACKUPS = "purge_backups"  # stage 2: gone from the backups too


@dataclass(frozen=True)
class Due:
    event: ClockEvent
    on: date
    tag: str  # unique within a term: "renewal", "reminder-14", "shutdown", ...


#: The states whose service has a term running: the clock bills and shuts it down.
RUNNING_STATES = frozenset({ServiceState.ACTIVE, ServiceState.SUSPENDED})
#: Which events apply in which state; other states have no clock.
_EVENTS_BY_STATE: Mapping[ServiceState, frozenset[ClockEvent]] = MappingProxyType({
    ServiceState.ACTIVE: frozenset({ClockEvent.RENEWAL, ClockEvent.REMINDER, ClockEvent.SHUTDOWN}),
    ServiceState.SUSPENDED: frozenset({ClockEvent.RENEWAL, ClockEvent.REMINDER,
                                       ClockEvent.SHUTDOWN}),
    ServiceState.EXPIRED: frozenset({ClockEvent.DELETE_DATA}),
    ServiceState.DELETED: frozenset({ClockEvent.PURGE_BACKUPS}),
})


def renew_by(expiry: date, kind: str, name: str, policy: BrandPolicy) -> date:
    """The last day a renewal can be carried out: the expiry, or for a domain of a TLD
    that must be renewed early (.eu, .at) that many days before it."""
    if kind == "domain" and "." in name:
        return domain_renew_by(expiry, name.rsplit(".", 1)[1], policy)
    return expiry


def term_schedule(expiry: date, kind: str, name: str, policy: BrandPolicy) -> tuple[Due, ...]:
    """Every clock event of the term ending at ``expiry``, in date order.

    The renewal proforma goes out ``renewal_notice_days`` (>= 30) before the last day the
    renewal can be done; reminders follow on the policy's days; shutdown the day after
    expiry; then the two deletion stages of the brand's retention.
    """
    last = renew_by(expiry, kind, name, policy)
    events = [Due(ClockEvent.RENEWAL, last - timedelta(days=policy.renewal_notice_days), "renewal")]
    for days in sorted(set(policy.renewal_reminder_days), reverse=True):
        if days < policy.renewal_notice_days:
            events.append(Due(ClockEvent.REMINDER, last - timedelta(days=days), f"reminder-{days}"))
    events += [
        Due(ClockEvent.SHUTDOWN, shutdown_date(expiry, policy), "shutdown"),
        Due(ClockEvent.DELETE_DATA, data_deletion_date(expiry, policy), "delete_data"),
        Due(ClockEvent.PURGE_BACKUPS, backup_purge_date(expiry, policy), "purge_backups"),
    ]
    return tuple(sorted(events, key=lambda d: d.on))


def due_events(state: ServiceState | str, expiry: date | None, kind: str, name: str,
               policy: BrandPolicy, today: date) -> tuple[Due, ...]:
    """The events of the current term that are due on ``today`` (or overdue) and apply to
    a service in ``state``. Nothing is ever due before its date."""
    st = _coerce(ServiceState, state, "service state")
    if expiry is None or st not in _EVENTS_BY_STATE:
        return ()
    kinds = _EVENTS_BY_STATE[st]
    return tuple(d for d in term_schedule(expiry, kind, name, policy)
                 if d.event in kinds and d.on <= today)


def next_clock_on(state: ServiceState | str, expiry: date | None, kind: str, name: str,
                  policy: BrandPolicy, today: date) -> date | None:
    """The next day after ``today`` the sweep must look at the service (None: never)."""
    st = _coerce(ServiceState, state, "service state")
    if expiry is None or st not in _EVENTS_BY_STATE:
        return None
    later = [d.on for d in term_schedule(expiry, kind, name, policy) if d.on > today]
    return min(later) if later else None


def earliest_event(expiry: date) -> date:
    """A day no brand has an event of the term before (for a first look by the sweep)."""
    lead = max(p.renewal_notice_days + max(p.domain_early_renew_days.values(), default=0)
               for p in BRANDS.values())
    return expiry - timedelta(days=lead)


# -- over quota (RULES "over disk/transfer quota: warn; customer has 7 days to upgrade";
# "over limits: no free backups of that account") ----------------------------------------
@dataclass(frozen=True)
class QuotaDecision:
    over_since: date | None  # the day the account was first seen over its quota
    warn: bool  # e-mail the customer now (first day over)
    backups_excluded: bool  # whether the account gets free backups from now on (False: it does)
    alert_ops: bool  # the grace period ended today


def quota_decision(over: bool, since: date | None, excluded: bool, today: date,
                   grace_days: int) -> QuotaDecision:
    if not over:  # back under (or never over): free backups again
        return QuotaDecision(None, False, False, False)
    if since is None:
        return QuotaDecision(today, True, excluded, False)
    if not excluded and (today - since).days >= grace_days:
        return QuotaDecision(since, False, True, True)
    return QuotaDecision(since, False, excluded, False)
