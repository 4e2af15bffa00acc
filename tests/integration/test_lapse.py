"""Unpaid new orders lapse (issue 17, item 2), on SQLite and PostgreSQL: a new order's
proforma unpaid after its due date plus the brand's grace is cancelled with its order
and services, the customer is told in their language, once; a payment that comes later
is recorded and listed for ops (who are told once), never provisioned; a renewal
proforma never lapses this way. The clock is moved, never waited for."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.lapse import lapse_date
from provisioner.domain.policy import get_brand
from provisioner.pipeline.capabilities import lifecycle
from provisioner.pipeline.usecases import ops, orders
from provisioner.store.db import transaction
from provisioner.store.models import Order, Proforma, Service, Step
from tests.helpers import ClockWorld, customer, make_clock_world

START = date(2027, 2, 1)


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> ClockWorld:
    return make_clock_world(db_url, tmp_path, smtp_sink, START)


def new_order(world: ClockWorld, item: str = "hosting:giga5:lapse.si:12m", *, brand: str = "fcb",
              lang: str = "en", email: str = "ana@example.si") -> tuple[int, str, date]:
    """A new order placed on START: (order id, proforma number, proforma due date)."""
    c = ops.add_customer(world.factory, customer(lang, email=email, brand=brand), "test")
    with transaction(world.factory) as s:
        order, proforma = orders.create_order(s, customer_id=c["id"], item_specs=[item],
                                              discount=None, brand=brand, actor="test",
                                              today=START)
        result = order.id, proforma.number, proforma.due_date
    world.runner.dispatch(result[0])
    world.run_queued()  # the proforma e-mail
    return result


def state(world: ClockWorld, order_id: int) -> tuple[str, str, list[str]]:
    with transaction(world.factory) as s:
        order = s.get(Order, order_id)
        assert order is not None
        p = s.execute(select(Proforma).where(Proforma.order_id == order_id)).scalar_one()
        services = list(s.execute(select(Service.state).where(Service.order_id == order_id)).scalars())
        return order.status, p.state, services


def subjects(world: ClockWorld) -> list[str]:
    return [" ".join(str(m["Subject"]).split()) for m in world.sink.messages()]


@pytest.mark.parametrize("brand", ["fcb", "iserver"])
def test_an_unpaid_new_order_lapses_the_day_after_due_date_plus_grace(
        world: ClockWorld, brand: str) -> None:
    order_id, number, due = new_order(world, brand=brand)
    lapses = lapse_date(due, get_brand(brand))
    assert lapses == due + timedelta(days=get_brand(brand).new_order_grace_days + 1)
    world.sweep(due)
    world.sweep(lapses - timedelta(days=1))  # the last day of the grace: still open
    assert state(world, order_id) == ("open", "open", ["pending_payment"])
    report = world.sweep(lapses)
    assert [a.event for a in report.actions] == ["lapse"]
    assert state(world, order_id) == ("lapsed", "cancelled", ["cancelled"])
    world.sweep(lapses)  # a second sweep the same day changes nothing, tells no one again
    world.sweep(lapses + timedelta(days=1))
    told = [s for s in subjects(world) if "has been cancelled" in s]
    assert told == [f"Your order has been cancelled: proforma invoice {number} was not paid"]
    with transaction(world.factory) as s:  # nothing was ever planned to be provisioned
        kinds = set(s.execute(select(Step.kind).where(Step.order_id == order_id)).scalars())
    assert kinds == {"notify.proforma", "notify.lapsed"}


def test_the_customer_is_told_in_their_language(world: ClockWorld) -> None:
    _, number, due = new_order(world, lang="sl", email="bojan@example.si")
    world.sweep(lapse_date(due, get_brand("fcb")))
    mails = [m for m in world.sink.messages() if str(m["To"]) == "bojan@example.si"]
    lapsed = [m for m in mails if "preklicano" in str(m["Subject"])]
    assert len(lapsed) == 1 and number in str(lapsed[0]["Subject"])
    body = lapsed[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "lapse.si" in body and "Pozdravljeni" in body


def test_paid_within_the_grace_it_does_not_lapse(world: ClockWorld) -> None:
    order_id, number, due = new_order(world, "vps:vps-s:lapse.example.si:1m")
    world.at(due + timedelta(days=3))
    with transaction(world.factory) as s:
        gross = s.execute(select(Proforma.gross).where(Proforma.number == number)).scalar_one()
    assert world.pay(number, gross, "in-grace").settled
    world.sweep(lapse_date(due, get_brand("fcb")))
    status, pstate, _ = state(world, order_id)
    assert status != "lapsed" and pstate == "paid"
    assert not [s for s in subjects(world) if "has been cancelled" in s]


def test_a_late_payment_is_recorded_listed_and_told_to_ops_once_never_provisioned(
        world: ClockWorld) -> None:
    order_id, number, due = new_order(world)
    lapses = lapse_date(due, get_brand("fcb"))
    world.sweep(lapses)
    with transaction(world.factory) as s:
        gross = s.execute(select(Proforma.gross).where(Proforma.number == number)).scalar_one()
    world.at(lapses + timedelta(days=2))
    result = world.pay(number, gross, "late-1")
    assert result.status == "proforma_cancelled" and not result.settled
    again = world.pay(number, gross, "late-1")  # the same transaction reported twice
    assert again.status == "duplicate"
    world.app.redrive()  # the re-drive queues the ops step like any other
    world.run_queued()
    assert state(world, order_id) == ("lapsed", "cancelled", ["cancelled"])
    listed = ops.list_payments(world.factory, unmatched=False, lapsed=True)
    assert [(p["txn_id"], p["proforma"], p["status"]) for p in listed] == [
        ("late-1", number, "proforma_cancelled")]
    assert any(p["txn_id"] == "late-1" for p in ops.list_payments(world.factory, unmatched=True))
    ops_mails = [m for m in world.sink.messages() if "lapsed proforma" in str(m["Subject"])]
    assert len(ops_mails) == 1 and str(ops_mails[0]["To"]) == world.app.settings.ops_email
    with transaction(world.factory) as s:
        kinds = set(s.execute(select(Step.kind).where(Step.order_id == order_id)).scalars())
    assert "service.activate" not in kinds and "invoice.issue" not in kinds


def test_a_renewal_proforma_never_lapses_as_a_new_order(world: ClockWorld) -> None:
    expiry = START + timedelta(days=40)
    sid = world.service("hosting:giga5:renew.si:12m", expiry)
    world.sweep(expiry - timedelta(days=30))
    renewal = world.renewal(sid)
    assert renewal is not None
    _, proforma = renewal
    assert proforma.lapses_on is None
    for offset in (-1, 0, 1, 9, 10):
        world.sweep(proforma.due_date + timedelta(days=offset) if offset >= 0 else
                    expiry - timedelta(days=1))
    _, proforma = world.renewal(sid) or (None, None)
    assert proforma is not None and proforma.state == "open"  # the expiry path holds it
    assert world.get(sid).state == "expired"


def test_dry_run_says_what_would_lapse_and_changes_nothing(world: ClockWorld) -> None:
    order_id, _, due = new_order(world)
    lapses = lapse_date(due, get_brand("fcb"))
    report = lifecycle.sweep(world.factory, lapses, dry_run=True)
    assert [a.event for a in report.actions] == ["lapse"]
    assert state(world, order_id) == ("open", "open", ["pending_payment"])


def test_the_lapse_reads_only_open_proformas_that_are_due(world: ClockWorld) -> None:
    """The index the sweep reads holds open proformas only: paid and lapsed ones leave it."""
    _, _, due = new_order(world)
    with transaction(world.factory) as s:
        bind = s.get_bind()
        query = "SELECT id FROM proformas WHERE proformas.state = 'open' AND lapses_on <= :d"
        sql = f"EXPLAIN QUERY PLAN {query}" if bind.dialect.name == "sqlite" else f"EXPLAIN {query}"
        if bind.dialect.name == "postgresql":
            s.execute(select(func.set_config("enable_seqscan", "off", True)))
        plan = " ".join(str(r[-1]) for r in s.execute(text(sql), {"d": due}).all())
    assert "ix_proformas_open_lapses_on" in plan
