"""Shared-hosting lines: place the account, converge it on its node, send access data.

Steps of a new hosting line (``service:{id}/...``):

* ``hosting.account``: observe, then converge. The placement is recorded once per
  service (a re-run finds it and goes to the same node); the role's create action is
  itself a converge, so running the step twice creates nothing twice.
* ``notify.credentials``: sets fresh passwords on the node, seals the access data in a
  one-time link (only the token's hash and the data encrypted with a key derived from
  the token are stored; no plaintext password in our database) and e-mails the link.
  Sent once per step key through the outbox, like the other customer e-mails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from provisioner.adapters import mail as mail_adapter
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.mail import Mailer, RenderedMail, make_message_id, render_mail
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.names import normalize_domain, username_for_domain
from provisioner.domain.placement import NoCapacity
from provisioner.errors import ConfigurationError, InvalidInput, StepFailed
from provisioner.pipeline.engine.plan import OrderView, ServiceView, StepSpec, register_line_planner
from provisioner.pipeline.engine.runner import StepContext, StepResult, handler
from provisioner.pipeline.capabilities.dns_tls import DNS_ZONE, TLS_ISSUE, hosting_dns_tls_steps, hosting_extras
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import CredentialLink, HostingAccount, HostingNode, place_account
from provisioner.store.models import Customer, OutboxMail, Service, Step

log = logging.getLogger("provisioner.hosting")
SYSTEM = "system:pipeline"
MAILBOXES = ("info",)
LINK_TTL = timedelta(hours=72)


def plan_hosting_line(view: OrderView, service: ServiceView) -> list[StepSpec]:
    """``dns.zone -> hosting.account -> tls.issue -> notify.credentials``; the zone and the
    certificate only where ``line_kinds`` enables ``dns`` / ``tls`` (`hosting_extras`).
    The zone step places the account, so its records point at the account's node; the
    certificate is validated over HTTP-01 through the account's vhost on that node."""
    if service.action not in ("new", "register", "transfer"):
        return []  # a renewal changes nothing on the node
    account = f"service:{service.id}/hosting.account"
    params = {"service_id": service.id, "plan": service.product, "domain": service.name}
    extras = hosting_extras()
    zone_and_cert = hosting_dns_tls_steps(view, service, tls_deps=(account,), challenge="http-01",
                                          zone="dns" in extras, certificate="tls" in extras)
    zone = [st for st in zone_and_cert if st.kind == DNS_ZONE]
    cert = [st for st in zone_and_cert if st.kind == TLS_ISSUE]
    return [
        *zone,
        StepSpec(account, "hosting.account", tuple(st.key for st in zone), params, service.id),
        *cert,
        StepSpec(f"service:{service.id}/notify.credentials", "notify.credentials",
                 (account, *(st.key for st in cert)), {"service_id": service.id}, service.id),
    ]


register_line_planner("hosting", plan_hosting_line)


# -- helpers ------------------------------------------------------------------------------
def hosting_adapter(ctx: StepContext) -> Any:
    adapter = ctx.adapters.get("hosting")
    if adapter is None:
        raise ConfigurationError("no hosting adapter is configured (wiring.hosting_adapter)")
    if callable(adapter) and not hasattr(adapter, "create"):  # a factory, built on first use
        adapter = adapter()
        ctx.adapters["hosting"] = adapter
    return adapter


def target_of(node: HostingNode) -> Target:
    return Target(node.name, node.address, user=node.ssh_user, port=node.ssh_port)


def spec_of(account: HostingAccount) -> AccountSpec:
    return AccountSpec(account.username, (account.domain,), DEFAULT_CATALOG.hosting_plan(account.plan),
                       mailboxes=MAILBOXES)


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


def place(s: Any, service_id: int, step_key: str) -> tuple[HostingAccount, HostingNode, bool] | None:
    """Place a hosting service's account on the least-full node, once (a re-run finds the
    recorded placement): (account, node, placed now). None for a non-hosting service;
    StepFailed when no node has room (ops must add one: alert, refund flag)."""
    service = s.get(Service, service_id)
    if service is None or service.kind != "hosting":
        return None
    plan = DEFAULT_CATALOG.hosting_plan(service.product)
    domain = normalize_domain(service.name)
    try:
        account, node, placed = place_account(
            s, service_id=service_id, domain=domain, plan=plan.code, disk_mb=plan.disk_mb,
            username_base=username_base(domain))
    except NoCapacity as exc:
        raise StepFailed(step_key, str(exc)) from exc
    if placed:
        audit(s, SYSTEM, "hosting.placed", "service", service_id,
              {"node": node.name, "account": account.username, "by": step_key})
    return account, node, placed


# -- hosting.account ------------------------------------------------------------------------
@handler("hosting.account")
def step_hosting_account(ctx: StepContext, step: Step) -> StepResult:
    service_id = int(step.params["service_id"])
    with transaction(ctx.factory) as s:
        placement = place(s, service_id, step.key)
        if placement is None:
            raise StepFailed(step.key, f"service {service_id} is not a hosting service")
        account, node, placed = placement
        s.expunge(account)
        s.expunge(node)
    ctx.heartbeat()
    adapter = hosting_adapter(ctx)
    result = adapter.create(target_of(node), spec_of(account))  # random passwords, never kept
    result.raise_for_status(step.key)
    with transaction(ctx.factory) as s:
        row = s.get(HostingAccount, account.id)
        assert row is not None
        if row.state == "creating":
            row.state = "active"
            row.updated_at = ctx.now()
            audit(s, SYSTEM, "hosting.created", "service", service_id,
                  {"node": node.name, "account": row.username})
    return StepResult(bool(result.changed) or placed,
                      {"node": node.name, "address": node.address, "account": account.username,
                       "domain": account.domain, "url": f"http://{account.domain}/",
                       "ansible_changed": result.changed, "duration_s": result.run.duration_s})


def username_base(domain: str) -> str:
    """The first part of an account's user name, from its domain (the placement adds a
    number when it is taken)."""
    base = username_for_domain(domain, max_length=16)
    base = "".join(ch for ch in base if ch.isalnum())
    if not base or not base[0].isalpha():
        base = "u" + base
    return base[:16]


# -- notify.credentials ---------------------------------------------------------------------
def _fernet_key(token: str) -> bytes:
    digest = hashlib.sha256(b"provisioner/credentials/v1:" + token.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def seal(token: str, data: dict[str, Any]) -> bytes:
    from cryptography.fernet import Fernet

    return Fernet(_fernet_key(token)).encrypt(json.dumps(data).encode())


def unseal(token: str, sealed: bytes) -> dict[str, Any]:
    from cryptography.fernet import Fernet, InvalidToken

    try:
        data = json.loads(Fernet(_fernet_key(token)).decrypt(sealed))
    except InvalidToken:
        raise InvalidInput("this link is not valid") from None
    assert isinstance(data, dict)
    return data


def access_data(account: HostingAccount, node: HostingNode, secret: Secrets) -> dict[str, Any]:
    mailbox = f"{MAILBOXES[0]}@{account.domain}"
    return {
        "domain": account.domain,
        "panel": {"user": account.username, "password": secret.account},
        "ftp": {"host": node.address, "user": account.username, "password": secret.account,
                "security": "FTPS (explicit TLS, port 21)"},
        "database": {"host": "localhost", "name": account.username, "user": account.username,
                     "password": secret.database},
        "mail": {"address": mailbox, "password": secret.mailboxes[MAILBOXES[0]],
                 "imap": f"{node.address}:993 (TLS)", "smtp": f"{node.address}:587 (STARTTLS)"},
    }


@handler("notify.credentials")
def step_notify_credentials(ctx: StepContext, step: Step) -> StepResult:
    key = step.key
    service_id = int(step.params["service_id"])
    with transaction(ctx.factory) as s:
        row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one_or_none()
        if row is not None and row.state == "sent":
            return StepResult(False, {"message_id": row.message_id})
    account, node = _load(ctx, service_id)
    # Fresh passwords: the ones used at creation were never kept anywhere.
    secret = Secrets.generate(MAILBOXES)
    adapter = hosting_adapter(ctx)
    ctx.heartbeat()
    adapter.reset_password(target_of(node), spec_of(account), secret).raise_for_status(key)
    token = secrets.token_urlsafe(32)
    expires = ctx.now() + LINK_TTL
    with transaction(ctx.factory) as s:
        service = s.get(Service, service_id)
        assert service is not None
        customer = s.get(Customer, service.customer_id)
        assert customer is not None
        # Earlier unused links of this service stop working: their passwords are gone.
        s.execute(delete(CredentialLink).where(CredentialLink.service_id == service_id,
                                               CredentialLink.used_at.is_(None)))
        s.add(CredentialLink(token_sha256=token_hash(token), service_id=service_id,
                             sealed=seal(token, access_data(account, node, secret)),
                             expires_at=expires, created_at=ctx.now()))
        message_id = make_message_id(key, ctx.settings.mail_from.rsplit("@", 1)[-1].strip(">"))
        outbox = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one_or_none()
        if outbox is None:
            outbox = OutboxMail(key=key, message_id=message_id, recipient=customer.email,
                                template="credentials", state="sending", attempts=0)
            s.add(outbox)
        outbox.attempts += 1
        link = f"{ctx.settings.public_base_url.rstrip('/')}/credentials/{token}"
        rendered = render_credentials(customer.lang, {
            "customer": {"name": customer.name, "email": customer.email},
            "domain": account.domain,
            "plan": DEFAULT_CATALOG.hosting_plan(account.plan).name,
            "url": f"http://{account.domain}/",
            "link": link,
            "expires_at": expires.strftime("%Y-%m-%d %H:%M UTC"),
            "ftp_host": node.address,
            "username": account.username,
            "mailbox": f"{MAILBOXES[0]}@{account.domain}",
        })
        recipient = customer.email
        audit(s, SYSTEM, "hosting.credentials_link", "service", service_id,
              {"expires_at": expires.isoformat()})
    mailer = ctx.adapters.get("mailer") or Mailer(ctx.settings)
    mailer.send(to=recipient, rendered=rendered, message_id=message_id,  # type: ignore[attr-defined]
                headers={"X-Provisioner-Step": key})
    with transaction(ctx.factory) as s:
        sent = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one()
        sent.state = "sent"
        sent.sent_at = ctx.now()
        audit(s, SYSTEM, "mail.sent", "mail", message_id, {"template": "credentials", "step": key})
    return StepResult(True, {"message_id": message_id, "link_expires_at": expires.isoformat()})


def render_credentials(lang: str, context: dict[str, Any]) -> RenderedMail:
    if "credentials" in mail_adapter.TEMPLATES:
        return render_mail("credentials", lang, context)
    # The mail adapter's template list predates this template; render it the same way.
    env = mail_adapter._environment()
    folder = lang if lang in ("sl", "en") else "sl"
    values = {**context, "lang": folder}
    subject = env.get_template(f"{folder}/credentials.subject.j2").render(values)
    return RenderedMail(
        subject=" ".join(subject.split()),
        text=env.get_template(f"{folder}/credentials.txt.j2").render(values),
        html=env.get_template(f"{folder}/credentials.html.j2").render(values),
    )


def open_link(factory: Any, token: str, now: datetime) -> dict[str, Any]:
    """The access data behind a one-time link; the link is used up by this call."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        raise InvalidInput("this link is not valid")
    with transaction(factory) as s:
        link = s.execute(select(CredentialLink).where(CredentialLink.token_sha256 == token_hash(token))
                         ).scalar_one_or_none()
        if link is None:
            raise InvalidInput("this link is not valid")
        if link.used_at is not None:
            raise InvalidInput("this link was already used; ask for new access data")
        if link.expires_at <= now:
            raise InvalidInput("this link has expired; ask for new access data")
        data = unseal(token, link.sealed)
        link.used_at = now
        link.sealed = b"-"  # nothing left to decrypt once it was shown
        audit(s, "customer:link", "hosting.credentials_viewed", "service", link.service_id, {})
        return data


def default_ssh_key() -> Path | None:
    from provisioner.devstack.hosts.nspawn import default_hosts_dir

    key = default_hosts_dir() / "ssh" / "id_ed25519"
    return key if key.exists() else None


def make_adapter(settings: Any) -> HostingAccounts:
    """The real adapter, from settings: ``extra['hosting_ssh_key']`` or the throwaway hosts' key."""
    extra = getattr(settings, "extra", {}) or {}
    key = extra.get("hosting_ssh_key")
    ssh_key = Path(key) if key else default_ssh_key()
    throwaway = bool(extra.get("hosting_throwaway", ssh_key is not None and key is None))
    return HostingAccounts(ssh_key=ssh_key, throwaway=throwaway,
                           provider_url=str(extra.get("provider_url", "https://www.provider.example/")))


def ensure_demo_node(factory: Any, name: str = "demo-node") -> dict[str, str]:
    """Boot (or find) a throwaway hosting node and register it for placement (``make demo``).

    Uses the throwaway-host cache (``PROVISIONER_HOSTS_DIR``); the node comes from the
    converged-node image, so this takes seconds once the image is built.
    """
    from provisioner.devstack.hosts import NspawnHosts
    from provisioner.devstack.hosts.node import up_node
    from provisioner.store.hosting import add_node

    info = up_node(NspawnHosts(ssh_timeout_s=60), name)
    with transaction(factory) as s:
        add_node(s, info.name, info.address, capacity_accounts=100, capacity_disk_mb=1_000_000)
    return {"name": info.name, "address": info.address}


def live_site(address: str, domain: str) -> dict[str, str]:
    """The URL of a placed site and the curl command that proves it answers from the node."""
    domain = normalize_domain(domain)
    return {"url": f"http://{domain}/",
            "curl": f"curl -sS -H 'Host: {domain}' http://{address}/"}
