from decimal import Decimal as D

import pytest

from provisioner.domain.money import (
    CENT,
    VAT_RATE,
    add_vat,
    cents,
    format_eur,
    parse_amount,
    split_gross,
)
from provisioner.errors import InvalidInput


def test_constants() -> None:
    assert VAT_RATE == D("0.22")
    assert CENT == D("0.01")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (D("1.005"), D("1.01")),
        (D("1.004"), D("1.00")),
        (D("2.675"), D("2.68")),
        (D("-1.005"), D("-1.01")),
        (D("10"), D("10.00")),
    ],
)
def test_cents_rounds_half_up(value: D, expected: D) -> None:
    assert cents(value) == expected
    assert cents(value).as_tuple().exponent == -2


@pytest.mark.parametrize(
    ("gross", "net", "vat"),
    [
        (D("100.00"), D("81.97"), D("18.03")),
        (D("122.00"), D("100.00"), D("22.00")),
        (D("59.90"), D("49.10"), D("10.80")),
        (D("29.90"), D("24.51"), D("5.39")),
        (D("0.01"), D("0.01"), D("0.00")),
        (D("0.00"), D("0.00"), D("0.00")),
        (D("4.90"), D("4.02"), D("0.88")),
    ],
)
def test_split_gross_exact_to_the_cent(gross: D, net: D, vat: D) -> None:
    assert split_gross(gross) == (net, vat)
    assert net + vat == gross


@pytest.mark.parametrize("gross", [D(f"{n}.{c:02d}") for n in (0, 1, 9, 99) for c in range(100)])
def test_split_gross_always_adds_up(gross: D) -> None:
    net, vat = split_gross(gross)
    assert net + vat == gross
    assert vat == cents(gross * VAT_RATE / (1 + VAT_RATE))


def test_split_gross_other_rate() -> None:
    assert split_gross(D("109.50"), D("0.095")) == (D("100.00"), D("9.50"))


def test_add_vat_paper_invoice_fee() -> None:
    assert add_vat(D("5.00")) == D("6.10")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.34", D("12.34")),
        ("12,34", D("12.34")),
        ("12", D("12.00")),
        (" 12.3 ", D("12.30")),
        ("0", D("0.00")),
        ("1000000", D("1000000.00")),
        (12, D("12.00")),
        (D("12.340"), D("12.34")),
        (D("7"), D("7.00")),
    ],
)
def test_parse_amount_accepts(text: str | D | int, expected: D) -> None:
    assert parse_amount(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-1", "not an amount"),
        (-1, "negative"),
        (D("-0.01"), "negative"),
        ("NaN", "not an amount"),
        (D("NaN"), "finite"),
        (D("Infinity"), "finite"),
        ("inf", "not an amount"),
        ("12.345", "not an amount"),
        (D("12.345"), "more than 2 decimals"),
        ("1000000.01", "implausibly large"),
        ("99999999", "not an amount"),
        (10**9, "implausibly large"),
        ("1.234,56", "not an amount"),
        ("12 EUR", "not an amount"),
        ("", "not an amount"),
        ("1e3", "not an amount"),
        ("+5", "not an amount"),
        ("٣", "not an amount"),
        (True, "boolean"),
        (1.5, "text or a number"),
    ],
)
def test_parse_amount_refuses(text: object, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_amount(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "lang", "expected"),
    [
        (D("12.34"), "sl", "12,34 EUR"),
        (D("12.34"), "en", "EUR 12.34"),
        (D("1234.5"), "sl", "1.234,50 EUR"),
        (D("1234.5"), "en", "EUR 1,234.50"),
        (D("0"), "sl", "0,00 EUR"),
        (D("-3.1"), "sl", "-3,10 EUR"),
    ],
)
def test_format_eur(value: D, lang: str, expected: str) -> None:
    assert format_eur(value, lang=lang) == expected


def test_format_eur_unknown_language() -> None:
    with pytest.raises(InvalidInput, match="language"):
        format_eur(D("1"), lang="de")
