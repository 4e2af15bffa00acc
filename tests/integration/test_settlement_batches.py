"""The payment worker settles stored notifications in batches (one transaction per
batch, issue 15), on SQLite and PostgreSQL: a bad notification in a batch is marked and
reported on its own while the others settle; a worker killed mid-batch leaves nothing
half-done and the next run settles each notification once; two workers at once split
the backlog (PostgreSQL: SKIP LOCKED) and settle each notification exactly once. What a
batch writes (payments, audit entries, the plans with their e-mails) is what a
notification processed alone writes."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.pipeline.engine.plan import OrderView, Planner, StepSpec
from provisioner.pipeline.usecases import ops, payments
from provisioner.pipeline.usecases.orders import order_view
from provisioner.pipeline.usecases.payments import IngestResult, process_pending, store_batch
from provisioner.store.db import transaction, upgrade
from provisioner.store.models import AuditEntry, Notification, Payment, Proforma, Step
from tests.helpers import World, customer, make_settings, make_world, stripe_notice
from tests.servers import PgServer


class Killed(BaseException):
    """The worker dies here (as on SIGKILL or a worker shutdown): not an error of one
    notification, nothing in the product may catch it."""


@pytest.fixture
def alerts() -> list[dict[str, Any]]:
    return []


def _world(db_url: str, tmp_path: Path, port: int, alerts: list[dict[str, Any]]) -> World:
    return make_world(make_settings(tmp_path, db_url, port), alert=lambda **kw: alerts.append(kw))


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink, alerts: list[dict[str, Any]]) -> World:
    return _world(db_url, tmp_path, smtp_sink.port, alerts)


def _proformas(world: World, n: int, tag: str = "site") -> list[dict[str, Any]]:
    c = ops.add_customer(world.factory, customer(), "test")
    return [ops.create_order(world.factory, c["id"], [f"hosting:mega:{tag}{i}.si"], None, "fcb",
                             "test")["proforma"] for i in range(n)]


def _pay_all(world: World, proformas: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """A Stripe notification paying each proforma in full, stored as the webhook does."""
    notices = [stripe_notice(f"evt_{prefix}{i}", f"pi_{prefix}{i}", p["number"], p["gross"])
               for i, p in enumerate(proformas)]
    store_batch(world.factory, notices)
    return [n.event_id for n in notices]


def _snapshot(world: World) -> dict[str, Any]:
    """Everything settlement writes, counted."""
    with transaction(world.factory) as s:
        return {
            "notifications": Counter(s.execute(select(Notification.status)).scalars()),
            "payments": s.execute(select(func.count()).select_from(Payment)).scalar_one(),
            "proformas": Counter(s.execute(select(Proforma.state)).scalars()),
            "steps": s.execute(select(func.count()).select_from(Step)).scalar_one(),
            "audit": Counter(s.execute(select(AuditEntry.action)).scalars()),
        }


def _assert_settled_once(world: World, proformas: list[dict[str, Any]]) -> None:
    """Each proforma paid by exactly one payment, audited once, its order planned: the
    journal holds exactly the plan of the order as it stands (with its e-mails)."""
    numbers = [p["number"] for p in proformas]
    with transaction(world.factory) as s:
        rows = s.execute(select(Proforma.id, Proforma.number, Proforma.state, Proforma.order_id)
                         .where(Proforma.number.in_(numbers))).all()
        assert {r.number: r.state for r in rows} == dict.fromkeys(numbers, "paid")
        per_proforma = Counter(s.execute(
            select(Payment.proforma_id).where(Payment.proforma_id.in_([r.id for r in rows]),
                                              Payment.status == "matched")).scalars())
        assert sorted(per_proforma.values()) == [1] * len(rows)
        paid_audits = Counter(s.execute(
            select(AuditEntry.entity_id).where(AuditEntry.action == "proforma.paid",
                                               AuditEntry.entity_id.in_(numbers))).scalars())
        assert paid_audits == dict.fromkeys(numbers, 1)
        for r in rows:
            expected = world.app.planner.plan(order_view(s, r.order_id))
            steps = s.execute(select(Step).where(Step.order_id == r.order_id)).scalars().all()
            paid_plan = {(x.key, x.kind, json.dumps(x.params, sort_keys=True), tuple(x.deps),
                          x.service_id) for x in steps if x.kind != "notify.proforma"}
            assert paid_plan == {(x.key, x.kind, json.dumps(x.params, sort_keys=True), x.deps,
                                  x.service_id) for x in expected if x.kind != "notify.proforma"}
            assert {x.kind for x in steps} >= {"notify.payment", "invoice.issue", "notify.invoice"}


# -- one bad notification -----------------------------------------------------------------
def test_a_batch_settles_the_good_notifications_and_reports_the_bad_one_on_its_own(
        world: World, alerts: list[dict[str, Any]]) -> None:
    proformas = _proformas(world, 14)
    good, bad, halves, usd, rest = proformas[:10], proformas[10], proformas[11], proformas[12], proformas[13]
    notices = [stripe_notice(f"evt_{i}", f"pi_{i}", p["number"], p["gross"]) for i, p in enumerate(good)]
    half = (Decimal(halves["gross"]) / 2).quantize(Decimal("0.01"))
    notices[5:5] = [  # among the good ones, in the same batch
        stripe_notice("evt_bad", "pi_bad", bad["number"], bad["gross"]),
        stripe_notice("evt_nope", "pi_nope", "PR-NO-SUCH-ONE", "10.00"),
        stripe_notice("evt_again", "pi_3", good[3]["number"], good[3]["gross"]),  # same money
        stripe_notice("evt_half1", "pi_half1", halves["number"], half),
        stripe_notice("evt_usd", "pi_usd", usd["number"], usd["gross"], currency="USD"),
        stripe_notice("evt_half2", "pi_half2", halves["number"], Decimal(halves["gross"]) - half),
    ]
    store_batch(world.factory, notices)
    # stored before amounts were bounded at parse time: 1E+30 and a payer longer than its
    # column (PostgreSQL refuses that one; SQLite does not care)
    with transaction(world.factory) as s:
        raw = s.execute(select(Notification.notice).where(Notification.event_id == "evt_bad")).scalar_one()
        s.execute(update(Notification).where(Notification.event_id == "evt_bad")
                  .values(notice=dict(raw, amount="1E+30", payer="P" * 300)))

    result = world.app.process_notifications()  # one batch: fewer than the batch size

    assert result["processed"] == 16
    assert result["outcomes"] == {"matched": 11, "error": 1, "unknown_reference": 1,
                                  "duplicate_txn": 1, "underpaid": 1, "wrong_currency": 1}
    assert result["settled"] == 11
    _assert_settled_once(world, [*good, halves])
    assert _snapshot(world)["proformas"] == {"paid": 11, "open": 3}
    unpaid = [bad["number"], usd["number"], rest["number"]]
    with transaction(world.factory) as s:
        state = dict(s.execute(select(Proforma.number, Proforma.state)
                               .where(Proforma.number.in_(unpaid))).all())
        assert state == dict.fromkeys(unpaid, "open")
        notes = dict(s.execute(select(Notification.event_id, Notification.status)).all())
        bad_row = s.execute(select(Notification).where(Notification.event_id == "evt_bad")).scalar_one()
        recorded = Counter(s.execute(select(AuditEntry.action)
                                     .where(AuditEntry.actor == "system:payments")).scalars())
    assert notes.pop("evt_bad") == "error" and notes.pop("evt_again") == "duplicate_txn"
    assert set(notes.values()) == {"processed"}
    assert bad_row.detail and "1E+30" in bad_row.detail
    # audited as one at a time audits: every recorded payment, every settled proforma
    assert recorded == {"payment.recorded": 14, "proforma.paid": 11}
    with transaction(world.factory) as s:
        pay_id = s.execute(select(Payment.id).where(Payment.txn_id == "pi_2")).scalar_one()
        entries = s.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.entity,
                                   AuditEntry.entity_id, AuditEntry.detail)
                            .where(AuditEntry.actor == "system:payments",
                                   AuditEntry.entity_id.in_([str(pay_id), good[2]["number"]]))
                            .order_by(AuditEntry.id)).all()
    assert [tuple(e) for e in entries] == [
        ("system:payments", "payment.recorded", "payment", str(pay_id),
         {"status": "matched", "amount": str(Decimal(good[2]["gross"])), "proforma": good[2]["number"]}),
        ("system:payments", "proforma.paid", "proforma", good[2]["number"], None),
    ]
    # reported on its own: one alert, and ops find it (and the unknown one) in the list
    assert [a["step_key"] for a in alerts] == [f"notification:{bad_row.id}"]
    listed = {p["txn_id"]: p["status"] for p in ops.list_payments(world.factory, unmatched=True)}
    assert listed["pi_bad"] == "error" and listed["pi_nope"] == "unknown_reference"
    assert world.app.process_notifications()["processed"] == 0
    assert len(alerts) == 1


# -- a worker killed mid-batch ---------------------------------------------------------------
@dataclass(frozen=True)
class DyingPlanner(Planner):
    """Plans as the real one, and dies at its ``die_at``-th plan (a batch plans its
    settled orders right before it commits)."""

    die_at: int = 0
    calls: list[int] = field(default_factory=list)

    def plan(self, view: OrderView) -> list[StepSpec]:
        self.calls.append(view.order_id)
        if len(self.calls) == self.die_at:
            raise Killed
        return super().plan(view)


def _die_at_commit(world: World, n: int) -> None:
    """The ``n``-th commit from now never happens: the worker dies right before it."""
    engine = world.factory.kw["bind"]
    commits: list[int] = []

    def commit(conn: Any) -> None:
        commits.append(1)
        if len(commits) == n:
            raise Killed

    event.listen(engine, "commit", commit)


@pytest.mark.parametrize("where", ["matching", "planning", "committing"])
def test_a_worker_killed_mid_batch_leaves_nothing_half_done_and_a_rerun_settles_each_once(
        world: World, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    proformas = _proformas(world, 30)
    _pay_all(world, proformas)
    planner = world.app.planner
    # batches of 10: the first commits, the worker dies in the second
    if where == "matching":  # at its 5th notification, 4 of them recorded and settled
        real, calls = payments.match_payment, []

        def match_payment(**kw: Any) -> Any:
            calls.append(1)
            if len(calls) == 15:
                raise Killed
            return real(**kw)

        monkeypatch.setattr(payments, "match_payment", match_payment)
    elif where == "planning":  # all 10 recorded and settled, 4 plans made
        planner = DyingPlanner(planner.line_planners, planner.options, die_at=15)
    else:  # everything written, the commit not made
        _die_at_commit(world, 2)

    with pytest.raises(Killed):
        process_pending(world.factory, planner, batch=10)

    after = _snapshot(world)
    assert after["notifications"] == {"processed": 10, "stored": 20}
    assert after["payments"] == 10 and after["proformas"] == {"paid": 10, "open": 20}
    assert after["audit"]["proforma.paid"] == 10 and after["audit"]["payment.recorded"] == 10
    _assert_settled_once(world, proformas[:10])
    with transaction(world.factory) as s:  # only the first batch's orders have plans
        planned = set(s.execute(select(Step.order_id).where(Step.kind == "invoice.issue")).scalars())
        stored = s.execute(select(Notification.event_id).where(Notification.status == "stored")
                           .order_by(Notification.id)).scalars().all()
    assert len(planned) == 10
    assert stored == [f"evt_{i}" for i in range(10, 30)]

    monkeypatch.undo()  # a new worker (the commit listener dies at its one commit only)
    result = world.app.process_notifications()
    assert (result["processed"], result["settled"]) == (20, 20)
    _assert_settled_once(world, proformas)
    final = _snapshot(world)
    assert final["payments"] == 30 and final["audit"]["proforma.paid"] == 30
    assert world.app.process_notifications()["processed"] == 0


# -- two workers at once --------------------------------------------------------------------
def _work(world: World, planner: Planner, batch: int) -> list[IngestResult]:
    """A worker: process stored notifications until none is left for it."""
    results: list[IngestResult] = []
    while done := process_pending(world.factory, planner, batch=batch):
        results += done
    return results


def _threads(*targets: Any) -> Iterator[list[IngestResult]]:
    out: list[list[IngestResult]] = [[] for _ in targets]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = targets[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a worker did not finish"
    if errors:
        raise errors[0]
    yield from out


def test_two_workers_settle_2n_notifications_each_exactly_once(world: World) -> None:
    n = 60
    proformas = _proformas(world, 2 * n)
    _pay_all(world, proformas)
    # ten of the payments reported again by events of their own: one payment each
    store_batch(world.factory, [stripe_notice(f"evt_re{i}", f"pi_{i}", p["number"], p["gross"])
                                for i, p in enumerate(proformas[:10])])

    one, two = _threads(lambda: _work(world, world.app.planner, 10),
                        lambda: _work(world, world.app.planner, 10))

    taken = Counter(r.notification_id for r in one + two if r.status != "retry")
    assert sorted(taken.values()) == [1] * (2 * n + 10)  # each by one worker, once
    outcomes = Counter(r.status for r in one + two if r.status != "retry")
    assert outcomes == {"matched": 2 * n, "duplicate_txn": 10}
    _assert_settled_once(world, proformas)
    final = _snapshot(world)
    assert final["notifications"] == {"processed": 2 * n, "duplicate_txn": 10}
    assert final["payments"] == 2 * n
    assert final["audit"]["proforma.paid"] == 2 * n and final["audit"]["payment.recorded"] == 2 * n


@dataclass(frozen=True)
class HeldPlanner(Planner):
    """Plans as the real one once ``release`` is set; says when it is waiting (``held``)."""

    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def plan(self, view: OrderView) -> list[StepSpec]:
        self.held.set()
        if not self.release.wait(60):
            raise AssertionError("never released")
        return super().plan(view)


def test_on_postgres_a_second_worker_takes_the_next_notifications_instead_of_waiting(
        pg_server: PgServer, tmp_path: Path, smtp_sink: SmtpSink, alerts: list[dict[str, Any]]) -> None:
    url = pg_server.create_database()
    upgrade(url)
    world = _world(url, tmp_path, smtp_sink.port, alerts)
    proformas = _proformas(world, 40)
    events = _pay_all(world, proformas)
    held = HeldPlanner(world.app.planner.line_planners, world.app.planner.options)

    def first() -> list[IngestResult]:  # one batch of 10, held open right before its commit
        return process_pending(world.factory, held, limit=10, batch=10)

    def second() -> list[IngestResult]:
        assert held.held.wait(60)
        try:
            return _work(world, world.app.planner, 10)  # must not wait for the first
        finally:
            held.release.set()

    one, two = _threads(first, second)

    with transaction(world.factory) as s:
        ids = dict(s.execute(select(Notification.event_id, Notification.id)).all())
    assert [r.notification_id for r in one] == [ids[e] for e in events[:10]]
    assert len(two) == 30 and {r.notification_id for r in two} == {ids[e] for e in events[10:]}
    assert {r.status for r in one + two} == {"matched"}
    _assert_settled_once(world, proformas)
    assert world.app.process_notifications()["processed"] == 0
