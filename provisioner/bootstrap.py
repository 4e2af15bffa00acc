"""Builds a Runner with the real adapters. The only place that knows them all."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.mail import Mailer, make_message_id, render_mail
from provisioner.timeutil import utcnow
from provisioner.config import Settings
from provisioner.pipeline import capabilities  # noqa: F401 - registers planners and handlers
from provisioner.pipeline.capabilities.domains import registry_client
from provisioner.pipeline.usecases.payments import process_pending, reprocess_stored
from provisioner.pipeline.engine.runner import Enqueue, Runner
from provisioner.store.db import session_factory, transaction

log = logging.getLogger("provisioner.alerts")


def ops_alert(settings: Settings) -> Any:
    def alert(*, step_key: str, order_id: int, detail: str, attempts: int) -> None:
        log.error("OPS ALERT: step %s of order %s failed after %d attempt(s): %s",
                  step_key, order_id, attempts, detail)
        rendered = render_mail(
            "ops_alert", "en",
            {"step_key": step_key, "order_id": order_id, "detail": detail, "attempts": attempts},
        )
        Mailer(settings).send(
            to=settings.ops_email,
            rendered=rendered,
            message_id=make_message_id(f"alert:{step_key}:{utcnow().isoformat()}", "provisioner"),
        )

    return alert


def dns_tls_adapters(settings: Settings, factory: sessionmaker[Session]) -> dict[str, object]:
    """Factories for the DNS, ACME and certificate-target adapters (built on first use)."""
    from provisioner.adapters.acme import AcmeClient, generate_key_pem
    from provisioner.adapters.tls_targets import CertificateTarget, LocalNginx, LocalNginxTarget
    from provisioner.adapters.dns import DnsServer, KnotcZoneCreator
    from provisioner.errors import ConfigurationError
    from provisioner.store.tls import account_key, fernet_for

    built: dict[str, Any] = {}

    def dns() -> DnsServer:
        if "dns" not in built:
            if not settings.dns_server:
                raise ConfigurationError("dns_server is not set: no DNS server to manage zones on")
            creator = KnotcZoneCreator(settings.dns_knotc_socket) if settings.dns_knotc_socket else None
            built["dns"] = DnsServer(settings.dns_server, settings.dns_port, settings.tsig_key_name,
                                     settings.tsig_secret, settings.tsig_algorithm, creator,
                                     timeout_s=settings.dns_timeout_s)
        return built["dns"]

    def acme() -> AcmeClient:
        if "acme" not in built:
            if not settings.acme_directory:
                raise ConfigurationError("acme_directory is not set: no CA to order certificates from")
            with transaction(factory) as s:
                key = account_key(s, fernet_for(settings), settings.acme_directory, generate_key_pem)
            built["acme"] = AcmeClient(
                settings.acme_directory, key, ca_file=settings.acme_ca_file,
                contact_email=settings.acme_contact_email, eab_kid=settings.acme_eab_kid,
                eab_hmac=settings.acme_eab_hmac, deadline_s=settings.acme_deadline_s,
                key_type=settings.acme_key_type)
        return built["acme"]

    def cert_target(service_id: int | None) -> CertificateTarget:
        # A hosting service's certificate (and a tls line's whose name a hosting account of
        # the same customer serves) goes to the account's vhost on its node, over SSH;
        # other certificates to a loopback nginx with its own prefix (tests, demo).
        if service_id is not None:
            on_node = node_cert_target(settings, factory, service_id)
            if on_node is not None:
                return on_node
        if not settings.tls_nginx_prefix:
            raise ConfigurationError("no certificate target: set tls_nginx_prefix (loopback nginx)")
        nginx = LocalNginx(Path(settings.tls_nginx_prefix), settings.tls_nginx_host,
                           settings.tls_nginx_http_port, settings.tls_nginx_https_port)
        return LocalNginxTarget(nginx)

    return {"dns": dns, "acme": acme, "cert_target": cert_target}


def node_cert_target(settings: Settings, factory: sessionmaker[Session], service_id: int) -> Any:
    """The certificate target on the hosting node that serves `service_id`'s site: the
    service's own account (hosting), or the active account of the same customer whose
    domain is the certificate's site (tls). None when no node serves it."""
    from sqlalchemy import select

    from provisioner.adapters.tls_targets.node import NodeAccess, NodeNginxTarget
    from provisioner.errors import ConfigurationError
    from provisioner.pipeline.capabilities.hosting import default_ssh_key
    from provisioner.store.hosting import HostingAccount, HostingNode, account_for_service
    from provisioner.store.models import Service

    with transaction(factory) as s:
        service = s.get(Service, service_id)
        if service is None:
            return None
        account: HostingAccount | None = None
        if service.kind == "hosting":
            account = account_for_service(s, service_id)
            if account is None:
                raise ConfigurationError(f"service {service_id}: no hosting account is placed yet, "
                                         "so there is no vhost for its certificate")
        elif service.kind == "tls":
            site = service.name.removeprefix("*.")
            account = s.execute(
                select(HostingAccount).join(Service, Service.id == HostingAccount.service_id)
                .where(HostingAccount.domain == site, HostingAccount.state.in_(("creating", "active")),
                       Service.customer_id == service.customer_id)
                .order_by(HostingAccount.id.desc()).limit(1)
            ).scalar_one_or_none()
        if account is None:
            return None
        node = s.get(HostingNode, account.node_id)
        assert node is not None
        extra = settings.extra or {}
        key = extra.get("hosting_ssh_key")
        ssh_key = Path(key) if key else default_ssh_key()
        throwaway = bool(extra.get("hosting_throwaway", ssh_key is not None and key is None))
        access = NodeAccess(node.name, node.address, ssh_key, user=node.ssh_user, port=node.ssh_port,
                            throwaway=throwaway)
        return NodeNginxTarget(access, account.username, [account.domain])


def hosting_adapter(settings: Settings) -> Any:
    """The shared-hosting account adapter (ansible-runner against the placed node)."""
    from provisioner.pipeline.capabilities.hosting import make_adapter

    return make_adapter(settings)


def runner(settings: Settings, enqueue: Enqueue) -> Runner:
    factory = session_factory(settings.effective_database_url)
    return Runner(settings, factory, enqueue,
                  adapters={"alert": ops_alert(settings), **dns_tls_adapters(settings, factory),
                            "registry": lambda: registry_client(settings),
                            "hosting": lambda: hosting_adapter(settings)})


def process_notifications(settings: Settings, enqueue: Enqueue) -> dict[str, Any]:
    """Match and settle the payment notifications the webhooks stored, then queue the
    plans of the proformas they paid."""
    factory = session_factory(settings.effective_database_url)
    results = process_pending(factory)
    run = runner(settings, enqueue)
    settled = {r.order_id for r in results if r.settled and r.order_id is not None}
    for order_id in sorted(settled):
        run.dispatch(order_id)
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.status] = outcomes.get(r.status, 0) + 1
    return {"processed": len(results), "settled": len(settled), "outcomes": outcomes}


def redrive(settings: Settings, enqueue: Enqueue) -> dict[str, Any]:
    factory = session_factory(settings.effective_database_url)
    result: dict[str, Any] = dict(runner(settings, enqueue).redrive())
    result["reprocessed"] = reprocess_stored(factory)
    return result
