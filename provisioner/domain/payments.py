"""Matching a received payment to a proforma (pure: the caller loads the proforma).

RULES: nothing is provisioned before the proforma is paid; the service is realised when
the payment transaction is recorded. Partial payments accumulate; a proforma is settled
when the payments reach its total. An overpayment settles it but is flagged for a refund
or credit. Payments in another currency, to an unknown reference, to a cancelled or an
already paid proforma never settle anything: they go to a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from provisioner.domain.money import cents
from provisioner.errors import InvalidInput

ZERO = Decimal("0.00")


class MatchStatus(StrEnum):
    MATCHED = "matched"
    UNDERPAID = "underpaid"
    OVERPAID = "overpaid"
    WRONG_CURRENCY = "wrong_currency"
    UNKNOWN_REFERENCE = "unknown_reference"
    ALREADY_PAID = "already_paid"
    PROFORMA_CANCELLED = "proforma_cancelled"
    REVERSAL = "reversal"


@dataclass(frozen=True)
class MatchOutcome:
    status: MatchStatus
    settles: bool  # True: mark the proforma paid and start provisioning
    outstanding: Decimal  # what is still due after this payment (0 when settled)
    detail: str
    excess: Decimal = ZERO  # overpaid amount to refund or credit

    @property
    def needs_attention(self) -> bool:
        """Anything but an exact or partial payment in EUR goes to a person."""
        return self.status not in (MatchStatus.MATCHED, MatchStatus.UNDERPAID)


def match_payment(
    *,
    amount: Decimal,
    currency: str,
    proforma_total: Decimal | None,
    paid_so_far: Decimal,
    proforma_state: str | None,
) -> MatchOutcome:
    """Classify one incoming payment against the proforma its reference points at.

    ``proforma_total`` None means the reference matched no proforma. ``paid_so_far`` is
    the sum of earlier EUR payments recorded against the proforma. A negative ``amount``
    is a reversal / chargeback and never settles. Checked in this order: reversal,
    unknown reference, wrong currency, cancelled, already paid, then the amount.
    """
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidInput(f"payment amount must be a finite Decimal, not {amount!r}")
    if not isinstance(paid_so_far, Decimal) or not paid_so_far.is_finite() or paid_so_far < 0:
        raise InvalidInput(f"paid_so_far must be a Decimal >= 0, not {paid_so_far!r}")
    amount = cents(amount)
    paid_so_far = cents(paid_so_far)
    cur = currency.strip().upper() if isinstance(currency, str) else ""
    state = proforma_state.strip().lower() if isinstance(proforma_state, str) else None
    total = cents(proforma_total) if proforma_total is not None else None
    before = max(total - paid_so_far, ZERO) if total is not None else ZERO

    if amount < 0:
        return MatchOutcome(
            MatchStatus.REVERSAL, False, before,
            f"reversal of {-amount} {cur or '?'}: review the proforma and any service",
        )
    if total is None:
        return MatchOutcome(
            MatchStatus.UNKNOWN_REFERENCE, False, ZERO,
            f"payment of {amount} {cur or '?'} matches no proforma",
        )
    if cur != "EUR":
        return MatchOutcome(
            MatchStatus.WRONG_CURRENCY, False, before,
            f"payment in {cur or 'an unknown currency'!s}, proformas are in EUR",
        )
    if state == "cancelled":
        return MatchOutcome(
            MatchStatus.PROFORMA_CANCELLED, False, before,
            f"payment of {amount} EUR for a cancelled proforma: refund or reopen",
        )
    if state == "paid":
        return MatchOutcome(
            MatchStatus.ALREADY_PAID, False, ZERO,
            f"payment of {amount} EUR for a proforma that is already paid: refund or credit",
            excess=amount,
        )
    if state not in (None, "open"):
        raise InvalidInput(f"unknown proforma state {proforma_state!r}")
    if amount == 0:
        return MatchOutcome(
            MatchStatus.UNDERPAID, False, before, "payment of 0.00 EUR changes nothing"
        )
    after = paid_so_far + amount
    if after == total:
        return MatchOutcome(MatchStatus.MATCHED, True, ZERO, f"paid in full ({total} EUR)")
    if after > total:
        excess = after - total
        return MatchOutcome(
            MatchStatus.OVERPAID, True, ZERO,
            f"paid {after} EUR of {total} EUR: {excess} EUR too much, refund or credit",
            excess=excess,
        )
    return MatchOutcome(
        MatchStatus.UNDERPAID, False, total - after,
        f"paid {after} EUR of {total} EUR: {total - after} EUR still due",
    )
