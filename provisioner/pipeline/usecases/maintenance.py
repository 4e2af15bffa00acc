"""The maintenance window for ops (002 §12): a plan change of a hosting account (a
disruptive step), forcing a disruptive step to run now, and the window check a node
converge (and issue 15's fleet rollout) asks before it starts.

Disruptive steps themselves wait in the journal (`Runner._wait_for_window`); here ops
give the reason that lets them run outside the window. Every forcing is audited with its
reason and actor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.hosting.ansible import RunResult, run_playbook
from provisioner.config import Settings
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.lifecycle import StepState
from provisioner.domain.maintenance import describe, in_window, next_window_start
from provisioner.domain.policy import get_brand
from provisioner.errors import InvalidInput, NotFound
from provisioner.pipeline.capabilities.placement import target_of
from provisioner.pipeline.engine.plan import StepSpec, service_step
from provisioner.pipeline.engine.runner import record
from provisioner.pipeline.usecases.orders import find_order
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode
from provisioner.store.models import Service, Step
from provisioner.timeutil import utcnow

Factory = sessionmaker[Session]
#: The exit status of a command refused because the maintenance window is closed.
EXIT_OUTSIDE_WINDOW = 4
NODE_PLAYBOOK = "hosting_node.yml"
_UNFINISHED = (StepState.PENDING.value, StepState.QUEUED.value, StepState.FAILED.value)


def _reason(reason: str) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise InvalidInput("forcing work outside the maintenance window needs a reason")
    if len(text) > 500:
        raise InvalidInput("the reason is at most 500 characters")
    return text


def _force(s: Session, steps: list[Step], reason: str, now: datetime) -> list[str]:
    keys = []
    for step in steps:
        step.force_window = reason
        if step.state == StepState.QUEUED.value and step.next_attempt_at and step.next_attempt_at > now:
            step.next_attempt_at = now  # it waited for the window: due now
        step.updated_at = now
        keys.append(step.key)
    return keys


def request_plan_change(factory: Factory, service_id: int, plan: str, actor: str,
                        force_reason: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Journal a ``hosting.change_plan`` step moving the service's account to ``plan``
    (``provisioner services change-plan``); the caller dispatches its order. The step
    restarts the account's services, so it waits for the maintenance window unless
    ``force_reason`` is given (audited). Billing the change is not part of this."""
    target = DEFAULT_CATALOG.hosting_plan(plan.strip())  # InvalidInput: no such plan
    reason = _reason(force_reason) if force_reason is not None else None
    now = now or utcnow()
    with transaction(factory) as s:
        service = s.get(Service, service_id)
        if service is None:
            raise NotFound(f"no service {service_id}")
        account = s.execute(select(HostingAccount).where(HostingAccount.service_id == service_id)
                            ).scalar_one_or_none()
        if account is None or account.state not in ("active", "suspended"):
            raise InvalidInput(f"service {service_id} has no hosting account to change")
        if account.plan == target.code:
            raise InvalidInput(f"service {service_id} is on {target.code} already")
        prefix = service_step(service_id, "hosting.change_plan")
        earlier = s.execute(select(func.count()).select_from(Step)
                            .where(Step.key.startswith(f"{prefix}#", autoescape=True))).scalar_one()
        key = f"{prefix}#{int(earlier) + 1}"
        record(s, service.order_id, [StepSpec(key, "hosting.change_plan", (),
                                              {"service_id": service_id, "plan": target.code}, service_id)])
        audit(s, actor, "hosting.plan_change_requested", "service", service_id,
              {"from": account.plan, "to": target.code, "step": key})
        if reason is not None:
            step = s.execute(select(Step).where(Step.key == key)).scalar_one()
            _force(s, [step], reason, now)
            audit(s, actor, "step.window_force_set", "step", key, {"reason": reason})
        return {"service": service_id, "order": service.order_id, "step": key, "from": account.plan,
                "to": target.code, "forced": reason}


def force_order_window(factory: Factory, order_ref: str, reason: str, actor: str,
                       now: datetime | None = None) -> dict[str, Any]:
    """Let the order's unfinished steps run outside the maintenance window (``provisioner
    apply ORDER --force-window REASON``); audited with the reason."""
    reason = _reason(reason)
    now = now or utcnow()
    with transaction(factory) as s:
        order = find_order(s, order_ref)
        steps = list(s.execute(select(Step).where(Step.order_id == order.id,
                                                  Step.state.in_(_UNFINISHED))).scalars())
        keys = _force(s, steps, reason, now)
        audit(s, actor, "order.window_forced", "order", order.id, {"reason": reason, "steps": keys})
        return {"order": order.id, "steps": keys, "reason": reason}


def force_step_window(factory: Factory, key: str, reason: str, actor: str,
                      now: datetime | None = None) -> dict[str, Any]:
    """Let one step run outside the maintenance window (``provisioner force-window KEY``)."""
    reason = _reason(reason)
    now = now or utcnow()
    with transaction(factory) as s:
        step = s.execute(select(Step).where(Step.key == key.strip())).scalar_one_or_none()
        if step is None:
            raise NotFound(f"no step {key!r}")
        if step.state not in _UNFINISHED:
            raise InvalidInput(f"step {step.key} is {step.state}: nothing to force")
        _force(s, [step], reason, now)
        audit(s, actor, "step.window_force_set", "step", step.key, {"reason": reason})
        return {"step": step.key, "reason": reason}


@dataclass(frozen=True)
class WindowCheck:
    """Whether disruptive work may start now: inside the window, or forced with a reason."""

    allowed: bool
    in_window: bool
    forced: bool
    window: str
    next_opening: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "in_window": self.in_window, "forced": self.forced,
                "window": self.window, "next_opening": self.next_opening.isoformat()}


def check_window(settings: Settings, now: datetime, force_reason: str | None = None,
                 brand: str | None = None) -> WindowCheck:
    """The window check of disruptive work outside the journal (a node converge, a fleet
    rollout): the brand's window (default: the installation's brand) in
    ``maintenance_timezone``. A ``force_reason`` allows it outside the window."""
    window = get_brand(brand or settings.brand).maintenance_window
    tz = settings.maintenance_timezone
    open_now = in_window(now, window, tz)
    forced = not open_now and force_reason is not None
    if forced:
        _reason(force_reason or "")
    return WindowCheck(open_now or forced, open_now, forced, describe(window, tz),
                       next_window_start(now, window, tz))


def converge_node(settings: Settings, factory: Factory, name: str, *, force_reason: str | None,
                  actor: str, now: datetime | None = None,
                  run: Callable[..., RunResult] = run_playbook) -> tuple[WindowCheck, RunResult | None]:
    """Converge node ``name`` with the hosting_node playbook (it restarts the node's
    daemons): only inside the maintenance window, or forced with a reason (audited before
    the run). Returns the window check and the run (None when the window refused it)."""
    now = now or utcnow()
    gate = check_window(settings, now, force_reason)
    with transaction(factory) as s:
        node = s.execute(select(HostingNode).where(HostingNode.name == name)).scalar_one_or_none()
        if node is None:
            raise NotFound(f"no node {name!r}")
        if not gate.allowed:
            return gate, None
        if gate.forced:
            audit(s, actor, "node.window_forced", "node", node.name,
                  {"reason": _reason(force_reason or ""), "window": gate.window})
        audit(s, actor, "node.converge", "node", node.name, {"in_window": gate.in_window})
        s.expunge(node)
    result = run(NODE_PLAYBOOK, [target_of(node)], {}, ssh_key=settings.node_ssh_key_path,
                 known_hosts=settings.node_known_hosts_path, throwaway=node.throwaway)
    return gate, result

