"""Domain steps: register, transfer, renew, name servers (issue 6), and what must happen
at the registry before its cut-off (issue 17).

Plan per domain line (``service:{id}/...``):
  register: ``domain.register`` -> ``domain.nameservers`` (-> ``activate`` by the core)
  transfer: ``domain.transfer`` -> ``domain.nameservers``
  renew:    ``domain.renew`` (a domain in its redemption period is restored first; after
            the registry's cut-off a domain that cannot be restored is refused, clearly)
The clock writes ``clock.registry_cutoff`` for an unpaid term on the TLD profile's lapse
day (``domain.tld_profiles``): an auto-renewing domain is deleted, or set not to renew
where the registry supports it, before the registry renews it at our cost.
``withdraw_registration`` deletes a never-activated .si registration with a refund.

Every handler observes the registry before it acts. A transforming command whose answer
is lost (timeout, dropped connection) is followed by ``domain:info``: if we are the
sponsoring registrar the step succeeded, so a domain is never registered, renewed or
billed twice. Before a command is sent, a marker (``DomainRecord.pending``) is written,
so a re-run after a crash knows what may already have happened.

Failures that retrying cannot fix (a taken name, a wrong transfer code, a name the policy
refuses) raise ``Conflict`` / ``InvalidInput``: the runner fails the step at once, flags
the order for refund and alerts ops; the customer gets the ``domain_failed`` e-mail.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.registry import (
    AuthorizationFailed,
    DomainInfo,
    EppClient,
    ObjectExists,
    ObjectNotFound,
    OutcomeUnknown,
    RegistryContact,
    StatusProhibits,
    TldProfile,
    profile_for,
)
from provisioner.config import Settings
from provisioner.domain import customers as dc
from provisioner.domain.lifecycle import (
    ProformaState,
    ServiceState,
    add_period,
    earliest_event,
    transition,
)
from provisioner.domain.names import normalize_domain
from provisioner.domain.policy import get_brand
from provisioner.domain.tld_profiles import (
    RESTORE_FEE_DESCRIPTION,
    Withdrawable,
    domain_withdrawable,
    registry_profile,
)
from provisioner.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotFound,
    StepFailed,
    TransientError,
)
from provisioner.keyfiles import fernet_from
from provisioner.pipeline.engine.plan import (
    LinePlanner,
    OrderView,
    PlanOptions,
    ServiceView,
    StepSpec,
    service_step,
)
from provisioner.pipeline.engine.ports import need
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult
from provisioner.pipeline.outbox import step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.domains import DomainRecord
from provisioner.store.models import Contact, Customer, Order, Proforma, ProformaLine, Service, Step
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.domains")
SYSTEM = "system:pipeline"


# -- plan ------------------------------------------------------------------------------
def plan_domain(view: OrderView, service: ServiceView, options: PlanOptions) -> list[StepSpec]:
    params: dict[str, Any] = {"service_id": service.id, "name": service.name,
                              "years": max(service.period_months // 12, 1)}
    if service.action == "renew":  # one key per term: next year's renewal is a new step
        params.update(term_expiry=service.term_expiry, proforma_id=view.proforma_id)
        return [StepSpec(service_step(service.id, "domain.renew", service.term_expiry),
                         "domain.renew", (), params, service.id)]
    first = "domain.transfer" if service.action == "transfer" else "domain.register"
    first_key = service_step(service.id, first)
    return [
        StepSpec(first_key, first, (), params, service.id),
        StepSpec(service_step(service.id, "domain.nameservers"), "domain.nameservers", (first_key,),
                 {"service_id": service.id, "name": service.name}, service.id),
    ]


# -- pure helpers ----------------------------------------------------------------------
def our_nameservers(settings: Settings) -> list[str]:
    names = [n.strip() for n in settings.nameservers.split(",") if n.strip()]
    if len(names) < 2:
        raise ConfigurationError("at least two name servers must be configured (nameservers)")
    return sorted({normalize_domain(n) for n in names})


def renewal_due_on(tld: str, expires_on: date, brand: str = "fcb") -> date:
    """The day the provider renews a domain at the registry: on expiry, or earlier for
    TLDs that must be renewed before expiry (.eu, .at: 5 days). The lifecycle clock reads
    this to drive ``domain.renew``."""
    return expires_on - timedelta(days=get_brand(brand).early_renew_days(tld))


def si_refund_allowed(record: DomainRecord, today: date, brand: str = "fcb") -> bool:
    """A .si registration that was never activated (no name servers) may be deleted with
    a refund within the refund window (Register.si rule, brand policy: 15 days)."""
    activated = bool(record.nameservers) or record.activated_on is not None
    return domain_withdrawable(f"x.{record.tld}", record.registered_on, activated, today,
                               get_brand(brand)).allowed


def contact_handle(customer_id: int, contact: dc.Contact, profile: TldProfile, privacy: bool) -> str:
    """A stable registry handle (3-16 characters): the same data give the same handle, so
    a re-run finds the contact it created; changed data give a new contact."""
    fields = "|".join([str(customer_id), contact.role.value, profile.contact_extension,
                       contact.name, contact.company or "", contact.email, contact.address,
                       contact.postal_code, contact.city, contact.country, contact.phone,
                       str(privacy)])
    digest = base64.b32encode(hashlib.sha256(fields.encode()).digest()).decode()[:8]
    return f"PV{customer_id % 10**5}{contact.role.value[0].upper()}{digest}"


def registry_contacts(customer_id: int, contacts: dict[dc.ContactRole, dc.Contact],
                      profile: TldProfile, privacy_default: bool,
                      lang: str = "en") -> dict[str, RegistryContact]:
    """owner/admin/tech as the registry gets them (billing and manager never)."""
    out: dict[str, RegistryContact] = {}
    for role, c in dc.registry_contacts(contacts).items():
        privacy = privacy_default and not c.company
        out[role.value] = RegistryContact(
            handle=contact_handle(customer_id, c, profile, privacy), name=c.name, email=c.email,
            street=c.address, city=c.city, postal_code=c.postal_code, country=c.country,
            phone=c.phone, org=c.company, privacy=privacy, role=role.value,
            lang=lang if lang in ("en", "sl") else "en",
        )
    return out


# -- transfer codes (kept encrypted, only until used) ------------------------------------
def _fernet(settings: Settings) -> MultiFernet:
    return fernet_from(settings.domain_auth_key, settings.effective_key_dir / "domain-auth.key",
                       "domain_auth_key", legacy=Path(settings.data_dir) / "registry" / "auth.key")


def set_transfer_code(factory: sessionmaker[Session], settings: Settings, service_id: int, code: str,
                      actor: str = "ops") -> None:
    """Keep the customer's transfer (auth) code for a domain transfer, encrypted."""
    if not isinstance(code, str) or not 1 <= len(code.strip()) <= 64 or not code.strip().isprintable():
        raise InvalidInput("a transfer code is 1-64 printable characters")
    token = _fernet(settings).encrypt(code.strip().encode())
    with transaction(factory) as s:
        service = s.get(Service, service_id)
        if service is None or service.kind != "domain":
            raise NotFound(f"no domain service {service_id}")
        record = _record(s, service)
        record.transfer_auth = token
        audit(s, actor, "domain.transfer_code_set", "service", service_id)


def _transfer_code(settings: Settings, record: DomainRecord) -> str | None:
    if not record.transfer_auth:
        return None
    try:
        return _fernet(settings).decrypt(record.transfer_auth).decode()
    except InvalidToken:
        raise ConfigurationError("the stored transfer code cannot be decrypted (key changed?)") from None


# -- adapters and records --------------------------------------------------------------
def _client(ctx: StepContext) -> EppClient:
    return need(ctx.adapters.registry, "a domain registry (settings registry_*)")


def _record(s: Session, service: Service) -> DomainRecord:
    record = s.execute(
        select(DomainRecord).where(DomainRecord.service_id == service.id)
    ).scalar_one_or_none()
    if record is None:
        now = _now()
        record = DomainRecord(service_id=service.id, name=service.name,
                              tld=service.name.rsplit(".", 1)[-1], status="pending", contacts={},
                              nameservers=[], statuses=[], privacy=True, created_at=now,
                              updated_at=now)
        s.add(record)
        s.flush()
    return record


def _now() -> datetime:
    return utcnow()


def _customer(c: Customer) -> dc.Customer:
    return dc.Customer(name=c.name, email=c.email, address=c.address,
                       postal_code=c.postal_code, city=c.city, country=c.country,
                       phone=c.phone, company=c.company, vat_id=c.vat_id, lang=c.lang)


def _contact(row: Contact) -> dc.Contact:
    return dc.Contact(role=dc.ContactRole(row.role), name=row.name, email=row.email,
                      address=row.address, postal_code=row.postal_code, city=row.city,
                      country=row.country, phone=row.phone, company=row.company)


def _kept(c: dc.Contact | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"name": c.name, "company": c.company, "email": c.email, "phone": c.phone}


class _Job:
    """What a domain step needs, read in one transaction."""

    def __init__(self, ctx: StepContext, step: Step) -> None:
        self.ctx = ctx
        self.step = step
        self.service_id = int(step.params["service_id"])
        with transaction(ctx.factory) as s:
            service = s.get(Service, self.service_id)
            if service is None:
                raise StepFailed(step.key, f"service {self.service_id} does not exist")
            # hostile input is refused here, before any EPP traffic
            self.name = normalize_domain(service.name)
            self.tld = self.name.rsplit(".", 1)[1]
            order = s.get(Order, service.order_id)
            self.brand = order.brand if order is not None else "fcb"
            self.profile = profile_for(self.tld, get_brand(self.brand))
            self.years = self.profile.check_period(max(service.period_months // 12, 1))
            customer = s.get(Customer, service.customer_id)
            assert customer is not None
            self.customer_id = customer.id
            self.email = customer.email
            self.lang = customer.lang
            rows = {r.role: _contact(r) for r in s.execute(
                select(Contact).where(Contact.customer_id == customer.id)).scalars()}
            contacts = dc.contacts_for_domain(
                _customer(customer), admin=rows.get("admin"), tech=rows.get("tech"))
            self.contacts = registry_contacts(customer.id, contacts, self.profile,
                                              ctx.settings.whois_privacy_default, customer.lang)
            record = _record(s, service)
            record.privacy = self.contacts["owner"].privacy
            record.manager = _kept(rows.get("manager")) or _kept(contacts[dc.ContactRole.OWNER])
            record.payer = _kept(rows.get("billing")) or _kept(contacts[dc.ContactRole.OWNER])
            self.record_id = record.id
            self.registry_action = record.registry_action
            self.pending = dict(record.pending or {})
            self.known_expiry = record.expires_on
            self.transfer_code = _transfer_code(ctx.settings, record)
        self.client = _client(ctx)
        self.ours = self.client.config.login

    # -- registry observations -------------------------------------------------------
    def info(self, auth: str | None = None) -> DomainInfo | None:
        try:
            return self.client.info_domain(self.name, auth_info=auth)
        except ObjectNotFound:
            return None

    def mark_pending(self, op: str, **extra: Any) -> None:
        with transaction(self.ctx.factory) as s:
            record = s.get(DomainRecord, self.record_id)
            assert record is not None
            record.pending = {"step": self.step.key, "op": op, **extra}
            record.updated_at = _now()

    def save(self, info: DomainInfo, status: str, done: dict[str, Any] | None = None,
             **extra: Any) -> None:
        """Record what the registry answered; the service's expiry is the registry's."""
        with transaction(self.ctx.factory) as s:
            record = s.get(DomainRecord, self.record_id)
            assert record is not None
            record.status = status
            record.roid = info.roid
            record.sponsor = info.sponsor
            record.registrant = info.registrant
            record.contacts = {k: list(v) for k, v in info.contacts.items()}
            record.nameservers = list(info.nameservers)
            record.statuses = list(info.statuses)
            record.expires_on = info.expires
            if info.nameservers and record.activated_on is None:
                record.activated_on = self.ctx.now().date()  # .si: activated, no refund
            # a finished renewal keeps its marker: a re-run of the same step renews nothing
            record.pending = done
            record.detail = None
            record.updated_at = _now()
            for key, value in extra.items():
                setattr(record, key, value)
            service = s.get(Service, self.service_id)
            if service is not None and info.expires is not None:
                if service.expires_on != info.expires:
                    service.expires_on = info.expires
                    service.clock_on = earliest_event(info.expires)  # the sweep's next look
                service.updated_at = _now()
            audit(s, SYSTEM, f"domain.{status}", "service", self.service_id,
                  {"name": self.name, "expires_on": str(info.expires)})

    # -- failure the customer is told about ------------------------------------------
    def refuse(self, exc_type: type[InvalidInput], reason: str, action: str) -> InvalidInput:
        """Record the failure, tell the customer once, and return the error to raise."""
        with transaction(self.ctx.factory) as s:
            record = s.get(DomainRecord, self.record_id)
            assert record is not None
            record.status = "failed"
            record.pending = None
            record.detail = reason
            record.transfer_auth = None
            record.updated_at = _now()
        try:
            notify_failed(self.ctx, f"{self.step.key}/notify", self.customer_id, self.name,
                          action, reason)
        except Exception:  # noqa: BLE001 - the ops alert still goes out; the mail is best effort
            log.exception("could not e-mail the customer about %s", self.name)
        return exc_type(f"{self.name}: {reason}")


# -- customer e-mail -------------------------------------------------------------------
def display_name(name: str) -> str:
    try:
        return name.encode("ascii").decode("idna")
    except UnicodeError:
        return name


def notify_failed(ctx: StepContext, key: str, customer_id: int, name: str, action: str,
                  reason: str) -> bool:
    """E-mail "we could not register/transfer X; you will be refunded", once per key."""
    with transaction(ctx.factory) as s:
        customer = s.get(Customer, customer_id)
        assert customer is not None
        recipient, lang = customer.email, customer.lang
        context = {
            "customer": {"name": customer.name, "company": customer.company,
                         "email": customer.email, "lang": customer.lang},
            "domain": {"name": name, "display": display_name(name), "action": action,
                       "reason": reason},
        }
    return step_outbox(ctx).send_once(key, recipient, "domain_failed", lang, context).sent_now


# -- registry helpers ------------------------------------------------------------------
def ensure_contacts(client: EppClient, contacts: dict[str, RegistryContact], tld: str) -> dict[str, str]:
    """Create the contacts the registry does not have yet; returns role -> handle."""
    for contact in {c.handle: c for c in contacts.values()}.values():
        try:
            info = client.info_contact(contact.handle)
        except ObjectNotFound:
            info = None
        if info is not None:
            if info.sponsor != client.config.login:
                raise StepFailed("?", f"contact handle {contact.handle} belongs to {info.sponsor}")
            continue
        auth = base64.b32encode(os.urandom(10)).decode()[:16]
        try:
            client.create_contact(contact, tld, auth)
        except (ObjectExists, OutcomeUnknown):
            client.info_contact(contact.handle)  # created by the lost attempt: fine
    return {role: c.handle for role, c in contacts.items()}


def ensure_hosts(client: EppClient, hosts: Sequence[str]) -> None:
    missing = [h for h, avail in client.check_hosts(list(hosts)).items() if avail]
    for host in missing:
        try:
            client.create_host(host)
        except ObjectExists:
            pass


# -- handlers --------------------------------------------------------------------------
def step_domain_register(ctx: StepContext, step: Step) -> StepResult:
    job = _Job(ctx, step)
    client = job.client
    nameservers = our_nameservers(ctx.settings)
    # observe: ours already (an earlier attempt whose answer was lost)? someone else's?
    info = job.info()
    if info is not None and info.sponsor == job.ours:
        job.save(info, "registered", registered_on=info.created.date() if info.created else None)
        return StepResult(False, {"name": job.name, "expires_on": str(info.expires)})
    if info is not None:
        raise job.refuse(Conflict, "the name is already registered by someone else", "register")
    check = client.check_domains([job.name]).get(job.name)
    if check is not None and not check.available:
        raise job.refuse(Conflict, f"the name is not available ({check.reason or 'taken'})",
                         "register")
    handles = ensure_contacts(client, job.contacts, job.tld)
    ensure_hosts(client, nameservers)
    job.mark_pending("create")
    ctx.heartbeat()
    try:
        client.create_domain(job.name, job.years, handles["owner"],
                             {"admin": handles["admin"], "tech": handles["tech"]}, nameservers,
                             auth_info=base64.b32encode(os.urandom(10)).decode()[:16])
    except (OutcomeUnknown, ObjectExists) as exc:
        # The create may have happened: ask before anything else.
        info = job.info()
        if info is None or info.sponsor != job.ours:
            if isinstance(exc, ObjectExists):
                raise job.refuse(Conflict, "the name was registered by someone else", "register") from None
            raise TransientError(f"{job.name}: create outcome unknown and not registered: {exc}") from None
        log.warning("domain:create %s: answer lost, but the domain is ours", job.name)
    info = job.info()
    if info is None or info.sponsor != job.ours:
        raise TransientError(f"{job.name}: created but domain:info does not show it as ours yet")
    job.save(info, "registered", registered_on=info.created.date() if info.created else None)
    return StepResult(True, {"name": job.name, "expires_on": str(info.expires),
                             "roid": info.roid})


def step_domain_transfer(ctx: StepContext, step: Step) -> StepResult:
    job = _Job(ctx, step)
    client = job.client
    info = job.info()
    if info is not None and info.sponsor == job.ours:
        # ours already: an earlier attempt's transfer went through (its answer was lost)
        job.save(info, "registered", transfer_auth=None)
        return StepResult(False, {"name": job.name, "expires_on": str(info.expires)})
    if info is None:
        raise job.refuse(InvalidInput, "the domain is not registered, so it cannot be transferred",
                         "transfer")
    code = job.transfer_code
    if not code:
        raise job.refuse(InvalidInput, "no transfer (auth) code was given for the domain", "transfer")
    job.mark_pending("transfer", **{"from": str(info.expires)})
    try:
        tr = client.transfer_domain("request", job.name, code)
    except AuthorizationFailed:
        raise job.refuse(InvalidInput, "the transfer (auth) code is wrong or has expired",
                         "transfer") from None
    except OutcomeUnknown as exc:
        info = job.info()
        if info is None or info.sponsor != job.ours:
            raise TransientError(f"{job.name}: transfer outcome unknown: {exc}") from None
        tr = None
    if tr is not None and tr.status == "pending":
        raise TransientError(f"{job.name}: transfer pending at the registry until {tr.action_at}")
    info = job.info()
    if info is None or info.sponsor != job.ours:
        raise TransientError(f"{job.name}: transfer done but domain:info does not show it as ours")
    job.save(info, "registered", transfer_auth=None)
    return StepResult(True, {"name": job.name, "expires_on": str(info.expires)})


def step_domain_nameservers(ctx: StepContext, step: Step) -> StepResult:
    job = _Job(ctx, step)
    client = job.client
    wanted = our_nameservers(ctx.settings)
    info = job.info()
    if info is None or info.sponsor != job.ours:
        raise StepFailed(step.key, f"{job.name} is not sponsored by us at the registry")
    current = set(info.nameservers)
    add = [h for h in wanted if h not in current]
    rem = sorted(current - set(wanted))
    if add or rem:
        ensure_hosts(client, add)
        client.update_domain(job.name, add_ns=add, rem_ns=rem)
        info = job.info()
        assert info is not None
    job.save(info, "registered")
    return StepResult(bool(add or rem), {"nameservers": list(info.nameservers)})


def step_domain_renew(ctx: StepContext, step: Step) -> StepResult:
    """Renew at the registry; a domain in its redemption period (quarantine) is restored
    first (RFC 3915) while its profile allows. After the cut-off a domain we deleted or set
    not to renew, or one past its redemption, is refused with a clear error (the runner
    fails the line and flags the refund) instead of a registry failure."""
    job = _Job(ctx, step)
    client = job.client
    info = job.info()
    if info is None or info.sponsor != job.ours or info.expires is None:
        raise StepFailed(step.key, f"{job.name} is not ours at the registry; cannot renew")
    mine = job.pending if job.pending.get("step") == step.key else {}
    if mine.get("done") or (mine.get("from") and str(info.expires) != mine["from"]):
        # this step renewed it already (an earlier run, or one whose answer was lost)
        job.save(info, "registered", done={**mine, "done": True})
        return StepResult(False, {"name": job.name, "expires_on": str(info.expires)})
    today = ctx.now().date()
    profile = registry_profile(job.tld)
    term = _date_param(step, "term_expiry") or info.expires
    restore = info.in_redemption
    stopped = job.registry_action in ("deleted", "not_renewing") and not restore
    until = profile.restorable_until(term)
    if stopped or (restore and (until is None or today > until)):
        why = (f"we told the registry not to renew it ({job.registry_action})" if stopped
               else "it is in quarantine and can no longer be restored" if until is not None
               else f".{job.tld} domains cannot be restored once they lapse")
        raise InvalidInput(f"{job.name}: renewal refused: past the registry's cut-off "
                           f"({profile.cutoff_on(term).isoformat()}); {why}. Refund the "
                           "renewal; the name can be registered anew once it is free.")
    restore_fee = _restore_fee_paid(ctx, step) if restore else None
    job.mark_pending("renew", **{"from": str(info.expires), "restore": restore})
    if restore:
        ctx.heartbeat()
        try:
            client.restore_domain(job.name)
        except (OutcomeUnknown, StatusProhibits) as exc:
            again = job.info()
            if again is None or again.in_redemption:
                raise TransientError(f"{job.name}: restore outcome unknown: {exc}") from None
        if restore_fee is None and profile.restore_fee:
            log.warning("restore of %s: no restore fee on the proforma", job.name)
    restored = job.info() if restore else None
    # a registry that renews with the restore (the domain had expired) needs no renew
    if restored is None or restored.expires == info.expires:
        try:
            client.renew_domain(job.name, info.expires, job.years)
        except OutcomeUnknown as exc:
            after = job.info()
            if after is None or after.expires == info.expires:
                raise TransientError(f"{job.name}: renew outcome unknown: {exc}") from None
    elif job.years > 1 and restored.expires == add_period(info.expires, 12):
        client.renew_domain(job.name, restored.expires, job.years - 1)  # the rest of the term
    after = job.info()
    assert after is not None
    expected = add_period(info.expires, 12 * job.years)
    if after.expires != expected:
        log.warning("renew %s: registry expiry %s, expected %s", job.name, after.expires, expected)
    extra: dict[str, Any] = {}
    if restore:
        extra = {"registry_action": "restored", "registry_action_on": today}
    job.save(after, "registered", done={"step": step.key, "op": "renew", "from": str(info.expires),
                                        "done": True, "restored": restore}, **extra)
    details: dict[str, Any] = {"name": job.name, "expires_on": str(after.expires)}
    if restore:
        details["restored"] = {"fee_on_proforma": str(restore_fee) if restore_fee else None}
    return StepResult(True, details)


def _date_param(step: Step, key: str) -> date | None:
    value = step.params.get(key)
    return date.fromisoformat(str(value)) if value else None


def _restore_fee_paid(ctx: StepContext, step: Step) -> Decimal | None:
    """The restore fee on the renewal proforma this step carries out (None: none)."""
    proforma_id = step.params.get("proforma_id")
    if not proforma_id:
        return None
    with transaction(ctx.factory) as s:
        fee = s.execute(select(ProformaLine.gross).where(
            ProformaLine.proforma_id == int(proforma_id),
            ProformaLine.description == RESTORE_FEE_DESCRIPTION)).scalar()
    return Decimal(fee) if fee is not None else None


# -- the registry's cut-off (written by the clock for an unpaid term) ----------------------
def step_registry_cutoff(ctx: StepContext, step: Step) -> StepResult:
    """The lapse day of an unpaid term (``TldRegistryProfile.lapse_on``): an auto-renewing
    domain is deleted, or scheduled for deletion at expiry where the registry supports it
    (.at), so the registry does not renew it at our cost. A lapsing one (.si, .eu) needs
    nothing: what the registry shows is recorded. Never before its day; a renewal paid
    meanwhile stops it."""
    service_id = int(step.params["service_id"])
    term = date.fromisoformat(str(step.params["term_expiry"]))
    due_on = date.fromisoformat(str(step.params["due_on"]))
    today = ctx.now().date()
    if today < due_on:
        raise StepFailed(step.key, f"not due before {due_on.isoformat()} (today {today})")
    with transaction(ctx.factory) as s:
        service = s.get(Service, service_id)
        proforma = s.execute(select(Proforma).where(
            Proforma.number == str(step.params.get("proforma", "")))).scalar_one_or_none()
        if service is None or service.expires_on != term:
            return StepResult(False, {"skipped": "the term was renewed"})
        if proforma is not None and proforma.state == ProformaState.PAID.value:
            return StepResult(False, {"skipped": "the renewal was paid"})
    job = _Job(ctx, step)
    client = job.client
    profile = registry_profile(job.tld)
    info = job.info()
    if info is None or info.sponsor != job.ours:
        return StepResult(False, {"skipped": f"{job.name} is not ours at the registry"})
    if info.expires is not None and info.expires > term:
        # the registry renewed it already: it cost us a year; ops must know
        raise StepFailed(step.key, f"{job.name} was renewed by the registry to {info.expires} "
                                   "before the cut-off action ran")
    if not profile.auto_renews or info.in_redemption:
        job.save(info, "registered" if not info.in_redemption else "deleted",
                 registry_action="lapsed" if not profile.auto_renews else "deleted",
                 registry_action_on=today)
        return StepResult(False, {"name": job.name, "lapsed": True,
                                  "in_redemption": info.in_redemption})
    at_expiry = profile.do_not_renew and client.profile(job.name).delete_at_expiry
    job.mark_pending("cutoff", at_expiry=at_expiry)
    ctx.heartbeat()
    try:
        client.delete_domain(job.name, at_expiry=at_expiry)
    except (OutcomeUnknown, StatusProhibits) as exc:
        again = job.info()
        if again is not None and not again.in_redemption and not at_expiry:
            raise TransientError(f"{job.name}: delete outcome unknown: {exc}") from None
        if at_expiry and isinstance(exc, OutcomeUnknown):
            raise TransientError(f"{job.name}: scheduling the deletion: {exc}") from None
    after = job.info()
    action = "not_renewing" if at_expiry else "deleted"
    if after is None:  # gone at once (a registry that frees the name immediately)
        with transaction(ctx.factory) as s:
            record = s.get(DomainRecord, job.record_id)
            assert record is not None
            record.status, record.registry_action, record.registry_action_on = (
                "deleted", action, today)
            record.pending = None
            audit(s, SYSTEM, "domain.deleted", "service", service_id, {"name": job.name})
    else:
        job.save(after, "deleted" if action == "deleted" else "registered",
                 registry_action=action, registry_action_on=today)
    return StepResult(True, {"name": job.name, "action": action,
                             "cutoff_on": profile.cutoff_on(term).isoformat()})


# -- withdrawal of a never-activated .si registration --------------------------------------
def withdrawable(factory: sessionmaker[Session], client: EppClient, service_id: int,
                 today: date) -> Withdrawable:
    """Whether the domain service may be withdrawn with a refund, from what the registry
    shows (name servers ever set count as activation; so does our record of it)."""
    name, brand, activated_before = _withdrawal_subject(factory, service_id)
    try:
        info = client.info_domain(name)
    except ObjectNotFound:
        return Withdrawable(False, f"{name} is not registered")
    if info.sponsor != client.config.login:
        return Withdrawable(False, f"{name} is not sponsored by us")
    registered = info.created.date() if info.created else None
    return domain_withdrawable(name, registered, activated_before or bool(info.nameservers),
                               today, get_brand(brand))


def withdraw_registration(factory: sessionmaker[Session], client: EppClient, service_id: int,
                          today: date, actor: str = "ops") -> dict[str, Any]:
    """Withdraw a .si registration that was never activated, within the brand's window:
    delete it at the registry (which refunds it), cancel the service and flag the refund
    (the order's refund flag and ``DomainRecord.refund_due``). Refused with the reason
    otherwise. Safe to run twice."""
    name, _brand, _ = _withdrawal_subject(factory, service_id)
    with transaction(factory) as s:
        done = s.execute(select(DomainRecord).where(DomainRecord.service_id == service_id)
                         ).scalar_one_or_none()
        if done is not None and done.registry_action == "withdrawn":
            return {"service": service_id, "name": name, "withdrawn": False,
                    "refund_due": done.refund_due, "note": "withdrawn before"}
    verdict = withdrawable(factory, client, service_id, today)
    if not verdict.allowed:
        raise Conflict(f"{name} cannot be withdrawn with a refund: {verdict.reason}")
    try:
        client.delete_domain(name)
    except OutcomeUnknown as exc:
        try:
            client.info_domain(name)
        except ObjectNotFound:
            pass  # deleted by the lost command
        else:
            raise TransientError(f"{name}: delete outcome unknown: {exc}") from None
    with transaction(factory) as s:
        service = s.get(Service, service_id)
        assert service is not None
        record = _record(s, service)
        record.status, record.registry_action, record.registry_action_on = (
            "withdrawn", "withdrawn", today)
        record.refund_due = True
        record.updated_at = _now()
        service.state = transition(service.state, ServiceState.CANCELLED).value
        service.clock_on = None
        service.updated_at = _now()
        order = s.get(Order, service.order_id)
        if order is not None and not order.refund_flag:
            order.refund_flag = True
            order.refund_reason = (f"domain {name} withdrawn: never activated, deleted at the "
                                   "registry with a refund")
        audit(s, actor, "domain.withdrawn", "service", service_id,
              {"name": name, "refund_due": True, "reason": verdict.reason,
               "last_day": verdict.last_day.isoformat() if verdict.last_day else None})
    return {"service": service_id, "name": name, "withdrawn": True, "refund_due": True,
            "reason": verdict.reason}


def _withdrawal_subject(factory: sessionmaker[Session], service_id: int) -> tuple[str, str, bool]:
    with transaction(factory) as s:
        service = s.get(Service, service_id)
        if service is None or service.kind != "domain":
            raise NotFound(f"no domain service {service_id}")
        order = s.get(Order, service.order_id)
        record = s.execute(select(DomainRecord).where(DomainRecord.service_id == service_id)
                           ).scalar_one_or_none()
        activated = record is not None and record.activated_on is not None
        return normalize_domain(service.name), order.brand if order else "fcb", activated


# -- registry messages -----------------------------------------------------------------
def drain_poll(client: EppClient, factory: sessionmaker[Session], limit: int = 100) -> list[dict[str, Any]]:
    """Read and acknowledge the registry's poll messages. A domain of ours transferred to
    another registrar is marked ``transferred_away`` (ops see it; nothing renews it).
    Returns what was read, for the caller's log."""
    seen: list[dict[str, Any]] = []
    for _ in range(limit):
        message = client.poll_request()
        if message is None:
            break
        entry: dict[str, Any] = {"id": message.id, "text": message.text, **message.data}
        name = message.data.get("name")
        away = message.data.get("reID") not in (None, client.config.login) and \
            message.data.get("trStatus") in ("serverApproved", "clientApproved")
        if name and away:
            with transaction(factory) as s:
                for record in s.execute(select(DomainRecord).where(
                        DomainRecord.name == name, DomainRecord.status == "registered")).scalars():
                    record.status = "transferred_away"
                    record.sponsor = message.data.get("reID")
                    record.updated_at = _now()
                    audit(s, SYSTEM, "domain.transferred_away", "service", record.service_id,
                          {"name": name, "to": record.sponsor})
            entry["transferred_away"] = True
        client.poll_ack(message.id)
        seen.append(entry)
    return seen


PLANNERS: dict[str, LinePlanner] = {"domain": plan_domain}
HANDLERS: dict[str, Handler] = {
    "domain.register": step_domain_register,
    "domain.transfer": step_domain_transfer,
    "domain.nameservers": step_domain_nameservers,
    "domain.renew": step_domain_renew,
    "clock.registry_cutoff": step_registry_cutoff,
}
