"""Braintree webhook verification and parsing through the real SDK."""

from __future__ import annotations

import base64
import socket
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from provisioner.adapters.payments.braintree import BraintreeVerifier, form_fields
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature
from tests.payloads import braintree_notification, braintree_sign


@pytest.fixture
def verifier() -> BraintreeVerifier:
    return BraintreeVerifier("sandbox", "merchant1", "pubkey1", "privkey1")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network I/O attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_settled_transaction_pays(verifier: BraintreeVerifier, no_network: None) -> None:
    when = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
    sig, payload = braintree_notification(
        verifier.gateway, "transaction_settled", "txn1", "PF-2026-0001", "12.34", timestamp=when
    )
    notice = verifier.parse(sig, payload)
    assert notice.provider == "braintree"
    assert notice.kind == "payment"
    assert notice.event_id == "payment:txn1"
    assert notice.txn_id == "txn1"
    assert notice.amount == Decimal("12.34")
    assert notice.currency == "EUR"
    assert notice.proforma == "PF-2026-0001"
    assert notice.payer == "payer@example.com"
    assert notice.occurred_at == when
    assert notice.raw == payload.encode()


def test_sdk_sample_notification_is_accepted(verifier: BraintreeVerifier) -> None:
    sample = verifier.gateway.webhook_testing.sample_notification("transaction_settled", "t9")
    notice = verifier.parse(sample["bt_signature"], sample["bt_payload"])
    assert (notice.kind, notice.txn_id, notice.currency) == ("payment", "t9", "USD")
    assert notice.amount == Decimal("100.00")
    assert notice.proforma is None


def test_subscription_charge_pays_with_the_same_event_id_as_settlement(
    verifier: BraintreeVerifier,
) -> None:
    sub = verifier.parse(
        *braintree_notification(
            verifier.gateway, "subscription_charged_successfully", "t2", "PF-2", "5.00"
        )
    )
    settled = verifier.parse(
        *braintree_notification(verifier.gateway, "transaction_settled", "t2", "PF-2", "5.00")
    )
    assert sub.kind == settled.kind == "payment"
    assert sub.txn_id == "t2"
    assert sub.event_id == settled.event_id


def test_settlement_declined_is_a_reversal(verifier: BraintreeVerifier) -> None:
    when = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
    notice = verifier.parse(
        *braintree_notification(
            verifier.gateway,
            "transaction_settlement_declined",
            "t3",
            "PF-3",
            "7.00",
            timestamp=when,
        )
    )
    assert notice.kind == "reversal"
    assert notice.reverses_txn == "t3"
    assert notice.event_id == "transaction_settlement_declined:t3:2026-11-21T10:00:00Z"


def test_dispute_opened_is_a_reversal(verifier: BraintreeVerifier) -> None:
    notice = verifier.parse(
        *braintree_notification(verifier.gateway, "dispute_opened", "t4", "PF-4", "9.00")
    )
    assert notice.kind == "reversal"
    assert notice.reverses_txn == "t4"
    assert notice.txn_id == "dp_t4"
    assert notice.proforma == "PF-4"
    assert notice.amount == Decimal("9.00")


@pytest.mark.parametrize("kind", ["disbursement", "disbursement_exception", "check"])
def test_other_kinds_are_ignored(verifier: BraintreeVerifier, kind: str) -> None:
    sample = verifier.gateway.webhook_testing.sample_notification(kind, "d1")
    notice = verifier.parse(sample["bt_signature"], sample["bt_payload"])
    assert notice.kind == "ignored"
    assert notice.event_id.startswith(f"{kind}:")


def test_event_id_is_stable_for_a_redelivery(verifier: BraintreeVerifier) -> None:
    sig, payload = braintree_notification(verifier.gateway, "disbursement", "d2", None, "1")
    assert verifier.parse(sig, payload).event_id == verifier.parse(sig, payload).event_id


def test_non_eur_currency_is_parsed(verifier: BraintreeVerifier) -> None:
    notice = verifier.parse(
        *braintree_notification(
            verifier.gateway, "transaction_settled", "t5", "PF-5", "1000", currency="HUF"
        )
    )
    assert (notice.amount, notice.currency) == (Decimal("1000"), "HUF")


def test_wrong_private_key_is_refused(verifier: BraintreeVerifier) -> None:
    other = BraintreeVerifier("sandbox", "merchant1", "pubkey1", "another-private-key")
    sig, payload = braintree_notification(other.gateway, "transaction_settled", "t", "PF", "1")
    with pytest.raises(InvalidSignature):
        verifier.parse(sig, payload)


def test_unknown_public_key_is_refused(verifier: BraintreeVerifier) -> None:
    other = BraintreeVerifier("sandbox", "merchant1", "pubkey2", "privkey1")
    sig, payload = braintree_notification(other.gateway, "transaction_settled", "t", "PF", "1")
    with pytest.raises(InvalidSignature):
        verifier.parse(sig, payload)


def test_forged_signature_is_refused(verifier: BraintreeVerifier) -> None:
    sig, payload = braintree_notification(verifier.gateway, "transaction_settled", "t", "PF", "1")
    with pytest.raises(InvalidSignature):
        verifier.parse(sig[:-4] + "0000", payload)


def test_modified_payload_is_refused(verifier: BraintreeVerifier) -> None:
    sig, payload = braintree_notification(verifier.gateway, "transaction_settled", "t", "PF", "1")
    xml = base64.b64decode(payload).replace(b"<amount>1</amount>", b"<amount>1000</amount>")
    with pytest.raises(InvalidSignature):
        verifier.parse(sig, base64.encodebytes(xml).decode())


@pytest.mark.parametrize(("sig", "payload"), [("", "abc"), ("pubkey1|x", ""), ("", "")])
def test_missing_signature_or_payload_is_refused(
    verifier: BraintreeVerifier, sig: str, payload: str
) -> None:
    with pytest.raises(InvalidSignature):
        verifier.parse(sig, payload)


def test_illegal_payload_characters_are_refused(verifier: BraintreeVerifier) -> None:
    with pytest.raises(InvalidSignature):
        verifier.parse("pubkey1|abc", "<xml>not base64</xml>")


def test_the_posted_form_is_verified_and_parsed(verifier: BraintreeVerifier) -> None:
    sig, payload = braintree_notification(verifier.gateway, "transaction_settled", "t7", "PF-7",
                                          "7.00")
    body = urlencode({"bt_signature": sig, "bt_payload": payload}).encode()
    assert form_fields(body) == (sig, payload)
    assert verifier.parse_form(body) == verifier.parse(sig, payload)


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",  # no name=value pair
        b"bt_signature=a&&bt_payload=b",  # an empty field
        b"bt_signature=\xff\xfe&bt_payload=b",  # not UTF-8
        b"\x00\x01",
    ],
)
def test_a_body_that_is_not_a_form_is_invalid_input(verifier: BraintreeVerifier,
                                                    body: bytes) -> None:
    with pytest.raises(InvalidInput, match="expected a form") as info:
        verifier.parse_form(body)
    assert not isinstance(info.value, InvalidSignature)


@pytest.mark.parametrize(
    "body", [b"", b"bt_payload=abc", b"bt_signature=pubkey1%7Cx", b"other=1"]
)
def test_a_form_without_both_fields_is_refused(verifier: BraintreeVerifier, body: bytes) -> None:
    with pytest.raises(InvalidSignature, match="missing"):
        verifier.parse_form(body)


def _signed(verifier: BraintreeVerifier, raw: bytes) -> tuple[str, str]:
    payload = base64.encodebytes(raw)
    return braintree_sign("pubkey1", "privkey1", payload), payload.decode()


@pytest.mark.parametrize(
    "raw",
    [
        b"<notification><kind>transaction_settled",  # malformed XML
        b"plain text, not xml",
        b"<other><kind>x</kind></other>",  # no notification element
        b"<notification><kind>transaction_settled</kind></notification>",  # no subject
    ],
)
def test_signed_junk_is_invalid_input(verifier: BraintreeVerifier, raw: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        verifier.parse(*_signed(verifier, raw))
    assert not isinstance(info.value, InvalidSignature)


def test_signed_payment_without_amount_is_invalid_input(verifier: BraintreeVerifier) -> None:
    raw = (
        b'<notification><timestamp type="datetime">2026-11-21T10:00:00Z</timestamp>'
        b"<kind>transaction_settled</kind><subject><transaction><id>t</id>"
        b"<amount>abc</amount></transaction></subject></notification>"
    )
    with pytest.raises(InvalidInput):
        verifier.parse(*_signed(verifier, raw))


def test_huge_unsigned_payload_is_refused_before_parsing(verifier: BraintreeVerifier) -> None:
    payload = base64.encodebytes(b"<notification>" + b"x" * 5_000_000).decode()
    with pytest.raises(InvalidSignature):
        verifier.parse("pubkey1|" + "0" * 40, payload)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("sandbox", "", "pub", "priv"), ConfigurationError),
        (("sandbox", "m", "pub", ""), ConfigurationError),
        (("mars", "m", "pub", "priv"), ConfigurationError),
    ],
)
def test_bad_configuration_is_refused(args: tuple[str, str, str, str], error: type) -> None:
    with pytest.raises(error):
        BraintreeVerifier(*args)
