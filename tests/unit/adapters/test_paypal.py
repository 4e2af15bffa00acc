"""PayPal webhook self-verification (signing certificate) and parsing."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from provisioner.adapters.payments.paypal import PayPalVerifier, parse_paypal
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature, TransientError
from tests.payloads import make_paypal_signing_cert, paypal_event, paypal_headers

WEBHOOK_ID = "8PT597110X687430LKGECATA"
CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77"
NOW = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
SENT = "2026-11-21T10:00:00Z"


@pytest.fixture(scope="module")
def signing() -> tuple[rsa.RSAPrivateKey, bytes]:
    return make_paypal_signing_cert(
        not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=30)
    )


class Fetcher:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.pem


@pytest.fixture
def fetcher(signing: tuple[rsa.RSAPrivateKey, bytes]) -> Fetcher:
    return Fetcher(signing[1])


@pytest.fixture
def verifier(fetcher: Fetcher) -> PayPalVerifier:
    return PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp)


@pytest.fixture
def body() -> bytes:
    return paypal_event("WH-58D329510W468432D-8HN650336L201105X", "PF-2026-0001", "12.34")


def headers_for(body: bytes, key: rsa.RSAPrivateKey, **kw: str) -> dict[str, str]:
    return paypal_headers(body, WEBHOOK_ID, key, kw.pop("cert_url", CERT_URL), time=SENT, **kw)


def test_good_signature_is_accepted_and_parsed(
    verifier: PayPalVerifier, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    verifier.verify(headers_for(body, signing[0]), body)
    notice = parse_paypal(body)
    assert notice.provider == "paypal"
    assert notice.event_id == "WH-58D329510W468432D-8HN650336L201105X"
    assert notice.kind == "payment"
    assert notice.txn_id == "5TY05013RG002845M"
    assert notice.amount == Decimal("12.34")
    assert notice.currency == "EUR"
    assert notice.proforma == "PF-2026-0001"
    assert notice.occurred_at == NOW
    assert notice.raw == body


def test_header_names_are_case_insensitive(
    verifier: PayPalVerifier, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    headers = {k.lower(): v for k, v in headers_for(body, signing[0]).items()}
    headers = {k.title() if "sig" in k else k: v for k, v in headers.items()}
    verifier.verify(headers, body)


def test_certificate_is_fetched_once_and_cached(
    verifier: PayPalVerifier, fetcher: Fetcher, signing: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    for n in range(3):
        b = paypal_event(f"WH-{n}", "PF-1", "1.00")
        verifier.verify(headers_for(b, signing[0]), b)
    assert fetcher.urls == [CERT_URL]


def test_certificate_cache_is_bounded(
    fetcher: Fetcher, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp, cache_size=2)
    for n in range(5):
        url = f"{CERT_URL}-{n}"
        verifier.verify(headers_for(body, signing[0], cert_url=url), body)
    assert len(verifier._cache) == 2


def test_forged_signature_is_refused(verifier: PayPalVerifier, body: bytes) -> None:
    forger, _ = make_paypal_signing_cert()
    with pytest.raises(InvalidSignature, match="does not match"):
        verifier.verify(headers_for(body, forger), body)


def test_modified_body_is_refused(
    verifier: PayPalVerifier, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    headers = headers_for(body, signing[0])
    with pytest.raises(InvalidSignature):
        verifier.verify(headers, body.replace(b"12.34", b"99.99"))


def test_other_webhook_id_is_refused(
    fetcher: Fetcher, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    other = PayPalVerifier("OTHERWEBHOOKID", fetch_cert=fetcher, clock=NOW.timestamp)
    with pytest.raises(InvalidSignature):
        other.verify(headers_for(body, signing[0]), body)


@pytest.mark.parametrize("skew", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_stale_or_future_transmission_time_is_refused(
    verifier: PayPalVerifier,
    signing: tuple[rsa.RSAPrivateKey, bytes],
    body: bytes,
    skew: timedelta,
) -> None:
    sent = (NOW + skew).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = paypal_headers(body, WEBHOOK_ID, signing[0], CERT_URL, time=sent)
    with pytest.raises(InvalidSignature, match="skew"):
        verifier.verify(headers, body)


def test_skew_is_configurable(
    fetcher: Fetcher, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    lenient = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp, max_skew=900)
    sent = (NOW - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lenient.verify(paypal_headers(body, WEBHOOK_ID, signing[0], CERT_URL, time=sent), body)


@pytest.mark.parametrize(
    "header",
    [
        "PAYPAL-TRANSMISSION-ID",
        "PAYPAL-TRANSMISSION-TIME",
        "PAYPAL-TRANSMISSION-SIG",
        "PAYPAL-CERT-URL",
        "PAYPAL-AUTH-ALGO",
    ],
)
def test_missing_header_is_refused(
    verifier: PayPalVerifier, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes, header: str
) -> None:
    headers = headers_for(body, signing[0])
    del headers[header]
    with pytest.raises(InvalidSignature, match="missing"):
        verifier.verify(headers, body)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("PAYPAL-AUTH-ALGO", "SHA1withRSA"),
        ("PAYPAL-TRANSMISSION-SIG", "not base64!!"),
        ("PAYPAL-TRANSMISSION-TIME", "yesterday"),
        ("PAYPAL-TRANSMISSION-TIME", "2026-11-21T10:00:00"),
    ],
)
def test_malformed_header_is_refused(
    verifier: PayPalVerifier,
    signing: tuple[rsa.RSAPrivateKey, bytes],
    body: bytes,
    header: str,
    value: str,
) -> None:
    headers = headers_for(body, signing[0])
    headers[header] = value
    with pytest.raises(InvalidSignature):
        verifier.verify(headers, body)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.paypal.com/v1/notifications/certs/CERT-1",
        "https://evil.example/v1/notifications/certs/CERT-1",
        "https://api.paypal.com.evil.example/v1/notifications/certs/CERT-1",
        "https://api.paypal.com:8443/v1/notifications/certs/CERT-1",
        "https://user@api.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com/v1/oauth2/token",
        "https://api.paypal.com/v1/notifications/certs/CERT-1?x=1",
        "https://api.paypal.com/v1/notifications/certs/../../oauth2/token",
        "https://api.paypal.com/v1/notifications/certs/%2e%2e/%2e%2e/oauth2/token",
        "https://api.paypal.com/v1/notifications/certs/",
        "file:///etc/passwd",
        "not a url",
    ],
)
def test_cert_url_outside_the_allow_list_is_refused_without_fetching(
    verifier: PayPalVerifier,
    fetcher: Fetcher,
    signing: tuple[rsa.RSAPrivateKey, bytes],
    body: bytes,
    url: str,
) -> None:
    with pytest.raises(InvalidSignature):
        verifier.verify(headers_for(body, signing[0], cert_url=url), body)
    assert fetcher.urls == []


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (NOW + timedelta(hours=1), NOW + timedelta(days=1)),
        (NOW - timedelta(days=2), NOW - timedelta(seconds=1)),
    ],
)
def test_certificate_outside_its_validity_is_refused(
    body: bytes, not_before: datetime, not_after: datetime
) -> None:
    key, pem = make_paypal_signing_cert(not_before=not_before, not_after=not_after)
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=Fetcher(pem), clock=NOW.timestamp)
    with pytest.raises(InvalidSignature, match="not currently valid"):
        verifier.verify(headers_for(body, key), body)


def test_certificate_with_another_subject_is_refused(body: bytes) -> None:
    key, pem = make_paypal_signing_cert(
        "attacker.example", not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1)
    )
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=Fetcher(pem), clock=NOW.timestamp)
    with pytest.raises(InvalidSignature, match="CN"):
        verifier.verify(headers_for(body, key), body)


def test_subject_cn_is_configurable(body: bytes) -> None:
    key, pem = make_paypal_signing_cert(
        "signer.test", not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1)
    )
    verifier = PayPalVerifier(
        WEBHOOK_ID,
        fetch_cert=Fetcher(pem),
        clock=NOW.timestamp,
        allowed_subject_cns=["signer.test"],
    )
    verifier.verify(headers_for(body, key), body)


def test_non_certificate_is_refused(body: bytes, signing: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=Fetcher(b"<html>"), clock=NOW.timestamp)
    with pytest.raises(InvalidSignature):
        verifier.verify(headers_for(body, signing[0]), body)


def test_fetch_failure_is_transient(body: bytes, signing: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    def down(url: str) -> bytes:
        raise TransientError("down")

    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=down, clock=NOW.timestamp)
    with pytest.raises(TransientError):
        verifier.verify(headers_for(body, signing[0]), body)


def test_huge_body_is_verified_by_its_crc(
    verifier: PayPalVerifier, signing: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    body = paypal_event("WH-big", "PF-1", "1.00")[:-1] + b',"pad":"' + b"x" * 2_000_000 + b'"}'
    verifier.verify(headers_for(body, signing[0]), body)
    assert parse_paypal(body).amount == Decimal("1.00")


@pytest.mark.parametrize("kwargs", [{"webhook_id": ""}, {"allowed_cert_hosts": []}])
def test_bad_configuration_is_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"webhook_id": WEBHOOK_ID, **kwargs}
    with pytest.raises(ConfigurationError):
        PayPalVerifier(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------- parsing


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b"\xff", b'{"id": "WH-1"}'])
def test_malformed_json_is_invalid_input(payload: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_paypal(payload)


def test_invoice_id_is_the_fallback_proforma() -> None:
    notice = parse_paypal(paypal_event("WH-2", "PF-7", "5.00", use_invoice_id=True))
    assert notice.proforma == "PF-7"


@pytest.mark.parametrize("event_type", ["PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED"])
def test_refund_and_reversal_reverse_the_capture(event_type: str) -> None:
    body = paypal_event("WH-3", "PF-1", "12.34", event_type=event_type, capture_id="CAP1")
    notice = parse_paypal(body)
    assert notice.kind == "reversal"
    assert notice.reverses_txn == "CAP1"
    assert notice.txn_id == "1Y107995YT783435V"
    assert notice.amount == Decimal("12.34")


@pytest.mark.parametrize(
    "event_type", ["PAYMENT.CAPTURE.PENDING", "CHECKOUT.ORDER.APPROVED", "PAYMENT.CAPTURE.DENIED"]
)
def test_other_events_are_ignored(event_type: str) -> None:
    assert parse_paypal(paypal_event("WH-4", "PF-1", "1", event_type=event_type)).kind == "ignored"


def test_non_eur_currency_is_parsed() -> None:
    notice = parse_paypal(paypal_event("WH-5", "PF-1", "1500", currency="JPY"))
    assert (notice.amount, notice.currency) == (Decimal("1500"), "JPY")


@pytest.mark.parametrize("value", ["abc", "-1.00", "NaN", ""])
def test_bad_amount_is_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput):
        parse_paypal(paypal_event("WH-6", "PF-1", value))


# ------------------------------------------------------- the real HTTPS fetcher


class _CertHandler(BaseHTTPRequestHandler):
    pem = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's API
        if self.path.startswith("/v1/notifications/certs/CERT-"):
            self.send_response(200)
            self.send_header("Content-Type", "application/x-pem-file")
            self.send_header("Content-Length", str(len(self.pem)))
            self.end_headers()
            self.wfile.write(self.pem)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def cert_server(
    tmp_path: Path, signing: tuple[rsa.RSAPrivateKey, bytes]
) -> Iterator[tuple[str, str]]:
    tls_key, tls_pem = make_paypal_signing_cert("127.0.0.1", san_ip="127.0.0.1")
    cert_file = tmp_path / "server.pem"
    key_file = tmp_path / "server.key"
    cert_file.write_bytes(tls_pem)
    key_file.write_bytes(
        tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    handler = type("Handler", (_CertHandler,), {"pem": signing[1]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", str(cert_file)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_real_fetcher_over_local_https(
    cert_server: tuple[str, str], signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    host, ca_file = cert_server
    verifier = PayPalVerifier(WEBHOOK_ID, [host], ca_file=ca_file, clock=NOW.timestamp)
    url = f"https://{host}/v1/notifications/certs/CERT-local"
    verifier.verify(headers_for(body, signing[0], cert_url=url), body)


def test_real_fetcher_refuses_an_untrusted_server(
    cert_server: tuple[str, str], signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    host, _ = cert_server
    verifier = PayPalVerifier(WEBHOOK_ID, [host], clock=NOW.timestamp)  # system CAs only
    url = f"https://{host}/v1/notifications/certs/CERT-local"
    with pytest.raises(TransientError):
        verifier.verify(headers_for(body, signing[0], cert_url=url), body)


def test_real_fetcher_result_is_still_checked(
    cert_server: tuple[str, str], signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    host, ca_file = cert_server
    verifier = PayPalVerifier(
        WEBHOOK_ID, [host], ca_file=ca_file, clock=NOW.timestamp, allowed_subject_cns=["x"]
    )
    url = f"https://{host}/v1/notifications/certs/CERT-local"
    with pytest.raises(InvalidSignature, match="CN"):
        verifier.verify(headers_for(body, signing[0], cert_url=url), body)


def test_real_fetcher_turns_404_into_invalid_signature(
    cert_server: tuple[str, str], signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    host, ca_file = cert_server
    verifier = PayPalVerifier(WEBHOOK_ID, [host], ca_file=ca_file, clock=NOW.timestamp)
    url = f"https://{host}/v1/notifications/certs/missing"
    with pytest.raises(InvalidSignature, match="404"):
        verifier.verify(headers_for(body, signing[0], cert_url=url), body)


def test_real_fetcher_network_failure_is_transient(
    signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    verifier = PayPalVerifier(WEBHOOK_ID, ["127.0.0.1:9"], clock=NOW.timestamp)
    url = "https://127.0.0.1:9/v1/notifications/certs/CERT-local"
    with pytest.raises(TransientError):
        verifier.verify(headers_for(body, signing[0], cert_url=url), body)
