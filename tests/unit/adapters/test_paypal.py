"""PayPal webhook self-verification (signing certificate) and parsing."""

from __future__ import annotations

import base64
import dataclasses
import json
import ssl
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from provisioner.adapters.payments import PaymentNotice
from provisioner.adapters.payments.paypal import PayPalCaptures, PayPalVerifier, parse_paypal
from provisioner.devstack.paypal_api import PayPalApi
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


# ------------------------------------------- CRC32 forgery (finding High 1)


def forge_crc(prefix: bytes, suffix: bytes, target: int) -> bytes:
    """Four bytes ``x`` with ``zlib.crc32(prefix + x + suffix) == target``.

    CRC32 is affine over GF(2) for messages of one length, so the CRC as a function of
    the 32 bits of ``x`` is ``base ^ A·x``; solve ``A·x = target ^ base`` by Gaussian
    elimination (the standard CRC forcing; appending is the case ``suffix == b""``)."""
    zero = b"\0\0\0\0"
    base = zlib.crc32(prefix + zero + suffix)
    # one equation per CRC bit: (row over the 32 unknown bits, right-hand side bit)
    columns = [zlib.crc32(prefix + (1 << k).to_bytes(4, "little") + suffix) ^ base
               for k in range(32)]
    want = target ^ base
    rows = [(sum(((columns[k] >> bit) & 1) << k for k in range(32)), (want >> bit) & 1)
            for bit in range(32)]
    solution = 0
    pivots: list[tuple[int, int, int]] = []
    for k in range(32):
        pick = next(i for i, (row, _) in enumerate(rows) if (row >> k) & 1)
        row, rhs = rows.pop(pick)
        rows = [(r ^ row, b ^ rhs) if (r >> k) & 1 else (r, b) for r, b in rows]
        pivots = [(pk, pr ^ row, pb ^ rhs) if (pr >> k) & 1 else (pk, pr, pb)
                  for pk, pr, pb in pivots]
        pivots.append((k, row, rhs))
    for k, _, rhs in pivots:
        solution |= rhs << k
    forged = solution.to_bytes(4, "little")
    assert zlib.crc32(prefix + forged + suffix) == target
    return forged


def crc_forged_body(captured: bytes, event_id: str, proforma: str, amount: str,
                    capture_id: str) -> bytes:
    """A PayPal event of our choosing (another event, capture, proforma and amount) whose
    CRC32 is the captured body's: four bytes inside a JSON string restore it. The four
    bytes must be printable for the JSON to parse, so a nonce varies until they are."""
    target = zlib.crc32(captured)
    event = json.loads(paypal_event(event_id, proforma, amount, capture_id=capture_id))
    for nonce in range(100_000):
        text = json.dumps(event, separators=(",", ":"))[:-1] + f',"pad":"{nonce}'
        x = forge_crc(text.encode(), b'"}', target)
        if all(0x20 <= c < 0x7F and c not in b'"\\' for c in x):
            body = text.encode() + x + b'"}'
            assert json.loads(body)["resource"]["custom_id"] == proforma
            return body
    raise AssertionError("no printable CRC patch found")


def test_a_body_recrafted_to_a_captured_crc_still_verifies(
    verifier: PayPalVerifier, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    """Why the signature alone cannot be trusted with the amount: PayPal signs the CRC32
    of the body, and any body can be given the CRC of a captured one."""
    headers = headers_for(body, signing[0])
    forged = crc_forged_body(body, "WH-FORGED", "PF-2026-0099", "1500.00", "FORGEDCAPTURE01")
    verifier.verify(headers, forged)
    notice = parse_paypal(forged)
    assert (notice.proforma, notice.amount, notice.txn_id) == (
        "PF-2026-0099", Decimal("1500.00"), "FORGEDCAPTURE01")


# ------------------------------- cheap checks first; failures cached (Medium 4)


class FailingFetcher:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        raise self.error


def garbage_headers(body: bytes, n: int, cert_url: str = CERT_URL) -> dict[str, str]:
    return {
        "PAYPAL-TRANSMISSION-ID": f"garbage-{n}",
        "PAYPAL-TRANSMISSION-TIME": SENT,
        "PAYPAL-TRANSMISSION-SIG": base64.b64encode(b"x" * 256).decode(),
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }


@pytest.mark.parametrize("answer", [
    InvalidSignature("PayPal certificate URL answered 404"),
    TransientError("cannot fetch the PayPal certificate: ConnectError"),
], ids=["404", "down"])
def test_100_garbage_deliveries_naming_a_failing_certificate_url_fetch_it_at_most_once(
    body: bytes, answer: Exception
) -> None:
    fetcher = FailingFetcher(answer)
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp)
    for n in range(100):
        with pytest.raises(type(answer)):
            verifier.verify(garbage_headers(body, n), body)
    assert len(fetcher.urls) <= 1


def test_100_garbage_deliveries_naming_a_url_that_gives_no_certificate_fetch_it_at_most_once(
    body: bytes,
) -> None:
    fetcher = Fetcher(b"<html>not a certificate</html>")
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp)
    for n in range(100):
        with pytest.raises(InvalidSignature):
            verifier.verify(garbage_headers(body, n), body)
    assert len(fetcher.urls) <= 1


def test_100_garbage_deliveries_naming_a_good_certificate_fetch_it_once(
    verifier: PayPalVerifier, fetcher: Fetcher, body: bytes
) -> None:
    for n in range(100):
        with pytest.raises(InvalidSignature, match="does not match"):
            verifier.verify(garbage_headers(body, n), body)
    assert fetcher.urls == [CERT_URL]


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_a_failed_certificate_url_is_fetched_again_after_a_minute(body: bytes) -> None:
    fetcher = FailingFetcher(InvalidSignature("PayPal certificate URL answered 404"))
    clock = Clock(NOW.timestamp())
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=clock, max_skew=900)
    with pytest.raises(InvalidSignature):
        verifier.verify(garbage_headers(body, 1), body)
    clock.now += 30
    with pytest.raises(InvalidSignature, match="failed"):
        verifier.verify(garbage_headers(body, 2), body)
    assert len(fetcher.urls) == 1
    clock.now += 31
    with pytest.raises(InvalidSignature):
        verifier.verify(garbage_headers(body, 3), body)
    assert len(fetcher.urls) == 2


def test_certificate_downloads_are_bounded_per_minute(body: bytes) -> None:
    """Distinct certificate paths on a pinned host cannot make us fetch without limit."""
    fetcher = FailingFetcher(InvalidSignature("PayPal certificate URL answered 404"))
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp,
                              max_fetches_per_minute=5)
    refused = 0
    for n in range(50):
        try:
            verifier.verify(garbage_headers(body, n, cert_url=f"{CERT_URL}-{n}"), body)
        except TransientError:
            refused += 1
        except InvalidSignature:
            pass
    assert len(fetcher.urls) == 5
    assert refused == 45


@pytest.mark.parametrize(("header", "value"), [
    ("PAYPAL-TRANSMISSION-SIG", "not base64!!"),
    ("PAYPAL-TRANSMISSION-TIME", "2026-11-21T09:00:00Z"),
    ("PAYPAL-AUTH-ALGO", "SHA1withRSA"),
], ids=["signature-not-base64", "stale-time", "other-algorithm"])
def test_a_delivery_failing_a_cheap_check_fetches_nothing(
    fetcher: Fetcher, body: bytes, header: str, value: str
) -> None:
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp)
    headers = garbage_headers(body, 1)
    headers[header] = value
    with pytest.raises(InvalidSignature):
        verifier.verify(headers, body)
    assert fetcher.urls == []


def test_a_transmission_seen_before_is_refused_before_any_fetch(
    fetcher: Fetcher, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    used = {"T-USED"}
    verifier = PayPalVerifier(WEBHOOK_ID, fetch_cert=fetcher, clock=NOW.timestamp,
                              seen=used.__contains__)
    with pytest.raises(InvalidSignature, match="used before"):
        verifier.verify(headers_for(body, signing[0], transmission_id="T-USED"), body)
    assert fetcher.urls == []
    verifier.verify(headers_for(body, signing[0], transmission_id="T-NEW"), body)


def test_verify_names_the_transmission_and_how_long_it_must_be_remembered(
    verifier: PayPalVerifier, signing: tuple[rsa.RSAPrivateKey, bytes], body: bytes
) -> None:
    transmission = verifier.verify(headers_for(body, signing[0], transmission_id="T-1"), body)
    assert transmission.id == "T-1"
    assert transmission.expires_at == NOW + timedelta(seconds=300)


# ------------------------- PayPal's REST API confirms the capture (finding High 1)

CLIENT = ("client-id-1", "client-secret-1")


@pytest.fixture
def api() -> Iterator[PayPalApi]:
    with PayPalApi(*CLIENT) as server:
        yield server


@pytest.fixture
def captures(api: PayPalApi) -> Iterator[PayPalCaptures]:
    client = PayPalCaptures(api.url, *CLIENT)
    yield client
    client.close()


def paid(proforma: str = "PF-2026-0001", amount: str = "12.34", currency: str = "EUR",
         capture_id: str = "5TY05013RG002845M") -> PaymentNotice:
    return parse_paypal(paypal_event("WH-1", proforma, amount, currency, capture_id=capture_id))


def test_a_completed_capture_of_the_same_amount_and_proforma_is_confirmed(
    api: PayPalApi, captures: PayPalCaptures
) -> None:
    api.add_capture("5TY05013RG002845M", "12.34", "EUR", custom_id="PF-2026-0001")
    confirmed = captures.confirm(paid(amount="12.340"))
    assert (confirmed.amount, confirmed.currency, confirmed.proforma) == (
        Decimal("12.34"), "EUR", "PF-2026-0001")
    assert api.requests == {"token": 1, "capture": 1}


def test_the_invoice_id_names_the_proforma_when_there_is_no_custom_id(
    api: PayPalApi, captures: PayPalCaptures
) -> None:
    api.add_capture("5TY05013RG002845M", "12.34", "EUR", invoice_id="PF-2026-0001")
    assert captures.confirm(paid()).proforma == "PF-2026-0001"


@pytest.mark.parametrize(("capture", "why"), [
    ({}, "knows no capture"),
    ({"status": "PENDING"}, "status is PENDING"),
    ({"status": "REFUNDED"}, "status is REFUNDED"),
    ({"value": "1500.00"}, "PayPal says 1500.00 EUR"),
    ({"currency": "USD"}, "PayPal says 12.34 USD"),
    ({"custom_id": "PF-2026-0002"}, "names proforma 'PF-2026-0002'"),
], ids=["unknown", "pending", "refunded", "other-amount", "other-currency", "other-proforma"])
def test_a_capture_paypal_does_not_confirm_is_invalid_input(
    api: PayPalApi, captures: PayPalCaptures, capture: dict[str, str], why: str
) -> None:
    if capture:
        values = {"value": "12.34", "currency": "EUR", "custom_id": "PF-2026-0001",
                  "status": "COMPLETED", **capture}
        api.add_capture("5TY05013RG002845M", values["value"], values["currency"],
                        custom_id=values["custom_id"], status=values["status"])
    with pytest.raises(InvalidInput, match=why):
        captures.confirm(paid())


def test_the_token_is_reused_until_it_is_about_to_expire(api: PayPalApi) -> None:
    clock = Clock(1000.0)
    api.token_ttl_s = 600
    client = PayPalCaptures(api.url, *CLIENT, clock=clock)
    api.add_capture("5TY05013RG002845M", "12.34", "EUR", custom_id="PF-2026-0001")
    try:
        for _ in range(3):
            client.confirm(paid())
        assert api.requests == {"token": 1, "capture": 3}
        clock.now += 541  # within a minute of its 600 s: renewed before PayPal drops it
        client.confirm(paid())
        assert api.requests == {"token": 2, "capture": 4}
    finally:
        client.close()


def test_a_token_paypal_stops_taking_is_replaced_once(
    api: PayPalApi, captures: PayPalCaptures
) -> None:
    api.add_capture("5TY05013RG002845M", "12.34", "EUR", custom_id="PF-2026-0001")
    captures.confirm(paid())
    api.expire_tokens()
    captures.confirm(paid())
    assert api.requests == {"token": 2, "capture": 3}


@pytest.mark.parametrize("status", [503, 500, 429])
def test_paypal_not_answering_is_transient(
    api: PayPalApi, captures: PayPalCaptures, status: int
) -> None:
    api.fail_with = status
    with pytest.raises(TransientError, match=str(status)):
        captures.confirm(paid())


def test_paypal_unreachable_is_transient_and_not_asked_again_for_a_while() -> None:
    """A batch of payments waiting for PayPal is not held up by one timeout each."""
    clock = Clock(1000.0)
    client = PayPalCaptures("http://127.0.0.1:9", *CLIENT, timeout=2, clock=clock)
    try:
        with pytest.raises(TransientError, match="cannot reach"):
            client.confirm(paid())
        clock.now += 10
        with pytest.raises(TransientError, match="not asked again for 5 s"):
            client.confirm(paid())
        clock.now += 6
        with pytest.raises(TransientError, match="cannot reach"):
            client.confirm(paid())
    finally:
        client.close()


def test_credentials_paypal_refuses_are_a_configuration_error(api: PayPalApi) -> None:
    client = PayPalCaptures(api.url, CLIENT[0], "wrong-secret")
    try:
        with pytest.raises(ConfigurationError, match="client credentials"):
            client.confirm(paid())
    finally:
        client.close()


@pytest.mark.parametrize("capture_id", ["../../v1/oauth2/token", "5TY0 5013", "", "x" * 65])
def test_a_capture_id_that_is_not_one_is_refused_without_asking(
    api: PayPalApi, captures: PayPalCaptures, capture_id: str
) -> None:
    notice = dataclasses.replace(paid(), txn_id=capture_id)
    with pytest.raises(InvalidInput, match="not a PayPal capture id"):
        captures.confirm(notice)
    assert api.requests == {}


def test_other_providers_and_refunds_pass_unchanged(captures: PayPalCaptures, api: PayPalApi) -> None:
    stripe = dataclasses.replace(paid(), provider="stripe")
    refund = parse_paypal(paypal_event("WH-9", "PF-1", "1.00", event_type="PAYMENT.CAPTURE.REFUNDED"))
    assert captures.confirm(stripe) is stripe
    assert captures.confirm(refund) is refund
    assert api.requests == {}


@pytest.mark.parametrize("base", ["http://api-m.paypal.com", "ftp://127.0.0.1", "not a url",
                                  "https://api-m.paypal.com?x=1"])
def test_the_api_base_must_be_https_unless_on_loopback(base: str) -> None:
    with pytest.raises(ConfigurationError, match="paypal_api_base"):
        PayPalCaptures(base, *CLIENT)


def test_the_api_needs_client_credentials() -> None:
    with pytest.raises(ConfigurationError, match="paypal_client_id"):
        PayPalCaptures("https://api-m.paypal.com", "", "")
