"""The lifecycle clock on SQLite and PostgreSQL: renewal proformas, reminders, shutdown
the day after expiry, reactivation with its fee, staged deletion, hold, two sweeps at
once, a crash in the middle of a sweep, and customers' data requests. The clock is
moved (``--now``), never waited for."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.lifecycle import add_period
from provisioner.errors import Conflict
from provisioner.pipeline.capabilities import lifecycle as clock
from provisioner.pipeline.capabilities.lifecycle import sweeper as sweep_module
from provisioner.pipeline.usecases import gdpr, ops
from provisioner.store.db import transaction
from provisioner.store.lifecycle import Renewal, StageRecord
from provisioner.store.models import (
    Invoice,
    Notification,
    OutboxMail,
    Payment,
    Proforma,
    ProformaLine,
    Service,
    Step,
)
from provisioner.timeutil import iter_days
from tests.helpers import ClockWorld, stripe_notice
from tests.helpers import make_clock_world as make_world

E = date(2027, 3, 31)  # the expiry of the term under test


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> ClockWorld:
    return make_world(db_url, tmp_path, smtp_sink, E - timedelta(days=45))


def days(start: date, end: date) -> list[date]:
    return list(iter_days(start, end))


def subjects(world: ClockWorld) -> list[str]:
    return [str(m["Subject"]) for m in world.sink.messages()]


def count(world: ClockWorld, model: type, *where: object) -> int:
    with transaction(world.factory) as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def test_renewal_is_billed_once_30_days_ahead_reminded_and_shut_down_the_day_after(
        world: ClockWorld) -> None:
    sid = world.service("hosting:giga5:example.si:12m", E)
    for day in days(E - timedelta(days=45), E - timedelta(days=31)):
        world.sweep(day)
    assert world.renewal(sid) is None  # nothing before 30 days ahead
    world.sweep(E - timedelta(days=30))
    world.sweep(E - timedelta(days=30))  # a second sweep the same day changes nothing
    renewal = world.renewal(sid)
    assert renewal is not None
    row, proforma = renewal
    assert row.term_expiry == E and proforma.issued_on == E - timedelta(days=30)
    assert proforma.due_date == E and proforma.state == "open"
    assert any(s.startswith("Proforma invoice " + proforma.number) for s in subjects(world))
    for day in days(E - timedelta(days=29), E):
        world.sweep(day)
        assert world.get(sid).state == "active"
    assert count(world, Renewal, Renewal.service_id == sid) == 1
    reminders = [s for s in subjects(world) if "Reminder:" in s]
    assert len(reminders) == 3  # 14, 7 and 1 day before

    world.sweep(E + timedelta(days=1))  # unpaid: switched off the day after expiry
    sv = world.get(sid)
    assert sv.state == "expired"
    _, proforma = world.renewal(sid) or (None, None)
    assert proforma is not None and proforma.gross == _gross_with_fee(world, sid)
    assert any("switched off" in s for s in subjects(world))
    with transaction(world.factory) as s:
        rec = s.execute(select(StageRecord).where(StageRecord.service_id == sid)).scalar_one()
        assert (rec.stage, rec.done_on) == ("shutdown", E + timedelta(days=1))


def _gross_with_fee(world: ClockWorld, sid: int) -> Decimal:
    """The renewal price plus the reactivation fee, from the proforma's own lines."""
    with transaction(world.factory) as s:
        renewal = s.execute(select(Renewal).where(Renewal.service_id == sid)).scalar_one()
        lines = list(s.execute(select(ProformaLine.gross, ProformaLine.description)
                               .where(ProformaLine.proforma_id == renewal.proforma_id)).all())
    assert len(lines) == 2 and any("Reactivation fee" in d for _, d in lines)
    fee = next(g for g, d in lines if "Reactivation" in d)
    assert fee == Decimal("10.00")
    return sum((g for g, _ in lines), Decimal("0"))


def test_paid_late_renews_from_the_original_expiry_and_charges_the_fee(world: ClockWorld) -> None:
    sid = world.service("hosting:giga5:example.si:12m", E)
    for day in days(E - timedelta(days=30), E + timedelta(days=10)):
        world.sweep(day)
    assert world.get(sid).state == "expired"
    _, proforma = world.renewal(sid) or (None, None)
    assert proforma is not None
    fee = Decimal("10.00")
    # the customer pays the amount of the first e-mail: not enough any more
    first = world.pay(proforma.number, proforma.gross - fee, "late-1")
    assert first.status == "underpaid" and world.get(sid).state == "expired"
    second = world.pay(proforma.number, fee, "late-2")
    assert second.settled
    sv = world.get(sid)
    assert sv.state == "active"
    assert sv.expires_on == add_period(E, 12)  # from the ORIGINAL expiry, no free gap
    with transaction(world.factory) as s:
        invoice = s.execute(select(Invoice).where(Invoice.proforma_id == proforma.id)).scalar_one()
        assert invoice.gross == proforma.gross
        assert any("Reactivation" in line["description"] for line in invoice.snapshot["lines"])
    # the new term is billed again 30 days before its own expiry, once
    new_e = add_period(E, 12)
    for day in days(new_e - timedelta(days=31), new_e - timedelta(days=29)):
        world.sweep(day)
    assert count(world, Renewal, Renewal.service_id == sid) == 2


def test_a_paid_service_is_never_shut_down(world: ClockWorld) -> None:
    sid = world.service("vps:vps-s:host.example.si:1m", E)
    world.sweep(E - timedelta(days=30))
    _, proforma = world.renewal(sid) or (None, None)
    assert proforma is not None
    world.at(E - timedelta(days=20))
    assert world.pay(proforma.number, proforma.gross, "on-time").settled
    before = len([s for s in subjects(world) if "Reminder:" in s])
    for day in days(E - timedelta(days=19), E + timedelta(days=5)):
        world.sweep(day)
    sv = world.get(sid)
    assert sv.state == "active" and sv.expires_on == add_period(E, 1)
    assert len([s for s in subjects(world) if "Reminder:" in s]) == before == 0
    assert count(world, StageRecord, StageRecord.service_id == sid) == 0


def test_stages_run_on_their_day_never_before_and_in_order(world: ClockWorld) -> None:
    sid = world.service("hosting:mega:example.si:12m", E)
    for day in days(E - timedelta(days=30), E + timedelta(days=60)):
        world.sweep(day)
    assert world.get(sid).state == "expired"  # FCB keeps the data 60 days
    world.sweep(E + timedelta(days=61))
    assert world.get(sid).state == "deleted"
    _, proforma = world.renewal(sid) or (None, None)
    assert proforma is not None and proforma.state == "cancelled"  # no reactivation now
    for day in days(E + timedelta(days=62), E + timedelta(days=90)):
        world.sweep(day)
    assert world.get(sid).state == "deleted"
    world.sweep(E + timedelta(days=91))
    assert world.get(sid).state == "purged"
    records = clock.stage_records(world.factory, sid)
    assert [(r["stage"], r["done_on"]) for r in records] == [
        ("shutdown", str(E + timedelta(days=1))),
        ("delete_data", str(E + timedelta(days=61))),
        ("purge_backups", str(E + timedelta(days=91))),
    ]
    assert all(r["done_on"] >= r["due_on"] for r in records)
    for day in days(E + timedelta(days=92), E + timedelta(days=120)):
        assert world.sweep(day).actions == []


def test_iserver_removes_files_and_backups_once_more_than_30_days_late(world: ClockWorld) -> None:
    sid = world.service("hosting:mega:example.si:12m", E, brand="iserver")
    for day in days(E - timedelta(days=30), E + timedelta(days=30)):
        world.sweep(day)
    # day 30 after expiry is 30 days late, not more: the data stay (002 §7)
    assert world.get(sid).state == "expired"
    assert count(world, StageRecord, StageRecord.service_id == sid,
                 StageRecord.stage == "delete_data") == 0
    world.sweep(E + timedelta(days=31))
    assert world.get(sid).state == "purged"


def test_a_stage_step_queued_early_refuses_to_run(world: ClockWorld) -> None:
    sid = world.service("hosting:mega:example.si:12m", E)
    for day in days(E - timedelta(days=30), E + timedelta(days=1)):
        world.sweep(day)
    key = clock.step_key(sid, "delete_data", E)
    with transaction(world.factory) as s:
        order_id = s.get(Service, sid).order_id  # type: ignore[union-attr]
        from provisioner.pipeline.engine.plan import StepSpec
        from provisioner.pipeline.engine.runner import record

        record(s, order_id, [StepSpec(key, "clock.delete_data", (), {
            "service_id": sid, "term_expiry": E.isoformat(),
            "due_on": (E + timedelta(days=61)).isoformat()}, sid)])
        s.execute(Step.__table__.update().where(Step.key == key).values(state="queued"))
    outcome = world.runner.run_step(key)
    assert outcome.status == "failed" and "not due before" in outcome.detail
    assert world.get(sid).state == "expired"
    assert count(world, StageRecord, StageRecord.stage == "delete_data") == 0


def test_hold_stops_the_clock_until_released(world: ClockWorld) -> None:
    sid = world.service("hosting:giga5:example.si:12m", E)
    for day in days(E - timedelta(days=30), E):
        world.sweep(day)
    clock.hold(world.factory, sid, "customer disputes the invoice", "ops")
    for day in days(E + timedelta(days=1), E + timedelta(days=100)):
        world.sweep(day)
    assert world.get(sid).state == "active"
    assert count(world, StageRecord, StageRecord.service_id == sid) == 0
    clock.release(world.factory, sid, "ops", today=E + timedelta(days=101))
    world.sweep(E + timedelta(days=101))
    assert world.get(sid).state == "expired"
    with pytest.raises(Conflict):
        clock.hold(world.factory, sid, "   ", "ops")


def test_dry_run_touches_nothing(world: ClockWorld) -> None:
    sid = world.service("hosting:giga5:example.si:12m", E)
    before = world.get(sid).clock_on
    report = clock.sweep(world.factory, E - timedelta(days=30), dry_run=True)
    assert [a.event for a in report.actions] == ["renewal"]
    assert world.get(sid).clock_on == before
    assert count(world, Renewal) == 0 and count(world, Proforma) == 1


def test_two_sweeps_at_once_bill_each_term_once(world: ClockWorld) -> None:
    ids = [world.service(f"hosting:giga5:site{i}.si:12m", E) for i in range(12)]
    today = E - timedelta(days=30)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            clock.sweep(world.factory, today, batch=5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count(world, Renewal) == len(ids)
    world.run_queued()
    with transaction(world.factory) as s:
        numbers = list(s.execute(select(Proforma.number).join(
            Renewal, Renewal.proforma_id == Proforma.id)).scalars())
        sent = s.execute(select(func.count()).select_from(OutboxMail).where(
            OutboxMail.key.in_([f"proforma:{n}/notify.proforma" for n in numbers]),
            OutboxMail.state == "sent")).scalar_one()
    assert sent == len(numbers) == len(ids)


def test_a_crash_in_the_middle_of_a_sweep_loses_and_doubles_nothing(
        world: ClockWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [world.service(f"hosting:giga5:crash{i}.si:12m", E) for i in range(6)]
    today = E - timedelta(days=30)
    real = sweep_module._advance
    calls = {"n": 0}

    def dying(*args: object, **kwargs: object) -> list[clock.Action]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("worker killed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep_module, "_advance", dying)
    with pytest.raises(RuntimeError):
        clock.sweep(world.factory, today, batch=2)
    monkeypatch.setattr(sweep_module, "_advance", real)
    done_before = count(world, Renewal)
    assert done_before == 2  # the first batch committed, the broken one rolled back
    clock.sweep(world.factory, today, batch=2)
    clock.sweep(world.factory, today, batch=2)
    assert count(world, Renewal) == len(ids)
    counters = count(world, Proforma)
    assert counters == 2 * len(ids)  # each service's first order + one renewal


def test_renewals_carry_no_discount_code(world: ClockWorld) -> None:
    from provisioner.domain.billing import DiscountCode

    ops.add_discount(world.factory, DiscountCode(code="WELCOME", percent=Decimal("50")), "test")
    sid = world.service("hosting:giga5:example.si:12m", E, discount="WELCOME")
    world.sweep(E - timedelta(days=30))
    _, proforma = world.renewal(sid) or (None, None)
    assert proforma is not None
    with transaction(world.factory) as s:
        lines = list(s.execute(select(ProformaLine).where(ProformaLine.proforma_id == proforma.id)
                               ).scalars())
        first = s.execute(select(Proforma).where(Proforma.id != proforma.id)).scalar_one()
    assert all(line.discount_gross == 0 for line in lines)
    assert proforma.gross > first.gross  # the first (discounted) price did not carry over


def test_eu_domain_is_billed_30_days_before_the_registry_deadline(world: ClockWorld) -> None:
    world.at(E - timedelta(days=45))
    sid = world.service("domain:example.eu:1y", E)
    world.sweep(E - timedelta(days=35) - timedelta(days=1))
    assert world.renewal(sid) is None
    world.sweep(E - timedelta(days=35))  # .eu is renewed 5 days early: 30 days before that
    renewal = world.renewal(sid)
    assert renewal is not None and renewal[1].due_date == E - timedelta(days=5)


def test_customer_export_and_erasure(world: ClockWorld) -> None:
    sid = world.service("hosting:mega:example.si:12m", E)
    cid = world.get(sid).customer_id
    exported = gdpr.export_customer(world.factory, cid, "ops")
    assert exported["customer"]["email"] == "ana@example.si"
    assert exported["customer"]["brand"] == "fcb"
    assert [s["id"] for s in exported["services"]] == [sid]
    with pytest.raises(Conflict, match="still has services"):
        gdpr.erase_customer(world.factory, cid, "ops")
    for day in days(E - timedelta(days=30), E + timedelta(days=91)):
        world.sweep(day)
    assert world.get(sid).state == "purged"
    result = gdpr.erase_customer(world.factory, cid, "ops")
    assert result["erased"] and "backups" in result["note"]
    after = gdpr.export_customer(world.factory, cid, "ops")
    assert "ana@example.si" not in repr(after["customer"]) and after["contacts"] == []
    assert after["customer"]["name"].startswith("erased customer")
    assert gdpr.erase_customer(world.factory, cid, "ops")["erased"] is False


def test_erasure_redacts_the_payer_in_stored_notifications_and_keeps_the_accounting(
        world: ClockWorld) -> None:
    sid = world.service("hosting:mega:example.si:12m", E)
    sv = world.get(sid)
    with transaction(world.factory) as s:
        number = s.execute(select(Proforma.number).where(Proforma.order_id == sv.order_id)).scalar_one()
        # how it ended is another test's business
        s.execute(update(Service).where(Service.id == sid).values(state="purged"))
    raw = b'{"billing_details": {"name": "Ana Novak", "email": "ana@example.si"}}'
    notice = replace(stripe_notice("evt_gdpr", "pi_gdpr", number, "10.00"), payer="ana@example.si", raw=raw)
    world.ingest(notice)
    world.ingest(replace(notice, event_id="evt_gdpr_2"))  # the same money told twice: duplicate_txn
    result = gdpr.erase_customer(world.factory, sv.customer_id, "ops")
    assert result["erased"] and result["notifications_redacted"] == 2
    assert "payment notification" in result["note"]
    with transaction(world.factory) as s:
        rows = s.execute(select(Notification).order_by(Notification.id)).scalars().all()
        payment = s.execute(select(Payment)).scalar_one()
    for row in rows:
        assert b"Ana" not in row.raw and b"ana@" not in row.raw
        assert "ana@" not in repr(row.notice) and row.notice["payer"] is None
        assert row.notice["amount"] == "10.00" and row.notice["txn_id"] == "pi_gdpr"
        assert row.notice["proforma"] == number and row.notice["occurred_at"]
    assert [r.event_id for r in rows] == ["evt_gdpr", "evt_gdpr_2"]
    assert (payment.txn_id, payment.amount, payment.payer) == ("pi_gdpr", Decimal("10.00"), None)


def test_certificates_renew_by_themselves_30_days_ahead_once(world: ClockWorld) -> None:
    from datetime import UTC, datetime

    from provisioner.store.tls import TlsCertificate

    sid = world.service("tls:dv:example.si:12m", E)
    day = E - timedelta(days=100)
    expires = datetime(day.year, day.month, day.day, 12, tzinfo=UTC) + timedelta(days=31)
    with transaction(world.factory) as s:
        s.add(TlsCertificate(service_id=sid, primary_name="example.si",
                             names=["example.si", "www.example.si"], serial="1f",
                             not_before=expires - timedelta(days=90), not_after=expires,
                             chain_pem="-", key_encrypted=b"-", challenges={"example.si": "http-01"},
                             issued_at=expires - timedelta(days=90), deployed_at=None))
    key = f"service:{sid}/tls.issue@{expires.date().isoformat()}"
    assert [a.event for a in clock.sweep(world.factory, day).actions] == []  # 31 days left
    report = clock.sweep(world.factory, day + timedelta(days=1))
    assert [a.event for a in report.actions] == ["tls_renewal"]
    assert [a.event for a in clock.sweep(world.factory, day + timedelta(days=2)).actions] == []
    with transaction(world.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        assert step.kind == "tls.issue" and step.params["challenge"] == "http-01"
        assert step.params["names"] == ["example.si", "www.example.si"]
