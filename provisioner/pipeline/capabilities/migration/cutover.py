"""The migration's cut-over (issue 13, item 7): ``migration.cutover`` after a verify that
found no difference.

* Our DNS serves the domain (`ports.DnsZones.zone_for`): a final delta sync first (files
  and mail changed or arrived since the first pass: the copy parts again, which copy only
  what is new, under the same cap and budget), then the site's A/AAAA (the domain and
  ``www``) and MX switched to our node in one update; the values they had are kept in the
  report (``migrations.cutover["old"]``) for a rollback.
* Otherwise nothing is switched: the report (and the customer's mail, sl/en) lists the
  values to set at whoever serves the domain's DNS.

A copy that did not complete, or a verify with differences, is not cut over (recorded,
the customer already has the reconciliation report).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from provisioner.domain import dns_records
from provisioner.pipeline.capabilities.migration.copy import (
    COPIED,
    CUT_OVER,
    DNS_ELSEWHERE,
    SYSTEM,
    VERIFIED,
    Destination,
    destination,
    migration_row,
    parts_of,
    run_parts,
    settle,
)
from provisioner.pipeline.capabilities.migration.sources import open_source
from provisioner.pipeline.engine.runner import StepContext, StepResult
from provisioner.pipeline.onetime import brand_context
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Customer, Service, Step

DELTA_PARTS = ("files", "mailbox1", "mailbox2")
RTYPES = ("A", "AAAA", "MX")


def step_migration_cutover(ctx: StepContext, step: Step) -> StepResult:
    service_id = int(step.params["service_id"])
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        done, state = dict(row.cutover or {}), row.state
        copy_state = (row.copy or {}).get("state")
        verified = (row.reconciliation or {}).get("verified")
    if done.get("state"):
        sent = [box.send_held(k) for k in done.get("mail_keys", [])]
        return StepResult(any(x is not None and x.sent_now for x in sent), {"state": done["state"]})
    if copy_state != COPIED or state != VERIFIED or not verified:
        with transaction(ctx.factory) as s:
            ctx.fence(s)
            row = migration_row(s, service_id)
            row.cutover = {**(row.cutover or {}), "state": "not_cut_over",
                           "reason": f"copy {copy_state}, verify {state}"}
        return StepResult(False, {"state": "not_cut_over"})
    return settle(ctx, step, lambda: _cutover(ctx, service_id, box))


def lower_ttl(ctx: StepContext, service_id: int) -> dict[str, Any] | None:
    """At survey time: where our DNS serves the domain, its A/AAAA/MX (and www's A/AAAA)
    get the short cut-over TTL (``migration_cutover_ttl``) now, so the switch after the
    verify takes effect quickly; recorded on the migration (``cutover["ttl_lowered"]``).
    None where our DNS does not serve it."""
    dns = ctx.adapters.dns
    with transaction(ctx.factory) as s:
        domain = migration_row(s, service_id).domain
    zone = dns.zone_for(domain) if dns is not None else None
    if dns is None or zone is None:
        return None
    ttl = ctx.settings.migration_cutover_ttl
    lowered = {f"{name} {rtype}": dns.set_ttl(zone, name, rtype, ttl) for name, rtype in _names(domain)}
    record = {"zone": zone, "ttl": ttl, "values": lowered, "at": ctx.now().isoformat()}
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        row.cutover = {**(row.cutover or {}), "ttl_lowered": record}
        audit(s, SYSTEM, "migration.ttl_lowered", "service", service_id, {"zone": zone, "ttl": ttl})
    return record


def _names(domain: str) -> list[tuple[str, str]]:
    return [(domain, rtype) for rtype in RTYPES] + [(f"www.{domain}", "A"), (f"www.{domain}", "AAAA")]


def wanted_records(domain: str, dest: Destination, mail_host: str, ttl: int) -> list[dns_records.Record]:
    """Our node as the site's A or AAAA (the domain and www) and our mail host as its MX
    (a mail host inside the domain, ``mail.<domain>``, gets our node's address too)."""
    try:
        ip = ipaddress.ip_address(dest.address)
        v4, v6 = ((str(ip),), ()) if ip.version == 4 else ((), (str(ip),))
    except ValueError:
        v4, v6 = (), ()
    records = [*dns_records.address_records(domain, v4, v6, ttl),
               *dns_records.address_records(f"www.{dns_records.absolute(domain)}", v4, v6, ttl),
               *dns_records.mx_records(domain, mail_host, ttl=ttl)]
    if own_mail_host(domain, mail_host):
        records += dns_records.address_records(mail_host, v4, v6, ttl)  # mail.<domain>: our node too
    return records


def own_mail_host(domain: str, mail_host: str) -> bool:
    absolute = dns_records.absolute
    return dns_records.in_zone(mail_host, domain) and absolute(mail_host) != absolute(domain)


def switched_names(domain: str, mail_host: str) -> list[tuple[str, str]]:
    """Every (name, type) the cut-over owns: their old values are kept for a rollback."""
    names = _names(domain)
    if own_mail_host(domain, mail_host):
        names += [(mail_host, "A"), (mail_host, "AAAA")]
    return names


def _cutover(ctx: StepContext, service_id: int, box: Outbox) -> StepResult:
    source = open_source(ctx.factory, ctx.settings, service_id)
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        dest, domain = destination(s, row), row.domain
    dns = ctx.adapters.dns
    zone = dns.zone_for(domain) if dns is not None else None
    mail_host = ctx.settings.dns_mail_host or f"mail.{domain.rstrip('.')}"
    records = wanted_records(domain, dest, mail_host, ctx.settings.migration_cutover_ttl)
    values = [{"name": r.name, "type": r.rtype, "value": r.data} for r in records]
    report: dict[str, Any]
    if dns is None or zone is None:
        report = {"state": DNS_ELSEWHERE, "set": values}
    else:
        owned = switched_names(domain, mail_host)
        old = {f"{name} {rtype}": sorted(dns.lookup(name, rtype)) for name, rtype in owned}
        delta = run_parts(ctx, service_id, "delta", [p for p in parts_of(source) if p in DELTA_PARTS])
        if delta.state != COPIED:
            report = {"state": "not_cut_over", "reason": f"the final delta sync ended {delta.state}",
                      "delta": delta.parts, "set": values}
        else:
            result = dns.ensure_zone(zone, records)
            ours = {(dns_records.absolute(r.name), r.rtype) for r in records}
            stale = [(n, t) for n, t in owned if (dns_records.absolute(n), t) not in ours
                     and old[f"{n} {t}"]]  # e.g. the old host's AAAA where our node has only IPv4
            for name, rtype in stale:
                dns.delete_rrset(zone, name, rtype)
            report = {"state": CUT_OVER, "zone": zone, "old": old, "set": values, "delta": delta.parts,
                      "removed": [f"{n} {t}" for n, t in stale], "changed": result.changed or bool(stale)}
    report["at"] = ctx.now().isoformat()
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = migration_row(s, service_id)
        keys = _hold(s, box, row.service_id, row.domain, report)
        row.cutover = {**(row.cutover or {}), **report, "mail_keys": list(keys)}
        if report["state"] in (CUT_OVER, DNS_ELSEWHERE):
            row.state = report["state"]
        row.updated_at = ctx.now()
        audit(s, SYSTEM, "migration.cutover", "service", service_id,
              {"state": report["state"], "old": report.get("old"), "set": values})
    for key in keys:
        box.send_held(key)
    return StepResult(True, {"state": report["state"]})


def _hold(s: Any, box: Outbox, service_id: int, domain: str, report: dict[str, Any]) -> tuple[str, ...]:
    service = s.get(Service, service_id)
    assert service is not None
    customer = s.get(Customer, service.customer_id)
    assert customer is not None
    context = {
        "customer": {"name": customer.name, "email": customer.email},
        "domain": domain,
        "service_id": service_id,
        "state": report["state"],
        "reason": report.get("reason", ""),
        "records": report["set"],
        "old": report.get("old") or {},
        **brand_context(s, service.order_id),
    }
    key = f"migration.cutover:{service_id}"
    box.hold(s, key, customer.email, "migration_cutover", customer.lang, context)
    return (key,)
