"""Shared-hosting lines: place the account, converge it on its node, send access data.

Steps of a new hosting line (``service:{id}/...``):

* ``hosting.account``: observe, then converge. The placement is recorded once per
  service (a re-run finds it and goes to the same node); the role's create action is
  itself a converge, so running the step twice creates nothing twice. Until the access
  data are issued, the converge sets fresh passwords (every login, in the same run), and
  the step seals them in a one-time link (only the token's hash and the data encrypted
  with a key derived from the token are stored; no plaintext password in our database)
  and holds the e-mail carrying the link in the outbox (its context sealed with the
  outbox key), both in the step's fenced transaction: only the run that holds the step
  issues them. Once issued, a re-run sets no password (existing logins keep theirs).
* ``notify.credentials``: sends the held e-mail, once (the outbox), fenced on the step
  like any final write; it asks nothing of the node. (A service whose account step ran
  before access data were held there gets fresh passwords here, as before.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.hosting.accounts import Secrets
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import InvalidInput, StepFailed
from provisioner.pipeline.capabilities.dns_tls import DNS_ZONE, TLS_ISSUE, hosting_dns_tls_steps
from provisioner.pipeline.capabilities.placement import MAILBOXES, place, spec_of, target_of
from provisioner.pipeline.engine.plan import (
    LinePlanner,
    OrderView,
    PlanOptions,
    ServiceView,
    StepSpec,
    service_step,
)
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult, disruptive
from provisioner.pipeline.onetime import (
    brand_context,
    checked_digest,
    claim,
    new_token,
    refuse,
    token_hash,
)
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import CredentialLink, HostingAccount, HostingNode
from provisioner.store.models import Customer, Service, Step

log = logging.getLogger("provisioner.hosting")
SYSTEM = "system:pipeline"
LINK_TTL = timedelta(hours=72)


def plan_hosting_line(view: OrderView, service: ServiceView, options: PlanOptions) -> list[StepSpec]:
    """``dns.zone -> hosting.account -> tls.issue -> notify.credentials``; the zone and the
    certificate only where ``line_kinds`` names ``dns`` / ``tls`` (`PlanOptions.extras`).
    The zone step places the account, so its records point at the account's node; the
    certificate is validated over HTTP-01 through the account's vhost on that node."""
    if service.action not in ("new", "register", "transfer"):
        return []  # a renewal changes nothing on the node
    account = service_step(service.id, "hosting.account")
    params = {"service_id": service.id, "plan": service.product, "domain": service.name}
    extras = options.extras
    zone_and_cert = hosting_dns_tls_steps(view, service, tls_deps=(account,), challenge="http-01",
                                          zone="dns" in extras, certificate="tls" in extras)
    zone = [st for st in zone_and_cert if st.kind == DNS_ZONE]
    cert = [st for st in zone_and_cert if st.kind == TLS_ISSUE]
    return [
        *zone,
        StepSpec(account, "hosting.account", tuple(st.key for st in zone), params, service.id),
        *cert,
        StepSpec(service_step(service.id, "notify.credentials"), "notify.credentials",
                 (account, *(st.key for st in cert)), {"service_id": service.id}, service.id),
    ]


# -- helpers ------------------------------------------------------------------------------
def _load(ctx: StepContext, service_id: int) -> tuple[HostingAccount, HostingNode]:
    with transaction(ctx.factory) as s:
        account = s.execute(select(HostingAccount).where(HostingAccount.service_id == service_id)
                            ).scalar_one_or_none()
        if account is None:
            raise StepFailed(ctx.step_key, f"service {service_id} has no hosting account yet")
        node = s.get(HostingNode, account.node_id)
        assert node is not None
        s.expunge(account)
        s.expunge(node)
        return account, node


# -- hosting.account ------------------------------------------------------------------------
def step_hosting_account(ctx: StepContext, step: Step) -> StepResult:
    service_id = int(step.params["service_id"])
    notify_key = service_step(service_id, "notify.credentials")
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        placement = place(s, service_id, step.key)
        if placement is None:
            raise StepFailed(step.key, f"service {service_id} is not a hosting service")
        account, node, placed = placement
        s.expunge(account)
        s.expunge(node)
        issued = box.state_of(s, notify_key) is not None
    # Until the access data are issued, every login gets the fresh passwords (a run cut
    # off earlier may have made some with passwords nobody knows); afterwards a re-run
    # sets none: existing logins keep the passwords that were mailed.
    secret = None if issued else Secrets.generate(MAILBOXES)
    ctx.heartbeat()  # the lease first: a run that lost its step sets nothing on the node
    # The attempt number fences the passwords on the node too: a run that lost the step
    # and reaches the node after the run that holds it cannot overwrite what is mailed.
    result = ctx.adapters.hosting.create(target_of(node), spec_of(account), secret,
                                         set_passwords=secret is not None, password_fence=step.attempts)
    result.raise_for_status(step.key)
    with transaction(ctx.factory) as s:
        ctx.fence(s)  # the access data are issued by the run that holds the step, once
        row = s.get(HostingAccount, account.id)
        assert row is not None
        if row.state == "creating":
            row.state = "active"
            row.updated_at = ctx.now()
            audit(s, SYSTEM, "hosting.created", "service", service_id,
                  {"node": node.name, "account": row.username})
        if secret is not None:
            _hold_access_data(ctx, s, box, notify_key, service_id, account, node, secret)
    return StepResult(bool(result.changed) or placed or secret is not None,
                      {"node": node.name, "address": node.address, "account": account.username,
                       "domain": account.domain, "url": f"http://{account.domain}/",
                       "access_data": "held" if secret is not None else "issued before",
                       "ansible_changed": result.changed, "duration_s": result.run.duration_s})


# -- access data: a one-time link, held in the outbox until notify.credentials --------------
def _fernet_key(token: str) -> bytes:
    digest = hashlib.sha256(b"provisioner/credentials/v1:" + token.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def seal(token: str, data: dict[str, Any]) -> bytes:
    return Fernet(_fernet_key(token)).encrypt(json.dumps(data).encode())


def unseal(token: str, sealed: bytes) -> dict[str, Any]:
    try:
        data = json.loads(Fernet(_fernet_key(token)).decrypt(sealed))
    except InvalidToken:
        raise InvalidInput("this link is not valid") from None
    assert isinstance(data, dict)
    return data


def access_data(account: HostingAccount, node: HostingNode, secret: Secrets,
                control_panel_url: str = "") -> dict[str, Any]:
    """What the account has, as the customer's mail programs and FTP clients ask for it.
    A control panel only where the installation has one (the setting ``control_panel_url``)."""
    mailbox = f"{MAILBOXES[0]}@{account.domain}"
    data: dict[str, Any] = {
        "domain": account.domain,
        "ftp": {"host": node.address, "port": 21, "user": account.username, "password": secret.account,
                "security": "FTPS (explicit TLS)"},
        "database": {"host": "localhost", "name": account.username, "user": account.username,
                     "password": secret.database},
        "mail": {"address": mailbox, "user": mailbox, "password": secret.mailboxes[MAILBOXES[0]],
                 "imap_host": node.address, "imap_port": 993, "imap_security": "TLS",
                 "smtp_host": node.address, "smtp_port": 587, "smtp_security": "STARTTLS"},
    }
    if control_panel_url:
        data["panel"] = {"url": control_panel_url, "user": account.username, "password": secret.account}
    return data


def _hold_access_data(ctx: StepContext, s: Session, box: Outbox, notify_key: str, service_id: int,
                      account: HostingAccount, node: HostingNode, secret: Secrets) -> None:
    """In ``s`` (the caller's fenced transaction): seal ``secret`` in a new one-time link
    and hold the e-mail that carries the link, under ``notify_key``."""
    context = {
        "domain": account.domain,
        "plan": DEFAULT_CATALOG.hosting_plan(account.plan).name,
        "url": f"http://{account.domain}/",
        "ftp_host": node.address,
        "username": account.username,
        "mailbox": f"{MAILBOXES[0]}@{account.domain}",
        "panel": bool(ctx.settings.control_panel_url),
    }
    data = access_data(account, node, secret, ctx.settings.control_panel_url)
    hold_access_link(ctx, s, box, notify_key, service_id, data, "credentials", context)


def hold_access_link(ctx: StepContext, s: Session, box: Outbox, notify_key: str, service_id: int,
                     data: dict[str, Any], template: str, context: dict[str, Any]) -> None:
    """In ``s`` (the caller's fenced transaction): seal the access ``data`` in a new
    one-time link and hold the e-mail ``template`` that carries the link (its ``context``
    gets the customer, the link, its expiry and the brand) under ``notify_key``, for
    ``notify.credentials`` to send. Earlier unused links of the service stop working:
    their passwords are gone. Any capability that delivers access data calls this."""
    token = new_token()
    expires = ctx.now() + LINK_TTL
    service = s.get(Service, service_id)
    assert service is not None
    customer = s.get(Customer, service.customer_id)
    assert customer is not None
    context = {
        "customer": {"name": customer.name, "email": customer.email},
        **context,
        "link": f"{ctx.settings.public_base_url.rstrip('/')}/credentials/{token}",
        "expires_at": expires.strftime("%Y-%m-%d %H:%M UTC"),
        **brand_context(s, service.order_id),
    }
    s.execute(delete(CredentialLink).where(CredentialLink.service_id == service_id,
                                           CredentialLink.used_at.is_(None)))
    s.add(CredentialLink(token_sha256=token_hash(token), service_id=service_id, sealed=seal(token, data),
                         expires_at=expires, created_at=ctx.now()))
    box.hold(s, notify_key, customer.email, template, customer.lang, context)
    audit(s, SYSTEM, "hosting.credentials_link", "service", service_id,
          {"expires_at": expires.isoformat()})


# -- notify.credentials ---------------------------------------------------------------------
def step_notify_credentials(ctx: StepContext, step: Step) -> StepResult:
    key = step.key
    service_id = int(step.params["service_id"])
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        held = box.state_of(s, key)
    if held is None:
        # The account step ran before it held the access data (a journal older than
        # this version): set fresh passwords now and hold them, as it would have.
        account, node = _load(ctx, service_id)
        secret = Secrets.generate(MAILBOXES)
        ctx.heartbeat()
        ctx.adapters.hosting.reset_password(target_of(node), spec_of(account), secret,
                                            password_fence=step.attempts).raise_for_status(key)
        with transaction(ctx.factory) as s:
            ctx.fence(s)
            _hold_access_data(ctx, s, box, key, service_id, account, node, secret)
    sent = box.send_held(key)  # fenced: only the run that holds the step sends it
    assert sent is not None
    return StepResult(sent.sent_now, {"message_id": sent.message_id})


def open_link(factory: sessionmaker[Session], token: str, now: datetime) -> dict[str, Any]:
    """The access data behind a one-time link; the link is used up by this call.

    One conditional UPDATE claims the link (unused and not expired), so of concurrent
    requests exactly one gets a row back, on SQLite and PostgreSQL alike (PostgreSQL
    re-checks the condition on the row a concurrent claim has just committed). The
    claimed row's sealed data are read from that UPDATE and blanked in the same
    transaction. Why a link cannot be opened is read afterwards, for the message only."""
    digest = checked_digest(token)  # the claim itself: `provisioner.pipeline.onetime`
    with transaction(factory) as s:
        claimed = claim(s, CredentialLink, digest, now, CredentialLink.sealed)
        if claimed is not None:
            data = unseal(token, claimed.sealed)  # InvalidInput rolls the claim back
            s.execute(update(CredentialLink).where(CredentialLink.id == claimed.id)
                      .values(sealed=b"-")  # nothing left to decrypt once it was shown
                      .execution_options(synchronize_session=False))
            audit(s, "customer:link", "hosting.credentials_viewed", "service", claimed.service_id, {})
            return data
        raise refuse(s, CredentialLink, digest, now, "new access data")  # unknown, used or expired


def purge_expired_links(factory: sessionmaker[Session], now: datetime) -> int:
    """Blank the sealed data of links that expired unused (the daily beat,
    ``provisioner.purge_links``); the rows stay, so an expired link still says so.
    Returns how many were purged."""
    with transaction(factory) as s:
        purged = s.execute(
            update(CredentialLink)
            .where(CredentialLink.expires_at <= now, CredentialLink.sealed != b"-")
            .values(sealed=b"-")
            .execution_options(synchronize_session=False))
        return int(purged.rowcount or 0)  # type: ignore[attr-defined]


# -- hosting.change_plan: disruptive (PHP-FPM and the account's limits restart) ------------
@disruptive
def step_hosting_change_plan(ctx: StepContext, step: Step) -> StepResult:
    """Move the account to ``params["plan"]``: the role's change_plan action converges the
    limits and restarts the account's services, so the runner holds this step for the
    maintenance window (002 §12) unless it is forced with a reason."""
    service_id = int(step.params["service_id"])
    plan = DEFAULT_CATALOG.hosting_plan(str(step.params["plan"]))  # InvalidInput: no such plan
    account, node = _load(ctx, service_id)
    before = account.plan
    account.plan = plan.code
    ctx.heartbeat()
    result = ctx.adapters.hosting.change_plan(target_of(node), spec_of(account))
    result.raise_for_status(step.key)
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = s.get(HostingAccount, account.id)
        assert row is not None
        if row.plan != plan.code:
            row.plan = plan.code
            row.disk_mb = plan.disk_mb
            row.updated_at = ctx.now()
            audit(s, SYSTEM, "hosting.plan_changed", "service", service_id,
                  {"from": before, "to": plan.code})
    return StepResult(bool(result.changed) or before != plan.code,
                      {"node": node.name, "account": account.username, "plan": plan.code,
                       "from": before})


PLANNERS: dict[str, LinePlanner] = {"hosting": plan_hosting_line}
HANDLERS: dict[str, Handler] = {
    "hosting.account": step_hosting_account,
    "notify.credentials": step_notify_credentials,
    "hosting.change_plan": step_hosting_change_plan,
}
