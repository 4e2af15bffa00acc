"""camt.053 bank statement parsing."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from lxml import etree

from provisioner.adapters.payments.camt053 import parse_camt053
from provisioner.errors import InvalidInput
from tests.payloads import camt053_document, camt053_statement

IBAN = "SI56191000000123438"
RF = "RF18539007547034"
VERSIONS = pytest.mark.parametrize("version", ["02", "08"])


def _credit(**kw: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "amount": "12.34",
        "acct_svcr_ref": "2026112100001",
        "end_to_end_id": "E2E-1",
        "reference": "SI12 2026-0001",
        "debtor_name": "Ana Novak",
    }
    entry.update(kw)
    return entry


@VERSIONS
def test_credit_entry_is_a_payment(version: str) -> None:
    (notice,) = parse_camt053(camt053_statement([_credit()], version=version))
    assert notice.provider == "bank"
    assert notice.kind == "payment"
    assert notice.event_id == f"{IBAN}:2026112100001"
    assert notice.txn_id == "2026112100001"
    assert notice.amount == Decimal("12.34")
    assert notice.currency == "EUR"
    assert notice.reference == "SI12 2026-0001"
    assert notice.payer == "Ana Novak"
    assert notice.proforma is None
    assert notice.occurred_at == datetime(2026, 11, 21, tzinfo=UTC)
    assert notice.reverses_txn is None


@VERSIONS
def test_raw_is_the_entrys_xml(version: str) -> None:
    doc = camt053_statement([_credit(), _credit(acct_svcr_ref="X2")], version=version)
    first, second = parse_camt053(doc)
    el = etree.fromstring(first.raw)
    assert etree.QName(el).localname == "Ntry"
    assert b"2026112100001" in first.raw and b"X2" not in first.raw
    assert b"X2" in second.raw


@VERSIONS
def test_several_entries_and_statements(version: str) -> None:
    doc = camt053_document(
        [
            (IBAN, [_credit(), _credit(acct_svcr_ref="R2", amount="5.00", reference=RF)]),
            ("SI56020170014356205", [_credit(acct_svcr_ref="R3", amount="7.00")]),
        ],
        version=version,
    )
    notices = parse_camt053(doc)
    assert [n.event_id for n in notices] == [
        f"{IBAN}:2026112100001",
        f"{IBAN}:R2",
        "SI56020170014356205:R3",
    ]
    assert [n.amount for n in notices] == [Decimal("12.34"), Decimal("5.00"), Decimal("7.00")]
    assert notices[1].reference == "RF18539007547034"


@VERSIONS
def test_returned_credit_is_a_reversal(version: str) -> None:
    entries = [_credit(), _credit(credit=False, reversal=True, acct_svcr_ref="2026112200007")]
    payment, reversal = parse_camt053(camt053_statement(entries, version=version))
    assert payment.kind == "payment"
    assert reversal.kind == "reversal"
    assert reversal.event_id == f"{IBAN}:2026112200007"
    assert reversal.reverses_txn == "E2E-1"  # the original's end-to-end id
    assert reversal.amount == Decimal("12.34")


def test_reversal_without_end_to_end_id_falls_back_to_the_reference() -> None:
    entry = _credit(credit=False, reversal=True, end_to_end_id="NOTPROVIDED")
    (reversal,) = parse_camt053(camt053_statement([entry]))
    assert reversal.reverses_txn == "SI12 2026-0001"


@pytest.mark.parametrize(
    ("credit", "reversal"), [(True, True), (False, False)], ids=["reversed_debit", "debit"]
)
def test_debits_and_reversed_debits_are_ignored(credit: bool, reversal: bool) -> None:
    (notice,) = parse_camt053(camt053_statement([_credit(credit=credit, reversal=reversal)]))
    assert notice.kind == "ignored"


@VERSIONS
def test_pending_entry_is_ignored_and_does_not_block_the_booked_one(version: str) -> None:
    pending, booked = parse_camt053(
        camt053_statement([_credit(status="PDNG"), _credit()], version=version)
    )
    assert pending.kind == "ignored"
    assert booked.kind == "payment"
    assert pending.event_id != booked.event_id


@VERSIONS
def test_batch_entry_gives_one_notice_per_transaction(version: str) -> None:
    entry = {
        "amount": "30.00",
        "acct_svcr_ref": "B1",
        "batch": [
            {
                "amount": "10.00",
                "reference": "SI12 2026-0003",
                "acct_svcr_ref": "B1-1",
                "debtor_name": "Ana",
            },
            {"amount": "20.00", "ustrd": "placilo SI00 2026-0004 hvala", "debtor_name": "Bor"},
        ],
    }
    first, second = parse_camt053(camt053_statement([entry], version=version))
    assert (first.event_id, first.amount, first.reference, first.payer) == (
        f"{IBAN}:B1-1",
        Decimal("10.00"),
        "SI12 2026-0003",
        "Ana",
    )
    assert (second.event_id, second.amount, second.reference, second.payer) == (
        f"{IBAN}:B1#1",
        Decimal("20.00"),
        "SI00 2026-0004",
        "Bor",
    )
    assert first.kind == second.kind == "payment"
    assert first.raw == second.raw


def test_booked_amount_wins_over_the_instructed_one() -> None:
    entry = _credit(amount="12.34", instructed_amount=("15.00", "USD"))
    (notice,) = parse_camt053(camt053_statement([entry]))
    assert (notice.amount, notice.currency) == (Decimal("12.34"), "EUR")


@VERSIONS
def test_non_eur_currency_is_parsed(version: str) -> None:
    (notice,) = parse_camt053(camt053_statement([_credit(currency="CHF")], version=version))
    assert (notice.amount, notice.currency) == (Decimal("12.34"), "CHF")


def test_entry_without_any_reference_gets_a_stable_hash_id() -> None:
    entry = {"amount": "1.00", "details": False}
    doc = camt053_statement([entry, dict(entry, amount="2.00")])
    a1, b1 = parse_camt053(doc)
    a2, _ = parse_camt053(doc)
    assert a1.event_id.startswith(f"{IBAN}:sha256:")
    assert a1.event_id == a2.event_id
    assert a1.event_id != b1.event_id
    assert a1.txn_id is None


def test_end_to_end_id_is_the_id_when_the_bank_gives_no_reference() -> None:
    (notice,) = parse_camt053(camt053_statement([_credit(acct_svcr_ref=None)]))
    assert notice.event_id == f"{IBAN}:e2e:E2E-1"


def test_booking_date_time_is_utc() -> None:
    entry = _credit(booking_date="2026-11-21T13:45:00+01:00")
    (notice,) = parse_camt053(camt053_statement([entry]))
    assert notice.occurred_at == datetime(2026, 11, 21, 12, 45, tzinfo=UTC)


# ------------------------------------------------------------------- refusals


def test_over_size_input_is_refused() -> None:
    doc = camt053_statement([_credit()])
    with pytest.raises(InvalidInput, match="larger"):
        parse_camt053(doc, max_bytes=len(doc) - 1)
    assert parse_camt053(doc, max_bytes=len(doc))


def test_default_limit_is_20_mib() -> None:
    with pytest.raises(InvalidInput, match="larger"):
        parse_camt053(b" " * (20 * 1024 * 1024 + 1))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml",
        b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:camt.053.001.02'>",
        b"\xff\xfe<",
    ],
)
def test_malformed_xml_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_camt053(data)


@pytest.mark.parametrize(
    "data",
    [
        b"<Document/>",
        b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:camt.054.001.02'/>",
        b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:pain.001.001.03'/>",
        b"<Doc xmlns='urn:iso:std:iso:20022:tech:xsd:camt.053.001.02'/>",
        b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:camt.053.001.02'/>",  # no Stmt
    ],
)
def test_non_camt053_documents_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_camt053(data)


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE Document [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt>
<GrpHdr><MsgId>&g;</MsgId></GrpHdr></BkToCstmrStmt></Document>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Document [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02">&x;</Document>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Document SYSTEM "http://127.0.0.1:9/camt.dtd">
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"/>
"""


@pytest.mark.parametrize("data", [BOMB, XXE, EXTERNAL_DTD], ids=["bomb", "xxe", "external_dtd"])
def test_doctype_is_refused_quickly(data: bytes) -> None:
    start = time.monotonic()
    with pytest.raises(InvalidInput, match="DOCTYPE"):
        parse_camt053(data)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'<Amt Ccy="EUR">12.34</Amt>', b'<Amt Ccy="EUR">12,34</Amt>'),
        (b'<Amt Ccy="EUR">12.34</Amt>', b"<Amt>12.34</Amt>"),
        (b"<CdtDbtInd>CRDT</CdtDbtInd><Sts>", b"<CdtDbtInd>MAYBE</CdtDbtInd><Sts>"),
        (b"<IBAN>SI56191000000123438</IBAN>", b""),
    ],
    ids=["amount", "currency", "indicator", "account"],
)
def test_broken_entries_are_invalid_input(old: bytes, new: bytes) -> None:
    doc = camt053_statement([_credit(details=False)])
    assert old in doc
    with pytest.raises(InvalidInput):
        parse_camt053(doc.replace(old, new, 1))


# ------------------------------------------------------------------- whose account


@pytest.mark.parametrize("ours", [IBAN, "si56 1910 0000 0123 438", " SI56191000000123438 "])
def test_a_statement_of_our_account_is_read(ours: str) -> None:
    (notice,) = parse_camt053(camt053_statement([_credit()]), account_iban=ours)
    assert notice.kind == "payment"


def test_a_statement_of_another_account_is_refused() -> None:
    with pytest.raises(InvalidInput, match="SI56020170014356205.*not our account"):
        parse_camt053(camt053_statement([_credit()], iban="SI56020170014356205"), account_iban=IBAN)


def test_a_document_with_one_statement_of_another_account_is_refused_whole() -> None:
    doc = camt053_document([(IBAN, [_credit()]), ("SI56020170014356205", [_credit(acct_svcr_ref="R3")])])
    with pytest.raises(InvalidInput, match="not our account"):
        parse_camt053(doc, account_iban=IBAN)
