"""Customers' data requests (RULES "Data protection"): export and erasure.

* Export: everything we hold about a customer, machine-readable (JSON-ready dict). The
  read itself is audited, like every access to personal data.
  It includes the customer's domain records (with the manager and payer kept for them)
  and the payment notifications about their proformas, without the raw bodies and
  without a payer who is someone else (other people's data).
* Erasure: refused while the customer has a service that is not finished (active,
  provisioning, suspended, failed, or expired with data still on a server). Otherwise
  the personal data are overwritten or deleted: the customer row, contacts, the domain
  records' manager and payer, the mails' recipient, and the personal details in the
  audit log entries about the customer (who did what and when stays). Invoices stay
  (kept 10 years: name, address and VAT id on them are an accounting record; legal
  basis `LEGAL_BASIS`) and so do the payment records they rest on, without the payer;
  the stored payment notifications behind them keep their amounts, ids and dates, while
  their raw bodies and payer fields are redacted; backups that still hold the data age
  out on their own (the brand's backup rotation).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from provisioner.domain.backups import gdpr_backups_gone_by
from provisioner.domain.lifecycle import ProformaState, ServiceState
from provisioner.domain.policy import get_brand
from provisioner.errors import Conflict, NotFound
from provisioner.store.audit import audit, erase_personal
from provisioner.store.db import transaction
from provisioner.store.domains import DomainRecord
from provisioner.store.hosting import HostingAccount
from provisioner.store.lifecycle import StageRecord
from provisioner.store.models import (
    AuditEntry,
    Contact,
    Customer,
    Invoice,
    Notification,
    Order,
    OutboxMail,
    Payment,
    Proforma,
    Service,
)
from provisioner.timeutil import utcnow

#: A customer with a service in one of these states still has a service with us.
UNFINISHED = frozenset({ServiceState.PROVISIONING, ServiceState.ACTIVE, ServiceState.SUSPENDED,
                        ServiceState.FAILED, ServiceState.EXPIRED})
_PERSON = ("name", "company", "vat_id", "email", "address", "postal_code", "city", "country",
           "phone", "lang")
#: What an erased notification's raw body becomes (the parsed notice keeps the accounting).
REDACTED_RAW = b"[redacted: GDPR erasure]"
#: Why invoices (and the payments and notifications they rest on) outlive an erasure.
LEGAL_BASIS = ("GDPR Art. 17(3)(b) and Art. 6(1)(c): retention required by law - the Slovenian "
               "VAT Act (ZDDV-1, Art. 141) keeps issued invoices 10 years, with the customer's "
               "name, address and VAT id as invoiced")
#: The notice fields a data export shows (no raw body: it may hold other people's data).
_NOTICE_FIELDS = ("kind", "txn_id", "amount", "currency", "proforma", "reference", "occurred_at",
                  "reverses_txn")


def _customer_notifications(s: Session, proforma_ids: list[int]) -> list[Notification]:
    """The payment notifications about the customer's proformas: found through the
    payments recorded against them, and the notices naming those transactions, proformas
    or their payment references (a second event for the same money, a reversal, a bank
    notice that was never recorded)."""
    if not proforma_ids:
        return []
    payments = s.execute(select(Payment.provider, Payment.txn_id, Payment.notification_id)
                         .where(Payment.proforma_id.in_(proforma_ids))).all()
    numbers, refs = [], []
    for number, ref in s.execute(select(Proforma.number, Proforma.reference)
                                 .where(Proforma.id.in_(proforma_ids))).all():
        numbers.append(number)
        refs.append(ref)
    txns = {(provider, txn) for provider, txn, _ in payments}
    matches: list[ColumnElement[bool]] = [
        Notification.id.in_([nid for _, _, nid in payments if nid is not None]),
        Notification.notice["proforma"].as_string().in_(numbers),
        Notification.notice["reference"].as_string().in_(refs)]
    if txns:
        ids = sorted({txn for _, txn in txns})
        matches += [Notification.notice["txn_id"].as_string().in_(ids),
                    Notification.notice["reverses_txn"].as_string().in_(ids)]
    found = []
    for note in s.execute(select(Notification).where(or_(*matches)).order_by(Notification.id)).scalars():
        notice = dict(note.notice) if isinstance(note.notice, dict) else {}
        ours = (notice.get("proforma") in numbers or notice.get("reference") in refs
                or note.id in {nid for _, _, nid in payments}
                or (note.provider, notice.get("txn_id")) in txns
                or (note.provider, notice.get("reverses_txn")) in txns)
        if ours:
            found.append(note)
    return found


def _redact_notifications(s: Session, proforma_ids: list[int]) -> int:
    """Redact the payment notifications about the customer's proformas: the raw body and
    the payer go; provider, event and transaction ids, amounts, currency, proforma,
    reference and dates stay (accounting records). Returns how many were redacted."""
    redacted = 0
    for note in _customer_notifications(s, proforma_ids):
        notice = dict(note.notice) if isinstance(note.notice, dict) else {}
        if note.raw == REDACTED_RAW and notice.get("payer") is None:
            continue
        notice["payer"] = None
        s.execute(update(Notification).where(Notification.id == note.id)
                  .values(raw=REDACTED_RAW, notice=notice))
        redacted += 1
    return redacted


def _erase_domains(s: Session, service_ids: list[int]) -> int:
    """The domain records' manager and payer (kept by us, never sent to a registry) and
    any transfer code go; name, handles, dates and status stay. Returns how many changed."""
    if not service_ids:
        return 0
    res = s.execute(update(DomainRecord).where(
        DomainRecord.service_id.in_(service_ids),
        or_(DomainRecord.manager.is_not(None), DomainRecord.payer.is_not(None),
            DomainRecord.transfer_auth.is_not(None)))
        .values(manager=None, payer=None, transfer_auth=None)
        .execution_options(synchronize_session=False))
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def _customer(s: Session, customer_id: int) -> Customer:
    c = s.get(Customer, customer_id)
    if c is None:
        raise NotFound(f"no customer {customer_id}")
    return c


def _domain_export(d: DomainRecord) -> dict[str, Any]:
    """A domain record as the customer may see it: no transfer code, no registry
    bookkeeping of a command in flight."""
    return {"service": d.service_id, "name": d.name, "tld": d.tld, "status": d.status,
            "registrant_handle": d.registrant, "contacts": d.contacts, "nameservers": d.nameservers,
            "whois_privacy": d.privacy, "manager": d.manager, "payer": d.payer,
            "registered_on": d.registered_on.isoformat() if d.registered_on else None,
            "expires_on": d.expires_on.isoformat() if d.expires_on else None}


def _notification_export(n: Notification, theirs: set[str]) -> dict[str, Any]:
    """A payment notification without other people's data: no raw body (a bank statement
    line or a processor's event may name others), and the payer only when it is the
    customer (by name, company or e-mail); someone else who paid is not shown."""
    notice = n.notice if isinstance(n.notice, dict) else {}
    payer = notice.get("payer")
    if isinstance(payer, str) and payer.strip().casefold() not in theirs:
        payer = "[another person: not shown]"
    return {"provider": n.provider, "event_id": n.event_id, "received_at": n.received_at.isoformat(),
            "status": n.status, **{k: notice.get(k) for k in _NOTICE_FIELDS}, "payer": payer}


def export_customer(factory: sessionmaker[Session], customer_id: int, actor: str) -> dict[str, Any]:
    with transaction(factory) as s:
        c = _customer(s, customer_id)
        orders = list(s.execute(select(Order).where(Order.customer_id == customer_id)
                                .order_by(Order.id)).scalars())
        order_ids = [o.id for o in orders]
        proformas = list(s.execute(select(Proforma).where(Proforma.order_id.in_(order_ids))
                                   .order_by(Proforma.id)).scalars()) if order_ids else []
        proforma_ids = [p.id for p in proformas]
        services = list(s.execute(select(Service).where(Service.customer_id == customer_id)
                                  .order_by(Service.id)).scalars())
        service_ids = [sv.id for sv in services]
        accounts = {a.service_id: a for a in s.execute(
            select(HostingAccount).where(HostingAccount.service_id.in_(service_ids))).scalars()
        } if service_ids else {}
        stages = list(s.execute(select(StageRecord).where(StageRecord.service_id.in_(service_ids))
                                .order_by(StageRecord.id)).scalars()) if service_ids else []
        payments = list(s.execute(select(Payment).where(Payment.proforma_id.in_(proforma_ids))
                                  .order_by(Payment.id)).scalars()) if proforma_ids else []
        invoices = list(s.execute(select(Invoice).where(Invoice.customer_id == customer_id)
                                  .order_by(Invoice.id)).scalars())
        mails = list(s.execute(select(OutboxMail).where(OutboxMail.recipient == c.email)
                               .order_by(OutboxMail.id)).scalars())
        domains = list(s.execute(select(DomainRecord).where(DomainRecord.service_id.in_(service_ids))
                                 .order_by(DomainRecord.id)).scalars()) if service_ids else []
        notifications = _customer_notifications(s, proforma_ids)
        theirs = {v.strip().casefold() for v in (c.name, c.company, c.email) if v}
        entities = [("customer", str(customer_id))] + [("service", str(i)) for i in service_ids] \
            + [("order", str(i)) for i in order_ids]
        trail = list(s.execute(select(AuditEntry).where(or_(*[
            (AuditEntry.entity == e) & (AuditEntry.entity_id == i) for e, i in entities]))
            .order_by(AuditEntry.id)).scalars())
        data = {
            "exported_at": utcnow().isoformat(),
            "customer": {"id": c.id, "brand": c.brand, **{k: getattr(c, k) for k in _PERSON},
                         "created_at": c.created_at.isoformat()},
            "contacts": [{"role": x.role, "name": x.name, "company": x.company, "email": x.email,
                          "address": x.address, "postal_code": x.postal_code, "city": x.city,
                          "country": x.country, "phone": x.phone}
                         for x in s.execute(select(Contact).where(Contact.customer_id == customer_id)
                                            .order_by(Contact.id)).scalars()],
            "orders": [{"id": o.id, "brand": o.brand, "status": o.status, "renewal": o.renewal,
                        "created_at": o.created_at.isoformat(),
                        "items": [{"kind": i.kind, "product": i.product, "name": i.name,
                                   "period_months": i.period_months, "action": i.action}
                                  for i in o.items]} for o in orders],
            "proformas": [{"number": p.number, "order": p.order_id, "state": p.state,
                           "issued_on": p.issued_on.isoformat(), "due_date": p.due_date.isoformat(),
                           "reference": p.reference, "gross": str(p.gross),
                           "lines": [{"description": ln.description, "gross": str(ln.gross)}
                                     for ln in p.lines]} for p in proformas],
            "payments": [{"provider": p.provider, "txn_id": p.txn_id, "kind": p.kind,
                          "amount": str(p.amount), "currency": p.currency, "payer": p.payer,
                          "reference": p.reference, "status": p.status,
                          "received_at": p.received_at.isoformat()} for p in payments],
            "invoices": [{"number": i.number, "issued_at": i.issued_at.isoformat(),
                          "gross": str(i.gross), "snapshot": i.snapshot} for i in invoices],
            "services": [{"id": sv.id, "kind": sv.kind, "product": sv.product, "name": sv.name,
                          "state": sv.state,
                          "expires_on": sv.expires_on.isoformat() if sv.expires_on else None,
                          "hosting_account": ({"username": accounts[sv.id].username,
                                               "domain": accounts[sv.id].domain,
                                               "state": accounts[sv.id].state}
                                              if sv.id in accounts else None)}
                         for sv in services],
            "deletion_records": [{"service": r.service_id, "stage": r.stage,
                                  "done_on": r.done_on.isoformat(), "manifest": r.manifest}
                                 for r in stages],
            "domains": [_domain_export(d) for d in domains],
            "payment_notifications": [_notification_export(n, theirs) for n in notifications],
            "emails": [{"template": m.template, "message_id": m.message_id,
                        "sent_at": m.sent_at.isoformat() if m.sent_at else None} for m in mails],
            "access_log": [{"at": a.at.isoformat(), "actor": a.actor, "action": a.action,
                            "entity": a.entity, "entity_id": a.entity_id} for a in trail],
        }
        audit(s, actor, "customer.exported", "customer", customer_id)
        return data


def erase_customer(factory: sessionmaker[Session], customer_id: int, actor: str) -> dict[str, Any]:
    with transaction(factory) as s:
        c = _customer(s, customer_id)
        if c.email.endswith("@erased.invalid"):
            return {"customer": customer_id, "erased": False, "note": "already erased"}
        services = list(s.execute(select(Service).where(Service.customer_id == customer_id)
                                  ).scalars())
        busy = [sv for sv in services if sv.state in {st.value for st in UNFINISHED}]
        if busy:
            listed = ", ".join(f"{sv.id} ({sv.kind} {sv.name}: {sv.state})" for sv in busy)
            raise Conflict(f"customer {customer_id} still has services: {listed}; erasure is "
                           "possible once none is active")
        # Unpaid orders go with the customer.
        order_ids = list(s.execute(select(Order.id).where(Order.customer_id == customer_id)).scalars())
        cancelled = 0
        redacted = 0
        if order_ids:
            cancelled = int(s.execute(update(Proforma).where(
                Proforma.order_id.in_(order_ids), Proforma.state == ProformaState.OPEN.value)
                .values(state=ProformaState.CANCELLED.value)).rowcount or 0)  # type: ignore[attr-defined]
            s.execute(update(Service).where(
                Service.customer_id == customer_id,
                Service.state == ServiceState.PENDING_PAYMENT.value)
                .values(state=ServiceState.CANCELLED.value, clock_on=None, updated_at=utcnow()))
            proforma_ids = list(s.execute(select(Proforma.id).where(
                Proforma.order_id.in_(order_ids))).scalars())
            if proforma_ids:
                redacted = _redact_notifications(s, proforma_ids)
                s.execute(update(Payment).where(Payment.proforma_id.in_(proforma_ids))
                          .values(payer=None))
        old_email = c.email
        s.execute(update(OutboxMail).where(OutboxMail.recipient == old_email)
                  .values(recipient=f"erased-{customer_id}@erased.invalid"))
        service_ids = [sv.id for sv in services]
        domains = _erase_domains(s, service_ids)
        people = [c.name, c.company, c.vat_id, c.email, c.address, c.phone] + [
            v for x in s.execute(select(Contact).where(Contact.customer_id == customer_id)).scalars()
            for v in (x.name, x.company, x.email, x.address, x.phone)]
        payment_ids = list(s.execute(select(Payment.id).join(Proforma, Proforma.id == Payment.proforma_id)
                                     .where(Proforma.order_id.in_(order_ids))).scalars()) if order_ids else []
        entities = ([("customer", str(customer_id))] + [("service", str(i)) for i in service_ids]
                    + [("order", str(i)) for i in order_ids] + [("payment", str(i)) for i in payment_ids])
        audit_erased = erase_personal(s, entities, people)
        s.execute(delete(Contact).where(Contact.customer_id == customer_id))
        c.name = f"erased customer {customer_id}"
        c.company = None
        c.vat_id = None
        c.email = f"erased-{customer_id}@erased.invalid"
        c.address = ""
        c.postal_code = ""
        c.city = ""
        c.phone = ""
        brands = {b for (b,) in s.execute(select(Order.brand).where(Order.customer_id == customer_id))}
        rotation = max((get_brand(b).gdpr_backup_rotation_days for b in brands), default=60)
        years = max((get_brand(b).invoice_retention_years for b in brands), default=10)
        invoices = list(s.execute(select(Invoice.number).where(Invoice.customer_id == customer_id)
                                  ).scalars())
        # the nightly `restic forget --keep-daily N --prune` (N <= the rotation) makes it so
        gone_by = max((gdpr_backups_gone_by(utcnow().date(), get_brand(b)) for b in brands),
                      default=(utcnow() + timedelta(days=rotation)).date()).isoformat()
        note = (f"customer {customer_id} erased; {len(invoices)} invoice(s) kept for {years} years "
                f"with the name, address and VAT id as invoiced ({LEGAL_BASIS}); {redacted} payment "
                f"notification(s) redacted (raw body and payer gone; amounts, ids and dates kept); "
                f"{domains} domain record(s) without manager and payer; personal details gone from "
                f"{audit_erased} audit log entries; personal data may remain in backups until "
                f"{gone_by}, when they are rotated out ({rotation} days)")
        audit(s, actor, "customer.erased", "customer", customer_id,
              {"invoices_kept": invoices, "proformas_cancelled": cancelled,
               "notifications_redacted": redacted, "domains_erased": domains,
               "audit_entries_erased": audit_erased, "legal_basis": LEGAL_BASIS,
               "backups_rotated_out_by": gone_by})
        return {"customer": customer_id, "erased": True, "invoices_kept": invoices,
                "proformas_cancelled": cancelled, "notifications_redacted": redacted,
                "domains_erased": domains, "audit_entries_erased": audit_erased,
                "legal_basis": LEGAL_BASIS,
                "backups_rotated_out_by": gone_by, "note": note}
