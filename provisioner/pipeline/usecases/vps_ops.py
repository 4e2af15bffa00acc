"""Ops ask for a VPS resize or reinstall (``provisioner vps resize`` / ``reinstall``,
issue 14 item 4): checked here, then journaled as steps of the service's order
(`capabilities.vps_ops`) for the caller to dispatch. Nothing here reaches a host.

A resize to a plan with a smaller disk is refused before anything. A resize restarts the
machine, so outside the brand's maintenance window (23:00-05:00 Europe/Ljubljana) it is
refused (the CLI exits 4) and nothing is journaled, unless ops force it with a reason:
then the step carries the reason (the runner runs it at once) and the forcing is
audited. A reinstall seals a new root password now, for its step to install and deliver
by a new one-time link.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.config import Settings
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.lifecycle import StepState
from provisioner.errors import InvalidInput, NotFound
from provisioner.pipeline.capabilities.vps import NOTIFY_CREDENTIALS
from provisioner.pipeline.capabilities.vps_ops import LIVE, VPS_REINSTALL, VPS_RESIZE, notify_key_of
from provisioner.pipeline.engine.plan import StepSpec, service_step
from provisioner.pipeline.engine.runner import record
from provisioner.pipeline.usecases.maintenance import WindowCheck, check_window
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Order, Service, Step
from provisioner.store.vps import VpsMachine
from provisioner.store.vps_access import issued, reseal, vps_fernet
from provisioner.timeutil import utcnow

Factory = sessionmaker[Session]
#: A failed one does not block a new request (its reason is in the journal).
_UNFINISHED = (StepState.PENDING.value, StepState.QUEUED.value, StepState.RUNNING.value)


def _load(s: Session, service_id: int) -> tuple[Service, VpsMachine]:
    service = s.get(Service, service_id)
    if service is None:
        raise NotFound(f"no service {service_id}")
    machine = s.execute(select(VpsMachine).where(VpsMachine.service_id == service_id)).scalar_one_or_none()
    if service.kind != "vps" or machine is None:
        raise InvalidInput(f"service {service_id} has no VPS")
    if machine.state not in LIVE:
        raise InvalidInput(f"VPS {machine.id} of service {service_id} is {machine.state}: "
                           f"only a {' or '.join(LIVE)} machine can be changed")
    return service, machine


def _next_key(s: Session, service_id: int, kind: str) -> str:
    """``service:7/vps.resize#3``; refused while an earlier one is unfinished."""
    prefix = service_step(service_id, kind)
    mine = Step.key.startswith(f"{prefix}#", autoescape=True)
    busy = s.execute(select(Step.key).where(mine, Step.state.in_(_UNFINISHED))).scalars().first()
    if busy is not None:
        raise InvalidInput(f"{busy} is not finished yet: wait for it")
    earlier = s.execute(select(func.count()).select_from(Step).where(mine)).scalar_one()
    return f"{prefix}#{int(earlier) + 1}"


def request_resize(settings: Settings, factory: Factory, service_id: int, plan: str, actor: str, *,
                   force_reason: str | None = None, now: datetime | None = None
                   ) -> tuple[WindowCheck | None, dict[str, Any] | None]:
    """Journal a ``vps.resize`` of the service's machine to ``plan``. Returns the window
    check and the request; the request is None when the window refused it (nothing
    journaled, nothing audited). InvalidInput (nothing changed): no such plan, the same
    plan, a smaller disk, no live machine, an earlier resize unfinished."""
    target = DEFAULT_CATALOG.vps_plan(plan.strip())  # InvalidInput: no such plan
    now = now or utcnow()
    with transaction(factory) as s:
        service, machine = _load(s, service_id)
        current = DEFAULT_CATALOG.vps_plan(machine.plan)
        if current.code == target.code:
            raise InvalidInput(f"VPS {machine.id} is on {target.code} already")
        if target.disk_gb < current.disk_gb:
            raise InvalidInput(f"VPS {machine.id}: {target.code} has a {target.disk_gb} GB disk, smaller "
                               f"than its {current.disk_gb} GB ({current.code}); a disk is never "
                               "shrunk: refused")
        order = s.get(Order, service.order_id)
        assert order is not None
        gate = check_window(settings, now, force_reason, brand=order.brand)  # InvalidInput: empty reason
        if not gate.allowed:
            return gate, None
        key = _next_key(s, service_id, VPS_RESIZE)
        record(s, service.order_id, [StepSpec(key, VPS_RESIZE, (), {"service_id": service_id,
                                                                    "plan": target.code}, service_id)])
        audit(s, actor, "vps.resize_requested", "service", service_id,
              {"vps": machine.id, "from": current.code, "to": target.code, "step": key})
        reason = " ".join((force_reason or "").split()) if gate.forced else None
        if reason is not None:
            step = s.execute(select(Step).where(Step.key == key)).scalar_one()
            step.force_window, step.updated_at = reason, now
            audit(s, actor, "step.window_force_set", "step", key, {"reason": reason, "window": gate.window})
        return gate, {"service": service_id, "order": service.order_id, "vps_id": machine.id,
                      "step": key, "from": current.code, "to": target.code, "forced": reason}


def request_reinstall(settings: Settings, factory: Factory, service_id: int, actor: str, *,
                      now: datetime | None = None) -> dict[str, Any]:
    """Journal ``vps.reinstall#N -> notify.credentials#N`` for the service's machine, with
    a new root password sealed for it. InvalidInput (nothing changed): no live machine,
    its first access data not issued yet, an earlier reinstall unfinished (a failed one
    does not block a new one)."""
    now = now or utcnow()
    with transaction(factory) as s:
        service, machine = _load(s, service_id)
        key = _next_key(s, service_id, VPS_REINSTALL)
        if not issued(s, machine.id) and key.endswith("#1"):  # (after a failed reinstall: again)
            raise InvalidInput(f"VPS {machine.id}: its access data were not issued yet; "
                               "a reinstall waits for them")
        notify = notify_key_of(key)
        record(s, service.order_id, [
            StepSpec(key, VPS_REINSTALL, (), {"service_id": service_id}, service_id),
            StepSpec(notify, NOTIFY_CREDENTIALS, (key,), {"service_id": service_id}, service_id),
        ])
        reseal(s, machine.id, vps_fernet(settings), now)
        audit(s, actor, "vps.reinstall_requested", "service", service_id,
              {"vps": machine.id, "image": machine.image, "step": key})
        return {"service": service_id, "order": service.order_id, "vps_id": machine.id, "step": key,
                "notify": notify, "image": machine.image}
