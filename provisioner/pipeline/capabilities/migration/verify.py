"""The migration's verify (issue 13, item 6): ``migration.verify`` runs each part that
brought something in verify mode (files: counts, bytes, sampled hashes; database: rows per
table; mailboxes: messages per folder), fetches the site from our node (its address, the
domain as the Host header) and from the old host (the domain's address as our zone had
it at survey time, else the files host), and compares status and ``<title>``.

The result is the reconciliation report (``migrations.reconciliation``; no secret): every
count of every part, everything the copy named (excluded, over our limit, renamed), and
every difference by name; the customer gets it by e-mail once (sl/en). A copy that ended
early (the cap, the budget) is verified for what arrived; a failed copy is not verified.
"""

from __future__ import annotations

from typing import Any

from provisioner.adapters.migration_copy.site import SitePage
from provisioner.domain.migration_survey import human
from provisioner.pipeline.capabilities.migration.copy import (
    COPIED,
    DIFFERENCES,
    STOPPED,
    SYSTEM,
    VERIFIED,
    build_job,
    destination,
    migration_row,
    parts_of,
    settle,
)
from provisioner.pipeline.capabilities.migration.sources import open_source
from provisioner.pipeline.engine.ports import MigrationCopier, need
from provisioner.pipeline.engine.runner import StepContext, StepResult
from provisioner.pipeline.onetime import brand_context
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Customer, Service, Step


def step_migration_verify(ctx: StepContext, step: Step) -> StepResult:
    """Observe (a report already made: send its mail), else verify and report."""
    service_id = int(step.params["service_id"])
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        report, copy = dict(row.reconciliation or {}), dict(row.copy or {})
    if report.get("verified") is not None:
        sent = [box.send_held(k) for k in report.get("mail_keys", [])]
        return StepResult(any(x is not None and x.sent_now for x in sent), {"verified": report["verified"]})
    if copy.get("state") not in (COPIED, *STOPPED):
        return StepResult(False, {"verified": None, "copy": copy.get("state")})
    return settle(ctx, step, lambda: _verify(ctx, service_id, box))


def site_check(ours: SitePage, old: SitePage) -> dict[str, Any]:
    same = ours.status == old.status and ours.title == old.title and ours.status is not None
    return {"ours": {"status": ours.status, "title": ours.title, "error": ours.error},
            "old": {"status": old.status, "title": old.title, "error": old.error}, "same": same}


def _verify(ctx: StepContext, service_id: int, box: Outbox) -> StepResult:
    copier: MigrationCopier = need(ctx.adapters.migration_copier, "the migration copier (migration_copier)")
    source = open_source(ctx.factory, ctx.settings, service_id)
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        dest = destination(s, row)
        survey, copy, domain = dict(row.survey or {}), dict(row.copy or {}), row.domain
        lowered = ((row.cutover or {}).get("ttl_lowered") or {}).get("values") or {}
    copied: dict[str, Any] = dict(copy.get("copy") or {})
    parts: dict[str, Any] = {}
    differences: list[str] = []
    for part, outcome in copied.items():
        if outcome.get("state") != "done" and not int(outcome.get("bytes", 0)):
            parts[part] = {"copy": outcome, "verified": False}
            differences.append(f"{part}: not copied ({outcome.get('state')})")
            continue
        job = build_job(ctx.settings, service_id, part, "verify", dest, source, survey,
                        ctx.settings.migration_cap_bytes, ctx.settings.migration_cap_s)
        result = copier.run_part(dest.node, job, None)
        counts = result.counts or {}
        found = [str(d) for d in counts.get("differences", [])]
        if result.state != "done":
            found.append(f"verify ended {result.state}: {result.error or ''}".strip())
        parts[part] = {"copy": {k: outcome.get(k) for k in ("state", "bytes", "items", "counts")},
                       "source": counts.get("source", {}), "target": counts.get("target", {}),
                       "differences": found, "verified": not found}
        differences += [f"{part}: {d}" for d in found]
    for part in parts_of(source):
        if part not in copied:
            parts[part] = {"copy": None, "verified": False}
            differences.append(f"{part}: not copied (the copy ended {copy.get('state')})")
    site = None
    if copied.get("files", {}).get("state") == "done":
        # the old host: the domain's address as our zone served it at survey time, else the files host
        current = lowered.get(f"{domain} A") or lowered.get(f"{domain} AAAA") or []
        old_address = str(current[0] if current else source.values.get("files_host") or "")
        site = site_check(copier.fetch_site(dest.address, domain), copier.fetch_site(old_address, domain))
        if not site["same"]:
            differences.append(
                f"site: our node answers {site['ours']['status']} {site['ours']['title']!r}, "
                f"the old host {site['old']['status']} {site['old']['title']!r}")
    named = [n for o in copied.values() for n in o.get("named", [])]
    report: dict[str, Any] = {"copy_state": copy.get("state"), "parts": parts, "site": site,
                              "named": named[:500], "differences": differences,
                              "verified": not differences, "at": ctx.now().isoformat()}
    keys: tuple[str, ...] = ()
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = migration_row(s, service_id)
        keys = _hold_report(s, box, row.service_id, row.domain, report)
        row.reconciliation = {**report, "mail_keys": list(keys)}
        if copy.get("state") == COPIED:
            row.state = VERIFIED if not differences else DIFFERENCES
        row.updated_at = ctx.now()
        audit(s, SYSTEM, "migration.verified", "service", service_id,
              {"verified": not differences, "differences": differences[:50]})
    for key in keys:
        box.send_held(key)
    return StepResult(True, {"verified": not differences, "differences": len(differences)})


def _hold_report(s: Any, box: Outbox, service_id: int, domain: str,
                 report: dict[str, Any]) -> tuple[str, ...]:
    service = s.get(Service, service_id)
    assert service is not None
    customer = s.get(Customer, service.customer_id)
    assert customer is not None
    lines = []
    for part, entry in report["parts"].items():
        copied = entry.get("copy") or {}
        size = human(int(copied.get("bytes") or 0))
        lines.append({"name": part, "state": copied.get("state"), "size": size,
                      "count": int(copied.get("items") or 0), "source": _flat(entry.get("source")),
                      "target": _flat(entry.get("target"))})
    context = {
        "customer": {"name": customer.name, "email": customer.email},
        "domain": domain,
        "service_id": service_id,
        "verified": report["verified"],
        "copy_state": report["copy_state"],
        "parts": lines,
        "site": report["site"],
        "differences": report["differences"][:100],
        "named": [f"{n.get('kind')}: {n.get('name')} ({n.get('reason', '')})" for n in report["named"]][:100],
        **brand_context(s, service.order_id),
    }
    key = f"migration.report:{service_id}"
    box.hold(s, key, customer.email, "migration_report", customer.lang, context)
    return (key,)


def _flat(counts: Any) -> str:
    """A part's counts as one line (``files=3, bytes=12``; nested counts by name)."""
    if not isinstance(counts, dict):
        return ""
    out = []
    for k, v in sorted(counts.items()):
        if isinstance(v, dict):
            out.append(f"{k}: " + ", ".join(f"{a}={b}" for a, b in sorted(v.items())))
        else:
            out.append(f"{k}={v}")
    return "; ".join(out)
