from collections.abc import Sequence
from datetime import date
from decimal import Decimal as D

import pytest

from provisioner.domain.billing import (
    DiscountCode,
    PromoHistory,
    Quote,
    check_discount_codes,
    due_date,
    invoice_number,
    paper_invoice_fee_gross,
    price_order,
    proforma_number,
)
from provisioner.domain.catalog import DEFAULT_CATALOG, OrderItem, parse_item
from provisioner.domain.policy import FCB, ISERVER, BrandPolicy
from provisioner.errors import InvalidInput

TODAY = date(2026, 3, 10)


def quote(
    specs: Sequence[str],
    *,
    policy: BrandPolicy = FCB,
    discount: DiscountCode | None = None,
    renewal: bool = False,
    history: PromoHistory = PromoHistory(),
    today: date = TODAY,
) -> Quote:
    return price_order(
        [parse_item(s) for s in specs],
        catalog=DEFAULT_CATALOG,
        policy=policy,
        today=today,
        discount=discount,
        renewal=renewal,
        promo_history=history,
    )


def assert_consistent(q: Quote) -> None:
    for n, line in enumerate(q.lines, start=1):
        assert line.position == n
        assert line.net + line.vat == line.gross
        assert line.gross == line.unit_gross - line.discount_gross
        assert line.gross >= 0 and line.net >= 0 and line.vat >= 0
        for amount in (line.gross, line.net, line.vat, line.unit_gross, line.discount_gross):
            assert amount.as_tuple().exponent == -2
    assert q.gross == sum(line.gross for line in q.lines)
    assert q.net == sum(line.net for line in q.lines)
    assert q.vat == sum(line.vat for line in q.lines)
    assert q.net + q.vat == q.gross


@pytest.mark.parametrize(
    ("spec", "unit"),
    [
        ("hosting:mega:example.si", "29.90"),
        ("hosting:giga5:example.si", "59.90"),
        ("hosting:giga5:example.si:24m", "119.80"),
        ("hosting:giga5:example.si:6m", "29.95"),
        ("hosting:giga10:example.si:1m", "7.49"),  # 89.90 / 12 = 7.4917
        ("vps:vps-s:h.example.si:1m", "9.90"),
        ("vps:vps-m:h.example.si:3m", "59.70"),
        ("domain:example.si:1y:transfer", "9.90"),
        ("domain:example.si:3y:transfer", "49.70"),  # transfer + 2 renewal years
        ("domain:example.si:2y:renew", "39.80"),
        ("domain:example.com:1y", "14.90"),  # no promo price for .com
        ("tls:example.si", "19.90"),
        ("tls:dv-wildcard:example.si:2y", "159.80"),
    ],
)
def test_prices_scale_by_period(spec: str, unit: str) -> None:
    q = quote([spec])
    (line,) = q.lines
    assert line.unit_gross == D(unit)
    assert line.gross == D(unit)
    assert_consistent(q)


def test_exact_vat_per_line_and_totals() -> None:
    q = quote(["hosting:giga5:example.si", "domain:example.si:1y", "tls:example.si"])
    assert [(ln.gross, ln.net, ln.vat) for ln in q.lines] == [
        (D("59.90"), D("49.10"), D("10.80")),
        (D("4.90"), D("4.02"), D("0.88")),
        (D("19.90"), D("16.31"), D("3.59")),
    ]
    assert (q.gross, q.net, q.vat) == (D("84.70"), D("69.43"), D("15.27"))
    assert q.due_date == date(2026, 3, 18)
    assert q.discount_code is None
    assert_consistent(q)


def test_total_vat_is_sum_of_line_vats_not_vat_of_total() -> None:
    # One month of Mega is 2.49 gross; its VAT 2.49 * 22/122 = 0.4490 rounds to 0.45.
    # Six such lines: 6 * 0.45 = 2.70, while the VAT of the 14.94 total would be 2.69.
    q = quote([f"hosting:mega:site{n}.si:1m" for n in range(6)])
    assert all((line.gross, line.vat) == (D("2.49"), D("0.45")) for line in q.lines)
    assert q.gross == D("14.94")
    assert q.vat == D("2.70")
    assert q.net == D("12.24")
    assert_consistent(q)


# -- first-year promo -----------------------------------------------------------------


def test_tld_first_year_promo_on_new_registration() -> None:
    q = quote(["domain:example.si:2y"])
    (line,) = q.lines
    assert line.unit_gross == D("24.80")  # 4.90 promo + 19.90 second year
    assert line.promo
    assert q.promo_domains == frozenset({"example.si"})


def test_tld_promo_once_per_domain_name() -> None:
    # 001 §2.6: once per domain name, "later the transfer price applies" (.si 9.90, not
    # the 19.90 registration price)
    history = PromoHistory(domains=frozenset({"example.si"}))
    q = quote(["domain:example.si:1y", "domain:other.si:1y"], history=history)
    assert [line.unit_gross for line in q.lines] == [D("9.90"), D("4.90")]
    assert [line.promo for line in q.lines] == [False, True]
    assert "transfer price" in q.lines[0].description


def test_tld_promo_used_before_prices_later_years_as_renewals() -> None:
    history = PromoHistory(domains=frozenset({"example.si"}))
    (line,) = quote(["domain:example.si:3y"], history=history).lines
    assert line.unit_gross == D("49.70")  # 9.90 transfer price + 2 x 19.90
    assert not line.promo


def test_tld_without_promo_keeps_its_registration_price() -> None:
    history = PromoHistory(domains=frozenset({"example.com"}))
    (line,) = quote(["domain:example.com:1y"], history=history).lines
    assert line.unit_gross == D("14.90")


def test_tld_promo_history_matches_normalized_names() -> None:
    history = PromoHistory(domains=frozenset({"xn--aba-b3a.si"}))
    q = quote(["domain:ŽABA.si:1y"], history=history)
    assert q.lines[0].unit_gross == D("9.90")


@pytest.mark.parametrize("spec", ["domain:example.si:1y:transfer", "domain:example.si:1y:renew"])
def test_tld_promo_not_for_transfers_and_renewals(spec: str) -> None:
    (line,) = quote([spec]).lines
    assert not line.promo
    assert line.unit_gross in (D("9.90"), D("19.90"))


def test_no_tld_promo_on_renewal_quote() -> None:
    (line,) = quote(["domain:example.si:1y"], renewal=True).lines
    assert line.unit_gross == D("19.90")
    assert not line.promo


# -- discount codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([], None), (["spring"], "SPRING"), (["SPRING", " spring "], "SPRING"), (["", " "], None)],
)
def test_check_discount_codes(codes: list[str], expected: str | None) -> None:
    assert check_discount_codes(codes) == expected


@pytest.mark.parametrize(
    ("codes", "reason"),
    [(["A", "B"], "only one discount code per order"), (["a;b"], "not valid")],
)
def test_check_discount_codes_refuses(codes: list[str], reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        check_discount_codes(codes)


def test_percent_code() -> None:
    code = DiscountCode("spring10", percent=D("10"))
    q = quote(["hosting:giga5:example.si", "tls:example.si"], discount=code)
    assert [line.discount_gross for line in q.lines] == [D("5.99"), D("1.99")]
    assert [line.gross for line in q.lines] == [D("53.91"), D("17.91")]
    assert q.discount_code == "SPRING10"
    assert q.discount_gross == D("7.98")
    assert_consistent(q)


def test_code_limited_to_kinds() -> None:
    code = DiscountCode("HOST20", percent=D("20"), kinds=frozenset({"hosting"}))
    q = quote(["hosting:mega:example.si", "domain:example.si:1y:transfer"], discount=code)
    assert [line.discount_gross for line in q.lines] == [D("5.98"), D("0.00")]


def test_code_for_other_kinds_is_refused() -> None:
    code = DiscountCode("VPS", percent=D("20"), kinds=frozenset({"vps"}))
    with pytest.raises(InvalidInput, match="applies only to vps"):
        quote(["hosting:mega:example.si"], discount=code)


def test_amount_code_never_makes_a_line_negative() -> None:
    code = DiscountCode("BIG", amount=D("50.00"))
    q = quote(["tls:example.si", "hosting:mega:example.si"], discount=code)
    assert [line.gross for line in q.lines] == [D("0.00"), D("0.00")]
    assert [line.discount_gross for line in q.lines] == [D("19.90"), D("29.90")]
    assert q.gross == D("0.00")
    assert_consistent(q)


def test_amount_code_spreads_over_lines() -> None:
    code = DiscountCode("TWENTY", amount=D("20.00"))
    q = quote(["tls:example.si", "hosting:mega:example.si"], discount=code)
    assert [line.discount_gross for line in q.lines] == [D("19.90"), D("0.10")]
    assert q.gross == D("29.80")


def test_code_refused_on_renewals() -> None:
    code = DiscountCode("SPRING", percent=D("10"))
    with pytest.raises(InvalidInput, match="not valid for renewals"):
        quote(["hosting:giga5:example.si:12m:renew"], discount=code, renewal=True)


def test_code_refused_when_every_item_is_a_renewal() -> None:
    code = DiscountCode("SPRING", percent=D("10"))
    with pytest.raises(InvalidInput, match="not valid for renewals"):
        quote(["hosting:giga5:example.si:12m:renew"], discount=code)


def test_code_skips_renewal_lines_in_mixed_order() -> None:
    code = DiscountCode("SPRING", percent=D("10"))
    q = quote(["hosting:giga5:example.si:12m:renew", "tls:example.si"], discount=code)
    assert [line.discount_gross for line in q.lines] == [D("0.00"), D("1.99")]


def test_code_valid_on_renewals_when_stated() -> None:
    code = DiscountCode("LOYAL", percent=D("10"), valid_on_renewals=True)
    q = quote(["hosting:giga5:example.si:12m:renew"], discount=code, renewal=True)
    assert q.lines[0].discount_gross == D("5.99")


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "ok", "reason"),
    [
        (date(2026, 3, 10), date(2026, 3, 10), True, ""),
        (date(2026, 1, 1), None, True, ""),
        (None, date(2026, 3, 10), True, ""),
        (date(2026, 3, 11), None, False, "valid only from 2026-03-11"),
        (None, date(2026, 3, 9), False, "expired on 2026-03-09"),
    ],
)
def test_code_date_validity(
    valid_from: date | None, valid_until: date | None, ok: bool, reason: str
) -> None:
    code = DiscountCode("X", percent=D("10"), valid_from=valid_from, valid_until=valid_until)
    if ok:
        assert quote(["tls:example.si"], discount=code).discount_code == "X"
    else:
        with pytest.raises(InvalidInput, match=reason):
            quote(["tls:example.si"], discount=code)


def test_first_year_promo_code_once_per_service() -> None:
    code = DiscountCode("WELCOME", percent=D("50"), first_year_promo=True)
    history = PromoHistory(services=frozenset({"hosting:old.si"}))
    q = quote(["hosting:mega:old.si", "hosting:mega:new.si"], discount=code, history=history)
    assert [line.discount_gross for line in q.lines] == [D("0.00"), D("14.95")]
    assert [line.promo for line in q.lines] == [False, True]
    assert q.promo_services == frozenset({"hosting:new.si"})


@pytest.mark.parametrize(
    "key", ["hosting:old.si", "hosting:mega:old.si", "hosting:giga15:old.si"]
)
def test_promo_history_knows_both_service_key_forms(key: str) -> None:
    history = PromoHistory(services=frozenset({key}))
    assert history.had_service_promo(parse_item("hosting:mega:old.si"))
    assert not history.had_service_promo(parse_item("hosting:mega:new.si"))
    assert not history.had_service_promo(parse_item("tls:old.si"))


def test_first_year_promo_code_already_used_everywhere() -> None:
    code = DiscountCode("WELCOME", percent=D("50"), first_year_promo=True)
    history = PromoHistory(services=frozenset({"hosting:old.si"}))
    with pytest.raises(InvalidInput, match="first-year promotion, already used"):
        quote(["hosting:mega:old.si"], discount=code, history=history)


def test_first_year_promo_code_only_on_first_year() -> None:
    code = DiscountCode("WELCOME", percent=D("50"), first_year_promo=True)
    (line,) = quote(["hosting:mega:new.si:24m"], discount=code).lines
    assert line.unit_gross == D("59.80")
    assert line.discount_gross == D("14.95")


def test_first_year_promo_code_not_on_top_of_tld_promo() -> None:
    code = DiscountCode("WELCOME", percent=D("50"), first_year_promo=True)
    q = quote(["domain:example.si:1y", "tls:example.si"], discount=code)
    assert [line.discount_gross for line in q.lines] == [D("0.00"), D("9.95")]


def test_first_year_promo_code_not_for_a_domain_that_had_its_promo() -> None:
    code = DiscountCode("WELCOME", percent=D("50"), first_year_promo=True)
    history = PromoHistory(domains=frozenset({"example.si"}))
    q = quote(["domain:example.si:1y", "tls:x.si"], discount=code, history=history)
    assert [line.discount_gross for line in q.lines] == [D("0.00"), D("9.95")]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "exactly one of percent and amount"),
        ({"percent": D("10"), "amount": D("1")}, "exactly one"),
        ({"percent": D("0")}, "percent"),
        ({"percent": D("101")}, "percent"),
        ({"percent": D("NaN")}, "percent"),
        ({"amount": D("-1")}, "amount must be positive"),
        ({"percent": D("5"), "kinds": frozenset({"mail"})}, "kinds"),
        ({"percent": D("5"), "kinds": frozenset()}, "kinds"),
        (
            {"percent": D("5"), "valid_from": date(2026, 2, 1), "valid_until": date(2026, 1, 1)},
            "valid_from is after",
        ),
    ],
)
def test_discount_code_validates(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        DiscountCode("X", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["", "has space", "x" * 33, "semi;colon"])
def test_discount_code_text(code: str) -> None:
    with pytest.raises(InvalidInput, match="not valid"):
        DiscountCode(code, percent=D("5"))


# -- prepay discount (policy) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "policy", "discount"),
    [
        ("hosting:giga5:example.si:24m", ISERVER, "11.98"),
        ("hosting:giga5:example.si:6m", ISERVER, "3.00"),  # 29.95 * 10 % = 2.995
        ("hosting:giga5:example.si:3m", ISERVER, "0.00"),  # not more than 3 months
        ("vps:vps-s:h.example.si:6m", ISERVER, "5.94"),
        ("vps:vps-s:h.example.si:1m", ISERVER, "0.00"),
        ("domain:example.si:5y", ISERVER, "0.00"),
        ("hosting:giga5:example.si:24m", FCB, "0.00"),  # FCB has no prepay discount
    ],
)
def test_prepay_discount(spec: str, policy: BrandPolicy, discount: str) -> None:
    q = quote([spec], policy=policy)
    assert q.lines[0].discount_gross == D(discount)
    assert_consistent(q)


def test_code_applies_after_prepay_discount() -> None:
    code = DiscountCode("TEN", percent=D("10"))
    (line,) = quote(["hosting:giga5:example.si:24m"], policy=ISERVER, discount=code).lines
    # 119.80 - 11.98 prepay = 107.82; 10 % of that = 10.78
    assert line.discount_gross == D("22.76")
    assert line.gross == D("97.04")


# -- refusals and numbering ---------------------------------------------------------------


def test_empty_order_refused() -> None:
    with pytest.raises(InvalidInput, match="at least one item"):
        quote([])


def test_duplicate_service_refused() -> None:
    with pytest.raises(InvalidInput, match="appears twice"):
        quote(["hosting:mega:example.si", "hosting:giga5:Example.SI"])


def test_unknown_period_refused_for_hand_made_item() -> None:
    item = OrderItem("domain", "at", "example.at", 24, "register")
    with pytest.raises(InvalidInput, match="period 2y is not allowed for .at"):
        price_order([item], catalog=DEFAULT_CATALOG, policy=FCB, today=TODAY)


@pytest.mark.parametrize(
    ("year", "seq", "proforma", "invoice"),
    [
        (2026, 123, "PR-2026-000123", "2026-000123"),
        (2026, 1, "PR-2026-000001", "2026-000001"),
        (2027, 1234567, "PR-2027-1234567", "2027-1234567"),
    ],
)
def test_numbers(year: int, seq: int, proforma: str, invoice: str) -> None:
    assert proforma_number(year, seq) == proforma
    assert invoice_number(year, seq) == invoice


@pytest.mark.parametrize(("year", "seq"), [(26, 1), (2026, 0), (2026, -5), (2026, True)])
def test_numbers_refuse(year: int, seq: int) -> None:
    with pytest.raises(InvalidInput):
        proforma_number(year, seq)
    with pytest.raises(InvalidInput):
        invoice_number(year, seq)


def test_due_date_per_policy() -> None:
    assert due_date(date(2026, 12, 28), FCB) == date(2027, 1, 5)


def test_paper_invoice_fee() -> None:
    assert paper_invoice_fee_gross(FCB) == D("6.10")
