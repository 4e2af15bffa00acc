"""Braintree webhooks: verify and parse with the official SDK.

``gateway.webhook_notification.parse(bt_signature, bt_payload)`` checks the
HMAC-SHA1 signature (keyed with the private key, selected by the public key)
before it decodes the base64 payload and reads the XML. It does no network
I/O: it builds ``Transaction``/``Subscription``/``Dispute`` objects from the
XML only (their lazy methods that would call the API are never used here);
``tests/unit/adapters/test_braintree.py`` checks this with sockets disabled.

Kinds
-----
* ``transaction_settled`` and ``subscription_charged_successfully`` ->
  ``"payment"`` (the settled transaction, or the subscription's newest
  transaction).
* ``transaction_settlement_declined`` and ``dispute_opened`` -> ``"reversal"``
  of that transaction.
* everything else (``disbursement``, ``disbursement_exception``,
  ``transaction_disbursed``, other dispute states, ``check``, ...) ->
  ``"ignored"``.

Event ids
---------
Braintree notifications carry no id. A reversal or ignored notification gets
``"{kind}:{subject id}:{timestamp}"`` (the timestamp is the notification's,
so a redelivery of the same notification is the same event). A payment gets
``"payment:{transaction id}"``: the same transaction may be announced by both
``subscription_charged_successfully`` and ``transaction_settled``, and the
``UNIQUE(provider, event_id)`` key then stops it from paying twice.

The request
-----------
Braintree POSTs an ``application/x-www-form-urlencoded`` form with the fields
``bt_signature`` and ``bt_payload``; :meth:`BraintreeVerifier.parse_form` takes
that body as it arrived.
"""

from __future__ import annotations

import binascii
import warnings
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs
from xml.parsers.expat import ExpatError

from provisioner.adapters.payments import (
    IGNORED,
    PAYMENT,
    REVERSAL,
    PaymentNotice,
    currency_code,
    decimal_amount,
)
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature

# braintree 4.x warns (DeprecationWarning, ChargebackProtectionLevel) while its
# package is imported; under ``-W error`` that import would fail.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import braintree
    from braintree.exceptions.braintree_error import BraintreeError
    from braintree.exceptions.invalid_signature_error import InvalidSignatureError

PROVIDER = "braintree"

_PAYMENT_KINDS = {"transaction_settled", "subscription_charged_successfully"}
_REVERSAL_KINDS = {"transaction_settlement_declined", "dispute_opened"}


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _amount(value: Any) -> Decimal | None:
    return None if value is None else decimal_amount(value, what="Braintree amount")


def _currency(value: Any) -> str | None:
    return None if value is None else currency_code(value)


def _payer(txn: Any) -> str | None:
    customer = getattr(txn, "customer_details", None)
    email = _opt_str(getattr(customer, "email", None))
    if email:
        return email
    paypal = getattr(txn, "paypal_details", None)
    return _opt_str(getattr(paypal, "payer_email", None)) or _opt_str(getattr(customer, "id", None))


def form_fields(body: bytes) -> tuple[str, str]:
    """``(bt_signature, bt_payload)`` from a webhook request's form body; a missing
    field is ``""`` (which :meth:`BraintreeVerifier.parse` refuses as unsigned).

    Raises InvalidInput when the body is not a UTF-8 url-encoded form."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
    except ValueError:  # UnicodeDecodeError included
        raise InvalidInput("expected a form with bt_signature and bt_payload") from None
    return (form.get("bt_signature") or [""])[0], (form.get("bt_payload") or [""])[0]


class BraintreeVerifier:
    """Verifies and parses Braintree webhook notifications for one merchant."""

    def __init__(
        self, environment: str | Any, merchant_id: str, public_key: str, private_key: str
    ) -> None:
        if not (merchant_id and public_key and private_key):
            raise ConfigurationError("Braintree merchant id, public key and private key are needed")
        try:
            config = braintree.Configuration(
                environment=environment,
                merchant_id=merchant_id,
                public_key=public_key,
                private_key=private_key,
            )
        except BraintreeError as exc:
            raise ConfigurationError(f"Braintree configuration rejected: {exc}") from exc
        self.gateway = braintree.BraintreeGateway(config)

    def parse(self, bt_signature: str, bt_payload: str | bytes) -> PaymentNotice:
        """Verify ``bt_signature`` over ``bt_payload`` and return the notice.

        Raises InvalidSignature when the signature is missing or does not match
        and InvalidInput when the (signed) payload cannot be read.
        """
        if not bt_signature or not bt_payload:
            raise InvalidSignature("missing bt_signature or bt_payload")
        try:
            notification = self.gateway.webhook_notification.parse(bt_signature, bt_payload)
        except InvalidSignatureError as exc:
            raise InvalidSignature(f"Braintree signature rejected: {exc}") from exc
        except (
            BraintreeError,
            ExpatError,
            binascii.Error,
            UnicodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            InvalidOperation,
        ) as exc:
            raise InvalidInput(f"Braintree payload cannot be read: {exc!r}") from exc
        raw = bt_payload.encode("ascii") if isinstance(bt_payload, str) else bytes(bt_payload)
        try:
            return self._notice(notification, raw)
        except (AttributeError, TypeError, ValueError, InvalidOperation) as exc:
            raise InvalidInput(f"Braintree notification is incomplete: {exc!r}") from exc

    def parse_form(self, body: bytes) -> PaymentNotice:
        """Verify and parse a webhook request's body (the form Braintree posts).

        Raises InvalidInput when the body is not a form, else as :meth:`parse`.
        """
        return self.parse(*form_fields(body))

    def _notice(self, notification: Any, raw: bytes) -> PaymentNotice:
        kind = _opt_str(getattr(notification, "kind", None))
        if kind is None:
            raise InvalidInput("Braintree notification has no kind")
        occurred_at = _utc(getattr(notification, "timestamp", None))
        if occurred_at is None:
            raise InvalidInput("Braintree notification has no timestamp")
        stamp = occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")

        txn: Any = None
        dispute: Any = None
        if kind == "subscription_charged_successfully":
            transactions = getattr(getattr(notification, "subscription", None), "transactions", [])
            txn = transactions[0] if transactions else None  # newest first
        elif kind == "dispute_opened":
            dispute = getattr(notification, "dispute", None)
        else:
            txn = getattr(notification, "transaction", None)

        if kind in _PAYMENT_KINDS:
            txn_id = _opt_str(getattr(txn, "id", None))
            if txn_id is None:
                raise InvalidInput(f"Braintree {kind} notification names no transaction")
            return PaymentNotice(
                provider=PROVIDER,
                event_id=f"payment:{txn_id}",
                kind=PAYMENT,
                txn_id=txn_id,
                amount=_amount(getattr(txn, "amount", None)),
                currency=_currency(getattr(txn, "currency_iso_code", None)),
                proforma=_opt_str(getattr(txn, "order_id", None)),
                reference=None,
                payer=_payer(txn),
                occurred_at=occurred_at,
                raw=raw,
            )

        if kind == "transaction_settlement_declined":
            txn_id = _opt_str(getattr(txn, "id", None))
            if txn_id is None:
                raise InvalidInput(f"Braintree {kind} notification names no transaction")
            return PaymentNotice(
                provider=PROVIDER,
                event_id=f"{kind}:{txn_id}:{stamp}",
                kind=REVERSAL,
                txn_id=txn_id,
                amount=_amount(getattr(txn, "amount", None)),
                currency=_currency(getattr(txn, "currency_iso_code", None)),
                proforma=_opt_str(getattr(txn, "order_id", None)),
                reference=None,
                payer=_payer(txn),
                occurred_at=occurred_at,
                reverses_txn=txn_id,
                raw=raw,
            )

        if kind == "dispute_opened":
            dispute_id = _opt_str(getattr(dispute, "id", None))
            disputed = getattr(dispute, "transaction", None)
            reverses = _opt_str(getattr(disputed, "id", None))
            if dispute_id is None or reverses is None:
                raise InvalidInput("Braintree dispute notification names no dispute/transaction")
            return PaymentNotice(
                provider=PROVIDER,
                event_id=f"{kind}:{dispute_id}:{stamp}",
                kind=REVERSAL,
                txn_id=dispute_id,
                amount=_amount(getattr(dispute, "amount_disputed", None)),
                currency=_currency(getattr(dispute, "currency_iso_code", None)),
                proforma=_opt_str(getattr(disputed, "order_id", None)),
                reference=None,
                payer=None,
                occurred_at=occurred_at,
                reverses_txn=reverses,
                raw=raw,
            )

        subject = (
            getattr(notification, "transaction", None)
            or getattr(notification, "disbursement", None)
            or getattr(notification, "dispute", None)
            or getattr(notification, "subscription", None)
        )
        subject_id = _opt_str(getattr(subject, "id", None)) or "-"
        return PaymentNotice(
            provider=PROVIDER,
            event_id=f"{kind}:{subject_id}:{stamp}",
            kind=IGNORED,
            txn_id=None,
            amount=None,
            currency=None,
            proforma=None,
            reference=None,
            payer=None,
            occurred_at=occurred_at,
            raw=raw,
        )


__all__ = ["PROVIDER", "BraintreeVerifier", "form_fields"]
