"""PayPal webhooks, verified locally against PayPal's signing certificate.

This is PayPal's documented "self-verify" method (what its Java SDK and the
webhook guides do), without the ``verify-webhook-signature`` API round trip:

1. ``PAYPAL-AUTH-ALGO`` must be ``SHA256withRSA``.
2. ``PAYPAL-CERT-URL`` must be ``https://<pinned host>/v1/notifications/certs/...``
   (no user info, query or fragment); the host (``host[:port]``) must be
   exactly one of ``allowed_cert_hosts``. The certificate is downloaded over
   verified TLS from that pinned host, which is what makes it PayPal's; it is
   cached by URL (bounded LRU) and must be currently valid with a subject CN in
   ``allowed_subject_cns`` (PayPal's ``messageverificationcerts[.sandbox].paypal.com``).
   The chain inside the PEM bundle is not re-validated against a CA.
3. ``PAYPAL-TRANSMISSION-TIME`` must be within ``max_skew`` seconds of now.
4. ``PAYPAL-TRANSMISSION-SIG`` (base64) must be the RSA PKCS#1 v1.5 SHA-256
   signature, by the certificate's key, of
   ``f"{transmission_id}|{transmission_time}|{webhook_id}|{zlib.crc32(body)}"``
   (CRC32 of the exact body bytes as an unsigned decimal).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from provisioner.adapters.payments import (
    IGNORED,
    PAYMENT,
    REVERSAL,
    PaymentNotice,
    currency_code,
    decimal_amount,
)
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature, TransientError

PROVIDER = "paypal"

DEFAULT_CERT_HOSTS: tuple[str, ...] = (
    "api.paypal.com",
    "api-m.paypal.com",
    "api.sandbox.paypal.com",
    "api-m.sandbox.paypal.com",
)
DEFAULT_SUBJECT_CNS: tuple[str, ...] = (
    "messageverificationcerts.paypal.com",
    "messageverificationcerts.sandbox.paypal.com",
)
CERT_PATH_PREFIX = "/v1/notifications/certs/"
_CERT_PATH_RE = re.compile(r"^/v1/notifications/certs/(?!\.)[A-Za-z0-9._-]{1,200}$")
AUTH_ALGO = "SHA256withRSA"
MAX_CERT_BYTES = 64 * 1024

_H_ID = "paypal-transmission-id"
_H_TIME = "paypal-transmission-time"
_H_SIG = "paypal-transmission-sig"
_H_CERT = "paypal-cert-url"
_H_ALGO = "paypal-auth-algo"


@dataclass(frozen=True)
class _Cert:
    key: rsa.RSAPublicKey
    not_before: float
    not_after: float


def https_fetcher(
    ca_file: str | None = None, timeout: float = 5.0, max_bytes: int = MAX_CERT_BYTES
) -> Callable[[str], bytes]:
    """A certificate fetcher: GET over verified TLS, no redirects, size-capped.

    Network failures and 5xx answers raise TransientError; a 4xx answer or an
    over-size body raises InvalidSignature (the URL cannot give a certificate).
    """
    context = ssl.create_default_context(cafile=ca_file)

    def fetch(url: str) -> bytes:
        try:
            with (
                httpx.Client(verify=context, timeout=timeout, follow_redirects=False) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code >= 500:
                    raise TransientError(f"PayPal certificate URL answered {response.status_code}")
                if response.status_code != 200:
                    raise InvalidSignature(
                        f"PayPal certificate URL answered {response.status_code}"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise InvalidSignature("PayPal certificate is larger than allowed")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise TransientError(f"cannot fetch the PayPal certificate: {exc!r}") from exc

    return fetch


class PayPalVerifier:
    """Verifies PayPal webhook transmissions for one webhook id."""

    def __init__(
        self,
        webhook_id: str,
        allowed_cert_hosts: Sequence[str] = DEFAULT_CERT_HOSTS,
        fetch_cert: Callable[[str], bytes] | None = None,
        ca_file: str | None = None,
        clock: Callable[[], float] = time.time,
        *,
        max_skew: int = 300,
        allowed_subject_cns: Sequence[str] = DEFAULT_SUBJECT_CNS,
        cache_size: int = 32,
        fetch_timeout: float = 5.0,
    ) -> None:
        if not webhook_id or not webhook_id.strip():
            raise ConfigurationError("the PayPal webhook id is not configured")
        if isinstance(allowed_cert_hosts, str) or not allowed_cert_hosts:
            raise ConfigurationError("allowed_cert_hosts must be a non-empty list of hosts")
        if isinstance(allowed_subject_cns, str) or not allowed_subject_cns:
            raise ConfigurationError("allowed_subject_cns must be a non-empty list of names")
        self.webhook_id = webhook_id
        self.allowed_cert_hosts = frozenset(h.lower() for h in allowed_cert_hosts)
        self.allowed_subject_cns = frozenset(allowed_subject_cns)
        self.max_skew = max_skew
        self.clock = clock
        self._fetch = fetch_cert or https_fetcher(ca_file=ca_file, timeout=fetch_timeout)
        self._cache: OrderedDict[str, _Cert] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Return None when ``body`` was signed by PayPal for our webhook, else raise.

        InvalidSignature for anything wrong with the transmission; TransientError
        when the certificate cannot be downloaded right now.
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        values = {}
        for name in (_H_ID, _H_TIME, _H_SIG, _H_CERT, _H_ALGO):
            value = lowered.get(name)
            if not value or not value.strip():
                raise InvalidSignature(f"missing {name.upper()} header")
            values[name] = value.strip()

        if values[_H_ALGO].lower() != AUTH_ALGO.lower():
            raise InvalidSignature(f"unsupported PAYPAL-AUTH-ALGO {values[_H_ALGO]!r}")
        transmission_id = values[_H_ID]
        transmission_time = values[_H_TIME]
        if "|" in transmission_id or "|" in transmission_time:
            raise InvalidSignature("malformed PayPal transmission headers")

        now = self.clock()
        sent = _parse_time(transmission_time)
        if abs(now - sent.timestamp()) > self.max_skew:
            raise InvalidSignature("PayPal transmission time is outside the allowed skew")

        try:
            signature = base64.b64decode(values[_H_SIG], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidSignature("PAYPAL-TRANSMISSION-SIG is not base64") from exc

        cert = self._certificate(values[_H_CERT], now)
        message = f"{transmission_id}|{transmission_time}|{self.webhook_id}|{zlib.crc32(body)}"
        try:
            cert.key.verify(signature, message.encode(), padding.PKCS1v15(), hashes.SHA256())
        except CryptoInvalidSignature as exc:
            raise InvalidSignature("PayPal signature does not match") from exc

    def _check_url(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            raise InvalidSignature("PAYPAL-CERT-URL is not a URL") from exc
        del port
        if (
            parts.scheme != "https"
            or parts.username is not None
            or parts.password is not None
            or parts.query
            or parts.fragment
            or not _CERT_PATH_RE.match(parts.path)
        ):
            raise InvalidSignature("PAYPAL-CERT-URL is not a PayPal certificate URL")
        if parts.netloc.lower() not in self.allowed_cert_hosts:
            raise InvalidSignature(f"PAYPAL-CERT-URL host {parts.netloc!r} is not allowed")

    def _certificate(self, url: str, now: float) -> _Cert:
        self._check_url(url)
        with self._lock:
            cert = self._cache.get(url)
            if cert is not None:
                self._cache.move_to_end(url)
        if cert is None:
            cert = self._load(self._fetch(url))
            with self._lock:
                self._cache[url] = cert
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if not cert.not_before <= now <= cert.not_after:
            raise InvalidSignature("the PayPal signing certificate is not currently valid")
        return cert

    def _load(self, pem: bytes) -> _Cert:
        try:
            chain = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise InvalidSignature("PAYPAL-CERT-URL did not give a PEM certificate") from exc
        leaf = chain[0]
        names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if not any(name in self.allowed_subject_cns for name in names):
            raise InvalidSignature(f"PayPal certificate subject CN {names!r} is not allowed")
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidSignature("PayPal certificate key is not RSA")
        return _Cert(
            key=key,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
        )


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidSignature("PAYPAL-TRANSMISSION-TIME is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise InvalidSignature("PAYPAL-TRANSMISSION-TIME has no time zone")
    return parsed.astimezone(UTC)


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _capture_id_from_links(resource: Mapping[str, Any]) -> str | None:
    """The capture a refund belongs to: its ``rel: up`` link ``.../captures/{id}``."""
    links = resource.get("links")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("rel") == "up":
            href = _opt_str(link.get("href"))
            if href and "/captures/" in href:
                return href.rstrip("/").rsplit("/", 1)[-1] or None
    return None


def parse_paypal(body: bytes) -> PaymentNotice:
    """Turn a (verified) PayPal webhook event into a PaymentNotice.

    ``PAYMENT.CAPTURE.COMPLETED`` (capture status COMPLETED) pays;
    ``PAYMENT.CAPTURE.REFUNDED`` and ``PAYMENT.CAPTURE.REVERSED`` reverse the
    capture named by the refund's ``up`` link (else the resource id); every other
    event type is ignored. ``proforma`` is ``custom_id``, else ``invoice_id``.
    """
    try:
        event = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"PayPal payload is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InvalidInput("PayPal payload is not a JSON object")
    event_id = _opt_str(event.get("id"))
    event_type = _opt_str(event.get("event_type"))
    if event_id is None or event_type is None:
        raise InvalidInput("PayPal event has no id or event_type")
    resource = event.get("resource")
    if not isinstance(resource, dict):
        raise InvalidInput("PayPal event has no resource object")
    occurred_at = _iso(resource.get("create_time")) or _iso(event.get("create_time"))
    proforma = _opt_str(resource.get("custom_id")) or _opt_str(resource.get("invoice_id"))
    resource_id = _opt_str(resource.get("id"))

    reversal = event_type in ("PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED")
    paying = event_type == "PAYMENT.CAPTURE.COMPLETED" and resource.get("status") in (
        None,
        "COMPLETED",
    )
    if not (paying or reversal):
        return PaymentNotice(
            provider=PROVIDER,
            event_id=event_id,
            kind=IGNORED,
            txn_id=resource_id,
            amount=None,
            currency=None,
            proforma=proforma,
            reference=None,
            payer=None,
            occurred_at=occurred_at,
            raw=bytes(body),
        )

    if resource_id is None:
        raise InvalidInput(f"PayPal {event_type} resource has no id")
    amount = resource.get("amount")
    if not isinstance(amount, dict):
        raise InvalidInput(f"PayPal {event_type} resource has no amount")
    payer = resource.get("payer")
    payer_email = _opt_str(payer.get("email_address")) if isinstance(payer, dict) else None
    return PaymentNotice(
        provider=PROVIDER,
        event_id=event_id,
        kind=REVERSAL if reversal else PAYMENT,
        txn_id=resource_id,
        amount=decimal_amount(amount.get("value"), what="PayPal amount.value"),
        currency=currency_code(amount.get("currency_code")),
        proforma=proforma,
        reference=None,
        payer=payer_email,
        occurred_at=occurred_at,
        reverses_txn=(_capture_id_from_links(resource) or resource_id) if reversal else None,
        raw=bytes(body),
    )


__all__ = [
    "DEFAULT_CERT_HOSTS",
    "DEFAULT_SUBJECT_CNS",
    "PROVIDER",
    "PayPalVerifier",
    "https_fetcher",
    "parse_paypal",
]
