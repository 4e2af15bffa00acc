"""Pricing an order into a proforma quote (RULES "Orders, proformas, payment, invoices").

Every price is gross (VAT included). Each line is rounded to the cent and split into net
and VAT on its own (``split_gross``), so for every line ``net + vat == gross``; the quote's
totals are the plain sums of the lines' ``gross``, ``net`` and ``vat``. Hence the total VAT
equals the sum of the line VATs (it may differ by a cent or two from the VAT computed on
the total gross, which is what the invoice shows line by line anyway).

Discount rules (RULES, seed 001 §2.6, 002 §11):

* one discount code per order (``check_discount_codes``);
* codes are not valid for renewals unless ``valid_on_renewals``;
* a code is valid only between ``valid_from`` and ``valid_until`` (both inclusive);
* a TLD's first-year promo price applies to a new registration once per domain name
  (``PromoHistory.domains``); a later registration of that name pays the transfer price
  (001 §2.6: "later the transfer price applies"), not the registration price;
* a first-year promo code applies once per service (``OrderItem.service_key`` in
  ``PromoHistory.services``), only to the first year's part of a line, and never on top
  of a TLD promo price;
* the brand's prepay discount applies to hosting / VPS periods of more than 3 months;
  a code's discount is computed on the price after the prepay discount;
* no line is ever negative;
* a paper invoice (``paper_invoice=True``, RULES "Paper copy of an invoice") is one more
  line of the brand's fee plus VAT, with no order item and no discount.

Numbers and issuer (RULES: each brand invoices its own customers): proformas and invoices
are numbered per brand and year (`proforma_number`, `invoice_number`: the brand's prefix,
none for FCB), the payment reference carries the brand's reference prefix
(`payment_reference`), and `issuer` is what a document stores of the issuing company.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from provisioner.domain.catalog import KINDS, Catalog, OrderItem
from provisioner.domain.money import add_vat, cents, split_gross
from provisioner.domain.policy import DEFAULT_BRAND, BrandPolicy
from provisioner.domain.references import make_si12
from provisioner.errors import InvalidInput

ZERO = Decimal("0.00")
_CODE_RE = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,31}")


def normalize_discount_code(code: str) -> str:
    """Upper-case, stripped; 1..32 of ``A-Z 0-9 _ -``."""
    if not isinstance(code, str):
        raise InvalidInput(f"discount code must be text, not {type(code).__name__}")
    text = code.strip().upper()
    if not _CODE_RE.fullmatch(text):
        raise InvalidInput(
            f"discount code {code!r} is not valid (1-32 letters, digits, '_' or '-')"
        )
    return text


@dataclass(frozen=True)
class DiscountCode:
    """A discount code: either ``percent`` (0 < p <= 100) or ``amount`` (gross EUR)."""

    code: str
    percent: Decimal | None = None
    amount: Decimal | None = None
    kinds: frozenset[str] = frozenset({"hosting", "vps", "domain", "tls"})
    valid_on_renewals: bool = False
    first_year_promo: bool = False
    valid_from: date | None = None
    valid_until: date | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", normalize_discount_code(self.code))
        if (self.percent is None) == (self.amount is None):
            raise InvalidInput(
                f"discount code {self.code}: give exactly one of percent and amount"
            )
        if self.percent is not None and not (
            self.percent.is_finite() and Decimal(0) < self.percent <= Decimal(100)
        ):
            raise InvalidInput(f"discount code {self.code}: percent must be in (0, 100]")
        if self.amount is not None:
            if not (self.amount.is_finite() and self.amount > 0):
                raise InvalidInput(f"discount code {self.code}: amount must be positive")
            object.__setattr__(self, "amount", cents(self.amount))
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise InvalidInput(
                f"discount code {self.code}: kinds must be some of {', '.join(KINDS)}"
            )
        if self.valid_from and self.valid_until and self.valid_from > self.valid_until:
            raise InvalidInput(f"discount code {self.code}: valid_from is after valid_until")

    def check_valid_on(self, today: date) -> None:
        """InvalidInput unless the code is valid on ``today`` (bounds inclusive)."""
        if self.valid_from is not None and today < self.valid_from:
            raise InvalidInput(
                f"discount code {self.code} is valid only from {self.valid_from.isoformat()}"
            )
        if self.valid_until is not None and today > self.valid_until:
            raise InvalidInput(
                f"discount code {self.code} expired on {self.valid_until.isoformat()}"
            )


@dataclass(frozen=True)
class PromoHistory:
    """What already had a first-year promo: service keys and domain names.

    A service key is ``OrderItem.service_key`` (``"hosting:example.si"``); the longer
    ``"kind:product:name"`` form (``"hosting:giga5:example.si"``) is recognised too, so a
    plan change does not earn a second promo either way.
    """

    services: frozenset[str] = field(default_factory=frozenset)
    domains: frozenset[str] = field(default_factory=frozenset)

    def had_service_promo(self, item: OrderItem) -> bool:
        if item.service_key in self.services:
            return True
        prefix, suffix = f"{item.kind}:", f":{item.name}"
        return any(
            key.startswith(prefix) and key.endswith(suffix) and key.count(":") == 2
            for key in self.services
        )

    def had_domain_promo(self, name: str) -> bool:
        return name in self.domains


PAPER_INVOICE_DESCRIPTION = "Paper invoice by post / Račun po pošti"


@dataclass(frozen=True)
class PriceLine:
    position: int  # 1-based
    item: OrderItem | None  # None: a fee of the order (the paper invoice), not a service
    description: str
    unit_gross: Decimal  # list price for the whole period, before discounts
    discount_gross: Decimal  # prepay discount + code discount
    gross: Decimal  # unit_gross - discount_gross, never negative
    net: Decimal
    vat: Decimal
    vat_rate: Decimal
    promo: bool  # a first-year promo (TLD price or promo code) was used on this line


@dataclass(frozen=True)
class Quote:
    """Totals are the sums of the lines; ``vat == sum(line.vat)``, ``net + vat == gross``."""

    lines: tuple[PriceLine, ...]
    gross: Decimal
    net: Decimal
    vat: Decimal
    due_date: date
    discount_code: str | None  # the code that was applied to at least one line

    @property
    def discount_gross(self) -> Decimal:
        return sum((line.discount_gross for line in self.lines), ZERO)

    @property
    def promo_services(self) -> frozenset[str]:
        """Service keys that used a first-year promo (to add to the PromoHistory once paid)."""
        return frozenset(line.item.service_key for line in self.lines
                         if line.promo and line.item is not None)

    @property
    def promo_domains(self) -> frozenset[str]:
        """Domain names that used a first-year promo (to add to the PromoHistory once paid)."""
        return frozenset(
            line.item.name for line in self.lines
            if line.promo and line.item is not None and line.item.kind == "domain"
        )

    @property
    def paper_invoice(self) -> bool:
        """The order asked for a paper invoice (its fee is a line)."""
        return any(line.item is None and line.description == PAPER_INVOICE_DESCRIPTION
                   for line in self.lines)


def check_discount_codes(codes: Sequence[str]) -> str | None:
    """The single code of an order (normalized), None for none; more than one -> InvalidInput."""
    cleaned = [normalize_discount_code(c) for c in codes if c and c.strip()]
    distinct = list(dict.fromkeys(cleaned))
    if len(distinct) > 1:
        raise InvalidInput(
            f"only one discount code per order ({len(distinct)} given: {', '.join(distinct)})"
        )
    return distinct[0] if distinct else None


def due_date(today: date, policy: BrandPolicy) -> date:
    """The proforma's due date: ``today + policy.proforma_due_days``."""
    return today + timedelta(days=policy.proforma_due_days)


def _prefix(brand: BrandPolicy | None) -> str:
    prefix = (brand or DEFAULT_BRAND).number_prefix
    return f"{prefix}-" if prefix else ""


def proforma_number(year: int, seq: int, brand: BrandPolicy | None = None) -> str:
    """``"PR-2026-000123"`` (FCB), ``"IS-PR-2026-000123"`` (iSERVER): the brand's sequence."""
    _check_year_seq(year, seq)
    return f"{_prefix(brand)}PR-{year}-{seq:06d}"


def invoice_number(year: int, seq: int, brand: BrandPolicy | None = None) -> str:
    """``"2026-000123"`` (FCB), ``"IS-2026-000123"`` (iSERVER): the brand's sequence."""
    _check_year_seq(year, seq)
    return f"{_prefix(brand)}{year}-{seq:06d}"


def payment_reference(year: int, seq: int, brand: BrandPolicy | None = None) -> str:
    """The SI12 reference of the brand's proforma ``seq`` of ``year``: FCB's
    ``"SI12 " + year + seq (6 digits) + K``; another brand's starts with its
    ``reference_prefix``, so two brands' references never collide."""
    _check_year_seq(year, seq)
    return make_si12(f"{(brand or DEFAULT_BRAND).reference_prefix}{year}{seq:06d}")


def issuer(brand: BrandPolicy) -> dict[str, str]:
    """What a proforma or invoice stores of its issuing company, at issue time (a later
    change of the brand's policy does not rewrite an issued document)."""
    return {
        "code": brand.code,
        "name": brand.name,
        "display_name": brand.display_name or brand.name,
        "address": brand.address,
        "vat_id": brand.vat_id,
        "iban": brand.iban,
        "bic": brand.bic,
        "recipient": brand.recipient,
        "website_url": brand.website_url,
        "support_email": brand.support_email,
        "support_phone": brand.support_phone,
    }


def _check_year_seq(year: int, seq: int) -> None:
    if isinstance(year, bool) or not isinstance(year, int) or not 2000 <= year <= 9999:
        raise InvalidInput(f"year must be a four-digit year, not {year!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= 999_999_999:
        raise InvalidInput(f"sequence number must be a positive integer, not {seq!r}")


def paper_invoice_fee_gross(policy: BrandPolicy) -> Decimal:
    """RULES "Paper copy of an invoice": the net fee plus VAT (5.00 -> 6.10 at 22 %)."""
    return add_vat(policy.paper_invoice_fee, policy.vat_rate)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _list_price(
    item: OrderItem, catalog: Catalog, promo_allowed: bool, had_promo: bool = False
) -> tuple[Decimal, bool, str]:
    """(gross list price for the whole period, TLD promo used, description).
    ``had_promo``: the domain name had its first-year promo before, so a registration
    pays the transfer price for its first year."""
    months = item.period_months
    if item.kind == "hosting":
        plan = catalog.hosting_plan(item.product)
        price = cents(plan.price_year * months / 12)
        verb = "renewal" if item.action == "renew" else "hosting"
        return price, False, f"{plan.name} {verb} {item.name}, {_plural(months, 'month')}"
    if item.kind == "vps":
        vps = catalog.vps_plan(item.product)
        verb = "renewal" if item.action == "renew" else "server"
        return (
            cents(vps.price_month * months),
            False,
            f"{vps.name} {verb} {item.name}, {_plural(months, 'month')}",
        )
    if item.kind == "backup":  # issue 17 item 9: per month, like hosting's year
        verb = "renewal" if item.action == "renew" else "service"
        return cents(catalog.backup.price_month * months), False, (
            f"{catalog.backup.name} {verb} {item.name}, {_plural(months, 'month')}")
    if item.kind == "migration":
        mig = catalog.migration
        return cents(mig.price), False, (
            f"{mig.name} of {item.name} (free with new hosting; "
            f"{mig.withdrawal_price:.2f} EUR if charged on withdrawal)")
    years = item.period_years
    if item.kind == "tls":
        tls = catalog.tls_product(item.product)
        verb = "renewal" if item.action == "renew" else "certificate"
        return (
            cents(tls.price_year * years),
            False,
            f"{tls.name} {verb} {item.name}, {_plural(years, 'year')}",
        )
    tld = catalog.tld(item.product)
    if years not in tld.periods_years:
        raise InvalidInput(
            f"period {years}y is not allowed for .{tld.tld} ({item.name}); allowed: "
            f"{', '.join(f'{y}y' for y in tld.periods_years)}"
        )
    extra_years = tld.renew_price * (years - 1)
    if item.action == "renew":
        return cents(tld.renew_price * years), False, (
            f"Domain {item.name} renewal, {_plural(years, 'year')}"
        )
    if item.action == "transfer":
        return cents(tld.transfer_price + extra_years), False, (
            f"Domain {item.name} transfer, {_plural(years, 'year')}"
        )
    desc = f"Domain {item.name} registration, {_plural(years, 'year')}"
    if had_promo and tld.first_year_promo_price is not None:
        return cents(tld.transfer_price + extra_years), False, (
            desc + " (first-year promo used before: transfer price)")
    if promo_allowed and tld.first_year_promo_price is not None:
        return cents(tld.first_year_promo_price + extra_years), True, desc + " (first-year promo)"
    return cents(tld.register_price * years), False, desc


def price_order(
    items: Sequence[OrderItem],
    *,
    catalog: Catalog,
    policy: BrandPolicy,
    today: date,
    discount: DiscountCode | None = None,
    renewal: bool = False,
    promo_history: PromoHistory = PromoHistory(),
    paper_invoice: bool = False,
) -> Quote:
    """Price ``items`` into a Quote; InvalidInput for anything the rules refuse.

    ``renewal=True`` prices a renewal proforma (every line is a renewal: no first-year
    promos, codes only if ``valid_on_renewals``). Items whose ``action`` is ``"renew"``
    are treated as renewals too.
    """
    if not items:
        raise InvalidInput("an order needs at least one item")
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, OrderItem):
            raise InvalidInput(f"not an order item: {item!r}")
        if item.service_key in seen:
            raise InvalidInput(f"{item.kind} {item.name} appears twice in the order")
        seen.add(item.service_key)

    if discount is not None:
        discount.check_valid_on(today)
        if renewal and not discount.valid_on_renewals:
            raise InvalidInput(f"discount code {discount.code} is not valid for renewals")

    # Pass 1: list prices and prepay discount.
    prepared: list[tuple[OrderItem, Decimal, Decimal, bool, str]] = []
    for item in items:
        is_renewal = renewal or item.action == "renew"
        had_promo = item.kind == "domain" and promo_history.had_domain_promo(item.name)
        promo_allowed = not is_renewal and not had_promo
        unit, tld_promo, desc = _list_price(item, catalog, promo_allowed, had_promo and not is_renewal)
        prepay = ZERO
        pd = policy.prepay_discount
        if pd is not None and pd.applies(item.kind, item.period_months):
            prepay = cents(unit * pd.percent / 100)
            desc += f", prepay discount {pd.percent.normalize():f} %"
        prepared.append((item, unit, prepay, tld_promo, desc))

    # Pass 2: the discount code.
    code_discounts = [ZERO] * len(prepared)
    code_promo = [False] * len(prepared)
    applied = False
    if discount is not None:
        remaining = discount.amount
        for i, (item, unit, prepay, tld_promo, _desc) in enumerate(prepared):
            is_renewal = renewal or item.action == "renew"
            if item.kind not in discount.kinds:
                continue
            if is_renewal and not discount.valid_on_renewals:
                continue
            base = unit - prepay
            if discount.first_year_promo:
                if is_renewal or tld_promo:
                    continue
                if promo_history.had_service_promo(item) or (
                    item.kind == "domain" and promo_history.had_domain_promo(item.name)
                ):
                    continue
                if item.period_months > 12:
                    base = cents(base * 12 / item.period_months)
            if base <= 0:
                continue
            if discount.percent is not None:
                off = cents(base * discount.percent / 100)
            else:
                assert remaining is not None
                off = min(base, remaining)
                remaining -= off
            if off <= 0:
                continue
            code_discounts[i] = min(off, base)
            code_promo[i] = discount.first_year_promo
            applied = True
        if not applied:
            raise InvalidInput(_why_not_applicable(discount, items, renewal))

    lines: list[PriceLine] = []
    for i, (item, unit, prepay, tld_promo, desc) in enumerate(prepared):
        disc = min(unit, prepay + code_discounts[i])
        gross = unit - disc
        if code_discounts[i] > 0:
            desc += f", code {discount.code}" if discount is not None else ""
        net, vat = split_gross(gross, policy.vat_rate)
        lines.append(
            PriceLine(
                position=i + 1,
                item=item,
                description=desc,
                unit_gross=unit,
                discount_gross=disc,
                gross=gross,
                net=net,
                vat=vat,
                vat_rate=policy.vat_rate,
                promo=tld_promo or code_promo[i],
            )
        )
    if paper_invoice:
        fee = paper_invoice_fee_gross(policy)
        net, vat = split_gross(fee, policy.vat_rate)
        lines.append(PriceLine(position=len(lines) + 1, item=None,
                               description=PAPER_INVOICE_DESCRIPTION, unit_gross=fee,
                               discount_gross=ZERO, gross=fee, net=net, vat=vat,
                               vat_rate=policy.vat_rate, promo=False))
    return Quote(
        lines=tuple(lines),
        gross=sum((ln.gross for ln in lines), ZERO),
        net=sum((ln.net for ln in lines), ZERO),
        vat=sum((ln.vat for ln in lines), ZERO),
        due_date=due_date(today, policy),
        discount_code=discount.code if applied and discount is not None else None,
    )


def _why_not_applicable(
    discount: DiscountCode,
    items: Sequence[OrderItem],
    renewal: bool,
) -> str:
    kinds = {item.kind for item in items}
    if not kinds & discount.kinds:
        return (
            f"discount code {discount.code} applies only to "
            f"{', '.join(sorted(discount.kinds))}, not to this order"
        )
    if not discount.valid_on_renewals and all(
        renewal or item.action == "renew" for item in items if item.kind in discount.kinds
    ):
        return f"discount code {discount.code} is not valid for renewals"
    if discount.first_year_promo:
        return (
            f"discount code {discount.code} is a first-year promotion, already used for "
            "every service in this order"
        )
    return f"discount code {discount.code} does not apply to any item in this order"
