"""Audit log: every state change and every read of a customer's personal data."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from provisioner.store.models import AuditEntry
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.audit")


def audit(
    session: Session,
    actor: str,
    action: str,
    entity: str,
    entity_id: object | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            at=utcnow(),
            actor=actor,
            action=action,
            entity=entity,
            entity_id=None if entity_id is None else str(entity_id),
            detail=detail,
        )
    )
    log.info("%s %s %s:%s", actor, action, entity, entity_id)
