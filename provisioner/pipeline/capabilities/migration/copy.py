"""The migration copy (issue 13, items 4-5): ``migration.copy`` runs the node's part
programs (`ports.MigrationCopier`, the real one `adapters.migration_copy.NodeJobs`) in
order files -> database -> mailbox1 -> mailbox2, under caps the parts share.

* The byte cap (``migration_cap_bytes``, RULES: 2 GB): each part may bring the cap minus
  what the parts before it brought; a part that reaches it ends the copy ``cap_reached``.
* The time budget (``migration_cap_s``, RULES: one working hour) is copy time across
  retries and re-drives: the seconds a run used are added to the migration row
  (``copy_seconds``) while it runs (with each progress write) and when a part ends, so a
  killed worker's time counts too; a part gets what is left as its deadline, and a copy
  with nothing left ends ``budget_exhausted``.
* Checkpointed: each part's outcome is kept on the row (``copy["parts"]``); a part that
  finished is not run again on a re-drive; one interrupted (a dropped connection, a killed
  worker: TransientError, the step retries) is run again and resumes from its own
  checkpoint on the node.
* Progress (part, bytes, items) goes to the row (``progress``) at most once per
  ``migration_progress_interval_s`` from the program's events (``migration show``, the API).
* At the cap or the end of the budget, what arrived stays and the customer (sl/en) and ops
  are mailed once (through the outbox, like the survey's over-cap mail); a refused login
  ends it ``source_refused``.

Every migration step "settles" (`settle`): an outcome that ends the migration (a failed
part, content that is not what it should be, a refused login, the last attempt of a
retried error) is recorded on the row and the step still ends DONE, so the steps after
it run and ``migration.wipe`` always runs last, whatever happened (`wipe`). Only a lost
lease and a retry before the last attempt leave the step to the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.migration_copy import PartOutcome
from provisioner.config import Settings
from provisioner.domain.migration_survey import human
from provisioner.errors import InvalidInput, StepFailed, TransientError
from provisioner.pipeline.capabilities.migration.intake import Source
from provisioner.pipeline.capabilities.migration.sources import (
    REFUSED,
    SURVEYED,
    WIPED,
    open_source,
)
from provisioner.pipeline.capabilities.placement import MAILBOXES, target_of
from provisioner.pipeline.engine.ports import need
from provisioner.pipeline.engine.runner import LeaseLost, StepContext, StepResult
from provisioner.pipeline.onetime import brand_context
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingNode, account_for_service
from provisioner.store.models import Customer, Migration, Service, Step

SYSTEM = "system:pipeline"
COPY, VERIFY, CUTOVER, WIPE = "migration.copy", "migration.verify", "migration.cutover", "migration.wipe"
PARTS = ("files", "database", "mailbox1", "mailbox2")
# the migration row's states after the survey (sources: awaiting_source ... wiped)
COPYING, COPIED = "copying", "copied"
CAP_REACHED, BUDGET_EXHAUSTED, FAILED = "cap_reached", "budget_exhausted", "failed"
VERIFIED, DIFFERENCES = "verified", "differences"
CUT_OVER, DNS_ELSEWHERE = "cut_over", "dns_elsewhere"
STOPPED = (CAP_REACHED, BUDGET_EXHAUSTED)  # what arrived is kept and reported
COPY_ENDED = (COPIED, *STOPPED, FAILED, REFUSED)
NODE_ROOT = "/srv/hosting"  # roles/hosting_account: hosting_account_node_root


def job_id(service_id: int) -> str:
    """The node-side job of a migration (``/run/hosting-migrate/<job>``)."""
    return f"m{service_id}"


def migration_row(s: Session, service_id: int) -> Migration:
    row = s.execute(select(Migration).where(Migration.service_id == service_id)).scalar_one_or_none()
    if row is None:
        raise StepFailed(f"service:{service_id}", f"service {service_id} is not an ordered migration")
    return row


# -- settling: every migration step ends DONE with the migration's outcome ---------------
def settle(ctx: StepContext, step: Step, body: Callable[[], StepResult]) -> StepResult:
    """Run ``body``; an error that ends the migration is recorded (state ``failed``, or
    ``source_refused`` for a refused login) and the step ends DONE, so the wipe runs
    after it. A TransientError before the step's last attempt is retried (re-raised); a
    lost lease belongs to the run that holds the step."""
    service_id = int(step.params["service_id"])
    try:
        return body()
    except LeaseLost:
        raise
    except TransientError as exc:
        if step.attempts < ctx.settings.step_max_attempts:
            raise
        return _ended(ctx, step, service_id, FAILED, f"gave up after {step.attempts} attempts: {exc}")
    except InvalidInput as exc:
        credential = getattr(exc, "credential", None)
        if credential is not None:
            return _ended(ctx, step, service_id, REFUSED, str(exc), credential=str(credential))
        return _ended(ctx, step, service_id, FAILED, str(exc))
    except StepFailed as exc:
        return _ended(ctx, step, service_id, FAILED, str(exc))
    except Exception as exc:  # noqa: BLE001 - retried like the runner does, then settled
        if step.attempts < ctx.settings.step_max_attempts:
            raise
        return _ended(ctx, step, service_id, FAILED, f"{type(exc).__name__}: {exc}")


def _ended(ctx: StepContext, step: Step, service_id: int, state: str, error: str,
           credential: str | None = None) -> StepResult:
    now = ctx.now()
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = migration_row(s, service_id)
        phase = step.kind.removeprefix("migration.")
        copy = dict(row.copy or {})
        copy["errors"] = {**(copy.get("errors") or {}), phase: error[:2000]}
        if phase == "copy":
            copy["state"] = state
        row.copy = copy
        if row.state != WIPED:
            row.state = state
        row.updated_at = now
        audit(s, SYSTEM, "migration.step_ended", "service", service_id,
              {"step": step.kind, "state": state, "error": error[:500],
               **({"credential": credential} if credential else {})})
    return StepResult(True, {"state": state, "error": error[:500],
                             **({"refused": credential} if credential else {})})


# -- where the migration goes: the account on its node -------------------------------
@dataclass(frozen=True)
class Destination:
    node: Target
    address: str
    user: str
    home: str
    docroot: str
    database: str
    domain: str

    def account(self, part: str) -> dict[str, Any]:
        out = {"user": self.user, "home": self.home, "docroot": self.docroot, "database": self.database}
        if part.startswith("mailbox"):
            # the account's mailbox (the hosting plan's first): both source mailboxes land in it,
            # mailbox1 in its folders, mailbox2 under a top-level folder of its own (`build_job`)
            out["mailbox"] = f"{MAILBOXES[0]}@{self.domain}"
        return out


def destination(s: Session, row: Migration) -> Destination:
    if row.hosting_service_id is None:
        raise StepFailed(f"service:{row.service_id}", "the migration has no hosting service to go to")
    account = account_for_service(s, row.hosting_service_id)
    if account is None:
        raise TransientError(f"the hosting account of service {row.hosting_service_id} is not placed yet")
    node = s.get(HostingNode, account.node_id)
    assert node is not None
    home = f"{NODE_ROOT}/{account.username}"
    return Destination(target_of(node), node.address, account.username, home, f"{home}/public_html",
                       account.username, account.domain)


def parts_of(source: Source) -> list[str]:
    sections = set(source.sections())
    return [p for p in PARTS if p in sections]


def source_fields(source: Source, part: str) -> dict[str, Any]:
    """The source's fields one part program needs (original names, secrets included)."""
    v = source.values
    if part == "files":
        keys = [k for k in v if k.startswith("files_")]
    elif part == "database":
        keys = [k for k in v if k.startswith("db_")]
        if v.get("db_via") == "ssh":
            keys += [k for k in v if k.startswith("files_")]
    else:
        n = part.removeprefix("mailbox")
        keys = [k for k in v if k.startswith(f"mail{n}_")]
    out: dict[str, Any] = {k: v[k] for k in keys}
    if part.startswith("mailbox"):
        out["index"] = int(part.removeprefix("mailbox"))
    return out


def build_job(settings: Settings, service_id: int, part: str, mode: str, dest: Destination, source: Source,
              survey: Mapping[str, Any], cap_bytes: int, deadline_s: float) -> dict[str, Any]:
    files = survey.get("files") or {}
    database = survey.get("database") or {}
    collations = database.get("collation_map") or \
        ((survey.get("compatibility") or {}).get("database") or {}).get("collation_map") or {}
    return {
        "job": job_id(service_id), "part": part, "mode": mode,
        "account": dest.account(part),
        "source": source_fields(source, part),
        "flags": {"allow_plain_ftp": source.allow_plain_ftp, "skip_cert_verify": source.skip_cert_verify},
        "source_host_key": files.get("host_key"),
        "cap_bytes": max(int(cap_bytes), 0),
        "deadline_s": max(float(deadline_s), 0.0),
        "collation_map": dict(collations),
        "max_message_bytes": settings.migration_max_message_bytes,
        **({"folder_prefix": mailbox2_folder(source)} if part == "mailbox2" else {}),
    }


def mailbox2_folder(source: Source) -> str:
    """The top-level folder the second source mailbox lands under in ours, named after its
    old address (the login), so that two people's INBOXes are not merged into one; the mail
    program makes it a folder name (characters it cannot hold become ``_``, named)."""
    return str(source.values.get("mail2_user") or "mailbox2")


def outcome_json(outcome: PartOutcome) -> dict[str, Any]:
    return {"state": outcome.state, "bytes": outcome.bytes, "items": outcome.items,
            "counts": outcome.counts, "named": outcome.named[:500], "error": outcome.error}


# -- progress and the time used ----------------------------------------------------------
class Progress:
    """The ``on_event`` of a part: writes the progress to the row at most once per
    interval and adds the copy time used since the last write (``copy_seconds``), so a
    run that dies mid-part has its time counted."""

    def __init__(self, factory: sessionmaker[Session], service_id: int, phase: str, part: str,
                 now: Callable[[], datetime], interval_s: float, *, counted: bool) -> None:
        self.factory, self.service_id, self.phase, self.part = factory, service_id, phase, part
        self.now, self.interval_s, self.counted = now, interval_s, counted
        self.accounted = now()
        self.written: datetime | None = None
        self.writes = 0

    def __call__(self, event: dict[str, Any]) -> None:
        at = self.now()
        if self.written is not None and (at - self.written).total_seconds() < self.interval_s:
            return
        self._write(at, {"phase": self.phase, "part": self.part, "bytes": int(event.get("bytes", 0)),
                         "items": int(event.get("items", 0)), "at": at.isoformat()})

    def close(self) -> float:
        """Count the time since the last write; returns the copy seconds the row holds."""
        return self._write(self.now(), None)

    def _write(self, at: datetime, progress: dict[str, Any] | None) -> float:
        used = max((at - self.accounted).total_seconds(), 0.0) if self.counted else 0.0
        with transaction(self.factory) as s:
            row = migration_row(s, self.service_id)
            row.copy_seconds = float(row.copy_seconds or 0.0) + used
            if progress is not None:
                row.progress = progress
                row.updated_at = at
            total = row.copy_seconds
        self.accounted = at
        if progress is not None:
            self.written = at
            self.writes += 1
        return total


# -- running parts -------------------------------------------------------------------
@dataclass(frozen=True)
class PartsRun:
    state: str  # copied | cap_reached | budget_exhausted | failed
    parts: dict[str, dict[str, Any]]
    ran: list[str]


def run_parts(ctx: StepContext, service_id: int, phase: str, parts: Iterable[str], *,
              counted: bool = True) -> PartsRun:
    """Run ``parts`` in copy mode for ``phase`` (``copy``, or ``delta`` at the cut-over),
    each at most once to the end (the outcomes are checkpoints on the row), under the
    shared byte cap and copy-time budget."""
    copier = need(ctx.adapters.migration_copier, "the migration copier (migration_copier)")
    source = open_source(ctx.factory, ctx.settings, service_id)
    settings = ctx.settings
    ran: list[str] = []
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        dest = destination(s, row)
        survey = dict(row.survey or {})
    for part in parts:
        with transaction(ctx.factory) as s:
            row = migration_row(s, service_id)
            done = dict((row.copy or {}).get(phase) or {})
            if done.get(part, {}).get("state") == "done":
                continue
            brought = sum(int(o.get("bytes", 0)) for p, o in done.items() if p != part)
            if phase != "copy":  # the delta shares the cap with what the first pass brought
                # (a part run again reports all it brought under the same job: its own
                # first pass included)
                first = (row.copy or {}).get("copy") or {}
                brought += sum(int(o.get("bytes", 0)) for p, o in first.items() if p != part)
            budget_left = settings.migration_cap_s - float(row.copy_seconds or 0.0)
            if row.migration_used_at is None:
                row.migration_used_at = ctx.now()
                audit(s, SYSTEM, "migration.used", "service", service_id, {"phase": phase})
            if phase == "copy":
                row.state = COPYING
            row.updated_at = ctx.now()
        cap_left = settings.migration_cap_bytes - brought
        if counted and budget_left <= 0:
            return _stopped(ctx, service_id, phase, part, BUDGET_EXHAUSTED, ran)
        if cap_left <= 0:
            return _stopped(ctx, service_id, phase, part, CAP_REACHED, ran)
        job = build_job(settings, service_id, part, "copy", dest, source, survey, cap_left,
                        budget_left if counted else settings.migration_cap_s)
        progress = Progress(ctx.factory, service_id, phase, part, ctx.now,
                            settings.migration_progress_interval_s, counted=counted)
        try:
            outcome = copier.run_part(dest.node, job, progress)
        finally:
            progress.close()
        ran.append(part)
        with transaction(ctx.factory) as s:
            ctx.fence(s)
            row = migration_row(s, service_id)
            copy = dict(row.copy or {})
            copy[phase] = {**(copy.get(phase) or {}), part: outcome_json(outcome)}
            row.copy = copy
            row.updated_at = ctx.now()
        if outcome.state != "done":
            state = outcome.state if outcome.state in STOPPED else FAILED
            with transaction(ctx.factory) as s:
                parts_now = dict((migration_row(s, service_id).copy or {}).get(phase) or {})
            return PartsRun(state, parts_now, ran)
    with transaction(ctx.factory) as s:
        parts_now = dict((migration_row(s, service_id).copy or {}).get(phase) or {})
    return PartsRun(COPIED, parts_now, ran)


def _stopped(ctx: StepContext, service_id: int, phase: str, part: str, state: str,
             ran: list[str]) -> PartsRun:
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = migration_row(s, service_id)
        copy = dict(row.copy or {})
        left = {"state": state, "bytes": 0, "items": 0, "counts": {}, "named": [], "error": None}
        copy[phase] = {**(copy.get(phase) or {}), part: left}
        row.copy = copy
        return PartsRun(state, dict(copy[phase]), ran)


# -- the step ------------------------------------------------------------------------
def step_migration_copy(ctx: StepContext, step: Step) -> StepResult:
    """Observe (the copy already ended: send what it held), else copy the parts."""
    service_id = int(step.params["service_id"])
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        state, copy = row.state, dict(row.copy or {})
    if copy.get("state") in COPY_ENDED:
        sent = [box.send_held(k) for k in copy.get("mail_keys", [])]
        return StepResult(any(x is not None and x.sent_now for x in sent), {"state": copy["state"]})
    if state not in (SURVEYED, COPYING):
        # not surveyed as fitting (a new source is being surveyed, or it ended): nothing to copy
        return StepResult(False, {"state": state, "copied": False})
    return settle(ctx, step, lambda: _copy(ctx, service_id, box))


def _copy(ctx: StepContext, service_id: int, box: Outbox) -> StepResult:
    source = open_source(ctx.factory, ctx.settings, service_id)
    run = run_parts(ctx, service_id, "copy", parts_of(source))
    keys: tuple[str, ...] = ()
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = migration_row(s, service_id)
        if run.state in STOPPED:
            keys = _hold_stopped(s, box, ctx.settings, row, run)
        copy = dict(row.copy or {})
        copy.update({"state": run.state, "mail_keys": list(keys),
                     "bytes": sum(int(o.get("bytes", 0)) for o in run.parts.values())})
        row.copy = copy
        row.state = run.state
        row.updated_at = ctx.now()
        audit(s, SYSTEM, "migration.copied", "service", service_id,
              {"state": run.state, "bytes": copy["bytes"], "seconds": round(row.copy_seconds, 1),
               "parts": {p: o.get("state") for p, o in run.parts.items()}})
        seconds = row.copy_seconds
    for key in keys:
        box.send_held(key)
    return StepResult(True, {"state": run.state, "ran": run.ran, "seconds": round(seconds, 1)})


def _hold_stopped(s: Session, box: Outbox, settings: Settings, row: Migration,
                  run: PartsRun) -> tuple[str, ...]:
    service = s.get(Service, row.service_id)
    assert service is not None
    customer = s.get(Customer, service.customer_id)
    assert customer is not None
    arrived = [{"name": p, "state": o.get("state"), "size": human(int(o.get("bytes", 0))),
                "count": int(o.get("items", 0))} for p, o in run.parts.items()]
    context = {
        "customer": {"name": customer.name, "email": customer.email},
        "domain": row.domain,
        "service_id": row.service_id,
        "reason": run.state,
        "cap": human(settings.migration_cap_bytes),
        "cap_minutes": f"{settings.migration_cap_s / 60:.0f}",
        "minutes": f"{float(row.copy_seconds or 0.0) / 60:.1f}",
        "total": human(sum(int(o.get("bytes", 0)) for o in run.parts.values())),
        "parts": arrived,
        "named": [n for o in run.parts.values() for n in o.get("named", [])][:50],
        **brand_context(s, service.order_id),
    }
    base = f"migration.stopped:{row.service_id}"
    box.hold(s, f"{base}:customer", customer.email, "migration_stopped", customer.lang, context)
    box.hold(s, f"{base}:ops", settings.ops_email, "ops_migration_stopped", "en", context)
    return (f"{base}:customer", f"{base}:ops")
