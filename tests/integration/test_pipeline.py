"""The pipeline in one process, on SQLite and PostgreSQL: order -> proforma e-mail ->
payment -> plan -> invoice and e-mails, each effect once. The queue is a list here;
the Celery path is covered by tests/integration/test_live.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from provisioner import bootstrap as capabilities
from provisioner.adapters.payments import PaymentNotice
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.errors import InvalidInput, TransientError
from provisioner.pipeline.engine.plan import OrderView, Planner, ServiceView, StepSpec, plan
from provisioner.pipeline.engine.runner import StepResult, record
from provisioner.pipeline.usecases import ops
from provisioner.store.db import transaction
from provisioner.store.models import AuditEntry, Invoice, OutboxMail, Payment, Step
from tests.helpers import CUSTOMER, World, make_settings, make_world
from tests.helpers import stripe_notice as _stripe_notice


@dataclass
class SinkWorld(World):
    sink: SmtpSink | None = None

    def messages(self) -> list[Any]:
        assert self.sink is not None
        return self.sink.messages()


@pytest.fixture
def make(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> Callable[..., SinkWorld]:
    def build(**overrides: Any) -> SinkWorld:
        settings = make_settings(tmp_path, db_url, smtp_sink.port, step_max_attempts=3)
        w = make_world(settings, **overrides)
        return SinkWorld(w.app, w.queue, smtp_sink)

    return build


@pytest.fixture
def world(make: Callable[..., SinkWorld]) -> SinkWorld:
    return make()


def _order(world: SinkWorld, items: list[str] | None = None) -> dict:
    return world.order(items or ["hosting:giga5:example.si", "domain:example.si:1y"])


def test_order_to_invoice_runs_every_effect_once(world: SinkWorld) -> None:
    result = _order(world)
    number, gross = result["proforma"]["number"], result["proforma"]["gross"]
    world.drain()
    assert [m["Subject"] for m in world.messages()][0].startswith("Predračun")

    outcome = world.ingest(_stripe_notice("evt_1", "pi_1", number, gross), "t")
    assert outcome.settled and outcome.status == "matched"
    world.runner.dispatch(outcome.order_id)
    world.drain()
    # a second delivery of the same event, and a second event for the same money
    assert world.ingest(_stripe_notice("evt_1", "pi_1", number, gross),
                  "t").status == "duplicate"
    assert world.ingest(_stripe_notice("evt_2", "pi_1", number, gross),
                  "t").status == "duplicate_txn"
    world.runner.dispatch(outcome.order_id)
    assert world.drain() == []

    with transaction(world.runner.factory) as s:
        assert s.execute(select(func.count()).select_from(Invoice)).scalar_one() == 1
        states = dict(s.execute(select(Step.kind, Step.state)).all())
    assert set(states.values()) == {"done"}
    subjects = sorted(m["Subject"] for m in world.messages())
    assert len(subjects) == 3, subjects
    assert any("Račun" in s for s in subjects)
    assert any("Potrdilo o plačilu" in s for s in subjects)
    order = ops.show_order(world.runner.factory, str(result["order"]), "test")
    # no capability plans these lines here: their services wait, so the order is paid,
    # not completed (a completed order with services left provisioning was issue 14's defect)
    assert order["status"] == "paid"
    assert {sv["state"] for sv in order["services"]} == {"provisioning"}


def test_rerunning_a_done_step_changes_nothing(world: SinkWorld) -> None:
    result = _order(world)
    world.drain()
    with transaction(world.runner.factory) as s:
        step = s.execute(select(Step).where(Step.kind == "notify.proforma")).scalar_one()
        step.state = "queued"  # as if the broker delivered the message again after a crash
    world.runner.run_step(step.key)
    assert len(world.messages()) == 1
    with transaction(world.runner.factory) as s:
        row = s.execute(select(OutboxMail)).scalar_one()
        assert row.state == "sent" and row.attempts == 1
    del result


@pytest.mark.parametrize(
    ("amount", "currency", "status", "settles"),
    [
        ("1.00", "EUR", "underpaid", False),
        ("9999.00", "EUR", "overpaid", True),
        (None, "USD", "wrong_currency", False),
    ],
)
def test_mismatched_payments_are_recorded_and_listed(
    world: World, amount: str | None, currency: str, status: str, settles: bool
) -> None:
    result = _order(world)
    number = result["proforma"]["number"]
    paid = amount or result["proforma"]["gross"]
    outcome = world.ingest(_stripe_notice("evt_x", "pi_x", number, paid, currency), "t")
    assert outcome.status == status
    assert outcome.settled is settles
    unmatched = ops.list_payments(world.runner.factory, unmatched=True)
    assert [p["status"] for p in unmatched] == [status]


def test_unknown_reference_is_recorded_not_provisioned(world: SinkWorld) -> None:
    _order(world)
    notice = PaymentNotice(
        provider="bank", event_id="SI56..:1", kind="payment", txn_id="e1",
        amount=Decimal("10.00"), currency="EUR", proforma=None, reference="SI12 1234567",
        payer="X", occurred_at=datetime.now(UTC), raw=b"<Ntry/>",
    )
    outcome = world.ingest(notice, "t")
    assert outcome.status == "unknown_reference" and not outcome.settled
    assert ops.list_payments(world.runner.factory, unmatched=True)[0]["status"] == (
        "unknown_reference")


def test_second_payment_for_a_paid_proforma_is_flagged(world: SinkWorld) -> None:
    result = _order(world)
    number, gross = result["proforma"]["number"], result["proforma"]["gross"]
    assert world.ingest(_stripe_notice("e1", "t1", number, gross), "t").settled
    second = world.ingest(_stripe_notice("e2", "t2", number, gross), "t")
    assert second.status == "already_paid" and not second.settled
    with transaction(world.runner.factory) as s:
        assert s.execute(select(func.count()).select_from(Payment)).scalar_one() == 2


@dataclass
class Clock:
    """The runner's clock, moved by the test."""

    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.at


def _flaky_step(world: SinkWorld) -> str:
    """A `test.flaky` step in the journal of a new order, queued."""
    order_id = _order(world)["order"]
    service_id = ops.show_order(world.runner.factory, str(order_id), "t")["services"][0]["id"]
    key = f"service:{service_id}/test.flaky"
    with transaction(world.runner.factory) as s:
        record(s, order_id, [StepSpec(key, "test.flaky", (), {}, service_id)])
    world.runner.dispatch(order_id)
    return key


def test_a_retry_asked_for_before_its_time_waits_for_the_redrive(make: Callable[..., SinkWorld]) -> None:
    calls: list[datetime] = []
    clock = Clock()

    def flaky(ctx, step) -> StepResult:  # noqa: ANN001
        calls.append(clock.at)
        if len(calls) == 1:
            raise TransientError("registry busy")
        return StepResult(True, {})

    world = make(handlers={**capabilities.handlers(), "test.flaky": flaky}, now=clock)
    key = _flaky_step(world)
    with pytest.raises(TransientError):
        world.runner.run_step(key)
    with transaction(world.runner.factory) as s:
        due = s.execute(select(Step.next_attempt_at).where(Step.key == key)).scalar_one()
    assert due is not None and due > clock.at
    # Celery's autoretry asks again on its own schedule, before ours: nothing runs.
    world.queue.keys.clear()
    assert world.runner.run_step(key).status == "skipped"
    clock.at = due - timedelta(milliseconds=1)
    assert world.runner.run_step(key).status == "skipped"
    world.runner.redrive()
    assert key not in world.queue.keys
    assert len(calls) == 1
    # When it is due, the re-drive sends it and it runs.
    clock.at = due
    world.runner.redrive()
    assert key in world.queue.keys
    assert world.runner.run_step(key).status == "done"
    assert calls == [calls[0], due]


def test_transient_failures_retry_then_dead_letter(make: Callable[..., SinkWorld]) -> None:
    calls: list[str] = []
    alerts: list[dict] = []

    def flaky(ctx, step) -> StepResult:  # noqa: ANN001
        calls.append(step.key)
        raise TransientError("registry busy")

    clock = Clock()
    world = make(handlers={**capabilities.handlers(), "test.flaky": flaky},
                 alert=lambda **kw: alerts.append(kw), now=clock)
    key = _flaky_step(world)
    for _ in range(3):
        if key not in world.queue.keys:
            world.queue.keys.append(key)
        world.queue.keys.remove(key)
        try:
            world.runner.run_step(key)
        except TransientError:
            pass
        clock.at += timedelta(seconds=10)  # past the backoff
    assert len(calls) == 3
    with transaction(world.runner.factory) as s:
        order_id, service_id = s.execute(select(Step.order_id, Step.service_id).where(Step.key == key)).one()
    order = ops.show_order(world.runner.factory, str(order_id), "t")
    assert order["refund_flag"] is True
    assert next(s for s in order["services"] if s["id"] == service_id)["state"] == "failed"
    assert alerts and alerts[0]["step_key"] == key
    with transaction(world.runner.factory) as s:
        assert s.execute(select(Step.state).where(Step.key == key)).scalar_one() == "failed"


def test_redrive_requeues_a_step_whose_worker_died(world: SinkWorld) -> None:
    result = _order(world)
    key = world.queue.keys.pop(0)
    with transaction(world.runner.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        step.state = "running"  # a worker claimed it and was killed
        step.lease_until = datetime(2000, 1, 1, tzinfo=UTC)
        step.attempts = 1
    assert world.runner.redrive()["redriven"] == 1
    assert world.queue.keys == [key]
    world.drain()
    assert len(world.messages()) == 1
    del result


def test_plan_is_pure_and_orders_dependencies() -> None:
    view = OrderView(1, 2, "PR-2026-000002", True,
                     (ServiceView(5, "hosting", "giga5", "example.si", 12, "provisioning"),))
    planner = Planner(capabilities.line_planners())
    first, second = plan(view, planner), plan(view, planner)
    assert first == second
    keys = [s.key for s in first]
    assert keys.index("proforma:PR-2026-000002/invoice.issue") < keys.index(
        "proforma:PR-2026-000002/notify.invoice")
    unpaid = plan(OrderView(1, 2, "PR-2026-000002", False))
    assert [s.kind for s in unpaid] == ["notify.proforma"]


def test_every_state_change_is_audited(world: SinkWorld) -> None:
    result = _order(world)
    number, gross = result["proforma"]["number"], result["proforma"]["gross"]
    world.ingest(_stripe_notice("e1", "t1", number, gross), "webhook:stripe")
    world.runner.dispatch(result["order"])
    world.drain()
    ops.show_order(world.runner.factory, str(result["order"]), "cli:ops")
    with transaction(world.runner.factory) as s:
        actions = set(s.execute(select(AuditEntry.action)).scalars())
    assert {"customer.created", "order.created", "payment.recorded", "proforma.paid",
            "invoice.issued", "mail.sent", "step.done", "customer.read"} <= actions


def test_hostile_order_items_are_refused(world: SinkWorld) -> None:
    customer = ops.add_customer(world.runner.factory, CUSTOMER, "test")
    for spec in ["hosting:giga5:../etc", "hosting:giga5:a;rm -rf /", "domain:" + "a" * 300 + ".si:1y",
                 "hosting:nope:example.si"]:
        with pytest.raises(InvalidInput):
            ops.create_order(world.runner.factory, customer["id"], [spec], None, "fcb", "t")
