"""The migration survey (issue 13, item 3): read-only, before anything is copied.

``migration.survey`` is planned when the source arrives (`sources.record_source` /
`sources.submit_intake`: after ``migration.intake``); ops run the same with
``provisioner migration survey SERVICE``. It opens the sealed source, lets the old
provider adapter (`ports.MigrationSource`) log in with each credential and measure, and
turns the measures into a report (`domain.migration_survey.build_report`) kept on the
migration record (``survey``; no secret). The state says what comes next:

* ``surveyed``: it fits the caps (RULES: 2 GB, 1 working hour; settings
  ``migration_cap_bytes`` / ``migration_cap_s``) and the software is compatible;
* ``over_cap``: it does not; the migration stops here, the customer (in their language)
  and ops are mailed once with the sizes and the reasons; ops may go on anyway with
  ``provisioner migration override SERVICE --reason ...`` (recorded and audited);
  where our DNS serves the domain, the step lowers its A/AAAA/MX TTL for the cut-over
  (`cutover.lower_ttl`);
* ``source_refused``: a login was refused (the error names the credential); a new source
  (the form again, or ``migration source``) plans the survey again.

An unreachable source is a TransientError (the step retries). The survey never writes
at the old provider and never copies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.config import Settings
from provisioner.domain.migration_survey import Limits, build_report, human
from provisioner.errors import InvalidInput, StepFailed
from provisioner.pipeline.capabilities.migration.cutover import lower_ttl
from provisioner.pipeline.capabilities.migration.sources import (
    AWAITING,
    OVER_CAP,
    REFUSED,
    SURVEYED,
    WIPED,
    open_source,
    plan_copy,
)
from provisioner.pipeline.engine.ports import MigrationSource, need
from provisioner.pipeline.engine.runner import StepContext, StepResult
from provisioner.pipeline.onetime import brand_context
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Customer, Migration, Service, Step

SYSTEM = "system:pipeline"


def limits_from(settings: Settings) -> Limits:
    return Limits(
        cap_bytes=settings.migration_cap_bytes,
        cap_seconds=settings.migration_cap_s,
        max_message_bytes=settings.migration_max_message_bytes,
        sample_bytes=settings.migration_sample_bytes,
        node_php=settings.migration_node_php,
        node_mariadb=settings.migration_node_mariadb,
    )


@dataclass(frozen=True)
class SurveyOutcome:
    state: str  # surveyed | over_cap | source_refused
    report: dict[str, Any]
    mail_keys: tuple[str, ...]  # the mails held for this outcome (over_cap: customer, ops)


def _row(s: Session, service_id: int) -> Migration:
    row = s.execute(select(Migration).where(Migration.service_id == service_id)).scalar_one_or_none()
    if row is None:
        raise InvalidInput(f"service {service_id} is not an ordered migration")
    return row


def survey(
    factory: sessionmaker[Session],
    settings: Settings,
    old_provider: MigrationSource,
    service_id: int,
    *,
    actor: str,
    now: datetime,
    box: Outbox | None,
    fence: Any = None,
) -> SurveyOutcome:
    """Measure the old provider of migration ``service_id`` and record the verdict.
    CredentialRefused (InvalidInput) for a refused login, after recording it; a
    TransientError for a source that does not answer (nothing recorded)."""
    source = open_source(factory, settings, service_id)
    limits = limits_from(settings)
    started = time.monotonic()
    try:
        measures = old_provider.measure(source.values, allow_plain_ftp=source.allow_plain_ftp,
                                        skip_cert_verify=source.skip_cert_verify, limits=limits)
    except InvalidInput as exc:
        credential = getattr(exc, "credential", None)
        if credential is None:
            raise
        with transaction(factory) as s:
            if fence is not None:
                fence(s)
            row = _row(s, service_id)
            row.state = REFUSED
            row.survey = {"refused": credential, "error": str(exc)}
            row.surveyed_at = now
            row.updated_at = now
            audit(s, actor, "migration.source_refused", "service", service_id, {"credential": credential})
        raise
    report = build_report(measures, limits, time.monotonic() - started).to_json()
    state = SURVEYED if report["fits"] else OVER_CAP
    keys: tuple[str, ...] = ()
    with transaction(factory) as s:
        if fence is not None:
            fence(s)
        row = _row(s, service_id)
        if row.state in (AWAITING, WIPED):
            raise InvalidInput(f"migration service {service_id} has no source (state {row.state})")
        seq = int((row.survey or {}).get("seq", 0)) + 1
        if state == OVER_CAP and box is not None:
            keys = _hold_over_cap(s, box, settings, row, report, seq)
        row.state = state
        if state == SURVEYED:
            plan_copy(s, service_id)
        row.survey = {**report, "seq": seq, "mail_keys": list(keys), "surveyed_by": actor}
        row.surveyed_at = now
        row.updated_at = now
        audit(s, actor, "migration.surveyed", "service", service_id, {
            "fits": report["fits"], "total_bytes": report["total_bytes"],
            "projected_seconds": report["projected_seconds"], "blocking": report["blocking"]})
    if box is not None:
        for key in keys:
            box.send_held(key)
    return SurveyOutcome(state, row_report(report), keys)


def row_report(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("mail_keys",)}


def _hold_over_cap(s: Session, box: Outbox, settings: Settings, row: Migration, report: dict[str, Any],
                   seq: int) -> tuple[str, ...]:
    service = s.get(Service, row.service_id)
    assert service is not None
    customer = s.get(Customer, service.customer_id)
    assert customer is not None
    context = {
        "customer": {"name": customer.name, "email": customer.email},
        "domain": row.domain,
        "service_id": row.service_id,
        "total": human(report["total_bytes"]),
        "cap": human(report["cap_bytes"]),
        "minutes": f"{report['projected_seconds'] / 60:.1f}",
        "cap_minutes": f"{report['cap_seconds'] / 60:.0f}",
        "parts": [{"name": p["name"], "size": human(p["bytes"])} for p in report["parts"]],
        "blocking": report["blocking"],
        "excluded": report["excluded"][:20],
        **brand_context(s, service.order_id),
    }
    base = f"migration.over_cap:{row.service_id}:{seq}"
    box.hold(s, f"{base}:customer", customer.email, "migration_over_cap", customer.lang, context)
    box.hold(s, f"{base}:ops", settings.ops_email, "ops_migration_over_cap", "en", context)
    return (f"{base}:customer", f"{base}:ops")


def override(factory: sessionmaker[Session], service_id: int, reason: str, *, actor: str,
             now: datetime) -> dict[str, Any]:
    """Ops go on with an over-the-cap migration: the reason is recorded and audited
    (the brand's policy then says whether it is charged)."""
    reason = reason.strip()
    if len(reason) < 5 or len(reason) > 500:
        raise InvalidInput("--reason must say why, in 5 to 500 characters")
    with transaction(factory) as s:
        row = _row(s, service_id)
        if row.state != OVER_CAP:
            raise InvalidInput(f"migration service {service_id} is {row.state}, not over_cap: "
                               "there is nothing to override")
        row.override_reason = reason
        row.override_by = actor[:100]
        row.override_at = now
        row.state = SURVEYED
        row.updated_at = now
        plan_copy(s, service_id)
        audit(s, actor, "migration.override", "service", service_id,
              {"reason": reason, "blocking": (row.survey or {}).get("blocking", [])})
        return {"service": service_id, "state": row.state, "override_reason": reason,
                "override_by": row.override_by, "override_at": now.isoformat()}


def step_migration_survey(ctx: StepContext, step: Step) -> StepResult:
    """Observe (a verdict already recorded for this source: send what it held), else
    survey. A refused login ends the step with the state ``source_refused`` (a new
    source plans it again); over the cap ends it with ``over_cap``."""
    service_id = int(step.params["service_id"])
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        row = _row(s, service_id)
        state, report = row.state, dict(row.survey or {})
        received, surveyed_at = row.source_at, row.surveyed_at
    if state in (SURVEYED, OVER_CAP) and surveyed_at is not None and received is not None \
            and surveyed_at >= received:
        sent = [box.send_held(k) for k in report.get("mail_keys", [])]
        return StepResult(any(x is not None and x.sent_now for x in sent), {"state": state})
    if state == WIPED:
        raise StepFailed(step.key, f"the migration of service {service_id} has ended (its source is wiped)")
    old_provider = need(ctx.adapters.old_provider, "the old provider adapter (old_provider)")
    try:
        outcome = survey(ctx.factory, ctx.settings, old_provider, service_id, actor=SYSTEM, now=ctx.now(),
                         box=box, fence=ctx.fence)
    except InvalidInput as exc:
        credential = getattr(exc, "credential", None)
        if credential is None:
            raise
        return StepResult(True, {"state": REFUSED, "refused": credential})
    if outcome.state == SURVEYED:
        lower_ttl(ctx, service_id)  # our zone, if it serves the domain: a short TTL for the cut-over
    return StepResult(True, {"state": outcome.state, "fits": outcome.report["fits"],
                             "total_bytes": outcome.report["total_bytes"],
                             "projected_seconds": outcome.report["projected_seconds"]})
