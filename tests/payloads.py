"""Builders of correctly signed payment notifications, for tests and benchmarks.

Everything here produces what the real provider would send, signed the way the
provider signs it, so the adapters in ``provisioner.adapters.payments`` and
``provisioner.adapters.payments.camt053`` accept it:

Stripe
    ``body = stripe_event("evt_1", "PF-2026-0001", 1234)``;
    ``header = stripe_signature(body, "whsec_test")`` -> ``Stripe-Signature``.
Braintree
    ``gateway = braintree.BraintreeGateway(braintree.Configuration(...))`` (or
    ``BraintreeVerifier(...).gateway``); ``bt_signature, bt_payload =
    braintree_notification(gateway, "transaction_settled", "txn1", "PF-1", "12.34")``.
PayPal
    ``key, cert_pem = make_paypal_signing_cert()``; ``body = paypal_event(...)``;
    ``headers = paypal_headers(body, webhook_id, key, cert_url)``; verify with
    ``PayPalVerifier(webhook_id, fetch_cert=lambda url: cert_pem)``.
Bank
    ``camt053_statement([{"amount": "12.34", "reference": "SI12 2026-0001"}])``
    -> a camt.053.001.02 (or ``version="08"``) document.

Key generation is the slow part (RSA 2048, ~50 ms): reuse one
``make_paypal_signing_cert()`` per test session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
import zlib
from base64 import encodebytes
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "PAYPAL_TEST_CN",
    "braintree_notification",
    "braintree_sign",
    "camt053_document",
    "camt053_statement",
    "make_paypal_signing_cert",
    "paypal_event",
    "paypal_headers",
    "paypal_signature",
    "stripe_event",
    "stripe_signature",
]

# --------------------------------------------------------------------- Stripe


def stripe_event(
    event_id: str,
    proforma: str | None,
    amount_cents: int,
    currency: str = "eur",
    type: str = "payment_intent.succeeded",
    created: int | None = None,
    *,
    txn_id: str | None = None,
    email: str = "payer@example.com",
) -> bytes:
    """The JSON body Stripe POSTs for event ``type``, as bytes.

    ``amount_cents`` is in the currency's minor unit (Stripe's ``amount``).
    ``txn_id`` is the PaymentIntent id (``pi_...``) the object belongs to; it
    defaults to one derived from ``event_id``. For ``charge.*`` events the
    charge id is ``"ch_" + txn_id[3:]``; for ``charge.dispute.created`` the
    dispute id is ``"dp_" + ...``; for Checkout the session is ``"cs_" + ...``.
    """
    created = int(time.time()) if created is None else created
    pi = txn_id or "pi_" + hashlib.sha256(event_id.encode()).hexdigest()[:24]
    suffix = pi.split("_", 1)[-1]
    metadata = {"proforma": proforma} if proforma is not None else {}
    obj: dict[str, Any]
    if type.startswith("payment_intent."):
        obj = {
            "id": pi,
            "object": "payment_intent",
            "amount": amount_cents,
            "amount_received": amount_cents if type.endswith("succeeded") else 0,
            "currency": currency,
            "status": "succeeded" if type.endswith("succeeded") else "requires_payment_method",
            "latest_charge": f"ch_{suffix}",
            "receipt_email": email,
            "metadata": metadata,
            "livemode": False,
        }
    elif type.startswith("checkout.session."):
        obj = {
            "id": f"cs_{suffix}",
            "object": "checkout.session",
            "amount_total": amount_cents,
            "currency": currency,
            "mode": "payment",
            "payment_intent": pi,
            "payment_status": "paid",
            "status": "complete",
            "customer_details": {"email": email},
            "client_reference_id": proforma,
            "metadata": metadata,
            "livemode": False,
        }
    elif type == "charge.dispute.created":
        obj = {
            "id": f"dp_{suffix}",
            "object": "dispute",
            "amount": amount_cents,
            "currency": currency,
            "charge": f"ch_{suffix}",
            "payment_intent": pi,
            "reason": "fraudulent",
            "status": "needs_response",
            "metadata": {},
        }
    else:  # charge.* and anything else: a Charge
        refunded = type == "charge.refunded"
        obj = {
            "id": f"ch_{suffix}",
            "object": "charge",
            "amount": amount_cents,
            "amount_captured": amount_cents,
            "amount_refunded": amount_cents if refunded else 0,
            "refunded": refunded,
            "currency": currency,
            "paid": True,
            "payment_intent": pi,
            "billing_details": {"email": email},
            "metadata": metadata,
            "livemode": False,
        }
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header, ``t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<payload>")>``.

    Identical to the SDK's ``stripe.WebhookSignature.generate_signature_header``.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


# ------------------------------------------------------------------ Braintree


def braintree_notification(
    gateway: Any,
    kind: str,
    txn_id: str,
    proforma: str | None,
    amount: str | Decimal,
    *,
    currency: str = "EUR",
    timestamp: datetime | None = None,
) -> tuple[str, str]:
    """``(bt_signature, bt_payload)`` as Braintree POSTs them, signed with ``gateway``'s keys.

    Builds the notification XML like the SDK's ``webhook_testing`` does, but
    with our ``order_id`` (proforma), amount and currency (the SDK's samples are
    fixed USD 100.00 without an order id). ``kind`` is a Braintree kind:
    ``transaction_settled``, ``transaction_settlement_declined``,
    ``subscription_charged_successfully``, ``dispute_opened`` (``txn_id`` is
    the disputed transaction, the dispute id is ``"dp_" + txn_id``),
    ``disbursement`` (``txn_id`` is the disbursement id), or any other kind
    (sent with a transaction subject).
    """
    stamp = (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    order = (
        f"<order-id>{escape(proforma)}</order-id>"
        if proforma is not None
        else '<order-id nil="true"/>'
    )
    txn_xml = (
        f"<transaction><id>{escape(txn_id)}</id><status>settled</status><type>sale</type>"
        f"<currency-iso-code>{escape(currency)}</currency-iso-code>"
        f"<amount>{escape(str(amount))}</amount>{order}"
        "<merchant-account-id>provisioner_eur</merchant-account-id>"
        "<customer><id>cust1</id><email>payer@example.com</email></customer>"
        "<tax-amount>0</tax-amount></transaction>"
    )
    if kind == "subscription_charged_successfully":
        subject = (
            f'<subscription><id>sub_{escape(txn_id)}</id><transactions type="array">'
            f'{txn_xml}</transactions><add-ons type="array"></add-ons>'
            '<discounts type="array"></discounts></subscription>'
        )
    elif kind.startswith("dispute_"):
        subject = (
            f"<dispute><id>dp_{escape(txn_id)}</id><amount>{escape(str(amount))}</amount>"
            f"<amount-disputed>{escape(str(amount))}</amount-disputed>"
            f"<currency-iso-code>{escape(currency)}</currency-iso-code>"
            "<kind>chargeback</kind><reason>fraud</reason><status>open</status>"
            f"<transaction><id>{escape(txn_id)}</id><amount>{escape(str(amount))}</amount>"
            f"{order}</transaction></dispute>"
        )
    elif kind.startswith("disbursement"):
        subject = (
            f'<disbursement><id>{escape(txn_id)}</id><transaction-ids type="array">'
            '<item>afv56j</item></transaction-ids><success type="boolean">true</success>'
            f"<amount>{escape(str(amount))}</amount>"
            "<merchant-account><id>provisioner_eur</id>"
            f"<currency-iso-code>{escape(currency)}</currency-iso-code>"
            "<status>active</status></merchant-account>"
            '<disbursement-date type="date">2026-11-20</disbursement-date></disbursement>'
        )
    else:
        subject = txn_xml
    xml = (
        f'<notification><timestamp type="datetime">{stamp}</timestamp>'
        f"<kind>{escape(kind)}</kind><subject>{subject}</subject></notification>"
    )
    payload = encodebytes(xml.encode())
    config = gateway.config
    return braintree_sign(config.public_key, config.private_key, payload), payload.decode("ascii")


def braintree_sign(public_key: str, private_key: str, bt_payload: bytes | str) -> str:
    """``bt_signature`` for ``bt_payload``: ``"{public_key}|{hex HMAC-SHA1}"``.

    Braintree keys the HMAC with SHA-1(private key), as its SDK's ``Crypto.sha1_hmac_hash``.
    """
    data = bt_payload.encode("ascii") if isinstance(bt_payload, str) else bt_payload
    key = hashlib.sha1(private_key.encode()).digest()  # noqa: S324 - Braintree's scheme
    return f"{public_key}|{hmac.new(key, data, hashlib.sha1).hexdigest()}"


# --------------------------------------------------------------------- PayPal

PAYPAL_TEST_CN = "messageverificationcerts.paypal.com"


def make_paypal_signing_cert(
    common_name: str = PAYPAL_TEST_CN,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    san_ip: str | None = None,
) -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh RSA-2048 key and a self-signed PEM certificate for it.

    Valid from an hour ago for a day unless told otherwise. ``san_ip`` adds an
    IP subjectAltName so the same certificate can also serve HTTPS on that
    address (tests of the real fetcher).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(hours=1))
        .not_valid_after(not_after or now + timedelta(days=1))
    )
    if san_ip is not None:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
            critical=False,
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return key, cert.public_bytes(serialization.Encoding.PEM)


def paypal_event(
    event_id: str,
    proforma: str | None,
    amount: str | Decimal,
    currency: str = "EUR",
    event_type: str = "PAYMENT.CAPTURE.COMPLETED",
    *,
    capture_id: str = "5TY05013RG002845M",
    refund_id: str = "1Y107995YT783435V",
    create_time: str = "2026-11-21T10:00:00Z",
    use_invoice_id: bool = False,
) -> bytes:
    """A PayPal v2 webhook event body (capture completed, or a refund/reversal of it)."""
    money = {"currency_code": currency, "value": str(amount)}
    base = "https://api-m.paypal.com/v2/payments"
    ids: dict[str, str] = {}
    if proforma is not None:
        ids = {"invoice_id": proforma} if use_invoice_id else {"custom_id": proforma}
    if event_type in ("PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED"):
        resource: dict[str, Any] = {
            "id": refund_id,
            "amount": money,
            "status": "COMPLETED",
            **ids,
            "create_time": create_time,
            "update_time": create_time,
            "links": [
                {"href": f"{base}/refunds/{refund_id}", "rel": "self", "method": "GET"},
                {"href": f"{base}/captures/{capture_id}", "rel": "up", "method": "GET"},
            ],
        }
        resource_type = "refund"
    else:
        resource = {
            "id": capture_id,
            "amount": money,
            "final_capture": True,
            "seller_protection": {"status": "ELIGIBLE"},
            "status": "COMPLETED",
            **ids,
            "create_time": create_time,
            "update_time": create_time,
            "links": [
                {"href": f"{base}/captures/{capture_id}", "rel": "self", "method": "GET"},
                {"href": f"{base}/captures/{capture_id}/refund", "rel": "refund"},
            ],
        }
        resource_type = "capture"
    event = {
        "id": event_id,
        "create_time": create_time,
        "resource_type": resource_type,
        "event_type": event_type,
        "event_version": "1.0",
        "resource_version": "2.0",
        "summary": f"{event_type} {money['value']} {currency}",
        "resource": resource,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def paypal_signature(
    body: bytes, webhook_id: str, key: rsa.RSAPrivateKey, transmission_id: str, time: str
) -> str:
    """Base64 RSA-SHA256 signature of ``"{id}|{time}|{webhook_id}|{crc32(body)}"``."""
    message = f"{transmission_id}|{time}|{webhook_id}|{zlib.crc32(body)}".encode()
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def paypal_headers(
    body: bytes,
    webhook_id: str,
    key: rsa.RSAPrivateKey,
    cert_url: str,
    transmission_id: str | None = None,
    time: str | None = None,
) -> dict[str, str]:
    """The signature headers PayPal sends with ``body`` (names as PayPal spells them).

    ``time`` defaults to now (``2026-11-21T10:00:00Z`` format); ``cert_url`` is
    typically ``"https://api.paypal.com/v1/notifications/certs/CERT-..."``.
    """
    transmission_id = transmission_id or str(uuid.uuid4())
    sent = time or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-TIME": sent,
        "PAYPAL-TRANSMISSION-SIG": paypal_signature(body, webhook_id, key, transmission_id, sent),
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }


# ----------------------------------------------------------------- camt.053


def _el(tag: str, content: str | None, **attrs: str) -> str:
    if content is None:
        return ""
    attr = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    return f"<{tag}{attr}>{content}</{tag}>"


def _t(tag: str, value: object, **attrs: str) -> str:
    return "" if value is None else _el(tag, escape(str(value)), **attrs)


def _tx_details(tx: Mapping[str, Any], entry: Mapping[str, Any], version: str) -> str:
    ccy = tx.get("currency", entry.get("currency", "EUR"))
    credit = tx.get("credit", entry.get("credit", True))
    refs = "".join(
        [
            _t("AcctSvcrRef", tx.get("acct_svcr_ref")),
            _t("EndToEndId", tx.get("end_to_end_id")),
        ]
    )
    amount = tx.get("amount")
    instd = tx.get("instructed_amount")  # (amount, currency)
    if version == "02":
        amt_dtls = ""
        if instd is not None or amount is not None:
            amt_dtls = _el(
                "AmtDtls",
                (_el("InstdAmt", _t("Amt", instd[0], Ccy=instd[1])) if instd else "")
                + (_el("TxAmt", _t("Amt", amount, Ccy=ccy)) if amount is not None else ""),
            )
        amount_xml = amt_dtls
    else:
        amount_xml = _t("Amt", amount, Ccy=ccy) + (
            _t("CdtDbtInd", "CRDT" if credit else "DBIT") if amount is not None else ""
        )
        if instd is not None:
            amount_xml += _el("AmtDtls", _el("InstdAmt", _t("Amt", instd[0], Ccy=instd[1])))

    def party(role: str, name: str | None) -> str:
        if name is None:
            return ""
        nm = _t("Nm", name)
        return _el(role, nm if version == "02" else _el("Pty", nm))

    parties = party("Dbtr", tx.get("debtor_name")) + party("Cdtr", tx.get("creditor_name"))
    iban = tx.get("debtor_iban")
    if iban:
        parties = (
            party("Dbtr", tx.get("debtor_name"))
            + _el("DbtrAcct", _el("Id", _t("IBAN", iban)))
            + party("Cdtr", tx.get("creditor_name"))
        )
    rmt = "".join(_t("Ustrd", u) for u in ([tx["ustrd"]] if tx.get("ustrd") else []))
    if tx.get("reference"):
        rmt += _el(
            "Strd",
            _el(
                "CdtrRefInf",
                _el("Tp", _el("CdOrPrtry", _t("Cd", "SCOR"))) + _t("Ref", tx["reference"]),
            ),
        )
    return _el(
        "TxDtls",
        (_el("Refs", refs) if refs else "")
        + amount_xml
        + (_el("RltdPties", parties) if parties else "")
        + (_el("RmtInf", rmt) if rmt else ""),
    )


def _entry(entry: Mapping[str, Any], version: str) -> str:
    credit = entry.get("credit", True)
    status = entry.get("status", "BOOK")
    booked = entry.get("booking_date", "2026-11-21")
    sts = _t("Sts", status) if version == "02" else _el("Sts", _t("Cd", status))
    bktx = _el(
        "BkTxCd",
        _el(
            "Domn",
            _t("Cd", "PMNT")
            + _el(
                "Fmly",
                _t("Cd", "RCDT" if credit else "ICDT")
                + _t("SubFmlyCd", entry.get("subfamily", "ESCT")),
            ),
        ),
    )
    batch = entry.get("batch")
    if batch:
        txs = [_tx_details(tx, entry, version) for tx in batch]
        btch = _el("Btch", _t("NbOfTxs", len(batch)))
    else:
        single = {k: v for k, v in entry.items() if k != "amount"}
        if "instructed_amount" in entry or version == "02":
            single["amount"] = entry["amount"]
        txs = [_tx_details(single, entry, version)]
        btch = ""
    details = _el("NtryDtls", btch + "".join(txs))
    return _el(
        "Ntry",
        _t("NtryRef", entry.get("ntry_ref"))
        + _t("Amt", entry["amount"], Ccy=entry.get("currency", "EUR"))
        + _t("CdtDbtInd", "CRDT" if credit else "DBIT")
        + (_t("RvslInd", "true") if entry.get("reversal") else "")
        + sts
        + _el("BookgDt", _t("DtTm" if "T" in booked else "Dt", booked))
        + _el("ValDt", _t("Dt", entry.get("value_date", booked[:10])))
        + _t("AcctSvcrRef", entry.get("acct_svcr_ref"))
        + bktx
        + (details if entry.get("details", True) else "")
        + _t("AddtlNtryInf", entry.get("info")),
    )


def _statement(iban: str, entries: Iterable[Mapping[str, Any]], version: str, stmt_id: str) -> str:
    entries = list(entries)
    ccy = "EUR"
    bal = "".join(
        _el(
            "Bal",
            _el("Tp", _el("CdOrPrtry", _t("Cd", code)))
            + _t("Amt", "1000.00", Ccy=ccy)
            + _t("CdtDbtInd", "CRDT")
            + _el("Dt", _t("Dt", "2026-11-21")),
        )
        for code in ("OPBD", "CLBD")
    )
    return _el(
        "Stmt",
        _t("Id", stmt_id)
        + _t("ElctrncSeqNb", 1)
        + _t("CreDtTm", "2026-11-21T23:59:00")
        + _el("FrToDt", _t("FrDtTm", "2026-11-21T00:00:00") + _t("ToDtTm", "2026-11-21T23:59:59"))
        + _el("Acct", _el("Id", _t("IBAN", iban)) + _t("Ccy", ccy))
        + bal
        + "".join(_entry(e, version) for e in entries),
    )


def camt053_document(
    statements: Iterable[tuple[str, Iterable[Mapping[str, Any]]]],
    *,
    version: str = "02",
    msg_id: str = "MSG-2026-11-21",
) -> bytes:
    """A camt.053.001.<version> document with one ``Stmt`` per ``(iban, entries)``.

    ``version`` is ``"02"`` or ``"08"``. See :func:`camt053_statement` for entries.
    """
    if version not in ("02", "08"):
        raise ValueError("version must be '02' or '08'")
    ns = f"urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}"
    stmts = "".join(
        _statement(iban, entries, version, f"STMT-{n}")
        for n, (iban, entries) in enumerate(statements, start=1)
    )
    body = _el(
        "BkToCstmrStmt",
        _el("GrpHdr", _t("MsgId", msg_id) + _t("CreDtTm", "2026-11-22T00:05:00")) + stmts,
    )
    xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Document xmlns="{ns}">{body}</Document>\n'
    return xml.encode()


def camt053_statement(
    entries: list[dict[str, Any]],
    *,
    iban: str = "SI56191000000123438",
    version: str = "02",
) -> bytes:
    """A camt.053 document with one statement for ``iban`` holding ``entries``.

    Each entry is a dict; only ``amount`` is required:

    ``amount`` (str/Decimal, booked amount), ``currency`` ("EUR"), ``credit``
    (True -> CRDT, False -> DBIT), ``reversal`` (False; True adds
    ``RvslInd=true``), ``status`` ("BOOK" or "PDNG"), ``booking_date``
    ("2026-11-21", or a date-time with "T" -> ``DtTm``), ``acct_svcr_ref``,
    ``ntry_ref``, ``end_to_end_id``, ``reference`` (structured creditor
    reference, e.g. "SI12 2026-0001" or "RF18539007547034", in
    ``RmtInf/Strd/CdtrRefInf/Ref``), ``ustrd`` (free text), ``debtor_name``,
    ``debtor_iban``, ``creditor_name``, ``instructed_amount`` ((amount, ccy)),
    ``details`` (False: no ``NtryDtls`` at all), ``info`` (``AddtlNtryInf``),
    and ``batch``: a list of transaction dicts (same keys: ``amount``,
    ``acct_svcr_ref``, ``end_to_end_id``, ``reference``, ``ustrd``,
    ``debtor_name``, ...) making one entry with several ``TxDtls``.
    """
    return camt053_document([(iban, entries)], version=version)
