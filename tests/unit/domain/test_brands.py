"""Brands where money moves (issue 17 items 1, 8, 12), the pure part: each brand's bank
account is a valid IBAN of its own, its numbers and payment references are its own, a
document stores its issuer, the paper invoice is a line of the proforma, and iSERVER's
data are never removed before day 31 of a late payment."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import pytest

from provisioner.domain import billing
from provisioner.domain.catalog import DEFAULT_CATALOG, parse_item
from provisioner.domain.lifecycle import ClockEvent, data_deletion_date, due_events
from provisioner.domain.policy import BRANDS, FCB, ISERVER, BrandPolicy, brand_for_account
from provisioner.domain.references import parse_reference, proforma_reference
from provisioner.errors import InvalidInput

TODAY = date(2026, 11, 20)


def _iban_ok(iban: str) -> bool:
    """ISO 13616: the IBAN moved 4 characters, letters as 10..35, is 1 modulo 97."""
    text = "".join(iban.split()).upper()
    rearranged = text[4:] + text[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


@pytest.mark.parametrize("brand", list(BRANDS.values()), ids=list(BRANDS))
def test_every_brand_has_its_own_valid_account_issuer_and_sender(brand: BrandPolicy) -> None:
    assert _iban_ok(brand.iban), brand.iban
    assert brand.name and brand.address and brand.vat_id and brand.bic
    assert "@" in brand.mail_from
    others = [b for b in BRANDS.values() if b is not brand]
    assert all(b.account != brand.account and b.mail_from != brand.mail_from for b in others)
    assert brand_for_account(brand.iban.lower()) is brand
    assert brand_for_account(brand.account) is brand


def test_an_unknown_account_is_no_brand() -> None:
    assert brand_for_account("SI56 0201 7001 4356 205") is None


def test_fcb_keeps_its_number_formats_and_iserver_has_its_own_prefix() -> None:
    assert billing.proforma_number(2026, 7, FCB) == billing.proforma_number(2026, 7) == "PR-2026-000007"
    assert billing.invoice_number(2026, 7, FCB) == billing.invoice_number(2026, 7) == "2026-000007"
    assert billing.proforma_number(2026, 7, ISERVER) == "IS-PR-2026-000007"
    assert billing.invoice_number(2026, 7, ISERVER) == "IS-2026-000007"


def test_payment_references_of_two_brands_never_collide() -> None:
    assert billing.payment_reference(2026, 123, FCB) == proforma_reference(123, 2026)
    fcb = {billing.payment_reference(2026, n, FCB) for n in range(1, 2000)}
    iserver = {billing.payment_reference(2026, n, ISERVER) for n in range(1, 2000)}
    assert len(fcb) == len(iserver) == 1999 and not fcb & iserver
    ref = billing.payment_reference(2026, 5, ISERVER)
    assert str(parse_reference(ref)) == ref  # a valid SI12 reference (check digit)


@pytest.mark.parametrize("prefix", ["is", "I5", "TOOLONG"])
def test_a_bad_number_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidInput, match="prefix"):
        replace(FCB, number_prefix=prefix)


@pytest.mark.parametrize("prefix", ["0", "12a", "1234"])
def test_a_bad_reference_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidInput, match="prefix"):
        replace(FCB, reference_prefix=prefix)


def test_the_issuer_is_the_brands_company_and_account() -> None:
    issuer = billing.issuer(ISERVER)
    assert issuer["name"] == "iSERVER d.o.o." and issuer["vat_id"] == ISERVER.vat_id
    assert issuer["iban"] == ISERVER.iban and issuer["recipient"].startswith("iSERVER d.o.o.")
    assert billing.issuer(FCB)["iban"] == FCB.iban != issuer["iban"]


def test_paper_invoice_is_a_line_of_the_fee_plus_vat() -> None:
    items = [parse_item("hosting:mega:example.si")]
    plain = billing.price_order(items, catalog=DEFAULT_CATALOG, policy=ISERVER, today=TODAY)
    paper = billing.price_order(items, catalog=DEFAULT_CATALOG, policy=ISERVER, today=TODAY,
                                paper_invoice=True)
    assert not plain.paper_invoice and paper.paper_invoice
    line = paper.lines[-1]
    assert line.item is None and line.position == len(plain.lines) + 1
    assert (line.net, line.vat, line.gross) == (Decimal("5.00"), Decimal("1.10"), Decimal("6.10"))
    assert line.gross == billing.paper_invoice_fee_gross(ISERVER)
    assert paper.gross == plain.gross + Decimal("6.10")
    assert paper.net + paper.vat == paper.gross
    assert paper.promo_services == plain.promo_services


def test_iserver_data_stay_on_day_30_and_may_go_on_day_31() -> None:
    expiry = date(2027, 3, 31)
    assert data_deletion_date(expiry, ISERVER) == expiry + timedelta(days=31)

    def due(day: int) -> set[ClockEvent]:
        return {d.event for d in due_events("expired", expiry, "hosting", "x.si", ISERVER,
                                            expiry + timedelta(days=day))}

    assert ClockEvent.DELETE_DATA not in due(30)  # 30 days late is not "more than 30"
    assert ClockEvent.DELETE_DATA in due(31)
