"""Stored payment notifications on SQLite and PostgreSQL: one bad notification never
stops the others from settling, text fields fit their columns, notices ops must look at
are listed for them, and refunds count once each, with their own amounts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from provisioner.adapters.payments import PaymentNotice
from provisioner.adapters.payments.stripe import parse_stripe
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import store_batch
from provisioner.store.db import transaction
from provisioner.store.models import Notification, Payment, Proforma
from tests.helpers import World, customer, make_settings, make_world, stripe_notice
from tests.payloads import camt053_statement


@pytest.fixture
def alerts() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink, alerts: list[dict[str, Any]]) -> World:
    settings = make_settings(tmp_path, db_url, smtp_sink.port)
    return make_world(settings, alert=lambda **kw: alerts.append(kw))


def _proformas(world: World, n: int) -> list[dict[str, Any]]:
    c = ops.add_customer(world.factory, customer(), "test")
    return [ops.create_order(world.factory, c["id"], [f"hosting:mega:site{i}.si"], None, "fcb",
                             "test")["proforma"] for i in range(n)]


def _states(world: World) -> dict[str, int]:
    with transaction(world.factory) as s:
        rows = s.execute(select(Proforma.state)).scalars().all()
    return {state: rows.count(state) for state in set(rows)}


def _notification(world: World, event_id: str) -> Notification:
    with transaction(world.factory) as s:
        row = s.execute(select(Notification).where(Notification.event_id == event_id)).scalar_one()
        s.expunge(row)
        return row


def test_a_poisoned_notification_among_100_good_ones_stops_nothing(
        world: World, alerts: list[dict[str, Any]]) -> None:
    proformas = _proformas(world, 101)
    notices = [stripe_notice(f"evt_{i}", f"pi_{i}", p["number"], p["gross"]) for i, p in enumerate(proformas)]
    store_batch(world.factory, notices)
    # The 51st was stored before amounts were bounded at parse time: 1E+30 and a payer
    # longer than its column (PostgreSQL refuses that one, SQLite does not care).
    poisoned = dict(json.loads(json.dumps(_notification(world, "evt_50").notice)),
                    amount="1E+30", payer="P" * 300)
    with transaction(world.factory) as s:
        s.execute(update(Notification).where(Notification.event_id == "evt_50").values(notice=poisoned))

    result = world.app.process_notifications()

    assert result["settled"] == 100
    assert result["outcomes"] == {"matched": 100, "error": 1}
    assert _states(world) == {"paid": 100, "open": 1}
    bad = _notification(world, "evt_50")
    assert bad.status == "error" and bad.detail and "1E+30" in bad.detail
    assert len(alerts) == 1
    assert alerts[0]["step_key"] == f"notification:{bad.id}" and "1E+30" in alerts[0]["detail"]
    # ops see it among what needs them; a second run neither retries it nor alerts again
    listed = [p for p in ops.list_payments(world.factory, unmatched=True) if p["status"] == "error"]
    assert [(p["notification"], p["provider"], p["txn_id"]) for p in listed] == [(bad.id, "stripe", "pi_50")]
    assert world.app.process_notifications()["processed"] == 0
    assert len(alerts) == 1


def test_a_payer_longer_than_its_column_is_cut_and_the_payment_settles(world: World) -> None:
    (p,) = _proformas(world, 1)
    notice = PaymentNotice(
        provider="stripe", event_id="evt_long", kind="payment", txn_id="pi_long",
        amount=Decimal(p["gross"]), currency="EUR", proforma=p["number"], reference="x" * 300,
        payer="Ana " * 100, occurred_at=datetime.now(UTC), raw=b"{}")
    store_batch(world.factory, [notice])
    assert world.app.process_notifications()["outcomes"] == {"matched": 1}
    with transaction(world.factory) as s:
        payment = s.execute(select(Payment)).scalar_one()
    assert payment.payer == ("Ana " * 100)[:200]
    assert payment.reference == "x" * 60


def test_a_notice_without_a_transaction_id_is_listed_for_ops(
        world: World, alerts: list[dict[str, Any]]) -> None:
    (p,) = _proformas(world, 1)
    notice = PaymentNotice(
        provider="bank", event_id="SI56:sha256:ab", kind="payment", txn_id=None,
        amount=Decimal(p["gross"]), currency="EUR", proforma=None, reference=p["reference"],
        payer="Ana Novak", occurred_at=datetime.now(UTC), raw=b"<Ntry/>")
    outcome = world.ingest(notice)
    assert outcome.status == "no_txn_id" and not outcome.settled
    [listed] = ops.list_payments(world.factory, unmatched=True)
    assert listed["status"] == "no_txn_id" and listed["provider"] == "bank"
    assert listed["amount"] == p["gross"] and listed["reference"] == p["reference"]
    assert "transaction id" in listed["detail"]
    assert _states(world) == {"open": 1}


def _refund_event(event_id: str, refund_id: str, pi: str, amount: int,
                  type: str = "refund.created", status: str = "succeeded") -> bytes:
    obj = {"id": refund_id, "object": "refund", "amount": amount, "currency": "eur",
           "charge": "ch_" + pi[3:], "payment_intent": pi, "status": status, "metadata": {}}
    return json.dumps({"id": event_id, "object": "event", "type": type, "created": 1_800_000_000,
                       "api_version": "2024-10-28.acacia", "data": {"object": obj}}).encode()


def test_two_partial_refunds_are_recorded_once_each_with_their_own_amounts(world: World) -> None:
    (p,) = _proformas(world, 1)
    gross = Decimal(p["gross"])
    assert world.ingest(stripe_notice("evt_pay", "pi_1", p["number"], gross)).settled
    first = world.ingest(parse_stripe(_refund_event("evt_r1", "re_1", "pi_1", 500)))
    second = world.ingest(parse_stripe(_refund_event("evt_r2", "re_2", "pi_1", 300)))
    again = world.ingest(parse_stripe(_refund_event("evt_r3", "re_2", "pi_1", 300,
                                                    type="charge.refund.updated")))
    assert (first.status, second.status, again.status) == ("reversal", "reversal", "duplicate_txn")
    with transaction(world.factory) as s:
        refunds = s.execute(select(Payment.txn_id, Payment.amount, Payment.proforma_id)
                            .where(Payment.kind == "reversal").order_by(Payment.id)).all()
        proforma_id = s.execute(select(Proforma.id)).scalar_one()
    assert refunds == [("re_1", Decimal("5.00"), proforma_id), ("re_2", Decimal("3.00"), proforma_id)]


def test_a_refund_before_settlement_lowers_what_counts_as_paid(world: World) -> None:
    (p,) = _proformas(world, 1)
    gross = Decimal(p["gross"])
    half = (gross / 2).quantize(Decimal("0.01"))
    assert world.ingest(stripe_notice("evt_1", "pi_1", p["number"], half)).status == "underpaid"
    refund = parse_stripe(_refund_event("evt_r", "re_1", "pi_1", int(half * 100)))
    assert world.ingest(refund).status == "reversal"
    # Half of it came back: the second half leaves the proforma half paid, not settled.
    second = world.ingest(stripe_notice("evt_2", "pi_2", p["number"], gross - half))
    assert second.status == "underpaid" and not second.settled
    third = world.ingest(stripe_notice("evt_3", "pi_3", p["number"], half))
    assert third.status == "matched" and third.settled


def test_a_statement_of_another_account_imports_nothing(world: World) -> None:
    (p,) = _proformas(world, 1)
    entry = {"amount": p["gross"], "reference": p["reference"], "acct_svcr_ref": "B-1"}
    theirs = camt053_statement([entry], iban="SI56020170014356205")
    with pytest.raises(InvalidInput, match="not our account"):
        ops.import_statement(world.factory, theirs, "test", world.app.planner,
                             account_iban=world.app.settings.bank_iban)
    ours = camt053_statement([entry], iban=world.app.settings.bank_iban.replace(" ", "").lower())
    summary = ops.import_statement(world.factory, ours, "test", world.app.planner,
                                   account_iban=world.app.settings.bank_iban)
    assert summary["outcomes"] == {"matched": 1}
    with transaction(world.factory) as s:
        assert s.execute(select(Notification.event_id)).scalars().all() == [
            world.app.settings.bank_iban.replace(" ", "") + ":B-1"]
