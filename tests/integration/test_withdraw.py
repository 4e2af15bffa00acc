"""Withdrawal and refunds (issue 17, item 3; RULES 001 §3.2, 002 §8), on SQLite and
PostgreSQL: the refund from the brand's policy, a credit note against the invoice
(immutable, gapless per brand and year), the card refund through the Stripe SDK against a
local server that speaks Stripe's refunds API (idempotency keys and all), bank refunds as
an ops task naming the payer's IBAN, the service terminated through the staged deletion,
and everything exactly once: a second withdrawal is refused, a lost answer between the
refund and its record never refunds twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from provisioner.adapters.payments.camt053 import parse_camt053
from provisioner.adapters.payments.stripe import parse_stripe
from provisioner.cli import app
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.devstack.stripe_api import StripeApi
from provisioner.domain.lifecycle import backup_purge_date
from provisioner.domain.policy import FCB, get_brand
from provisioner.errors import Conflict
from provisioner.pipeline.usecases import ops, orders, withdrawal
from provisioner.store.db import transaction
from provisioner.store.lifecycle import StageRecord
from provisioner.store.models import (
    CreditNote,
    Invoice,
    Migration,
    Proforma,
    Refund,
    Service,
    Step,
)
from provisioner.timeutil import now_at
from tests.helpers import (
    ClockWorld,
    customer,
    make_settings,
    make_world,
    settings_env,
    stripe_notice,
)
from tests.payloads import camt053_statement

START = date(2027, 3, 1)
KEY = "sk_test_" + "w" * 24
PAYER_IBAN = "SI56 2900 0005 5555 555"


@pytest.fixture
def stripe_api() -> Iterator[StripeApi]:
    with StripeApi(KEY) as api:
        yield api


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink, stripe_api: StripeApi) -> ClockWorld:
    settings = make_settings(tmp_path, db_url, smtp_sink.port, step_max_attempts=3, line_kinds="",
                             stripe_secret_key=KEY, stripe_api_base=stripe_api.url)
    w = make_world(settings, now=now_at(START))
    return ClockWorld(w.app, w.queue, START, smtp_sink)


def paid_service(world: ClockWorld, stripe_api: StripeApi | None, *, brand: str = "iserver",
                 items: tuple[str, ...] = ("hosting:giga5:withdraw.si:12m",),
                 email: str = "ana@example.si") -> tuple[int, Decimal]:
    """A hosting service ordered and paid on START (by card when ``stripe_api``, else by a
    bank transfer with the payer's IBAN), its invoice issued, active as if provisioned.
    Returns (service id, the gross of its line)."""
    c = ops.add_customer(world.factory, customer("en", email=email, brand=brand), "test")
    with transaction(world.factory) as s:
        order, proforma = orders.create_order(s, customer_id=c["id"], item_specs=list(items),
                                              discount=None, brand=brand, actor="test",
                                              today=START)
        number, reference, gross, oid = proforma.number, proforma.reference, proforma.gross, order.id
    if stripe_api is not None:
        intent = f"pi_{oid}_{brand}"
        stripe_api.add_payment_intent(intent, int(gross * 100))
        result = world.ingest(stripe_notice(f"evt_{intent}", intent, number, gross))
    else:
        statement = camt053_statement([{"amount": str(gross), "reference": reference,
                                        "acct_svcr_ref": f"BANK-{oid}", "debtor_name": "Ana Novak",
                                        "debtor_iban": PAYER_IBAN}],
                                      iban="".join(get_brand(brand).iban.split()))
        (notice,) = parse_camt053(statement)
        result = world.ingest(notice)
    assert result.settled
    world.runner.dispatch(oid)
    world.run_queued()  # invoice.issue and the mails
    with transaction(world.factory) as s:
        sv = s.execute(select(Service).where(Service.order_id == oid, Service.kind == "hosting")
                       ).scalar_one()
        sv.state, sv.expires_on = "active", date(2028, 3, 1)
        p = s.execute(select(Proforma).where(Proforma.order_id == oid)).scalar_one()
        line = next(li for li in p.lines if li.item_id == sv.item_id)
        assert s.execute(select(Invoice).where(Invoice.proforma_id == p.id)).scalar_one()
        return sv.id, line.gross


def on_day(n: int) -> date:
    return START + timedelta(days=n - 1)


def withdraw(world: ClockWorld, sid: int, day: date, **kw: Any) -> dict[str, Any]:
    world.at(day)
    result = withdrawal.withdraw(world.factory, sid, today=day, actor="test", **kw)
    if not kw.get("dry_run"):
        world.runner.dispatch(int(result["order"]))
        world.drain(retry=True)
    return result


def count(world: ClockWorld, model: type, *where: object) -> int:
    with transaction(world.factory) as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def test_iserver_card_withdrawal_on_day_15_refunds_once_through_stripe(
        world: ClockWorld, stripe_api: StripeApi) -> None:
    sid, paid = paid_service(world, stripe_api)
    preview = withdraw(world, sid, on_day(15), dry_run=True)
    assert preview["allowed"] and preview["refund"] == f"{paid - Decimal('5.00'):.2f}"
    assert count(world, CreditNote) == 0 and stripe_api.refunds == []  # a dry run writes nothing
    result = withdraw(world, sid, on_day(15))
    assert result["credit_note"] == f"DB-ISERVER-{START.year}-000001"
    assert [r["amount"] for r in stripe_api.refunds] == [int((paid - 5) * 100)]
    with transaction(world.factory) as s:
        note = s.execute(select(CreditNote)).scalar_one()
        refund = s.execute(select(Refund)).scalar_one()
        assert note.gross == paid - 5 and note.net + note.vat == note.gross
        assert (refund.state, refund.provider_ref) == ("refunded", stripe_api.refunds[0]["id"])
        assert refund.idempotency_key == note.number
        sv = s.get(Service, sid)
        assert sv is not None and sv.state == "deleted" and sv.expires_on == on_day(15)
        stage = s.execute(select(StageRecord).where(StageRecord.service_id == sid)).scalar_one()
        assert (stage.stage, stage.done_on) == ("delete_data", on_day(15))
    assert any(f"Credit note {note.number}" in str(m["Subject"]) for m in world.sink.messages())
    with pytest.raises(Conflict, match="was withdrawn"):
        withdraw(world, sid, on_day(15))
    assert len(stripe_api.refunds) == 1
    # Stripe announces the refund (refund.created): recorded, and named as ours for ops
    event = {"id": "evt_refund_1", "type": "refund.created", "created": 1_800_000_000,
             "data": {"object": stripe_api.refunds[0]}}
    assert world.ingest(parse_stripe(json.dumps(event).encode())).status == "reversal"
    (reversal,) = [p for p in ops.list_payments(world.factory, unmatched=True)
                   if p["kind"] == "reversal"]
    assert f"credit note {note.number}" in reversal["detail"] and "made by us" in reversal["detail"]


def test_iserver_day_16_is_refused_and_uses_no_number(world: ClockWorld,
                                                      stripe_api: StripeApi) -> None:
    sid, _ = paid_service(world, stripe_api)
    with pytest.raises(Conflict, match="15 days"):
        withdraw(world, sid, on_day(16))
    assert count(world, CreditNote) == 0 and stripe_api.refunds == []
    assert world.get(sid).state == "active"
    other, _ = paid_service(world, stripe_api, email="bojan@example.si")
    assert withdraw(world, other, on_day(2))["credit_note"] == f"DB-ISERVER-{START.year}-000001"


@pytest.mark.parametrize(("day", "allowed"), [(90, True), (91, False)])
def test_fcb_hosting_trial_ends_after_day_90(world: ClockWorld, stripe_api: StripeApi, day: int,
                                             allowed: bool) -> None:
    sid, paid = paid_service(world, stripe_api, brand="fcb")
    if allowed:
        assert withdraw(world, sid, on_day(day))["refund"] == f"{paid:.2f}"
        assert [r["amount"] for r in stripe_api.refunds] == [int(paid * 100)]
    else:
        with pytest.raises(Conflict, match="90 days"):
            withdraw(world, sid, on_day(day))
        assert stripe_api.refunds == []


def _use_migration(world: ClockWorld, sid: int) -> Decimal:
    """The order's free migration carried out (its row as the migration capability keeps
    it: ``migration_used_at`` set by its first copy step)."""
    with transaction(world.factory) as s:
        sv = s.get(Service, sid)
        assert sv is not None
        other = s.execute(select(Service).where(Service.order_id == sv.order_id,
                                                Service.kind == "migration")).scalars().first()
        assert other is not None
        row = s.execute(select(Migration).where(Migration.service_id == other.id)).scalar_one_or_none()
        now = now_at(START)()
        if row is None:
            row = Migration(service_id=other.id, hosting_service_id=sid, domain=sv.name,
                            state="source_received", charge_gross=Decimal("40.00"),
                            created_at=now, updated_at=now)
            s.add(row)
        row.hosting_service_id = sid
        row.migration_used_at = now
        return Decimal(row.charge_gross)


@pytest.mark.parametrize("brand", ["fcb", "iserver"])
def test_a_used_migration_is_charged_fcb_or_refuses_the_refund_iserver(
        world: ClockWorld, stripe_api: StripeApi, brand: str) -> None:
    sid, paid = paid_service(world, stripe_api, brand=brand,
                             items=("hosting:giga5:withdraw.si:12m", "migration:withdraw.si"))
    price = _use_migration(world, sid)
    if brand == "fcb":
        result = withdraw(world, sid, on_day(10))
        assert result["migration_charge"] == f"{price:.2f}"
        assert [r["amount"] for r in stripe_api.refunds] == [int((paid - price) * 100)]
    else:
        with pytest.raises(Conflict, match="migration"):
            withdraw(world, sid, on_day(10))
        assert stripe_api.refunds == [] and world.get(sid).state == "active"


def test_a_lost_answer_between_refund_and_record_never_refunds_twice(
        world: ClockWorld, stripe_api: StripeApi) -> None:
    sid, paid = paid_service(world, stripe_api)
    stripe_api.hang_up_after_refund = True  # Stripe refunds, the answer never arrives
    withdraw(world, sid, on_day(3))  # the step retries with the same idempotency key
    assert len(stripe_api.refunds) == 1
    # the worker died after Stripe answered and before the record committed: run again
    with transaction(world.factory) as s:
        s.execute(update(Refund).values(state="pending", provider_ref=None))
        s.execute(update(Step).where(Step.kind == "refund.issue").values(state="queued"))
        key = s.execute(select(Step.key).where(Step.kind == "refund.issue")).scalar_one()
    world.runner.run_step(key)
    assert len(stripe_api.refunds) == 1
    with transaction(world.factory) as s:
        refund = s.execute(select(Refund)).scalar_one()
        assert (refund.state, refund.provider_ref) == ("refunded", stripe_api.refunds[0]["id"])
    assert stripe_api.requests["refunds"] >= 3  # asked three times, refunded once


def test_a_bank_payment_is_refunded_by_an_ops_task_with_the_payers_iban(
        world: ClockWorld, stripe_api: StripeApi) -> None:
    sid, paid = paid_service(world, None, brand="fcb")
    withdraw(world, sid, on_day(30))
    assert stripe_api.requests["refunds"] == 0
    (task,) = withdrawal.list_refunds(world.factory, open_only=True)
    assert (task["method"], task["state"], task["payer_iban"]) == (
        "ops_task", "ops_task", "SI56290000055555555")
    assert task["amount"] == f"{paid:.2f}"
    ops_mails = [m for m in world.sink.messages() if "by hand" in str(m["Subject"])]
    assert len(ops_mails) == 1
    assert "SI56290000055555555" in ops_mails[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_credit_notes_are_immutable_and_numbered_per_brand(
        world: ClockWorld, stripe_api: StripeApi) -> None:
    a, _ = paid_service(world, stripe_api, brand="fcb")
    b, _ = paid_service(world, stripe_api, brand="iserver", email="b@example.si")
    c, _ = paid_service(world, stripe_api, brand="fcb", email="c@example.si")
    numbers = [withdraw(world, sid, on_day(5))["credit_note"] for sid in (a, b, c)]
    year = START.year
    assert numbers == [f"DB-FCB-{year}-000001", f"DB-ISERVER-{year}-000001",
                       f"DB-FCB-{year}-000002"]
    for statement in ("UPDATE credit_notes SET gross = 0", "DELETE FROM credit_notes"):
        with pytest.raises(DBAPIError, match="immutable"), transaction(world.factory) as s:
            s.execute(text(statement))
    assert count(world, CreditNote) == 3


def test_the_clock_purges_a_withdrawn_services_backups_on_the_brands_retention(
        world: ClockWorld, stripe_api: StripeApi) -> None:
    sid, _ = paid_service(world, stripe_api, brand="fcb")
    day = on_day(20)
    withdraw(world, sid, day)
    assert world.get(sid).state == "deleted"
    purge_on = backup_purge_date(day, FCB)  # the term ended on the withdrawal day
    world.sweep(purge_on - timedelta(days=1))
    assert world.get(sid).state == "deleted"
    world.sweep(purge_on)
    assert world.get(sid).state == "purged"


def test_the_cli_previews_withdraws_and_refuses_a_second_time(
        world: ClockWorld, stripe_api: StripeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    sid, paid = paid_service(world, stripe_api)
    for name, value in settings_env(world.app.settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROVISIONER_STRIPE_SECRET_KEY", KEY)
    monkeypatch.setenv("PROVISIONER_STRIPE_API_BASE", stripe_api.url)
    cli, day = CliRunner(), on_day(4).isoformat()
    preview = cli.invoke(app, ["withdraw", str(sid), "--now", day, "--dry-run", "--json"])
    assert preview.exit_code == 0, preview.stderr
    assert json.loads(preview.stdout)["refund"] == f"{paid - 5:.2f}"
    assert count(world, CreditNote) == 0
    done = cli.invoke(app, ["withdraw", str(sid), "--now", day, "--json"])
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["credit_note"] == f"DB-ISERVER-{START.year}-000001"
    again = cli.invoke(app, ["withdraw", str(sid), "--now", day])
    assert again.exit_code == 2 and "was withdrawn" in again.stderr
    listed = cli.invoke(app, ["refunds", "list", "--json"])
    assert [r["state"] for r in json.loads(listed.stdout)] == ["pending"]  # queued for the workers


def test_two_withdrawals_at_once_issue_one_credit_note(world: ClockWorld,
                                                       stripe_api: StripeApi) -> None:
    sid, _ = paid_service(world, stripe_api)
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def attempt() -> None:
        start.wait()
        try:
            outcomes.append(withdrawal.withdraw(world.factory, sid, today=on_day(2),
                                                actor="test")["credit_note"])
        except Conflict as exc:
            outcomes.append(f"refused: {exc}")

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(o.split(":")[0] for o in outcomes) == [f"DB-ISERVER-{START.year}-000001",
                                                         "refused"]
    assert count(world, CreditNote) == 1 and count(world, Refund) == 1
