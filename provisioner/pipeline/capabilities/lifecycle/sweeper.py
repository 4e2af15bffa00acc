"""The sweep: what the brand's schedule says is due for each service whose
``clock_on`` has come, done in the sweep's own transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.domain.lifecycle import (
    RUNNING_STATES,
    ClockEvent,
    Due,
    ProformaState,
    ServiceState,
    due_events,
    next_clock_on,
    transition,
)
from provisioner.domain.policy import BrandPolicy, get_brand
from provisioner.pipeline.capabilities.backup_download import schedule_link
from provisioner.pipeline.capabilities.dns_tls import renewal_step
from provisioner.pipeline.capabilities.lifecycle.batch import Batch, step_row
from provisioner.pipeline.capabilities.lifecycle.cutoff import registry_cutoff
from provisioner.pipeline.capabilities.lifecycle.lapse import lapse_due
from provisioner.pipeline.capabilities.lifecycle.renewals import (
    add_reactivation_fee,
    ensure_renewal,
    record_proforma_plan,
)
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.pipeline.engine.runner import Runner, run_queued
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import (
    Order,
    Proforma,
    Service,
    Step,
)
from provisioner.store.tls import TlsCertificate, latest_certificate
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.lifecycle")
SYSTEM = "system:clock"


# -- the sweep ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    service_id: int
    event: str  # renewal | reminder-N | shutdown | delete_data | purge_backups | wait
    due_on: date
    detail: str = ""


@dataclass
class SweepReport:
    today: date
    dry_run: bool
    looked_at: int = 0
    actions: list[Action] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            key = "reminder" if a.event.startswith("reminder") else a.event
            out[key] = out.get(key, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"today": self.today.isoformat(), "dry_run": self.dry_run,
                "looked_at": self.looked_at, "counts": self.counts(),
                "actions": [{**asdict(a), "due_on": a.due_on.isoformat()} for a in self.actions]}


def step_key(service_id: int, tag: str, term: date) -> str:
    return f"service:{service_id}/clock.{tag}@{term.isoformat()}"


def sweep(factory: sessionmaker[Session], today: date, *, dry_run: bool = False,
          batch: int = 500, progress: Callable[[int], None] | None = None,
          tls_renew_days: int = 30) -> SweepReport:
    """Do what is due on ``today``; with ``dry_run`` only say what that would be."""
    report = SweepReport(today, dry_run)
    report.actions += _certificates(factory, today, dry_run, tls_renew_days)
    report.actions += [Action(*a) for a in lapse_due(factory, today, dry_run=dry_run)]
    after_id = 0
    while True:
        with transaction(factory) as s:
            q = (select(Service, Order.brand)
                 .join(Order, Order.id == Service.order_id)
                 .where(Service.clock_on <= today, Service.held.is_(False), Service.id > after_id)
                 .order_by(Service.id)
                 .limit(batch))
            if s.get_bind().dialect.name == "postgresql":
                # two sweeps at once take disjoint services; each waits for nothing
                q = q.with_for_update(of=Service, skip_locked=True)
            rows = s.execute(q).all()
            b = Batch(s, today, dry_run, [service for service, _ in rows])
            with s.no_autoflush:  # everything it reads was loaded above: one flush at the end
                for service, brand in rows:
                    report.actions += _advance(b, service, get_brand(brand))
            if b.new_proformas:
                s.flush()
                for proforma in b.new_proformas:
                    record_proforma_plan(s, proforma)
            report.looked_at += len(rows)
            if dry_run:
                s.rollback()
        if progress is not None:
            progress(len(rows))
        if len(rows) < batch:
            return report
        after_id = rows[-1][0].id


def _certificates(factory: sessionmaker[Session], today: date, dry_run: bool,
                  renew_days: int) -> list[Action]:
    """Certificates renew by themselves: a ``tls.issue`` step for each deployed
    certificate of a running service with ``renew_days`` or fewer left (one key per
    expiry, so a failing renewal retries, alerts ops, and is not written twice). Read
    through the ``not_after`` index, in a window: its cost grows with what is due."""

    # due during today: at most `renew_days` left at some moment of the day
    horizon = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(
        days=renew_days + 1)
    actions: list[Action] = []
    with transaction(factory) as s:
        rows = s.execute(
            select(TlsCertificate, Service)
            .join(Service, Service.id == TlsCertificate.service_id)
            .where(TlsCertificate.not_after < horizon,
                   TlsCertificate.not_after >= horizon - timedelta(days=renew_days + 30),
                   Service.state.in_([st.value for st in RUNNING_STATES]),
                   Service.held.is_(False))).all()
        for cert, service in rows:
            latest = latest_certificate(s, cert.primary_name)
            if latest is None or latest.id != cert.id:
                continue  # replaced already
            kinds = set((cert.challenges or {}).values())
            spec = renewal_step(service.id, cert.names, cert.not_after.date(),
                                "http-01" if kinds == {"http-01"} else "auto")
            if s.execute(select(Step.id).where(Step.key == spec.key)).first() is not None:
                continue
            actions.append(Action(service.id, "tls_renewal", cert.not_after.date(),
                                  f"{cert.primary_name}: {len(cert.names)} name(s)"))
            if not dry_run:
                s.add(step_row(service.order_id, spec))
        if dry_run:
            s.rollback()
    return actions


def _advance(b: Batch, service: Service, policy: BrandPolicy) -> list[Action]:
    """Do what is due for one service and move its ``clock_on`` to its next date."""
    today = b.today
    expiry = service.expires_on
    due = due_events(service.state, expiry, service.kind, service.name, policy, today)
    actions: list[Action] = []
    look_again_tomorrow = False
    cutoff = registry_cutoff(b, service, policy)  # a domain's registry cut-off (its lapse day)
    if cutoff.event is not None and cutoff.due_on is not None:
        actions.append(Action(service.id, cutoff.event, cutoff.due_on, cutoff.detail))
    if expiry is not None:
        reminders = [event for event in due if event.event is ClockEvent.REMINDER]
        latest_reminder = reminders[-1] if reminders else None  # stale ones are not sent late
        for event in due:
            if event.event is ClockEvent.REMINDER and event is not latest_reminder:
                continue
            term = _Term(b, service, policy, event, expiry)
            outcome = _HANDLE[event.event](term)
            if outcome.action is not None:
                actions.append(outcome.action)
            look_again_tomorrow = look_again_tomorrow or outcome.wait
    next_on = next_clock_on(service.state, expiry, service.kind, service.name, policy, today)
    if look_again_tomorrow:  # something due could not happen yet (a step still running)
        next_on = today + timedelta(days=1)
    if cutoff.next_on is not None and (next_on is None or cutoff.next_on < next_on):
        next_on = cutoff.next_on
    service.clock_on = next_on
    return actions


@dataclass(frozen=True)
class _Outcome:
    action: Action | None  # what was done (None: nothing, it was done before)
    wait: bool = False  # the service must be looked at again tomorrow


_NOTHING = _Outcome(None)


@dataclass
class _Term:
    """One due event of a service's current term, with the renewal proforma of the term."""

    b: Batch
    service: Service
    policy: BrandPolicy
    due: Due
    expiry: date

    @property
    def action(self) -> Action:
        return Action(self.service.id, self.due.tag, self.due.on)

    def renewal(self) -> Renewal | None:
        return self.b.renewal(self.service.id, self.expiry)

    def proforma(self) -> Proforma | None:
        renewal = self.renewal()
        if renewal is None:
            return None
        return self.b.proformas.get(renewal.proforma_id) or renewal.proforma

    def waiting(self, why: str) -> _Outcome:
        return _Outcome(Action(self.service.id, "wait", self.due.on, why), True)

    def record(self, tag: str, kind: str, proforma_id: int | None = None) -> _Outcome:
        """The stage's step into the journal, once per term."""
        params = _stage_params(self.service, self.due, self.expiry, proforma_id)
        added = self.b.record(self.service, StepSpec(step_key(self.service.id, tag, self.expiry), kind, (),
                                                     params, self.service.id))
        return _Outcome(self.action if added else None)


def _renewal_due(t: _Term) -> _Outcome:
    """The renewal proforma of the term, once."""
    if t.renewal() is not None:
        return _NOTHING
    if not t.b.dry_run:
        ensure_renewal(t.b.s, t.service, t.policy, t.b.today, t.b)
    return _Outcome(t.action)


def _reminder_due(t: _Term) -> _Outcome:
    """The open renewal proforma e-mailed again (never for a paid one)."""
    proforma = t.proforma()
    if proforma is None or proforma.state != ProformaState.OPEN.value:
        return _NOTHING
    if t.b.dry_run:
        return _Outcome(t.action)
    days = int(t.due.tag.rsplit("-", 1)[1])
    key = step_key(t.service.id, t.due.tag, t.expiry)
    added = t.b.record(t.service, StepSpec(key, "clock.reminder", (), {
        "service_id": t.service.id, "proforma_id": proforma.id, "term_expiry": t.expiry.isoformat(),
        "days": days}, t.service.id))
    return _Outcome(t.action if added else None)


def _shutdown_due(t: _Term) -> _Outcome:
    """The day after expiry, unpaid: the reactivation fee on the open proforma, the
    service expired, and ``clock.shutdown`` suspends it on its node."""
    renewal, proforma = t.renewal(), t.proforma()
    if proforma is None and not t.b.dry_run:  # no notice went out (a very short term)
        renewal = ensure_renewal(t.b.s, t.service, t.policy, t.b.today, t.b)
        proforma = renewal.proforma
    if proforma is not None and proforma.state == ProformaState.PAID.value:
        return t.waiting("renewal paid, not applied yet")
    if t.b.dry_run:
        return _Outcome(replace(t.action, detail="suspend; add the reactivation fee"))
    assert renewal is not None and proforma is not None
    if not renewal.fee_added and t.policy.reactivation_fee > 0:
        if not add_reactivation_fee(t.b.s, proforma, t.policy):
            return t.waiting("renewal paid meanwhile")
        renewal.fee_added = True
    service = t.service
    service.state = transition(service.state, ServiceState.EXPIRED).value
    service.updated_at = utcnow()
    audit(t.b.s, SYSTEM, "service.expired", "service", service.id,
          {"expired_on": t.expiry.isoformat(), "proforma": proforma.number})
    t.record("shutdown", "clock.shutdown", proforma.id)
    # a backup service covered the term: the customer's download link (issue 17 item 9)
    schedule_link(t.b.s, service, t.expiry, t.due.on, step_key(service.id, "shutdown", t.expiry))
    return _Outcome(t.action)


def _delete_data_due(t: _Term) -> _Outcome:
    """Stage 1: the renewal proforma is cancelled (no reactivation after this), then
    ``clock.delete_data`` removes the account. The service stays expired until it is done."""
    proforma = t.proforma()
    if proforma is not None and proforma.state == ProformaState.PAID.value:
        return t.waiting("reactivation paid, not applied yet")
    if t.b.dry_run:
        return _Outcome(replace(t.action, detail="last backup, then remove from the node"))
    if proforma is not None and proforma.state == ProformaState.OPEN.value:
        res = t.b.s.execute(update(Proforma).where(Proforma.id == proforma.id,
                                                   Proforma.state == ProformaState.OPEN.value)
                            .values(state=ProformaState.CANCELLED.value)
                            .execution_options(synchronize_session=False))
        if res.rowcount != 1:  # type: ignore[attr-defined]  # paid this very moment
            return t.waiting("reactivation paid meanwhile")
        audit(t.b.s, SYSTEM, "proforma.cancelled", "proforma", proforma.number,
              {"reason": "retention over: the service's data are deleted"})
    return t.record("delete_data", "clock.delete_data")


def _purge_backups_due(t: _Term) -> _Outcome:
    """Stage 2: ``clock.purge_backups`` (its step runs only after stage 1 is done)."""
    if t.b.dry_run:
        return _Outcome(replace(t.action, detail="purge the backups"))
    return t.record("purge_backups", "clock.purge_backups")


_HANDLE: dict[ClockEvent, Callable[[_Term], _Outcome]] = {
    ClockEvent.RENEWAL: _renewal_due,
    ClockEvent.REMINDER: _reminder_due,
    ClockEvent.SHUTDOWN: _shutdown_due,
    ClockEvent.DELETE_DATA: _delete_data_due,
    ClockEvent.PURGE_BACKUPS: _purge_backups_due,
}


def _stage_params(service: Service, d: Due, expiry: date,
                  proforma_id: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"service_id": service.id, "term_expiry": expiry.isoformat(),
                              "due_on": d.on.isoformat()}
    if proforma_id is not None:
        params["proforma_id"] = proforma_id
    return params




# -- the whole loop, for ops and tests: sweep, then run what it queued ---------------------
def run_day(factory: sessionmaker[Session], runner: Runner, today: date, *,
            max_rounds: int = 50) -> SweepReport:
    """Sweep ``today`` and run every step that became ready, in this process (what the
    workers do in production). ``runner`` is a ``Runner`` whose clock says ``today``."""
    total = SweepReport(today, False)
    for _ in range(5):  # a stage finished today may make the next one due today (iSERVER)
        report = sweep(factory, today)
        total.looked_at += report.looked_at
        total.actions += report.actions
        run_queued(runner, max_rounds=max_rounds)
        if not report.actions:
            break
    return total
