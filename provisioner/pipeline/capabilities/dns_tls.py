"""DNS zones and TLS certificates in the pipeline: steps `dns.zone` and `tls.issue`.

* A stand-alone ``tls:<name>`` line item plans ``service:{id}/tls.issue`` for the name
  and ``www.<name>`` (a wildcard ``*.<name>`` covers ``<name>`` and goes through DNS-01).
* A hosting order gets both steps from `hosting_dns_tls_steps()`, which the hosting
  capability calls from its own planner, but only where the ``line_kinds`` setting names
  ``dns`` / ``tls`` (e.g. "all,dns,tls"; `PlanOptions.extras`): plain "all" plans hosting
  lines without a zone or a certificate, since both need servers.
* ``dns.zone`` of a hosting service places the account first (the same, idempotent
  placement ``hosting.account`` uses, `capabilities.placement`), so the zone's A/AAAA
  records point at the node that will serve the site; a ``tls.issue`` for a hosting
  service (or for a ``tls`` line whose name a hosting account of the same customer
  serves) deploys to that node's vhost (``adapters.node_tls``); other ``tls`` lines go to
  ``adapters.tls_fallback`` (none in production: a clear ConfigurationError).

Handlers use the typed adapters ``ctx.adapters.dns``, ``.acme``, ``.node_tls`` and
``.tls_fallback`` (`engine.ports`); a unit test hands in fakes.

`tls.issue` observes first: a deployed certificate covering the names with more than
`tls_renew_days` left means nothing to do; a valid certificate already in the store but
not (or no longer) deployed is deployed without asking the CA again. A new certificate
is stored (key encrypted) before it is deployed, so a failed deployment is retried
from the store, and the target's atomic deploy keeps the previous certificate served.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import select

from provisioner.adapters.acme import Dns01Solver, Http01Solver, solver_chooser
from provisioner.adapters.tls_targets import CertificateTarget
from provisioner.domain import dns_records
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import ConfigurationError, InvalidInput
from provisioner.pipeline.capabilities.placement import place, target_of
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
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode, account_for_service
from provisioner.store.models import Service, Step
from provisioner.store.tls import TlsCertificate, decrypt, fernet_for, latest_certificate, save_certificate

log = logging.getLogger("provisioner.tls")

DNS_ZONE = "dns.zone"
TLS_ISSUE = "tls.issue"


# -- planning (pure) ---------------------------------------------------------------
def _names_for(service: ServiceView) -> list[str]:
    """The site and www, or for a wildcard product ``*.<name>`` and ``<name>``."""
    name = service.name
    if service.kind == "tls" and not name.startswith("*."):
        try:
            wildcard = DEFAULT_CATALOG.tls_product(service.product).wildcard
        except InvalidInput:
            wildcard = False
        if wildcard:
            name = f"*.{name}"
    return dns_records.certificate_names(name)


def plan_tls_line(view: OrderView, service: ServiceView, options: PlanOptions) -> list[StepSpec]:
    """A stand-alone certificate: one step."""
    names = _names_for(service)
    hosted = _hosting_line_step(view, service, options)
    return [StepSpec(service_step(service.id, TLS_ISSUE), TLS_ISSUE, (hosted,) if hosted else (),
                     {"service_id": service.id, "names": names, "challenge": "auto"}, service.id)]


def hosting_dns_tls_steps(view: OrderView, service: ServiceView, *, zone_deps: Sequence[str] = (),
                          tls_deps: Sequence[str] = (), challenge: str = "auto", zone: bool = True,
                          certificate: bool = True) -> list[StepSpec]:
    """`dns.zone` then `tls.issue` for a hosting service (either may be left out).
    `tls_deps` names the steps the certificate must wait for besides the zone (the
    account's vhost on the node)."""
    zone_key = service_step(service.id, DNS_ZONE)
    steps = []
    if zone:
        name = dns_records.absolute(service.name).rstrip(".")
        steps.append(StepSpec(zone_key, DNS_ZONE, tuple(zone_deps), {"service_id": service.id, "zone": name},
                              service.id))
    if certificate:
        steps.append(StepSpec(service_step(service.id, TLS_ISSUE), TLS_ISSUE,
                              ((zone_key,) if zone else ()) + tuple(tls_deps),
                              {"service_id": service.id, "names": _names_for(service),
                               "challenge": challenge}, service.id))
    return steps


def _hosting_line_step(view: OrderView, service: ServiceView, options: PlanOptions) -> str | None:
    """The step a ``tls`` line waits for when the same order has a hosting line for its
    site: that line's certificate (or its account), so the certificate goes to the vhost
    on the node after the account's own one (and usually finds nothing to do). Only a
    hosting line listed before this one counts (a plan lists dependencies first)."""
    if not options.enabled("hosting"):
        return None
    site = service.name.removeprefix("*.")
    for other in view.services:
        if other.id == service.id:
            break
        if other.kind == "hosting" and other.name == site and other.action != "renew":
            kind = TLS_ISSUE if "tls" in options.extras else "hosting.account"
            return service_step(other.id, kind)
    return None


def renewal_step(service_id: int, names: Sequence[str], not_after: date,
                 challenge: str = "auto") -> StepSpec:
    """The step the lifecycle sweep records when a certificate has `tls_renew_days` (30)
    or fewer left: one key per expiry date, so a renewal that keeps failing is retried
    with backoff, then dead-lettered with an ops alert, weeks before the certificate
    expires, and the next certificate gets a step of its own."""
    return StepSpec(service_step(service_id, TLS_ISSUE, not_after.isoformat()), TLS_ISSUE, (),
                    {"service_id": service_id, "names": list(names), "challenge": challenge}, service_id)


# -- handlers ---------------------------------------------------------------------------
def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def ensure_zone(ctx: StepContext, step: Step) -> StepResult:
    params = step.params
    service_id = params.get("service_id")
    zone = params["zone"]
    dns = need(ctx.adapters.dns, "a DNS server (setting dns_server)")
    dkim = ctx.adapters.dkim(service_id) if ctx.adapters.dkim is not None and service_id is not None \
        else None
    settings = ctx.settings
    ipv4, ipv6 = _split(settings.dns_site_ipv4), _split(settings.dns_site_ipv6)
    node_address = _place_hosting(ctx, step.key, service_id) if service_id is not None else None
    if node_address is not None:
        ipv4, ipv6 = _by_family(node_address, ipv4, ipv6)
    spec = dns_records.HostedZone(
        zone=zone,
        nameservers=tuple(params.get("nameservers") or _split(settings.dns_nameservers)),
        hostmaster=settings.dns_hostmaster,
        site_ipv4=tuple(params.get("ipv4") or ipv4),
        site_ipv6=tuple(params.get("ipv6") or ipv6),
        mail_host=params.get("mail_host") or settings.dns_mail_host,
        dkim_selector=dkim[0] if dkim else "default",
        dkim_public_key=dkim[1] if dkim else "",
        serial=dns_records.serial_for(ctx.now()),
    )
    records = dns_records.hosting_zone_records(spec)
    result = dns.ensure_zone(zone, records)
    details = {**result.details, "records": len(records), "dkim": bool(dkim)}
    if node_address is not None:
        details["node_address"] = node_address
    return StepResult(result.changed, details)


def _by_family(address: str, ipv4: tuple[str, ...],
               ipv6: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The node's address as the site's A or AAAA record (a node known by host name
    keeps the configured addresses)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ipv4, ipv6
    return ((str(ip),), ()) if ip.version == 4 else ((), (str(ip),))


def _place_hosting(ctx: StepContext, step_key: str, service_id: int) -> str | None:
    """For a hosting service: its node's address, placing the account on a node first
    if ``hosting.account`` has not yet (the same idempotent placement, recorded once per
    service). None for other services."""
    with transaction(ctx.factory) as s:
        placement = place(s, service_id, step_key)
        if placement is None:
            return None
        _, node, _ = placement
        return node.address


def _covers(have: Sequence[str], want: Sequence[str]) -> bool:
    """Every wanted name is in the certificate, itself or under its wildcard
    (``www.example.si`` is covered by ``*.example.si``)."""
    names = {n.lower() for n in have}
    for name in (n.lower() for n in want):
        parent = name.split(".", 1)[1] if "." in name else ""
        if name not in names and (name.startswith("*.") or f"*.{parent}" not in names):
            return False
    return True


def certificate_target(ctx: StepContext, service_id: int | None) -> CertificateTarget:
    """Where the certificate goes: the vhost on its node of the hosting account that
    serves the site (the service's own account, or for a ``tls`` line the active
    account of the same customer whose domain is the certificate's site); else the
    installation's fallback target, if it has one."""
    if service_id is not None:
        with transaction(ctx.factory) as s:
            account = _serving_account(s, service_id)
            node = s.get(HostingNode, account.node_id) if account is not None else None
            if account is not None and node is not None:
                return ctx.adapters.node_tls(target_of(node), account.username, [account.domain])
    return need(ctx.adapters.tls_fallback,
                "a certificate target for a site no hosting account of ours serves")


def _serving_account(s: Any, service_id: int) -> HostingAccount | None:
    service = s.get(Service, service_id)
    if service is None:
        return None
    if service.kind == "hosting":
        account = account_for_service(s, service_id)
        if account is None:
            raise ConfigurationError(f"service {service_id}: no hosting account is placed yet, "
                                     "so there is no vhost for its certificate")
        return account
    if service.kind != "tls":
        return None
    site = service.name.removeprefix("*.")
    found: HostingAccount | None = s.execute(
        select(HostingAccount).join(Service, Service.id == HostingAccount.service_id)
        .where(HostingAccount.domain == site, HostingAccount.state.in_(("creating", "active")),
               Service.customer_id == service.customer_id)
        .order_by(HostingAccount.id.desc()).limit(1)
    ).scalar_one_or_none()
    return found


def issue_certificate(ctx: StepContext, step: Step) -> StepResult:
    params = step.params
    names = [dns_records.absolute(n).rstrip(".") for n in params["names"]]
    if not names:
        raise InvalidInput(f"{step.key}: no names to certify")
    primary = names[0]
    service_id = params.get("service_id")
    now = ctx.now()
    renew_days = ctx.settings.tls_renew_days
    target = certificate_target(ctx, service_id)

    # Observe: deployed and good for long enough -> nothing to do.
    current = target.current_certificate(primary)
    if current is not None and _covers(current.names, names) and current.days_left(now) > renew_days:
        return StepResult(False, {"names": names, "serial": f"{current.serial:x}",
                                  "not_after": current.not_after.isoformat(), "reason": "valid certificate"})

    fernet = fernet_for(ctx.settings)
    # A good certificate in the store that is not deployed (a failed deploy, a rebuilt node).
    with transaction(ctx.factory) as s:
        stored = latest_certificate(s, primary)
        if stored is not None and _covers(stored.names, names) and \
                (stored.not_after - now).total_seconds() > renew_days * 86400:
            key_pem = decrypt(fernet, stored.key_encrypted)
            chain_pem, row_id = stored.chain_pem.encode(), stored.id
        else:
            key_pem = b""
    if key_pem:
        info = target.deploy(primary, key_pem, chain_pem)
        _mark_deployed(ctx, row_id)
        return StepResult(True, {"names": names, "serial": f"{info.serial:x}",
                                 "not_after": info.not_after.isoformat(),
                                 "reason": "deployed stored certificate"})

    # Act: order a new certificate.
    acme = need(ctx.adapters.acme, "an ACME CA (setting acme_directory)")
    dns = ctx.adapters.dns
    zones: dict[str, bool] = {}

    def hosted(name: str) -> bool:
        if dns is None:
            return False
        if name not in zones:
            zones[name] = dns.zone_for(name) is not None
        return zones[name]

    chooser = solver_chooser(Http01Solver(target), Dns01Solver(dns) if dns is not None else None, hosted,
                             params.get("challenge", "auto"))
    ctx.heartbeat()
    issued = acme.issue(names, chooser)
    with transaction(ctx.factory) as s:
        ctx.fence(s)  # a run that lost the step meanwhile neither stores nor deploys its order
        row = save_certificate(
            s, fernet, primary_name=primary, names=names, serial=issued.serial,
            not_before=now, not_after=issued.not_after, chain_pem=issued.chain_pem, key_pem=issued.key_pem,
            challenges=issued.challenges, service_id=service_id, deployed_at=None)
        row_id = row.id
    ctx.heartbeat()  # still ours: deploy (else the run that holds the step deploys the stored one)
    info = target.deploy(primary, issued.key_pem, issued.chain_pem)
    _mark_deployed(ctx, row_id)
    log.info("%s: certificate %x for %s deployed", step.key, info.serial, ", ".join(names))
    return StepResult(True, {"names": names, "serial": f"{info.serial:x}",
                             "not_after": info.not_after.isoformat(),
                             "challenges": issued.challenges, "reason": "issued"})


def _mark_deployed(ctx: StepContext, row_id: int) -> None:
    with transaction(ctx.factory) as s:
        row = s.get(TlsCertificate, row_id)
        if row is not None:
            row.deployed_at = ctx.now()


PLANNERS: dict[str, LinePlanner] = {"tls": plan_tls_line}
HANDLERS: dict[str, Handler] = {DNS_ZONE: ensure_zone, TLS_ISSUE: issue_certificate}
