"""Free migrations from the customer's old provider (issue 13): ordering and the intake.

A ``migration:SITE`` line comes beside a new hosting line for the same site (the catalog
checks that at ordering). Paying the proforma plans ``migration.intake`` after that
line's ``hosting.account``; the step records the migration (``migrations``: the price
the brand charges on withdrawal, the state) and mails the customer a one-time link to
the intake form (`provisioner.pipeline.onetime`; the form is a customer page). The
source arrives sealed (`sources`), which plans ``migration.survey`` (`survey`: read-only,
measures the old provider against the caps); a survey that fits (or an ops override)
plans ``migration.copy`` -> ``migration.verify`` -> ``migration.cutover`` ->
``migration.wipe`` (`copy`, `verify`, `cutover`, `wipe`): they read the source with
`sources.open_source`, set ``migration_used_at`` when they first copy, record their
outcome on the migration whatever it is, and end with the wipe.

The migration service itself has no term: the intake step marks it active without an
expiry, so ``service.activate`` leaves it alone and the lifecycle clock never renews or
shuts it down.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.lifecycle import ServiceState
from provisioner.errors import StepFailed
from provisioner.pipeline.capabilities.migration.copy import COPY, CUTOVER, VERIFY, WIPE, step_migration_copy
from provisioner.pipeline.capabilities.migration.cutover import step_migration_cutover
from provisioner.pipeline.capabilities.migration.sources import AWAITING, SURVEY
from provisioner.pipeline.capabilities.migration.survey import step_migration_survey
from provisioner.pipeline.capabilities.migration.verify import step_migration_verify
from provisioner.pipeline.capabilities.migration.wipe import step_migration_wipe
from provisioner.pipeline.engine.plan import (
    LinePlanner,
    OrderView,
    PlanOptions,
    ServiceView,
    StepSpec,
    service_step,
)
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult
from provisioner.pipeline.onetime import brand_context, new_token, token_hash
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Customer, Migration, MigrationLink, Service, Step

SYSTEM = "system:pipeline"
INTAKE = "migration.intake"
INTAKE_PATH = "/migration/"  # the page: GET/POST {public_base_url}/migration/{token}


def plan_migration_line(view: OrderView, service: ServiceView, options: PlanOptions) -> list[StepSpec]:
    """``hosting.account`` (of the same order's hosting line for the site) -> ``migration.intake``."""
    if service.action != "new":
        return []
    hosting = [
        s for s in view.services if s.kind == "hosting" and s.name == service.name and s.action == "new"
    ]
    deps = tuple(service_step(h.id, "hosting.account") for h in hosting if options.enabled("hosting"))
    params = {
        "service_id": service.id,
        "domain": service.name,
        "hosting_service_id": hosting[0].id if hosting else None,
    }
    return [StepSpec(service_step(service.id, INTAKE), INTAKE, deps, params, service.id)]


def step_migration_intake(ctx: StepContext, step: Step) -> StepResult:
    """Observe (the migration row, the held mail), then record and mail the link once."""
    service_id = int(step.params["service_id"])
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        service = s.get(Service, service_id)
        if service is None or service.kind != "migration":
            raise StepFailed(step.key, f"service {service_id} is not a migration")
        held = box.state_of(s, step.key)
    created = False
    if held is None:
        with transaction(ctx.factory) as s:
            ctx.fence(s)  # the link is issued by the run that holds the step, once
            created = _record(ctx, s, box, step, service_id)
    sent = box.send_held(step.key)
    assert sent is not None
    return StepResult(created or sent.sent_now, {"message_id": sent.message_id, "link": "mailed"})


def _record(ctx: StepContext, s: Session, box: Outbox, step: Step, service_id: int) -> bool:
    now = ctx.now()
    service = s.get(Service, service_id)
    assert service is not None
    customer = s.get(Customer, service.customer_id)
    assert customer is not None
    row = s.execute(select(Migration).where(Migration.service_id == service_id)).scalar_one_or_none()
    created = row is None
    if row is None:
        hosting_id = step.params.get("hosting_service_id")
        row = Migration(
            service_id=service_id,
            hosting_service_id=int(hosting_id) if hosting_id else None,
            domain=service.name,
            state=AWAITING,
            charge_gross=DEFAULT_CATALOG.migration.withdrawal_price,
            created_at=now,
            updated_at=now,
        )
        s.add(row)
        audit(
            s,
            SYSTEM,
            "migration.ordered",
            "service",
            service_id,
            {"domain": service.name, "charge_gross": f"{row.charge_gross:.2f}"},
        )
    # No term of its own: active without an expiry (service.activate then changes nothing).
    service.state = ServiceState.ACTIVE.value
    service.expires_on = None
    service.clock_on = None
    service.updated_at = now
    s.execute(
        update(MigrationLink)
        .where(MigrationLink.service_id == service_id, MigrationLink.used_at.is_(None))
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    token = new_token()
    expires = now + timedelta(hours=ctx.settings.migration_link_ttl_h)
    s.add(
        MigrationLink(
            token_sha256=token_hash(token), service_id=service_id, expires_at=expires, created_at=now
        )
    )
    context = {
        "customer": {"name": customer.name, "email": customer.email},
        "domain": service.name,
        "link": f"{ctx.settings.public_base_url.rstrip('/')}{INTAKE_PATH}{token}",
        "expires_at": expires.strftime("%Y-%m-%d %H:%M UTC"),
        "max_data_mb": DEFAULT_CATALOG.migration.max_data_mb,
        "max_mailboxes": DEFAULT_CATALOG.migration.max_mailboxes,
        **brand_context(s, service.order_id),
    }
    box.hold(s, step.key, customer.email, "migration_intake", customer.lang, context)
    audit(s, SYSTEM, "migration.intake_link", "service", service_id, {"expires_at": expires.isoformat()})
    return created


PLANNERS: dict[str, LinePlanner] = {"migration": plan_migration_line}
HANDLERS: dict[str, Handler] = {
    INTAKE: step_migration_intake,
    SURVEY: step_migration_survey,
    COPY: step_migration_copy,  # copy -> verify -> cutover -> wipe (the wipe whatever happened)
    VERIFY: step_migration_verify,
    CUTOVER: step_migration_cutover,
    WIPE: step_migration_wipe,
}
