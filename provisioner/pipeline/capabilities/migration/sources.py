"""The old provider's access at rest: sealed, shown without secrets, wiped with an audit row.

The sealed JSON is encrypted with the migration key (Fernet; the setting
``migration_source_key`` or the key file ``key_dir/migration-fernet.key``, never in the
database). `record_source` stores a validated `Source` (from the intake form through
`submit_intake`, or ops through ``provisioner migration source``); the later steps read
it with `open_source` and end with `wipe_source` (done, failed, or abandoned:
`wipe_abandoned` from the beat). Nothing here logs or raises a secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.config import Settings
from provisioner.domain.lifecycle import StepState
from provisioner.errors import ConfigurationError, InvalidInput, NotFound
from provisioner.keyfiles import fernet_from
from provisioner.pipeline.capabilities.migration.intake import Source, validate
from provisioner.pipeline.engine.plan import StepSpec, service_step
from provisioner.pipeline.engine.runner import record
from provisioner.pipeline.onetime import checked_digest, claim, refuse
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Migration, MigrationLink, Service, Step

KEY_FILE = "migration-fernet.key"
AWAITING, RECEIVED, WIPED = "awaiting_source", "source_received", "wiped"
# the survey's verdicts (`survey`): fits, over the cap (stopped unless ops override), a login refused
SURVEYED, OVER_CAP, REFUSED = "surveyed", "over_cap", "source_refused"
SURVEY = "migration.survey"
INTAKE_KIND = "migration.intake"
WIPED_MARK = b"-"


def migration_fernet(settings: Settings) -> MultiFernet:
    return fernet_from(
        settings.migration_source_key, settings.effective_key_dir / KEY_FILE, "migration_source_key"
    )


def _migration(s: Session, service_id: int) -> Migration:
    row = s.execute(select(Migration).where(Migration.service_id == service_id)).scalar_one_or_none()
    if row is None:
        service = s.get(Service, service_id)
        if service is None or service.kind != "migration":
            raise NotFound(f"service {service_id} is not a migration")
        raise InvalidInput(f"migration service {service_id} is not paid and planned yet (no intake)")
    return row


def _store(
    s: Session, fernet: MultiFernet, row: Migration, source: Source, actor: str, now: datetime
) -> None:
    if row.state == WIPED:
        raise InvalidInput(f"the migration of {row.domain} has ended; its source cannot be changed")
    payload = {
        "values": source.values,
        "allow_plain_ftp": source.allow_plain_ftp,
        "skip_cert_verify": source.skip_cert_verify,
    }
    row.sealed = fernet.encrypt(json.dumps(payload).encode())
    row.summary = source.summary()
    row.state = RECEIVED
    row.source_at = now
    row.source_by = actor[:100]
    row.updated_at = now
    _plan_survey(s, row.service_id, now)
    audit(
        s,
        actor,
        "migration.source_received",
        "service",
        row.service_id,
        {"sections": source.sections(), "warnings": row.summary["warnings"]},
    )


def _plan_survey(s: Session, service_id: int, now: datetime) -> None:
    """Journal ``migration.survey`` after the intake step (the re-drive queues it); a
    survey that already ended (a refused login, over the cap) runs again for the new source.
    A migration outside the journal (no intake step) gets none: ops survey it by hand."""
    service = s.get(Service, service_id)
    intake = service_step(service_id, INTAKE_KIND)
    if service is None or s.execute(select(Step.id).where(Step.key == intake)).first() is None:
        return
    key = service_step(service_id, SURVEY)
    spec = StepSpec(key, SURVEY, (intake,), {"service_id": service_id}, service_id)
    if record(s, service.order_id, [spec]) == 0:
        s.execute(
            update(Step)
            .where(Step.key == key, Step.state == StepState.DONE.value)
            .values(state=StepState.PENDING.value, attempts=0, last_error=None, owner=None,
                    lease_until=None, next_attempt_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )


# the steps after a survey that fits (`copy`, `verify`, `cutover`, `wipe`): planned here
# so that the survey and an ops override plan them without importing the steps
COPY_CHAIN = ("migration.copy", "migration.verify", "migration.cutover", "migration.wipe")


def plan_copy(s: Session, service_id: int) -> int:
    """Journal copy -> verify -> cut-over -> wipe after ``migration.survey`` (a survey that
    fits, or an ops override of one over the cap). Each runs once per migration; the wipe
    always last, whatever the steps before it found (they record their outcome and end
    done). A migration outside the journal gets none. Returns how many were added."""
    service = s.get(Service, service_id)
    survey = service_step(service_id, SURVEY)
    if service is None or s.execute(select(Step.id).where(Step.key == survey)).first() is None:
        return 0
    specs, dep = [], survey
    for kind in COPY_CHAIN:
        key = service_step(service_id, kind)
        specs.append(StepSpec(key, kind, (dep,), {"service_id": service_id}, service_id))
        dep = key
    return record(s, service.order_id, specs)


def record_source(
    factory: sessionmaker[Session],
    settings: Settings,
    service_id: int,
    form: Mapping[str, object],
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Validate ``form`` (flat fields, `intake.validate`) and seal it as the source of
    migration ``service_id`` (ops: ``provisioner migration source``). SourceInvalid
    (nothing stored) for a bad field. Returns the summary (no secret)."""
    source = validate(form)
    fernet = migration_fernet(settings)
    with transaction(factory) as s:
        row = _migration(s, service_id)
        _store(s, fernet, row, source, actor, now)
        return dict(row.summary or {})


def submit_intake(
    factory: sessionmaker[Session], settings: Settings, token: str, form: Mapping[str, object], now: datetime
) -> dict[str, Any]:
    """The intake form, submitted through its one-time link: validated first
    (SourceInvalid: nothing stored, the link still works), then the link is claimed and
    the source sealed in one transaction (LinkUnusable: used, expired or unknown)."""
    digest = checked_digest(token)
    source = validate(form)
    fernet = migration_fernet(settings)
    with transaction(factory) as s:
        claimed = claim(s, MigrationLink, digest, now)
        if claimed is None:
            raise refuse(s, MigrationLink, digest, now)
        row = _migration(s, claimed.service_id)
        _store(s, fernet, row, source, "customer:link", now)
        return dict(row.summary or {})


def open_source(factory: sessionmaker[Session], settings: Settings, service_id: int) -> Source:
    """The sealed source of a migration, for the steps that use it (never for display)."""
    with transaction(factory) as s:
        row = _migration(s, service_id)
        sealed = row.sealed
    if row.state in (AWAITING, WIPED) or not sealed or sealed == WIPED_MARK:
        raise InvalidInput(f"migration service {service_id} has no source (state {row.state})")
    try:
        payload = json.loads(migration_fernet(settings).decrypt(sealed))
    except InvalidToken:
        raise ConfigurationError(
            f"the source of migration service {service_id} does not open with the "
            "migration key (migration_source_key / key_dir)"
        ) from None
    return Source(payload["values"], bool(payload["allow_plain_ftp"]), bool(payload["skip_cert_verify"]))


def wipe_source(
    factory: sessionmaker[Session], service_id: int, *, reason: str, actor: str, now: datetime
) -> bool:
    """Blank the sealed source of a migration (its intake links too) and audit it; the
    summary stays. ``reason``: done, failed, abandoned, ops. True when something was
    wiped; a second wipe changes nothing (but the migration stays ended)."""
    with transaction(factory) as s:
        row = _migration(s, service_id)
        had = row.sealed is not None and row.sealed != WIPED_MARK
        s.execute(
            update(MigrationLink)
            .where(MigrationLink.service_id == service_id, MigrationLink.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if row.state == WIPED and not had:
            return False
        row.sealed = WIPED_MARK if had else row.sealed
        row.state = WIPED
        row.wiped_at = now
        row.wipe_reason = reason[:40]
        row.updated_at = now
        audit(
            s, actor, "migration.source_wiped", "service", service_id, {"reason": reason, "had_source": had}
        )
        return True


def wipe_abandoned(factory: sessionmaker[Session], now: datetime, days: int) -> int:
    """Wipe the sources of migrations untouched for ``days`` (the daily beat,
    ``provisioner.wipe_migrations``). Returns how many were wiped."""
    cutoff = now - timedelta(days=days)
    with transaction(factory) as s:
        ids = list(
            s.execute(
                select(Migration.service_id).where(
                    Migration.state != WIPED,
                    Migration.migration_used_at.is_(None),
                    Migration.updated_at <= cutoff,
                )
            ).scalars()
        )
    return sum(wipe_source(factory, sid, reason="abandoned", actor="system:beat", now=now) for sid in ids)


def show(factory: sessionmaker[Session], service_id: int, now: datetime) -> dict[str, Any]:
    """A migration's state for ops (``provisioner migration show``): no secret."""
    with transaction(factory) as s:
        row = _migration(s, service_id)
        links = (
            s.execute(
                select(MigrationLink).where(MigrationLink.service_id == service_id).order_by(MigrationLink.id)
            )
            .scalars()
            .all()
        )
        link = links[-1] if links else None
        return {
            "service": service_id,
            "domain": row.domain,
            "hosting_service": row.hosting_service_id,
            "state": row.state,
            "charge_gross": f"{row.charge_gross:.2f}",
            "source": row.summary,
            "source_at": row.source_at.isoformat() if row.source_at else None,
            "source_by": row.source_by,
            "sealed": bool(row.sealed) and row.sealed != WIPED_MARK,
            "link": None
            if link is None
            else {
                "state": "used" if link.used_at else ("expired" if link.expires_at <= now else "open"),
                "expires_at": link.expires_at.isoformat(),
            },
            "wiped_at": row.wiped_at.isoformat() if row.wiped_at else None,
            "wipe_reason": row.wipe_reason,
            "migration_used_at": row.migration_used_at.isoformat() if row.migration_used_at else None,
            "survey": row.survey,
            "surveyed_at": row.surveyed_at.isoformat() if row.surveyed_at else None,
            "override": None if row.override_at is None else {
                "reason": row.override_reason, "by": row.override_by, "at": row.override_at.isoformat()},
            **progress_view(row),
            "reconciliation": _public(row.reconciliation),
            "cutover": _public(row.cutover),
        }


def _public(report: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if report is None else {k: v for k, v in report.items() if k != "mail_keys"}


def progress_view(row: Migration) -> dict[str, Any]:
    """The copy's state and live progress (``migration show``, ``GET /services/{id}``): no
    secret. ``copy_state``: copying, copied, cap_reached, budget_exhausted, failed..."""
    copy = dict(row.copy or {})
    parts = {p: {k: o.get(k) for k in ("state", "bytes", "items", "error")}
             for p, o in (copy.get("copy") or {}).items()}
    return {
        "copy_state": copy.get("state") or ("copying" if row.progress else None),
        "outcome": copy.get("outcome"),
        "copy_seconds": round(float(row.copy_seconds or 0.0), 1),
        "copy_bytes": sum(int(o.get("bytes") or 0) for o in parts.values()),
        "progress": row.progress,
        "parts": parts,
        "verified": (row.reconciliation or {}).get("verified"),
        "cutover_state": (row.cutover or {}).get("state"),
    }
