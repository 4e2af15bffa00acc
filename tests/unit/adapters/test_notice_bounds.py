"""Every payment notice is bounded where it is built: amounts in a sane range with at
most the currency's decimals, identifiers that fit their columns, and free text cut to
its column. A value the matcher or the database would choke on never gets stored."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from provisioner.adapters.payments import PaymentNotice, decimal_amount
from provisioner.adapters.payments.camt053 import parse_camt053
from provisioner.adapters.payments.stripe import minor_to_major, parse_stripe
from provisioner.errors import InvalidInput
from tests.payloads import camt053_statement, stripe_event


def _notice(**over: object) -> PaymentNotice:
    values: dict[str, object] = dict(
        provider="stripe", event_id="evt_1", kind="payment", txn_id="pi_1", amount=Decimal("12.34"),
        currency="EUR", proforma="PR-1", reference=None, payer="Ana Novak",
        occurred_at=datetime.now(UTC), raw=b"{}")
    values.update(over)
    return PaymentNotice(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["1E+30", "1000000.01", "99999999999999999999999999999999",
                                   "12.345", "1E-30", "0.001", "1" * 40])
def test_amounts_out_of_range_or_with_too_many_decimals_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="amount"):
        decimal_amount(value)


@pytest.mark.parametrize(("value", "expected"), [("1000000.00", "1000000.00"), ("12.340", "12.34"),
                                                 ("0", "0.00"), ("7", "7.00")])
def test_amounts_in_range_are_kept_to_the_cent(value: str, expected: str) -> None:
    amount = decimal_amount(value)
    assert amount == Decimal(expected) and str(amount) == expected


def test_a_huge_stripe_amount_is_refused() -> None:
    with pytest.raises(InvalidInput, match="amount"):
        minor_to_major(10**32, "EUR")
    with pytest.raises(InvalidInput, match="amount"):
        parse_stripe(stripe_event("evt_huge", "PR-1", 10**32))


def test_a_three_decimal_currency_keeps_its_decimals() -> None:
    assert minor_to_major(1235, "KWD") == Decimal("1.235")


def test_a_huge_bank_amount_is_refused() -> None:
    with pytest.raises(InvalidInput, match="1E[+]30 is more than the largest payment"):
        parse_camt053(camt053_statement([{"amount": "1E+30", "acct_svcr_ref": "R1"}]))


@pytest.mark.parametrize(("field", "value"), [
    ("event_id", "e" * 201), ("txn_id", "t" * 201), ("reverses_txn", "r" * 201), ("provider", "p" * 17),
    ("event_id", ""), ("amount", Decimal("1E+30")), ("amount", Decimal("-1")), ("amount", Decimal("NaN")),
    ("amount", Decimal("1.0001")),
])
def test_a_notice_whose_ids_or_amount_do_not_fit_is_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidInput):
        _notice(**{field: value})


def test_free_text_is_cut_to_its_column() -> None:
    notice = _notice(payer="P" * 300, reference="R" * 100)
    assert notice.payer == "P" * 200
    assert notice.reference == "R" * 60
