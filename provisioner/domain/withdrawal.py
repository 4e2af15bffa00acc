"""Withdrawal from a new order and its refund (RULES "Refund without specific work done",
"Refund refused if the free migration was used (iSERVER); migration charged on
withdrawal (FCB)"; seeds 001 §3.2, 002 §8). Pure: the caller loads the facts.

* FCB: a 90-day trial for hosting that "starts on the first day, the day the order is
  placed" (001 §3.2): day 1 is the order's day, day 90 still refunds, day 91 does not.
  A free migration that was used is charged at its price-list price (deducted).
* iSERVER: a refund within 15 days (day 15 refunds, day 16 does not) of shared hosting
  and VPS, less a flat 5 EUR (VAT included) refund fee; refused when the free migration
  was used.

The refund never exceeds what was paid for the service's line and is never negative;
one that would come to nothing is refused (nothing to credit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from provisioner.domain.money import cents, split_gross
from provisioner.domain.policy import BrandPolicy
from provisioner.errors import InvalidInput

ZERO = Decimal("0.00")


@dataclass(frozen=True)
class Withdrawal:
    """What a withdrawal of one service comes to under its brand's policy."""

    allowed: bool
    reason: str  # why not (or a one-line summary when allowed)
    day: int  # the day of the window the request falls on (1 = the order's day)
    window_days: int
    paid: Decimal  # gross paid for the service's line
    fee: Decimal  # the brand's refund fee (gross)
    migration_charge: Decimal  # the used free migration, charged (gross)
    refund: Decimal  # paid - fee - migration_charge (gross, >= 0)

    @property
    def refund_net_vat(self) -> tuple[Decimal, Decimal]:
        """The refund split into net and VAT (the credit note's totals)."""
        return split_gross(self.refund)

    def as_dict(self) -> dict[str, object]:
        return {"allowed": self.allowed, "reason": self.reason, "day": self.day,
                "window_days": self.window_days, "paid": f"{self.paid:.2f}",
                "fee": f"{self.fee:.2f}", "migration_charge": f"{self.migration_charge:.2f}",
                "refund": f"{self.refund:.2f}"}


def window_day(ordered_on: date, today: date) -> int:
    """The day of the refund window ``today`` is: the order's own day is day 1."""
    if today < ordered_on:
        raise InvalidInput(f"{today.isoformat()} is before the order ({ordered_on.isoformat()})")
    return (today - ordered_on).days + 1


def compute_withdrawal(policy: BrandPolicy, *, kind: str, ordered_on: date, today: date,
                       paid: Decimal, migration_used: bool,
                       migration_price: Decimal = ZERO) -> Withdrawal:
    """The refund of a withdrawal from a service of ``kind`` ordered on ``ordered_on``,
    asked for on ``today``, of which ``paid`` (gross) was paid. ``migration_price`` is
    the price-list price of the free migration, charged when it was used and the brand
    charges it."""
    if not isinstance(paid, Decimal) or not paid.is_finite() or paid < 0:
        raise InvalidInput(f"paid must be a Decimal >= 0, not {paid!r}")
    if not isinstance(migration_price, Decimal) or not migration_price.is_finite() \
            or migration_price < 0:
        raise InvalidInput(f"migration_price must be a Decimal >= 0, not {migration_price!r}")
    paid, price = cents(paid), cents(migration_price)
    day = window_day(ordered_on, today)
    window = policy.refund_window_days
    fee = cents(policy.refund_fee)
    charge = price if migration_used and policy.migration_charged_on_withdrawal else ZERO

    def refused(reason: str) -> Withdrawal:
        return Withdrawal(False, reason, day, window, paid, fee, charge, ZERO)

    if kind not in policy.refund_kinds:
        kinds = ", ".join(sorted(policy.refund_kinds))
        return refused(f"{policy.display_name or policy.name} refunds only {kinds} services, "
                       f"not {kind}")
    if day > window:
        return refused(f"day {day} since the order: the refund window of "
                       f"{policy.display_name or policy.name} is {window} days")
    if migration_used and policy.migration_blocks_refund:
        return refused("the free migration was used: no refund (RULES 002 §8)")
    refund = paid - fee - charge
    if refund <= 0:
        return refused(f"nothing to refund: paid {paid} EUR, fee {fee} EUR, "
                       f"migration {charge} EUR")
    return Withdrawal(True, f"refund {refund} EUR on day {day} of {window}", day, window,
                      paid, fee, charge, refund)


def credit_note_number(brand: str, year: int, seq: int) -> str:
    """``"DB-FCB-2026-000001"``: dobropis, the brand, the year, gapless per brand and year."""
    if not brand or not brand.isalnum():
        raise InvalidInput(f"brand code must be letters and digits: {brand!r}")
    if not 2000 <= year <= 9999 or not 1 <= seq <= 999_999:
        raise InvalidInput(f"credit note number out of range: {year}/{seq}")
    return f"DB-{brand.upper()}-{year}-{seq:06d}"
