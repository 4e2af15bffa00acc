"""DNS zones and TLS certificates in the pipeline: steps `dns.zone` and `tls.issue`.

* A stand-alone ``tls:<name>`` line item plans ``service:{id}/tls.issue`` for the name
  and ``www.<name>`` (a wildcard ``*.<name>`` covers ``<name>`` and goes through DNS-01).
* A hosting order gets both steps from `hosting_dns_tls_steps()`, which the hosting
  capability calls from its own planner (no planner for ``hosting`` is registered here),
  but only where the ``line_kinds`` setting names ``dns`` / ``tls`` (e.g. "all,dns,tls";
  `capabilities.configure`): plain "all" and a process that applied no setting
  (library use, unit tests) plan hosting lines without a zone or a certificate, since
  both need servers (`hosting_extras()`).
* ``dns.zone`` of a hosting service places the account first (the same, idempotent
  placement ``hosting.account`` uses), so the zone's A/AAAA records point at the node
  that will serve the site; a ``tls.issue`` for a hosting service (or for a ``tls`` line
  whose name a hosting account of the same customer serves) deploys to that node's vhost
  (`wiring.dns_tls_adapters`); other ``tls`` lines go to the loopback nginx.

Handlers find their adapters in ``ctx.adapters`` as factories (so nothing is built
until a step needs it and a unit test can hand in fakes):
``"dns"`` -> DnsServer, ``"acme"`` -> AcmeClient, ``"cert_target"`` -> callable
``(service_id) -> CertificateTarget``; optional ``"dkim"`` -> callable
``(service_id) -> (selector, base64 public key) | None``.

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

from provisioner.adapters.acme import Dns01Solver, Http01Solver, solver_chooser
from provisioner.domain import dns_records
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import ConfigurationError, InvalidInput
from provisioner.pipeline.engine.plan import OrderView, ServiceView, StepSpec, register_line_planner
from provisioner.pipeline.engine.runner import StepContext, StepResult, handler
from provisioner.store.db import transaction
from provisioner.store.models import Step
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


def plan_tls_line(view: OrderView, service: ServiceView) -> list[StepSpec]:
    """A stand-alone certificate: one step."""
    names = _names_for(service)
    hosted = _hosting_line_step(view, service)
    return [StepSpec(f"service:{service.id}/{TLS_ISSUE}", TLS_ISSUE, (hosted,) if hosted else (),
                     {"service_id": service.id, "names": names, "challenge": "auto"}, service.id)]


def hosting_dns_tls_steps(view: OrderView, service: ServiceView, *, zone_deps: Sequence[str] = (),
                          tls_deps: Sequence[str] = (), challenge: str = "auto", zone: bool = True,
                          certificate: bool = True) -> list[StepSpec]:
    """`dns.zone` then `tls.issue` for a hosting service (either may be left out).
    `tls_deps` names the steps the certificate must wait for besides the zone (the
    account's vhost on the node)."""
    zone_key = f"service:{service.id}/{DNS_ZONE}"
    steps = []
    if zone:
        name = dns_records.absolute(service.name).rstrip(".")
        steps.append(StepSpec(zone_key, DNS_ZONE, tuple(zone_deps), {"service_id": service.id, "zone": name},
                              service.id))
    if certificate:
        steps.append(StepSpec(f"service:{service.id}/{TLS_ISSUE}", TLS_ISSUE,
                              ((zone_key,) if zone else ()) + tuple(tls_deps),
                              {"service_id": service.id, "names": _names_for(service),
                               "challenge": challenge}, service.id))
    return steps


def hosting_extras() -> frozenset[str]:
    """Which of ``dns`` and ``tls`` hosting lines get (``dns.zone``, ``tls.issue``): those
    the applied ``line_kinds`` setting names; none when no setting was applied."""
    from provisioner.pipeline.engine import plan as _plan

    enabled = _plan.enabled_kinds()
    return frozenset() if enabled is None else frozenset({"dns", "tls"} & enabled)


def _hosting_line_step(view: OrderView, service: ServiceView) -> str | None:
    """The step a ``tls`` line waits for when the same order has a hosting line for its
    site: that line's certificate (or its account), so the certificate goes to the vhost
    on the node after the account's own one (and usually finds nothing to do). Only a
    hosting line listed before this one counts (a plan lists dependencies first)."""
    from provisioner.pipeline.capabilities.hosting import plan_hosting_line
    from provisioner.pipeline.engine.plan import planned_kinds

    if "hosting" not in planned_kinds():
        return None
    site = service.name.removeprefix("*.")
    for other in view.services:
        if other.id == service.id:
            break
        if other.kind != "hosting" or other.name != site:
            continue
        keys = {st.kind: st.key for st in plan_hosting_line(view, other)}
        return keys.get(TLS_ISSUE) or keys.get("hosting.account")
    return None


def renewal_step(service_id: int, names: Sequence[str], not_after: date,
                 challenge: str = "auto") -> StepSpec:
    """The step the lifecycle sweep records when a certificate has `tls_renew_days` (30)
    or fewer left: one key per expiry date, so a renewal that keeps failing is retried
    with backoff, then dead-lettered with an ops alert, weeks before the certificate
    expires, and the next certificate gets a step of its own."""
    return StepSpec(f"service:{service_id}/{TLS_ISSUE}@{not_after.isoformat()}", TLS_ISSUE, (),
                    {"service_id": service_id, "names": list(names), "challenge": challenge}, service_id)


register_line_planner("tls", plan_tls_line)


# -- handlers ---------------------------------------------------------------------------
def _adapter(ctx: StepContext, name: str) -> Any:
    factory = ctx.adapters.get(name)
    if factory is None:
        raise ConfigurationError(f"no {name!r} adapter is configured")
    return factory() if callable(factory) else factory


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@handler(DNS_ZONE)
def ensure_zone(ctx: StepContext, step: Step) -> StepResult:
    params = step.params
    service_id = params.get("service_id")
    zone = params["zone"]
    dkim = None
    dkim_source = ctx.adapters.get("dkim")
    if callable(dkim_source) and service_id is not None:
        dkim = dkim_source(service_id)
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
    result = _adapter(ctx, "dns").ensure_zone(zone, records)
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
    from provisioner.pipeline.capabilities.hosting import place

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


@handler(TLS_ISSUE)
def issue_certificate(ctx: StepContext, step: Step) -> StepResult:
    params = step.params
    names = [dns_records.absolute(n).rstrip(".") for n in params["names"]]
    if not names:
        raise InvalidInput(f"{step.key}: no names to certify")
    primary = names[0]
    service_id = params.get("service_id")
    now = ctx.now()
    renew_days = ctx.settings.tls_renew_days
    target_factory = ctx.adapters.get("cert_target")
    if not callable(target_factory):
        raise ConfigurationError("no 'cert_target' adapter is configured")
    target = target_factory(service_id)

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
    acme = _adapter(ctx, "acme")
    dns = _adapter(ctx, "dns") if ctx.adapters.get("dns") is not None else None
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
        row = save_certificate(
            s, fernet, primary_name=primary, names=names, serial=issued.serial,
            not_before=now, not_after=issued.not_after, chain_pem=issued.chain_pem, key_pem=issued.key_pem,
            challenges=issued.challenges, service_id=service_id, deployed_at=None)
        row_id = row.id
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
