"""Ops hold a service: its clock stops until release. And what each stage removed."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.errors import Conflict, NotFound
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.lifecycle import StageRecord
from provisioner.store.models import (
    Service,
    Step,
)
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.lifecycle")
SYSTEM = "system:clock"


# -- hold -----------------------------------------------------------------------------------
def hold(factory: sessionmaker[Session], service_id: int, reason: str, actor: str) -> dict[str, Any]:
    """Stop the service's clock: nothing is shut down or deleted until ``release``. Clock
    steps not yet running are withdrawn (the sweep writes them again after release)."""
    reason = " ".join(str(reason).split())[:500]
    if not reason:
        raise Conflict("a hold needs a reason")
    with transaction(factory) as s:
        service = service_row(s, service_id)
        service.held = True
        service.hold_reason = reason
        service.clock_on = None
        withdrawn = _withdraw_clock_steps(s, service_id, ("pending", "queued", "failed"))
        audit(s, actor, "service.held", "service", service_id,
              {"reason": reason, "withdrawn": withdrawn})
        return {"service": service_id, "held": True, "reason": reason, "withdrawn": withdrawn}


def release(factory: sessionmaker[Session], service_id: int, actor: str,
            today: date | None = None) -> dict[str, Any]:
    with transaction(factory) as s:
        service = service_row(s, service_id)
        if not service.held:
            return {"service": service_id, "held": False}
        service.held = False
        service.hold_reason = None
        service.clock_on = today or utcnow().date()  # the next sweep catches up
        _withdraw_clock_steps(s, service_id, ("failed",))
        audit(s, actor, "service.released", "service", service_id)
        return {"service": service_id, "held": False}


def _withdraw_clock_steps(s: Session, service_id: int, states: tuple[str, ...]) -> int:
    res = s.execute(delete(Step).where(Step.service_id == service_id,
                                       Step.kind.in_(("clock.shutdown", "clock.delete_data",
                                                      "clock.purge_backups", "clock.reminder")),
                                       Step.state.in_(states)))
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def service_row(s: Session, service_id: int) -> Service:
    service = s.get(Service, service_id)
    if service is None:
        raise NotFound(f"no service {service_id}")
    return service


def stage_records(factory: sessionmaker[Session], service_id: int) -> list[dict[str, Any]]:
    with transaction(factory) as s:
        rows = s.execute(select(StageRecord).where(StageRecord.service_id == service_id)
                         .order_by(StageRecord.id)).scalars()
        return [{"stage": r.stage, "term_expiry": r.term_expiry.isoformat(),
                 "due_on": r.due_on.isoformat(), "done_on": r.done_on.isoformat(),
                 "manifest": r.manifest} for r in rows]
