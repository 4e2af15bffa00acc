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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from provisioner.errors import InvalidInput

PAYMENT: Final = "payment"
REVERSAL: Final = "reversal"
IGNORED: Final = "ignored"
KINDS: Final = frozenset({PAYMENT, REVERSAL, IGNORED})


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


def decimal_amount(value: object, *, what: str = "amount") -> Decimal:
    """A non-negative finite Decimal from a provider's decimal string, else InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidInput(f"{what} is not a decimal number: {value!r}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation as exc:
        raise InvalidInput(f"{what} is not a decimal number: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise InvalidInput(f"{what} must be a finite, non-negative number: {value!r}")
    return amount


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
    "currency_code",
    "decimal_amount",
]
