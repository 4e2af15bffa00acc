"""Audit log: every state change and every read of a customer's personal data.

A list read (services, payments, invoices, proformas, jobs) is audited like a single
read: one ``customer.read`` row per customer whose data the list showed, naming the list
(`audit_reads`). On a GDPR erasure the personal details in the customer's entries are
overwritten (`erase_personal`); who did what and when stays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import String, cast, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from provisioner.store.models import AuditEntry
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.audit")

#: What an erased personal detail in an audit entry becomes.
ERASED = "[erased: GDPR]"
#: Detail keys that hold a person's details whatever their value.
PERSONAL_KEYS = frozenset({"email", "phone", "address", "postal_code", "city", "payer", "company",
                           "vat_id", "recipient", "contact", "manager", "iban", "customer_name"})


def audit(
    session: Session,
    actor: str,
    action: str,
    entity: str,
    entity_id: object | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(AuditEntry(**audit_values(actor, action, entity, entity_id, detail)))


def audit_values(
    actor: str,
    action: str,
    entity: str,
    entity_id: object | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns of the entry `audit` writes (and its log line), for a caller that
    inserts many entries in one statement (``insert(AuditEntry)`` with a list)."""
    log.info("%s %s %s:%s", actor, action, entity, entity_id)
    return {"at": utcnow(), "actor": actor, "action": action, "entity": entity,
            "entity_id": None if entity_id is None else str(entity_id), "detail": detail}


def audit_reads(session: Session, actor: str, via: str, customer_ids: Iterable[int | None]) -> int:
    """A list read of personal data: one ``customer.read`` row per customer it showed
    (``via`` names the list and its filter), as a single read writes one. Returns how
    many rows were written."""
    ids = sorted({int(c) for c in customer_ids if c is not None})
    if ids:
        at = utcnow()
        session.execute(insert(AuditEntry), [
            {"at": at, "actor": actor, "action": "customer.read", "entity": "customer",
             "entity_id": str(c), "detail": {"via": via}} for c in ids])
    log.info("%s listed %s (%d customer(s))", actor, via, len(ids))
    return len(ids)


def _scrub(value: Any, needles: Sequence[str], key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, needles, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, needles, key) for v in value]
    if isinstance(value, str):
        if key in PERSONAL_KEYS or any(n in value.casefold() for n in needles):
            return ERASED
    elif key in PERSONAL_KEYS and value is not None:
        return ERASED
    return value


def erase_personal(session: Session, entities: Sequence[tuple[str, str]], details: Iterable[str | None]
                   ) -> int:
    """Overwrite a person's details in the audit log (GDPR erasure): in the entries about
    ``entities`` ((entity, id) pairs: the customer, their services, orders, payments), and
    in any other entry whose detail or actor names one of ``details`` distinctively (an
    e-mail address, or a text of 8 characters or more: a full name, a phone number), every
    value under a personal key (`PERSONAL_KEYS`) and every text holding one of ``details``
    becomes `ERASED`. Time, actor role, action and entity stay (the log of who did what).
    Returns how many entries changed."""
    needles = sorted({d.strip().casefold() for d in details if d and len(d.strip()) >= 4})
    matches: list[ColumnElement[bool]] = [
        (AuditEntry.entity == e) & (AuditEntry.entity_id == i) for e, i in entities]
    # a short word ("shop") would match strangers' entries: only distinctive ones are searched
    for n in (n for n in needles if "@" in n or len(n) >= 8):
        # the detail is stored as JSON text (non-ASCII escaped); search both spellings
        for spelling in {n, json.dumps(n)[1:-1]}:
            matches.append(cast(AuditEntry.detail, String).icontains(spelling, autoescape=True))
            matches.append(AuditEntry.actor.icontains(spelling, autoescape=True))
    if not matches:
        return 0
    changed = 0
    for row in session.execute(select(AuditEntry.id, AuditEntry.actor, AuditEntry.detail)
                               .where(or_(*matches))).all():
        detail = _scrub(row.detail, needles) if row.detail is not None else None
        actor = row.actor
        if any(n in actor.casefold() for n in needles):
            actor = f"{actor.split(':', 1)[0]}:{ERASED}" if ":" in actor else ERASED
        if detail != row.detail or actor != row.actor:
            session.execute(update(AuditEntry).where(AuditEntry.id == row.id)
                            .values(detail=detail, actor=actor[:100]))
            changed += 1
    return changed
