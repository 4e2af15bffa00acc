"""Brands where money moves (issue 17 items 1 and 12), on SQLite and PostgreSQL with the
real SMTP sink: one installation serves FCB and iSERVER, and each customer is invoiced by,
pays into and hears from its own company, in that company's own gapless sequences; a
bank statement of one brand's account settles only that brand's proformas; the issuer
is stored at issue time; a paper invoice is on the proforma and marked for posting."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain import policy as brand_policy
from provisioner.domain.policy import FCB, ISERVER
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases import ops
from provisioner.store.db import session_factory, transaction, upgrade
from provisioner.store.models import Counter, Invoice, Notification, Payment, Proforma
from tests.helpers import World, customer, make_settings, make_world
from tests.payloads import camt053_document

YEAR = datetime.now(UTC).year


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> World:
    return make_world(make_settings(tmp_path, db_url, smtp_sink.port))


def _customer(world: World, brand: str | None, email: str) -> int:
    data: dict[str, Any] = customer("en", email=email)
    if brand is not None:
        data["brand"] = brand
    return int(ops.add_customer(world.factory, data, "test")["id"])


def _order(world: World, cid: int, name: str, **kw: Any) -> dict[str, Any]:
    result = ops.create_order(world.factory, cid, [f"hosting:mega:{name}"], None, kw.pop("brand", None),
                              "test", **kw)
    world.runner.dispatch(result["order"])
    return result


def _mails(sink: SmtpSink, to: str) -> list[Any]:
    return [m for m in sink.messages() if m["To"] == to]


def _invoices(world: World) -> dict[str, Invoice]:
    with transaction(world.factory) as s:
        rows = list(s.execute(select(Invoice)).scalars())
        s.expunge_all()
    return {inv.number: inv for inv in rows}


def test_two_brands_paid_the_same_day_are_invoiced_by_their_own_company(
        world: World, smtp_sink: SmtpSink) -> None:
    fcb_c = _customer(world, None, "ana@example.si")  # FCB by default
    is_c = _customer(world, "iserver", "bor@example.si")
    orders = {
        "fcb": [_order(world, fcb_c, f"fcb{i}.si") for i in range(2)],
        "iserver": [_order(world, is_c, f"is{i}.si") for i in range(2)],
    }
    # each brand's own gapless proforma sequence; FCB's format unchanged
    assert [o["proforma"]["number"] for o in orders["fcb"]] == [
        f"PR-{YEAR}-000001", f"PR-{YEAR}-000002"]
    assert [o["proforma"]["number"] for o in orders["iserver"]] == [
        f"IS-PR-{YEAR}-000001", f"IS-PR-{YEAR}-000002"]
    for code, brand in (("fcb", FCB), ("iserver", ISERVER)):
        for o in orders[code]:
            p = o["proforma"]
            assert p["brand"] == code
            assert p["issuer"]["name"] == brand.name and p["issuer"]["iban"] == brand.iban
    refs = [o["proforma"]["reference"] for os_ in orders.values() for o in os_]
    assert len(set(refs)) == 4

    # the proforma mails: each brand's sender, company and bank account
    world.run_queued()
    for email, brand, other in (("ana@example.si", FCB, ISERVER), ("bor@example.si", ISERVER, FCB)):
        mails = _mails(smtp_sink, email)
        assert len(mails) == 2
        for m in mails:
            assert parseaddr(m["From"])[1] == parseaddr(brand.mail_from)[1]
            assert parseaddr(m["Return-Path"])[1] == parseaddr(brand.mail_from)[1]
            body = m.get_body(("plain",)).get_content()
            assert brand.iban in body and brand.name in body and brand.recipient in body
            assert other.iban not in body and other.name not in body

    # both paid the same day, each into its own brand's account (one bank document)
    statement = camt053_document([
        (FCB.account, [{"amount": o["proforma"]["gross"], "reference": o["proforma"]["reference"],
                        "acct_svcr_ref": f"F-{i}"} for i, o in enumerate(orders["fcb"])]),
        (ISERVER.account, [{"amount": o["proforma"]["gross"], "reference": o["proforma"]["reference"],
                            "acct_svcr_ref": f"I-{i}"} for i, o in enumerate(orders["iserver"])]),
    ])
    summary = ops.import_statement(world.factory, statement, "test", world.app.planner,
                                   account_iban=world.app.settings.bank_accounts)
    assert summary["outcomes"] == {"matched": 4} and summary["settled"] == 4
    for order_id in summary["_settled_orders"]:
        world.runner.dispatch(order_id)
    world.run_queued()

    invoices = _invoices(world)
    assert sorted(invoices) == sorted([f"{YEAR}-000001", f"{YEAR}-000002",
                                       f"IS-{YEAR}-000001", f"IS-{YEAR}-000002"])
    for number, inv in invoices.items():
        brand = ISERVER if number.startswith("IS-") else FCB
        assert inv.brand == brand.code and inv.seq in (1, 2) and inv.year == YEAR
        assert inv.snapshot["issuer"]["name"] == brand.name
        assert inv.snapshot["issuer"]["vat_id"] == brand.vat_id
        assert inv.snapshot["issuer"]["iban"] == brand.iban
    for email, brand in (("ana@example.si", FCB), ("bor@example.si", ISERVER)):
        invoice_mails = [m for m in _mails(smtp_sink, email) if m["Subject"].startswith("Invoice")]
        assert len(invoice_mails) == 2
        assert all(parseaddr(m["From"])[1] == parseaddr(brand.mail_from)[1] for m in invoice_mails)
        assert all(brand.name in m.get_body(("plain",)).get_content() for m in invoice_mails)
    listed = {row["number"]: row["issuer"] for row in ops.list_invoices(world.factory)}
    assert listed[f"IS-{YEAR}-000001"] == ISERVER.name and listed[f"{YEAR}-000001"] == FCB.name
    with transaction(world.factory) as s:
        counters = {(c.kind, c.brand, c.year): c.last for c in s.execute(select(Counter)).scalars()}
    assert counters == {("proforma", "fcb", YEAR): 2, ("proforma", "iserver", YEAR): 2,
                        ("invoice", "fcb", YEAR): 2, ("invoice", "iserver", YEAR): 2}


def test_a_statement_of_one_brands_account_settles_only_that_brands_proformas(world: World) -> None:
    fcb_p = _order(world, _customer(world, "fcb", "ana@example.si"), "a.si")["proforma"]
    is_p = _order(world, _customer(world, "iserver", "bor@example.si"), "b.si")["proforma"]
    # iSERVER's account, but one credit quotes FCB's proforma: recorded for ops, not settled
    statement = camt053_document([(ISERVER.account, [
        {"amount": fcb_p["gross"], "reference": fcb_p["reference"], "acct_svcr_ref": "I-1"},
        {"amount": is_p["gross"], "reference": is_p["reference"], "acct_svcr_ref": "I-2"},
    ])])
    summary = ops.import_statement(world.factory, statement, "test", world.app.planner,
                                   account_iban=world.app.settings.bank_accounts)
    assert summary["settled"] == 1
    with transaction(world.factory) as s:
        states = dict(s.execute(select(Proforma.number, Proforma.state)).all())
        wrong = s.execute(select(Payment).where(Payment.txn_id == "I-1")).scalar_one()
        assert wrong.proforma_id is None and wrong.status != "matched"
        assert "iserver account" in (wrong.detail or "") and fcb_p["number"] in (wrong.detail or "")
    assert states == {fcb_p["number"]: "open", is_p["number"]: "paid"}
    unmatched = ops.list_payments(world.factory, unmatched=True)
    assert [p["txn_id"] for p in unmatched] == ["I-1"]

    # a statement of an account that is no brand's: refused whole, nothing stored
    theirs = camt053_document([
        (FCB.account, [{"amount": fcb_p["gross"], "reference": fcb_p["reference"],
                        "acct_svcr_ref": "F-1"}]),
        ("SI56020170014356205", [{"amount": "1.00", "acct_svcr_ref": "X-1"}]),
    ])
    with pytest.raises(InvalidInput, match="not our account"):
        ops.import_statement(world.factory, theirs, "test", world.app.planner,
                             account_iban=world.app.settings.bank_accounts)
    with transaction(world.factory) as s:
        assert s.execute(select(Notification.event_id).where(
            Notification.event_id.like(f"{FCB.account}:%"))).all() == []
    # and FCB's own statement settles FCB's proforma
    ours = camt053_document([(FCB.account, [{"amount": fcb_p["gross"], "reference": fcb_p["reference"],
                                             "acct_svcr_ref": "F-1"}])])
    assert ops.import_statement(world.factory, ours, "test", world.app.planner,
                                account_iban=world.app.settings.bank_accounts)["settled"] == 1


def test_an_order_is_its_customers_brand(world: World) -> None:
    cid = _customer(world, "iserver", "bor@example.si")
    assert ops.show_customer(world.factory, cid, "test")["brand"] == "iserver"
    result = _order(world, cid, "b.si")  # no brand given: the customer's
    assert result["proforma"]["brand"] == "iserver"
    assert ops.create_order(world.factory, cid, ["hosting:mega:c.si"], None, "ISERVER",
                            "test")["proforma"]["brand"] == "iserver"
    with pytest.raises(InvalidInput, match="customer of iSERVER"):
        ops.create_order(world.factory, cid, ["hosting:mega:d.si"], None, "fcb", "test")
    with pytest.raises(InvalidInput, match="unknown brand"):
        _customer(world, "acme", "x@example.si")
    exported = ops.show_customer(world.factory, _customer(world, None, "c@example.si"), "test")
    assert exported["brand"] == "fcb"


def test_the_issuer_is_what_it_was_at_issue_time(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _order(world, _customer(world, "iserver", "bor@example.si"), "b.si")["proforma"]
    moved = replace(ISERVER, address="Maribor, Slovenija", iban="SI56 1910 0000 0123 438")
    monkeypatch.setitem(brand_policy.BRANDS, "iserver", moved)
    assert world.pay(p["number"], p["gross"], "t-1").settled
    world.runner.dispatch(p["order"])
    world.run_queued()
    shown = ops.show_proforma(world.factory, p["number"])
    assert shown["issuer"]["address"] == ISERVER.address and shown["issuer"]["iban"] == ISERVER.iban
    (inv,) = _invoices(world).values()
    assert inv.snapshot["issuer"]["address"] == ISERVER.address
    assert inv.snapshot["issuer"]["iban"] == ISERVER.iban


def test_a_paper_invoice_is_on_the_proforma_and_listed_for_posting(world: World) -> None:
    cid = _customer(world, "iserver", "bor@example.si")
    plain = _order(world, cid, "a.si")["proforma"]
    by_item = ops.create_order(world.factory, cid, ["hosting:mega:b.si", "paper-invoice"], None, None,
                               "test")["proforma"]
    by_flag = _order(world, cid, "c.si", paper_invoice=True)["proforma"]
    for p in (by_item, by_flag):
        assert p["paper_invoice"] is True
        assert p["lines"][-1]["description"].startswith("Paper invoice")
        assert (p["lines"][-1]["net"], p["lines"][-1]["vat"], p["lines"][-1]["gross"]) == (
            "5.00", "1.10", "6.10")
        assert float(p["gross"]) == pytest.approx(float(plain["gross"]) + 6.10)
    for i, p in enumerate((plain, by_item, by_flag)):
        assert world.pay(p["number"], p["gross"], f"t-{i}").settled
        world.runner.dispatch(p["order"])
    world.run_queued()
    to_post = ops.list_invoices(world.factory, to_post=True)
    assert [row["proforma"] for row in to_post] == [by_item["number"], by_flag["number"]]
    assert all(row["post"] == "to post" for row in to_post)
    rows = {row["proforma"]: row for row in ops.list_invoices(world.factory)}
    assert rows[plain["number"]]["post"] == ""
    ops.mark_posted(world.factory, to_post[0]["number"], "ops")
    assert [row["proforma"] for row in ops.list_invoices(world.factory, to_post=True)] == [
        by_flag["number"]]
    with pytest.raises(InvalidInput, match="posted already"):
        ops.mark_posted(world.factory, to_post[0]["number"], "ops")
    with pytest.raises(InvalidInput, match="not ordered on paper"):
        ops.mark_posted(world.factory, rows[plain["number"]]["number"], "ops")
    with pytest.raises(InvalidInput, match="besides the paper invoice"):
        ops.create_order(world.factory, cid, ["paper-invoice"], None, None, "test")


@pytest.fixture(params=["sqlite", "postgres"])
def db_at_0008(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database migrated up to 0008 only: an installation from before brands."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    else:
        url = request.getfixturevalue("pg_server").create_database()
    upgrade(url, "0008")
    return url


def test_migration_0009_keeps_numbers_and_gives_existing_rows_their_brand(db_at_0008: str) -> None:
    """An installation before brands: its rows get their order's brand, its counters
    become FCB's, invoices stay immutable, and (brand, year, seq) is what must be unique."""
    db_url = db_at_0008
    factory = session_factory(db_url)
    now = datetime.now(UTC)
    with transaction(factory) as s:
        s.execute(text(
            "INSERT INTO customers (id, name, email, address, postal_code, city, country, phone, "
            "lang, created_at) VALUES (1, 'A', 'a@example.si', 'x', '1000', 'LJ', 'SI', '+386.1', "
            "'sl', :now), (2, 'B', 'b@example.si', 'x', '1000', 'LJ', 'SI', '+386.1', 'sl', :now)"),
            {"now": now})
        s.execute(text("INSERT INTO orders (id, customer_id, brand, status, renewal, refund_flag, "
                       "created_at) VALUES (1, 1, 'fcb', 'paid', false, false, :now), "
                       "(2, 2, 'iserver', 'paid', false, false, :now)"), {"now": now})
        for n in (1, 2):
            s.execute(text(
                "INSERT INTO proformas (id, number, reference, order_id, state, issued_on, due_date, "
                "currency, net, vat, gross) VALUES (:n, :num, :ref, :n, 'paid', '2026-01-02', "
                "'2026-01-10', 'EUR', 1, 0.22, 1.22)"),
                {"n": n, "num": f"PR-2026-00000{n}", "ref": f"SI12 2026{n}"})
            s.execute(text(
                "INSERT INTO invoices (id, number, year, seq, proforma_id, customer_id, issued_at, "
                "net, vat, gross, currency, snapshot) VALUES (:n, :num, 2026, :n, :n, :n, :now, 1, "
                "0.22, 1.22, 'EUR', '{}')"), {"n": n, "num": f"2026-00000{n}", "now": now})
        s.execute(text("INSERT INTO counters (kind, year, last) VALUES ('proforma', 2026, 2), "
                       "('invoice', 2026, 2)"))
    upgrade(db_url, "0009")
    with transaction(factory) as s:
        assert s.execute(text("SELECT id, brand FROM customers ORDER BY id")).all() == [
            (1, "fcb"), (2, "iserver")]
        assert s.execute(text("SELECT id, brand FROM proformas ORDER BY id")).all() == [
            (1, "fcb"), (2, "iserver")]
        assert s.execute(text("SELECT id, brand, to_post FROM invoices ORDER BY id")).all() == [
            (1, "fcb", False), (2, "iserver", False)]
        assert sorted(s.execute(text("SELECT kind, brand, year, last FROM counters")).all()) == [
            ("invoice", "fcb", 2026, 2), ("proforma", "fcb", 2026, 2)]
    with pytest.raises(DBAPIError, match="immutable"), transaction(factory) as s:
        s.execute(text("UPDATE invoices SET gross = 0"))
    with transaction(factory) as s:  # another brand may use the same year and seq
        for n in (3, 4):
            s.execute(text(
                "INSERT INTO proformas (id, number, reference, order_id, state, issued_on, due_date, "
                "currency, net, vat, gross, brand) VALUES (:n, :num, :ref, 2, 'paid', '2026-01-02', "
                "'2026-01-10', 'EUR', 1, 0.22, 1.22, 'iserver')"),
                {"n": n, "num": f"IS-PR-2026-00000{n}", "ref": f"SI12 92026{n}"})
        s.execute(text(
            "INSERT INTO invoices (id, number, year, seq, proforma_id, customer_id, issued_at, net, "
            "vat, gross, currency, snapshot, brand, to_post) VALUES (3, 'IS-2026-000001', 2026, 1, 3, "
            "2, :now, 1, 0.22, 1.22, 'EUR', '{}', 'iserver', false)"), {"now": now})
    with pytest.raises(DBAPIError, match="(?i)unique"), transaction(factory) as s:  # not twice
        s.execute(text(
            "INSERT INTO invoices (id, number, year, seq, proforma_id, customer_id, issued_at, net, "
            "vat, gross, currency, snapshot, brand, to_post) VALUES (4, 'IS-2026-X', 2026, 1, 4, 2, "
            ":now, 1, 0.22, 1.22, 'EUR', '{}', 'iserver', false)"), {"now": now})
