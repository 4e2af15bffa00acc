"""The migration's wipe (issue 13, item 8): ``migration.wipe``, always last.

The steps before it record their outcome on the migration and end done whatever they
found (`copy.settle`), so the wipe runs after a completed migration and after a failed
one alike. It blanks the sealed source first (`sources.wipe_source`, audited: the
credentials are gone from our database even if the node cannot be reached), then removes
the job from the account's node (`ports.MigrationCopier.cleanup`: the job's programs,
secrets, checkpoints; any of its programs still running is stopped), auditing the paths
it removed. A node that does not answer is retried.
"""

from __future__ import annotations

from provisioner.pipeline.capabilities.migration.copy import (
    CUT_OVER,
    DNS_ELSEWHERE,
    SYSTEM,
    VERIFIED,
    destination,
    job_id,
    migration_row,
    settle,
)
from provisioner.pipeline.capabilities.migration.sources import wipe_source
from provisioner.pipeline.engine.ports import need
from provisioner.pipeline.engine.runner import StepContext, StepResult
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Step

DONE_STATES = (VERIFIED, CUT_OVER, DNS_ELSEWHERE)


def step_migration_wipe(ctx: StepContext, step: Step) -> StepResult:
    service_id = int(step.params["service_id"])
    return settle(ctx, step, lambda: _wipe(ctx, service_id))


def _wipe(ctx: StepContext, service_id: int) -> StepResult:
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        copy = dict(row.copy or {})
        if "outcome" not in copy:  # what the migration came to, before the wipe says "wiped"
            copy["outcome"] = row.state
            row.copy = copy
    outcome = str(copy["outcome"])
    if copy.get("node_cleaned"):
        return StepResult(False, {"outcome": outcome, "removed": copy.get("removed", [])})
    reason = "done" if outcome in DONE_STATES else f"ended {outcome}"
    wiped = wipe_source(ctx.factory, service_id, reason=reason, actor=SYSTEM, now=ctx.now())
    with transaction(ctx.factory) as s:
        row = migration_row(s, service_id)
        dest = destination(s, row) if row.hosting_service_id is not None else None
    removed: list[str] = []
    if dest is not None:
        copier = need(ctx.adapters.migration_copier, "the migration copier (migration_copier)")
        removed = copier.cleanup(dest.node, job_id(service_id))
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = migration_row(s, service_id)
        row.copy = {**(row.copy or {}), "node_cleaned": True, "removed": removed}
        row.progress = None
        row.updated_at = ctx.now()
        audit(s, SYSTEM, "migration.node_cleaned", "service", service_id,
              {"node": dest.node.name if dest else None, "removed": removed, "outcome": outcome})
    return StepResult(wiped or bool(removed), {"outcome": outcome, "removed": removed})
