"""Stripe webhooks: verify the ``Stripe-Signature`` header, then parse the event.

Verification uses the official SDK's ``stripe.WebhookSignature.verify_header``
(HMAC-SHA256 over ``"{t}.{payload}"``) and nothing more: building the SDK's
``Event`` object (``construct_event``) costs about two thirds of the
throughput and is not needed, because :func:`parse_stripe` reads the JSON with
``json.loads``.

Which event pays
----------------
``payment_intent.succeeded`` is the event that pays (``txn_id`` = the
PaymentIntent id). ``charge.succeeded`` fires for the same card payment (every
PaymentIntent confirms through a Charge), so it is ``"ignored"``: one card
payment must not pay twice. ``checkout.session.completed`` also pays when the
session's ``payment_status`` is ``"paid"`` (Checkout puts ``metadata.proforma``
on the session, not on its PaymentIntent); its ``txn_id`` is the session's
``payment_intent``, i.e. the same ``txn_id`` as the matching
``payment_intent.succeeded``, so the matcher's ``(provider, txn_id)`` key
keeps it to one payment. Sessions paid later by an asynchronous method pay on
``checkout.session.async_payment_succeeded``.

Reversals: a refund, and ``charge.dispute.created`` (``txn_id`` = the dispute's
id, ``amount`` = the disputed amount). Each refund is its own reversal: ``txn_id`` =
the Refund's id (``re_...``), ``amount`` = that refund's amount, never the charge's
cumulative ``amount_refunded`` (a second partial refund of one charge is a second
reversal, with its own amount). The Refund comes from ``refund.created`` (sent for
every refund since API version 2024-10-28.acacia; subscribe the endpoint to it),
``refund.updated`` and ``charge.refund.updated`` (the same refund again: its id keeps
it to one reversal), or from ``charge.refunded`` when the Charge carries its
``refunds`` list (the newest refund is the one the event is about; since API version
2022-11-15 the list is left out unless expanded, and such a ``charge.refunded`` is
``"ignored"``: the refund's own event records it). A refund that ``failed`` or was
``canceled`` returned no money and is ``"ignored"``. ``reverses_txn`` is the
PaymentIntent id (the ``txn_id`` of the payment), falling back to the charge id for
charges made without one.

Amounts are in the currency's minor unit; :func:`minor_to_major` converts them
with Stripe's list of zero- and three-decimal currencies and refuses the few
currencies whose Stripe representation is a special case.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import stripe

from provisioner.adapters.payments import (
    IGNORED,
    PAYMENT,
    REVERSAL,
    PaymentNotice,
    bounded_amount,
    currency_code,
)
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature, TransientError

PROVIDER = "stripe"

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL: frozenset[str] = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF VND VUV XAF XOF XPF".split()
)
# https://docs.stripe.com/currencies#three-decimal
THREE_DECIMAL: frozenset[str] = frozenset("BHD JOD KWD OMR TND".split())
# Stripe's "special cases": the API amount's exponent differs from ISO 4217 or has
# changed over time. We do not sell in them; refuse rather than guess by a factor 100.
AMBIGUOUS: frozenset[str] = frozenset("HUF ISK TWD UGX".split())

_PAYING_TYPES = {
    "payment_intent.succeeded",
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
}
_REFUND_TYPES = {"refund.created", "refund.updated", "charge.refund.updated"}
_NO_MONEY_BACK = {"failed", "canceled"}


def verify_stripe(
    payload: bytes, sig_header: str | None, secret: str, tolerance: int = 300
) -> None:
    """Check ``Stripe-Signature`` for ``payload``; return None or raise.

    Raises ConfigurationError when ``secret`` is empty and InvalidSignature when
    the header is missing, malformed, does not match, or is older than
    ``tolerance`` seconds.
    """
    if not secret or not secret.strip():
        raise ConfigurationError("the Stripe webhook secret is not configured")
    if not sig_header:
        raise InvalidSignature("missing Stripe-Signature header")
    if tolerance <= 0:
        raise ConfigurationError("the Stripe signature tolerance must be positive")
    try:
        stripe.WebhookSignature.verify_header(payload, sig_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(f"Stripe signature rejected: {exc.user_message or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidSignature("Stripe payload is not UTF-8") from exc


def minor_to_major(amount: object, currency: str) -> Decimal:
    """Stripe's integer minor-unit ``amount`` as a Decimal in major units."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidInput(f"Stripe amount must be a non-negative integer: {amount!r}")
    if currency in AMBIGUOUS:
        raise InvalidInput(f"Stripe amounts in {currency} are a special case; not supported")
    exponent = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    return bounded_amount(Decimal(amount).scaleb(-exponent), what=f"Stripe amount in {currency}",
                          places=exponent)


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"Stripe event field {what} is missing or not an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"Stripe event field {what} is missing or not a string")
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _id_of(value: Any) -> str | None:
    """An id field that may be expanded into an object."""
    if isinstance(value, dict):
        return _opt_str(value.get("id"))
    return _opt_str(value)


def _payer(obj: dict[str, Any]) -> str | None:
    details = obj.get("customer_details")
    if isinstance(details, dict) and _opt_str(details.get("email")):
        return _opt_str(details.get("email"))
    billing = obj.get("billing_details")
    if isinstance(billing, dict) and _opt_str(billing.get("email")):
        return _opt_str(billing.get("email"))
    return _opt_str(obj.get("receipt_email")) or _id_of(obj.get("customer"))


def _newest_refund(charge: dict[str, Any]) -> dict[str, Any] | None:
    """The newest Refund in a Charge's ``refunds`` list (Stripe lists the newest first),
    or None when the Charge does not carry the list."""
    refunds = charge.get("refunds")
    data = refunds.get("data") if isinstance(refunds, dict) else None
    items = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    if not items:
        return None

    def created(pair: tuple[int, dict[str, Any]]) -> tuple[int, int]:
        when = pair[1].get("created")
        return (when if isinstance(when, int) and not isinstance(when, bool) else 0, -pair[0])

    return max(enumerate(items), key=created)[1]


def parse_stripe(payload: bytes) -> PaymentNotice:
    """Turn a (verified) Stripe event body into a PaymentNotice.

    Raises InvalidInput for malformed JSON or a paying/reversing event that lacks
    the fields we need. Unknown event types become ``kind="ignored"``.
    """
    try:
        event = json.loads(payload)
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidInput(f"Stripe payload is not JSON: {exc}") from exc
    event = _obj(event, "event")
    event_id = _str(event.get("id"), "id")
    event_type = _str(event.get("type"), "type")
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, int):
        raise InvalidInput("Stripe event field created is missing or not an integer")
    occurred_at = datetime.fromtimestamp(created, UTC)
    obj = _obj(_obj(event.get("data"), "data").get("object"), "data.object")
    metadata = obj.get("metadata")
    proforma = _opt_str(metadata.get("proforma")) if isinstance(metadata, dict) else None

    def notice(kind: str, **fields: Any) -> PaymentNotice:
        base: dict[str, Any] = {
            "txn_id": None,
            "amount": None,
            "currency": None,
            "proforma": proforma,
            "reference": None,
            "payer": None,
            "occurred_at": occurred_at,
        }
        base.update(fields)
        return PaymentNotice(
            provider=PROVIDER, event_id=event_id, kind=kind, raw=bytes(payload), **base
        )

    if event_type in _PAYING_TYPES:
        currency = currency_code(obj.get("currency"))
        if event_type == "payment_intent.succeeded":
            txn_id = _str(obj.get("id"), "data.object.id")
            amount = minor_to_major(obj.get("amount_received"), currency)
        else:
            if obj.get("payment_status") != "paid":
                return notice(IGNORED, txn_id=_id_of(obj.get("payment_intent")))
            txn_id = _id_of(obj.get("payment_intent")) or _str(obj.get("id"), "data.object.id")
            amount = minor_to_major(obj.get("amount_total"), currency)
        return notice(
            PAYMENT,
            txn_id=txn_id,
            amount=amount,
            currency=currency,
            payer=_payer(obj),
            reference=_opt_str(obj.get("client_reference_id")),
        )

    def refund_notice(refund: dict[str, Any], charge: dict[str, Any] | None) -> PaymentNotice:
        refund_id = _str(refund.get("id"), "refund id")
        if refund.get("status") in _NO_MONEY_BACK:
            return notice(IGNORED, txn_id=refund_id)
        currency = currency_code(refund.get("currency"))
        reverses = (_id_of(refund.get("payment_intent")) or _id_of(refund.get("charge"))
                    or (_id_of(charge.get("payment_intent")) or _id_of(charge.get("id"))
                        if charge is not None else None))
        if reverses is None:
            raise InvalidInput("Stripe refund names neither a payment_intent nor a charge")
        return notice(
            REVERSAL,
            txn_id=refund_id,
            amount=minor_to_major(refund.get("amount"), currency),
            currency=currency,
            payer=_payer(charge) if charge is not None else None,
            reverses_txn=reverses,
        )

    if event_type in _REFUND_TYPES:
        return refund_notice(obj, None)
    if event_type == "charge.refunded":
        refund = _newest_refund(obj)
        if refund is None:
            return notice(IGNORED, txn_id=_opt_str(obj.get("id")))
        return refund_notice(refund, obj)
    if event_type == "charge.dispute.created":
        currency = currency_code(obj.get("currency"))
        disputed = _id_of(obj.get("payment_intent")) or _id_of(obj.get("charge"))
        if disputed is None:
            raise InvalidInput("Stripe dispute names neither a payment_intent nor a charge")
        return notice(
            REVERSAL,
            txn_id=_str(obj.get("id"), "data.object.id"),
            amount=minor_to_major(obj.get("amount"), currency),
            currency=currency,
            payer=_payer(obj),
            reverses_txn=disputed,
        )

    return notice(IGNORED, txn_id=_opt_str(obj.get("id")))


__all__ = ["PROVIDER", "minor_to_major", "parse_stripe", "verify_stripe"]


# -- refunds (issue 17, item 3: a withdrawal's money back to the card) --------------------
@dataclass(frozen=True)
class RefundReceipt:
    """What Stripe answered for a refund: its id (``re_...``), status and amount."""

    id: str
    status: str  # succeeded | pending | requires_action | failed | canceled
    amount: Decimal
    currency: str


def major_to_minor(amount: Decimal, currency: str) -> int:
    """A Decimal amount in major units as Stripe's integer minor units."""
    code = currency.upper()
    if code in AMBIGUOUS:
        raise InvalidInput(f"Stripe amounts in {code} are a special case; not supported")
    exponent = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    minor = bounded_amount(amount, what=f"refund in {code}", places=exponent).scaleb(exponent)
    return int(minor)


def _api_base(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
        raise ConfigurationError(f"stripe_api_base is not a base URL: {url!r}")
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise ConfigurationError("stripe_api_base must be https (http only on a loopback "
                                     f"address, a local stand-in): {url!r}")
    return url.rstrip("/")


class StripeRefunds:
    """Card refunds through the official SDK (``StripeClient``'s ``v1.refunds.create``,
    the same ``POST /v1/refunds`` as ``stripe.Refund.create``), pointed at ``api_base``
    without touching the SDK's process-wide globals. Every refund carries the caller's
    idempotency key, so a retry after a lost answer gets Stripe's first answer back
    and never refunds twice; the SDK's own retries are off (the step retries)."""

    def __init__(self, api_key: str, api_base: str = stripe.DEFAULT_API_BASE,
                 timeout_s: float = 30.0) -> None:
        if not api_key:
            raise ConfigurationError("stripe_secret_key is not set: no card refund can be made")
        self._client = stripe.StripeClient(
            api_key, base_addresses={"api": _api_base(api_base)}, max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout_s))

    def refund(self, *, payment_intent: str, amount: Decimal, currency: str, idempotency_key: str,
               metadata: dict[str, str]) -> RefundReceipt:
        params: dict[str, Any] = {"payment_intent": payment_intent,
                                  "amount": major_to_minor(amount, currency),
                                  "reason": "requested_by_customer", "metadata": metadata}
        try:
            refund = self._client.v1.refunds.create(params,  # type: ignore[arg-type]
                                                    {"idempotency_key": idempotency_key})
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise TransientError(f"Stripe refund {idempotency_key}: {exc.user_message or exc}") from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise ConfigurationError(f"Stripe refused our key: {exc.user_message or exc}") from None
        except stripe.IdempotencyError as exc:
            raise InvalidInput(f"Stripe refund {idempotency_key} was made with other "
                               f"parameters: {exc.user_message or exc}") from None
        except stripe.InvalidRequestError as exc:
            raise InvalidInput(f"Stripe refused the refund {idempotency_key}: "
                               f"{exc.user_message or exc}") from None
        except stripe.StripeError as exc:  # 5xx and the like: Stripe's side, try again
            raise TransientError(f"Stripe refund {idempotency_key}: {exc.user_message or exc}") from None
        code = str(refund.currency).upper()
        return RefundReceipt(str(refund.id), str(refund.status), minor_to_major(int(refund.amount), code),
                             code)
