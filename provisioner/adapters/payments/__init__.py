"""Inbound payment notifications, normalized.

Every provider adapter (``stripe``, ``braintree``, ``paypal`` here, and
``provisioner.adapters.payments.camt053`` for camt.053 statements) verifies a notification
and turns it into :class:`PaymentNotice` values. Storage and matching to
proformas happen elsewhere; these modules do no I/O except PayPal's
certificate download.

The matcher should hold two keys:

* ``UNIQUE(provider, event_id)``: a redelivered notification is a duplicate.
* ``(provider, txn_id)`` for ``kind == "payment"``: one money movement pays at
  most once even when a provider announces it in two different events (Stripe's
  ``checkout.session.completed`` and ``payment_intent.succeeded`` carry the same
  PaymentIntent id as ``txn_id``).

Every notice is bounded where it is built (:class:`PaymentNotice` checks itself): an
amount is finite, between 0 and :data:`MAX_AMOUNT`, with at most three decimals (the
parsers allow only the currency's own); the identifiers fit their columns (a longer one
is refused, never cut: it is what duplicates are recognised by); the payer and the
reference are cut to their columns. So nothing stored can make the matcher or the
database fail later, where it would hold up the notifications behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from provisioner.domain.money import MAX_AMOUNT
from provisioner.errors import InvalidInput

PAYMENT: Final = "payment"
REVERSAL: Final = "reversal"
IGNORED: Final = "ignored"
KINDS: Final = frozenset({PAYMENT, REVERSAL, IGNORED})

# The columns the notice is stored in (`store.models`: Notification, Payment).
MAX_PROVIDER: Final = 16
MAX_ID: Final = 200  # event_id, txn_id (and reverses_txn, which names a txn_id)
MAX_PAYER: Final = 200
MAX_REFERENCE: Final = 60  # longer than any SI00/SI12 (26) or RF (25) reference
MAX_PLACES: Final = 3  # Stripe's three-decimal currencies
_MAX_DIGITS = 40  # a decimal string longer than this is no amount we take


@dataclass(frozen=True)
class PaymentNotice:
    """One verified notification, in our terms."""

    provider: str  # "stripe" | "braintree" | "paypal" | "bank"
    event_id: str  # the provider's unique id of THIS notification
    kind: str  # "payment" | "reversal" | "ignored"
    txn_id: str | None  # the money movement's id
    amount: Decimal | None  # positive, in major units (12.34)
    currency: str | None  # upper-case ISO 4217
    proforma: str | None  # proforma number from the payment's metadata
    reference: str | None  # payment reference text, unvalidated
    payer: str | None
    occurred_at: datetime | None  # timezone-aware UTC
    reverses_txn: str | None = None  # for reversals: the txn it reverses
    raw: bytes = b""  # the exact bytes this notice came from
    account: str | None = None  # bank: the account (IBAN) it was booked on; it pays only
    # a proforma of the brand whose account that is

    def __post_init__(self) -> None:
        if not self.provider or len(self.provider) > MAX_PROVIDER:
            raise InvalidInput(f"payment provider name must be 1-{MAX_PROVIDER} characters")
        if not self.event_id or len(self.event_id) > MAX_ID:
            raise InvalidInput(f"{self.provider} event id must be 1-{MAX_ID} characters")
        for name in ("txn_id", "reverses_txn"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_ID:
                raise InvalidInput(f"{self.provider} {name} is longer than {MAX_ID} characters")
        if self.amount is not None:
            bounded_amount(self.amount, what=f"{self.provider} amount", places=MAX_PLACES)
        if self.payer is not None and len(self.payer) > MAX_PAYER:
            object.__setattr__(self, "payer", self.payer[:MAX_PAYER])
        if self.reference is not None and len(self.reference) > MAX_REFERENCE:
            object.__setattr__(self, "reference", self.reference[:MAX_REFERENCE])


def bounded_amount(amount: Decimal, *, what: str = "amount", places: int = 2) -> Decimal:
    """``amount`` if it is finite, 0 <= amount <= MAX_AMOUNT and has at most ``places``
    decimals (trailing zeros aside), as a Decimal with exactly ``places`` decimals; else
    InvalidInput. Bounding before any arithmetic keeps ``quantize`` from failing later."""
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
        raise InvalidInput(f"{what} must be a finite, non-negative number: {amount!r}")
    if amount > MAX_AMOUNT:
        raise InvalidInput(f"{what} {amount} is more than the largest payment we take ({MAX_AMOUNT})")
    exact = amount.quantize(Decimal(1).scaleb(-places))
    if exact != amount:
        raise InvalidInput(f"{what} {amount} has more than {places} decimal places")
    return exact


def decimal_amount(value: object, *, what: str = "amount", places: int = 2) -> Decimal:
    """A provider's decimal string as a bounded Decimal (`bounded_amount`), else InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidInput(f"{what} is not a decimal number: {value!r}")
    if isinstance(value, str) and len(value.strip()) > _MAX_DIGITS:
        raise InvalidInput(f"{what} is not an amount we take: {value[:_MAX_DIGITS]!r}...")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation as exc:
        raise InvalidInput(f"{what} is not a decimal number: {value!r}") from exc
    return bounded_amount(amount, what=what, places=places)


def currency_code(value: object) -> str:
    """Upper-case ISO 4217 code, else InvalidInput."""
    if not isinstance(value, str) or len(value) != 3 or not value.isascii() or not value.isalpha():
        raise InvalidInput(f"not an ISO 4217 currency code: {value!r}")
    return value.upper()


__all__ = [
    "IGNORED",
    "KINDS",
    "PAYMENT",
    "REVERSAL",
    "PaymentNotice",
    "bounded_amount",
    "currency_code",
    "decimal_amount",
]
