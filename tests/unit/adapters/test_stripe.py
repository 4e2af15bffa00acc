"""Stripe webhook verification (real SDK) and parsing."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import stripe as stripe_sdk

from provisioner.adapters.payments import PaymentNotice
from provisioner.adapters.payments.stripe import minor_to_major, parse_stripe, verify_stripe
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature
from tests.payloads import stripe_event, stripe_signature

SECRET = "whsec_test_secret"


@pytest.fixture
def body() -> bytes:
    return stripe_event("evt_1", "PF-2026-0001", 1234)


def test_good_signature_is_accepted_and_parsed(body: bytes) -> None:
    verify_stripe(body, stripe_signature(body, SECRET), SECRET)
    notice = parse_stripe(body)
    assert isinstance(notice, PaymentNotice)
    assert notice.provider == "stripe"
    assert notice.event_id == "evt_1"
    assert notice.kind == "payment"
    assert notice.txn_id is not None and notice.txn_id.startswith("pi_")
    assert notice.amount == Decimal("12.34")
    assert notice.currency == "EUR"
    assert notice.proforma == "PF-2026-0001"
    assert notice.payer == "payer@example.com"
    assert notice.occurred_at is not None and notice.occurred_at.tzinfo is not None
    assert notice.raw == body


def test_our_signature_matches_the_sdks(body: bytes) -> None:
    ts = int(time.time())
    sdk = stripe_sdk.WebhookSignature.generate_signature_header(body.decode(), SECRET, ts)
    assert stripe_signature(body, SECRET, ts) == sdk


def test_header_with_several_signatures_accepts_any_match(body: bytes) -> None:
    header = stripe_signature(body, SECRET)
    t, v1 = header.split(",")
    verify_stripe(body, f"{t},v1={'0' * 64},{v1}", SECRET)


@pytest.mark.parametrize(
    ("name", "mangle"),
    [
        ("forged", lambda b, h: h[:-4] + "beef"),
        ("wrong_secret", lambda b, h: stripe_signature(b, "whsec_other")),
        ("body_changed", lambda b, h: stripe_signature(b + b" ", SECRET)),
        ("garbage_header", lambda b, h: "nonsense"),
        ("no_v1", lambda b, h: h.split(",")[0]),
        ("v0_only", lambda b, h: h.replace("v1=", "v0=")),
    ],
)
def test_bad_signatures_are_refused(body: bytes, name: str, mangle) -> None:
    with pytest.raises(InvalidSignature):
        verify_stripe(body, mangle(body, stripe_signature(body, SECRET)), SECRET)


def test_stale_timestamp_is_refused(body: bytes) -> None:
    old = int(time.time()) - 301
    with pytest.raises(InvalidSignature, match="tolerance"):
        verify_stripe(body, stripe_signature(body, SECRET, old), SECRET)


def test_tolerance_is_configurable(body: bytes) -> None:
    old = int(time.time()) - 301
    verify_stripe(body, stripe_signature(body, SECRET, old), SECRET, tolerance=600)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_refused(body: bytes, header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_stripe(body, header, SECRET)


@pytest.mark.parametrize("secret", ["", "   "])
def test_empty_secret_is_a_configuration_error(body: bytes, secret: str) -> None:
    with pytest.raises(ConfigurationError):
        verify_stripe(body, stripe_signature(body, SECRET), secret)


def test_non_utf8_body_is_refused() -> None:
    body = b'{"id": "\xff"}'
    with pytest.raises(InvalidSignature):
        verify_stripe(body, stripe_signature(body, SECRET), SECRET)


def test_huge_body_verifies_and_parses_without_fuss() -> None:
    body = stripe_event("evt_big", "PF-1", 100)[:-1] + b',"pad":"' + b"x" * 2_000_000 + b'"}'
    verify_stripe(body, stripe_signature(body, SECRET), SECRET)
    assert parse_stripe(body).amount == Decimal("1.00")


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"not json", b"[]", b'"evt"', b"\xff\xfe", b'{"id": "evt_1"}'],
)
def test_malformed_json_is_invalid_input(payload: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_stripe(payload)


def test_missing_amount_is_invalid_input() -> None:
    body = stripe_event("evt_1", "PF-1", 100).replace(b'"amount_received":100', b'"x":1')
    with pytest.raises(InvalidInput):
        parse_stripe(body)


def test_charge_succeeded_is_ignored_so_one_card_payment_pays_once() -> None:
    pi = "pi_same"
    paid = parse_stripe(stripe_event("evt_a", "PF-1", 500, txn_id=pi))
    charge = parse_stripe(stripe_event("evt_b", "PF-1", 500, type="charge.succeeded", txn_id=pi))
    assert paid.kind == "payment"
    assert charge.kind == "ignored"


def test_checkout_session_completed_pays_with_the_payment_intent_as_txn() -> None:
    body = stripe_event("evt_c", "PF-9", 9900, type="checkout.session.completed", txn_id="pi_x")
    notice = parse_stripe(body)
    assert notice.kind == "payment"
    assert notice.txn_id == "pi_x"
    assert notice.amount == Decimal("99.00")
    assert notice.proforma == "PF-9"


def test_unpaid_checkout_session_is_ignored() -> None:
    body = stripe_event("evt_c", "PF-9", 9900, type="checkout.session.completed")
    body = body.replace(b'"payment_status":"paid"', b'"payment_status":"unpaid"')
    assert parse_stripe(body).kind == "ignored"


def _refund(refund_id: str, amount: int, created: int, status: str = "succeeded") -> dict:
    return {"id": refund_id, "object": "refund", "amount": amount, "currency": "eur", "charge": "ch_p",
            "payment_intent": "pi_p", "status": status, "created": created, "metadata": {}}


def _event(event_id: str, type: str, obj: dict) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": type, "created": 1_800_000_000,
                       "data": {"object": obj}}).encode()


def _charge_refunded(event_id: str, amount_refunded: int, refunds: list[dict] | None) -> bytes:
    charge = json.loads(stripe_event(event_id, "PF-1", 1234, type="charge.refunded", txn_id="pi_p"))
    charge["data"]["object"]["amount_refunded"] = amount_refunded
    if refunds is not None:
        charge["data"]["object"]["refunds"] = {"object": "list", "data": refunds, "has_more": False}
    return json.dumps(charge).encode()


def test_each_partial_refund_of_a_charge_is_its_own_reversal() -> None:
    first = parse_stripe(_charge_refunded("evt_r1", 500, [_refund("re_1", 500, 100)]))
    # Stripe lists the newest refund first; amount_refunded is cumulative (800)
    refunds = [_refund("re_2", 300, 200), _refund("re_1", 500, 100)]
    second = parse_stripe(_charge_refunded("evt_r2", 800, refunds))
    assert (first.kind, first.txn_id, first.amount, first.reverses_txn) == (
        "reversal", "re_1", Decimal("5.00"), "pi_p")
    assert (second.kind, second.txn_id, second.amount, second.reverses_txn) == (
        "reversal", "re_2", Decimal("3.00"), "pi_p")


@pytest.mark.parametrize("type", ["refund.created", "refund.updated", "charge.refund.updated"])
def test_refund_events_reverse_with_the_refunds_own_id_and_amount(type: str) -> None:
    notice = parse_stripe(_event("evt_re", type, _refund("re_9", 300, 100)))
    assert (notice.kind, notice.txn_id, notice.amount, notice.currency, notice.reverses_txn) == (
        "reversal", "re_9", Decimal("3.00"), "EUR", "pi_p")


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_a_refund_that_returned_no_money_is_ignored(status: str) -> None:
    notice = parse_stripe(_event("evt_re", "refund.updated", _refund("re_9", 300, 100, status)))
    assert notice.kind == "ignored"


def test_charge_refunded_without_its_refunds_is_left_to_the_refund_event() -> None:
    # Since API 2022-11-15 a Charge does not carry its refunds; refund.created does.
    notice = parse_stripe(_charge_refunded("evt_r", 1234, None))
    assert notice.kind == "ignored"


def test_dispute_created_reverses_the_payment_intent() -> None:
    body = stripe_event("evt_d", None, 1234, type="charge.dispute.created", txn_id="pi_p")
    notice = parse_stripe(body)
    assert notice.kind == "reversal"
    assert notice.reverses_txn == "pi_p"
    assert notice.txn_id == "dp_p"


@pytest.mark.parametrize(
    "event_type", ["customer.created", "payment_intent.created", "invoice.paid"]
)
def test_other_events_are_ignored(event_type: str) -> None:
    assert parse_stripe(stripe_event("evt_o", "PF-1", 1, type=event_type)).kind == "ignored"


@pytest.mark.parametrize(
    ("currency", "minor", "major"),
    [
        ("usd", 1234, Decimal("12.34")),
        ("gbp", 5, Decimal("0.05")),
        ("jpy", 1234, Decimal("1234")),
        ("krw", 50000, Decimal("50000")),
        ("kwd", 1234, Decimal("1.234")),
    ],
)
def test_non_eur_currencies_are_parsed_correctly(currency: str, minor: int, major: Decimal) -> None:
    notice = parse_stripe(stripe_event("evt_fx", "PF-1", minor, currency=currency))
    assert notice.currency == currency.upper()
    assert notice.amount == major


@pytest.mark.parametrize("currency", ["HUF", "ISK", "TWD", "UGX"])
def test_special_case_currencies_are_refused_clearly(currency: str) -> None:
    with pytest.raises(InvalidInput, match="special case"):
        minor_to_major(100, currency)


def test_created_becomes_utc_datetime() -> None:
    notice = parse_stripe(stripe_event("evt_t", "PF-1", 1, created=1_700_000_000))
    assert notice.occurred_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
