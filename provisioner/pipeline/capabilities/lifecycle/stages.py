"""The clock's steps: reminders, shutdown, the two stages of deletion, and renewal."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select

from provisioner.domain.lifecycle import (
    ProformaState,
    ServiceState,
    data_deletion_date,
    earliest_event,
    next_clock_on,
    renewed_expiry,
    transition,
)
from provisioner.domain.policy import BrandPolicy, get_brand
from provisioner.errors import StepFailed
from provisioner.pipeline.capabilities import vps
from provisioner.pipeline.capabilities.billing import send_once
from provisioner.pipeline.capabilities.lifecycle.hold import service_row
from provisioner.pipeline.capabilities.placement import account_and_node, spec_of, target_of
from provisioner.pipeline.engine.plan import LinePlanner
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode
from provisioner.store.lifecycle import StageRecord
from provisioner.store.models import (
    Order,
    Proforma,
    Service,
    Step,
)

log = logging.getLogger("provisioner.lifecycle")
SYSTEM = "system:clock"


# -- steps ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stage:
    service: Service
    term: date
    due_on: date
    node: HostingNode | None
    account: HostingAccount | None


def _load_stage(ctx: StepContext, step: Step, expect: ServiceState) -> _Stage | StepResult:
    """The service of a stage step, checked: not held, not early, still in ``expect`` for
    the same term. Returns a no-op result when the stage no longer applies."""

    service_id = int(step.params["service_id"])
    term = date.fromisoformat(str(step.params["term_expiry"]))
    due_on = date.fromisoformat(str(step.params["due_on"]))
    today = ctx.now().date()
    if today < due_on:  # never before its day, whoever queued it
        raise StepFailed(step.key, f"not due before {due_on.isoformat()} (today {today})")
    with transaction(ctx.factory) as s:
        service = service_row(s, service_id)
        if service.held:
            raise StepFailed(step.key, f"service {service_id} is on hold: {service.hold_reason}")
        if service.expires_on != term or service.state != expect.value:
            return StepResult(False, {"skipped": f"service is {service.state}, "
                                                 f"expires {service.expires_on}"})
        account, node = account_and_node(s, service_id)
        s.expunge(service)
        return _Stage(service, term, due_on, node, account)


def _finish_stage(ctx: StepContext, st: _Stage, stage: str, target: ServiceState | None,
                  manifest: dict[str, Any]) -> None:
    today = ctx.now().date()
    with transaction(ctx.factory) as s:
        exists = s.execute(select(StageRecord.id).where(
            StageRecord.service_id == st.service.id, StageRecord.stage == stage,
            StageRecord.term_expiry == st.term)).first()
        if exists is None:
            s.add(StageRecord(service_id=st.service.id, stage=stage, term_expiry=st.term,
                              due_on=st.due_on, done_on=today, done_at=ctx.now(), manifest=manifest))
        service = service_row(s, st.service.id)
        if target is not None:
            service.state = transition(service.state, target).value
            service.clock_on = today  # the next sweep works out what follows
            service.updated_at = ctx.now()
        audit(s, SYSTEM, f"service.{stage}", "service", st.service.id, manifest)


def step_reminder(ctx: StepContext, step: Step) -> StepResult:
    proforma_id = int(step.params["proforma_id"])
    with transaction(ctx.factory) as s:
        p = s.get(Proforma, proforma_id)
        if p is None or p.state != ProformaState.OPEN.value:
            return StepResult(False, {"skipped": "the renewal proforma is no longer open"})
        service = service_row(s, int(step.params["service_id"]))
        extra = {"service": {"name": service.name, "kind": service.kind,
                             "expires_on": date.fromisoformat(str(step.params["term_expiry"]))},
                 "days": int(step.params["days"])}
    return send_once(ctx, "renewal_reminder", proforma_id, extra)


def step_shutdown(ctx: StepContext, step: Step) -> StepResult:
    """Suspend an expired service on its node (the disabled page; no FTP or mail logins;
    all data kept) and tell the customer, with the proforma that reactivates it."""
    st = _load_stage(ctx, step, ServiceState.EXPIRED)
    if isinstance(st, StepResult):
        return st
    manifest: dict[str, Any] = {"kind": st.service.kind}
    policy = _policy(ctx, st.service)
    if st.account is not None and st.node is not None and st.account.state != "removed":
        ctx.heartbeat()
        adapter = ctx.adapters.hosting
        # the disabled page names the customer's brand (its site and support)
        result = adapter.suspend(target_of(st.node), spec_of(st.account, policy))
        result.raise_for_status(step.key)
        manifest.update({"node": st.node.name, "account": st.account.username, "suspended": True})
        with transaction(ctx.factory) as s:
            now_state = service_row(s, st.service.id).state
        if now_state != ServiceState.EXPIRED.value:  # paid while we were suspending it
            adapter.unsuspend(target_of(st.node), spec_of(st.account, policy)).raise_for_status(step.key)
            return StepResult(True, {"skipped": "renewed during the shutdown; unsuspended"})
    elif st.service.kind == "vps" and (machine := vps.shutdown(ctx, st.service.id)) is not None:
        if "skipped" in machine:  # renewed while it was being suspended: running again
            return StepResult(True, machine)
        manifest.update(machine)  # suspended on its VPS host: stopped, not started at boot
    else:
        manifest["note"] = "nothing runs on a node for this service"
    _finish_stage(ctx, st, "shutdown", None, manifest)
    sent = send_once(ctx, "service_shutdown", int(step.params["proforma_id"]), {
        "service": {"name": st.service.name, "kind": st.service.kind, "expires_on": st.term},
        "deletion_on": data_deletion_date(st.term, policy),  # never before day 31 (iSERVER)
        "website_url": policy.website_url,
    })
    return StepResult(True, {**manifest, "mail": sent.details})


def _policy(ctx: StepContext, service: Service) -> BrandPolicy:
    with transaction(ctx.factory) as s:
        order = s.get(Order, service.order_id)
        assert order is not None
        return get_brand(order.brand)


def step_delete_data(ctx: StepContext, step: Step) -> StepResult:
    """Stage 1: a last backup, then the account is removed from its node."""
    # a withdrawal's stage 1 runs on a cancelled service (issue 17 item 3; params say so)
    st = _load_stage(ctx, step, ServiceState(str(step.params.get("from_state", "expired"))))
    if isinstance(st, StepResult):
        return st
    manifest: dict[str, Any] = {"kind": st.service.kind}
    if st.account is not None and st.node is not None and st.account.state != "removed":
        ctx.heartbeat()
        removal = ctx.adapters.backups.remove_account(target_of(st.node), spec_of(st.account),
                                                      ctx.adapters.hosting, st.service.id)
        manifest.update({"node": st.node.name, "account": st.account.username,
                         **removal.as_dict()})
        with transaction(ctx.factory) as s:
            row = s.get(HostingAccount, st.account.id)
            assert row is not None
            row.state = "removed"
            row.updated_at = ctx.now()
    elif st.service.kind == "vps" and (removed := vps.delete(ctx, st.service.id)) is not None:
        manifest.update(removed)  # the machine's unit, disk and state, as its host removed them
    else:
        manifest["note"] = "no data on a node for this service"
    _finish_stage(ctx, st, "delete_data", ServiceState.DELETED, manifest)
    return StepResult(True, manifest)


def step_purge_backups(ctx: StepContext, step: Step) -> StepResult:
    """Stage 2: every snapshot of the account (its tag and the service's) is forgotten in
    its node's repository on the backup host and the repository pruned; the stage record
    keeps the proof: the snapshot ids, the bytes the prune freed, that no snapshot with the
    tag remains and that ``restic check`` passed (the adapter fails the step otherwise)."""
    st = _load_stage(ctx, step, ServiceState.DELETED)
    if isinstance(st, StepResult):
        return st
    manifest: dict[str, Any] = {"kind": st.service.kind}
    if st.account is not None and st.node is not None:
        ctx.heartbeat()
        purged = ctx.adapters.backups.purge(target_of(st.node), st.account.username, st.service.id)
        manifest.update({"node": st.node.name, "account": st.account.username, **purged.as_dict(),
                         "proof": {"snapshot_ids": list(purged.backup_ids),
                                   "bytes_freed": purged.bytes_freed, "remaining": purged.remaining,
                                   "restic_check_ok": purged.check_ok}})
    else:
        manifest["note"] = "no backups on a node for this service"
    _finish_stage(ctx, st, "purge_backups", ServiceState.PURGED, manifest)
    with transaction(ctx.factory) as s:
        service_row(s, st.service.id).clock_on = None
    return StepResult(True, manifest)


def step_service_renew(ctx: StepContext, step: Step) -> StepResult:
    """A paid renewal: the term runs on from the ORIGINAL expiry (RULES 001 §2.4), also
    when paid late; a service shut down for expiry is switched on again."""
    service_id = int(step.params["service_id"])
    term = date.fromisoformat(str(step.params["term_expiry"]))
    months = int(step.params["months"])
    today = ctx.now().date()
    with transaction(ctx.factory) as s:
        service = service_row(s, service_id)
        if service.state in (ServiceState.DELETED.value, ServiceState.PURGED.value):
            raise StepFailed(step.key, f"service {service_id} is {service.state}: its data are "
                                       "gone; refund the renewal or provision anew")
        was = service.state
        target = renewed_expiry(term, months)
        # a domain's renew step has set the registry's expiry already: keep the later one
        new_expiry = max(target, service.expires_on or target)
        changed = service.expires_on != new_expiry or was == ServiceState.EXPIRED.value
        service.expires_on = new_expiry
        if was == ServiceState.EXPIRED.value:
            service.state = transition(was, ServiceState.ACTIVE).value
        policy = get_brand(s.get(Order, service.order_id).brand)  # type: ignore[union-attr]
        service.clock_on = next_clock_on(service.state, new_expiry, service.kind, service.name,
                                         policy, today) or earliest_event(new_expiry)
        service.updated_at = ctx.now()
        account, node = account_and_node(s, service_id)
        if changed:
            audit(s, SYSTEM, "service.renewed", "service", service_id,
                  {"from": term.isoformat(), "to": new_expiry.isoformat(), "was": was})
    if was == ServiceState.EXPIRED.value and account is not None and node is not None \
            and account.state != "removed":
        ctx.heartbeat()
        ctx.adapters.hosting.unsuspend(target_of(node), spec_of(account, policy)).raise_for_status(step.key)
    if was == ServiceState.EXPIRED.value and service.kind == "vps":
        vps.unsuspend(ctx, service_id)  # the machine shut down for expiry runs again
    return StepResult(changed, {"expires_on": new_expiry.isoformat(), "was": was})




HANDLERS: dict[str, Handler] = {
    "clock.reminder": step_reminder,
    "clock.shutdown": step_shutdown,
    "clock.delete_data": step_delete_data,
    "clock.purge_backups": step_purge_backups,
    "service.renew": step_service_renew,
}

PLANNERS: dict[str, LinePlanner] = {}  # no line kind of its own
