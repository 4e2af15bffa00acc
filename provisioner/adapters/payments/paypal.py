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

The cheap checks (headers, algorithm, time, base64, URL, and the transmission id not
seen before) come before anything is downloaded. Certificates are cached, and so are
failures: a URL whose download or certificate failed is refused without a download for
``failure_ttl`` seconds, and downloads are bounded per minute (over the bound the
delivery gets a TransientError, 503, and PayPal retries).

A valid signature does not make the body PayPal's: any body can be given the CRC32 of a
signed one. So a transmission is used once (`verify` returns it; the caller records its
id with the notification, `provisioner.store.webhooks`), and a payment settles only
after `PayPalCaptures.confirm` has PayPal's REST API confirm the capture
(``GET /v2/payments/captures/{id}``: COMPLETED, same amount, currency and proforma).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import re
import ssl
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

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
MAX_TRANSMISSION_ID = 200  # the column that records it (PayPal's are UUIDs)


@dataclass(frozen=True)
class Transmission:
    """A verified delivery's transmission: its id, which may be used once, and until
    when it must be remembered (its time plus the allowed skew; later the time check
    refuses its headers anyway)."""

    id: str
    expires_at: datetime


@dataclass(frozen=True)
class _Cert:
    key: rsa.RSAPublicKey
    not_before: float
    not_after: float


@dataclass(frozen=True)
class _Failure:
    """A certificate URL that failed: refused without a download until ``until``."""

    at: float
    until: float
    error: InvalidSignature | TransientError

    def again(self, now: float) -> InvalidSignature | TransientError:
        return type(self.error)(f"{self.error} (failed {now - self.at:.0f} s ago; not "
                                f"downloaded again for {self.until - now:.0f} s)")


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
        seen: Callable[[str], bool] | None = None,
        failure_ttl: float = 60.0,
        max_fetches_per_minute: int = 10,
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
        self._failures: OrderedDict[str, _Failure] = OrderedDict()
        self._failure_ttl = failure_ttl
        self._fetched_at: deque[float] = deque()  # download attempts in the last minute
        self._max_fetches = max(1, max_fetches_per_minute)
        self._seen = seen
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()  # one download at a time (they are rare)

    def verify(self, headers: Mapping[str, str], body: bytes) -> Transmission:
        """The transmission, when ``body`` was signed by PayPal for our webhook, else raise.

        InvalidSignature for anything wrong with the transmission (a transmission id
        ``seen`` before included); TransientError when the certificate cannot be
        downloaded right now. The caller records the returned id with the notification.
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
        if ("|" in transmission_id or "|" in transmission_time
                or len(transmission_id) > MAX_TRANSMISSION_ID):
            raise InvalidSignature("malformed PayPal transmission headers")

        now = self.clock()
        sent = _parse_time(transmission_time)
        if abs(now - sent.timestamp()) > self.max_skew:
            raise InvalidSignature("PayPal transmission time is outside the allowed skew")

        try:
            signature = base64.b64decode(values[_H_SIG], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidSignature("PAYPAL-TRANSMISSION-SIG is not base64") from exc

        self._check_url(values[_H_CERT])
        if self._seen is not None and self._seen(transmission_id):
            # logged (rate-limited) and counted by the webhook that refuses it
            raise InvalidSignature(f"PayPal transmission {transmission_id!r} was used before")

        cert = self._certificate(values[_H_CERT], now)
        message = f"{transmission_id}|{transmission_time}|{self.webhook_id}|{zlib.crc32(body)}"
        try:
            cert.key.verify(signature, message.encode(), padding.PKCS1v15(), hashes.SHA256())
        except CryptoInvalidSignature as exc:
            raise InvalidSignature("PayPal signature does not match") from exc
        return Transmission(transmission_id, sent + timedelta(seconds=self.max_skew))

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
        cert = self._cached(url, now)
        if cert is None:
            with self._fetch_lock:
                cert = self._cached(url, now)  # another request may have fetched it
                if cert is None:
                    cert = self._download(url, now)
        if not cert.not_before <= now <= cert.not_after:
            raise InvalidSignature("the PayPal signing certificate is not currently valid")
        return cert

    def _cached(self, url: str, now: float) -> _Cert | None:
        """The cached certificate, None when there is none; a recent failure raises."""
        with self._lock:
            cert = self._cache.get(url)
            if cert is not None:
                self._cache.move_to_end(url)
                return cert
            failure = self._failures.get(url)
            if failure is not None and now < failure.until:
                raise failure.again(now)
        return None

    def _download(self, url: str, now: float) -> _Cert:
        with self._lock:
            while self._fetched_at and self._fetched_at[0] <= now - 60:
                self._fetched_at.popleft()
            if len(self._fetched_at) >= self._max_fetches:
                raise TransientError(f"more than {self._max_fetches} PayPal certificate "
                                     "downloads in a minute; try again later")
            self._fetched_at.append(now)
        try:
            cert = self._load(self._fetch(url))
        except (InvalidSignature, TransientError) as exc:
            with self._lock:
                self._failures[url] = _Failure(now, now + self._failure_ttl, exc)
                self._failures.move_to_end(url)
                while len(self._failures) > self._cache_size:
                    self._failures.popitem(last=False)
            raise
        with self._lock:
            self._failures.pop(url, None)
            self._cache[url] = cert
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
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


# ------------------------------------------------------- PayPal's REST API


OAUTH_PATH = "/v1/oauth2/token"
CAPTURE_PATH = "/v2/payments/captures/"
# PayPal's capture ids are 17 upper-case letters and digits; anything else is not one
# (and never reaches a URL path).
_CAPTURE_ID_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class Capture:
    """A captured payment as PayPal's API reports it."""

    id: str
    status: str
    amount: Decimal
    currency: str
    proforma: str | None  # custom_id, else invoice_id (as `parse_paypal` reads a webhook)


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PayPalCaptures:
    """PayPal's REST API, for one thing: confirming a capture before its payment settles.

    ``GET {api_base}/v2/payments/captures/{id}`` with an OAuth2 client-credentials token
    (``POST {api_base}/v1/oauth2/token``), cached until shortly before it expires and
    fetched again when PayPal stops taking it. The base URL must be https, or http on a
    loopback address (a local stand-in); redirects are not followed.

    Errors: TransientError when PayPal cannot answer now (network, timeout, 429, 5xx, an
    unreadable answer; after a network failure or timeout PayPal is not asked again for
    ``retry_after_s``, so a batch of payments waiting for it is not held up by one timeout
    each); ConfigurationError when it refuses our credentials (401/403);
    InvalidInput when the capture is not confirmed (unknown id, not COMPLETED, amount,
    currency or proforma differ): such a payment is recorded for ops, never settled.
    """

    def __init__(self, api_base: str, client_id: str, client_secret: str, *,
                 timeout: float = 10.0, ca_file: str | None = None, retry_after_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not client_id or not client_secret:
            raise ConfigurationError("PayPal's API needs paypal_client_id and paypal_client_secret")
        parts = urlsplit(api_base)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
            raise ConfigurationError(f"paypal_api_base is not an https URL: {api_base!r}")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ConfigurationError("paypal_api_base must be https (http only on a loopback "
                                     f"address): {api_base!r}")
        self.api_base = api_base.rstrip("/")
        self._auth = (client_id, client_secret)
        self._clock = clock
        self._client = httpx.Client(verify=ssl.create_default_context(cafile=ca_file),
                                    timeout=timeout, follow_redirects=False,
                                    headers={"Accept": "application/json"})
        self._token: tuple[str, float] | None = None  # (token, monotonic expiry)
        self._token_lock = threading.Lock()
        self._retry_after_s = retry_after_s
        self._unreachable: tuple[float, float] | None = None  # (when it failed, until)

    def close(self) -> None:
        self._client.close()

    def confirm(self, notice: PaymentNotice) -> PaymentNotice:
        """``notice`` with PayPal's own amount, currency and proforma, when PayPal's API
        confirms its capture as COMPLETED with the same ones; else InvalidInput saying
        what differs. Other providers' notices and non-payments pass unchanged."""
        if notice.provider != PROVIDER or notice.kind != PAYMENT:
            return notice
        capture = self.capture(notice.txn_id or "")
        problems = []
        if capture.status != "COMPLETED":
            problems.append(f"its status is {capture.status}")
        if capture.amount != notice.amount or capture.currency != (notice.currency or "").upper():
            problems.append(f"PayPal says {capture.amount} {capture.currency}, "
                            f"the notification {notice.amount} {notice.currency}")
        if capture.proforma != notice.proforma:
            problems.append(f"PayPal names proforma {capture.proforma!r}, "
                            f"the notification {notice.proforma!r}")
        if problems:
            raise InvalidInput(f"PayPal does not confirm capture {capture.id}: "
                               + "; ".join(problems))
        return dataclasses.replace(notice, amount=capture.amount, currency=capture.currency,
                                   proforma=capture.proforma)

    def capture(self, capture_id: str) -> Capture:
        if not _CAPTURE_ID_RE.match(capture_id):
            raise InvalidInput(f"not a PayPal capture id: {capture_id!r}")
        url = f"{self.api_base}{CAPTURE_PATH}{quote(capture_id, safe='')}"
        token = self._access_token()
        response = self._send("GET", url, headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 401:  # expired or revoked early: one new token, once
            self._drop_token(token)
            token = self._access_token()
            response = self._send("GET", url, headers={"Authorization": f"Bearer {token}"})
        status = response.status_code
        if status == 404:
            raise InvalidInput(f"PayPal knows no capture {capture_id}")
        if status in (401, 403):
            raise ConfigurationError(f"PayPal refused to show capture {capture_id} ({status}): "
                                     "check paypal_client_id and paypal_client_secret")
        self._raise_for_retryable(status, "capture")
        if status != 200:
            raise InvalidInput(f"PayPal answered {status} for capture {capture_id}: "
                               f"{response.text[:200]}")
        return _capture_from(self._json(response, "capture"), capture_id)

    def _access_token(self) -> str:
        with self._token_lock:
            now = self._clock()
            if self._token is not None and now < self._token[1]:
                return self._token[0]
            response = self._send("POST", f"{self.api_base}{OAUTH_PATH}", auth=self._auth,
                                  data={"grant_type": "client_credentials"})
            if response.status_code in (400, 401, 403):
                raise ConfigurationError(f"PayPal refused our client credentials "
                                         f"({response.status_code}): check paypal_client_id "
                                         "and paypal_client_secret")
            self._raise_for_retryable(response.status_code, "OAuth2 token")
            data = self._json(response, "OAuth2 token")
            token, expires_in = data.get("access_token"), data.get("expires_in")
            if (response.status_code != 200 or not isinstance(token, str) or not token
                    or not isinstance(expires_in, int) or isinstance(expires_in, bool)):
                raise TransientError(f"PayPal's OAuth2 token answer is not usable "
                                     f"({response.status_code})")
            # renewed a little before PayPal lets it expire
            self._token = (token, now + max(0.0, expires_in - min(60.0, expires_in / 10)))
            return token

    def _drop_token(self, token: str) -> None:
        with self._token_lock:
            if self._token is not None and self._token[0] == token:
                self._token = None

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        now = self._clock()
        failed = self._unreachable
        if failed is not None and now < failed[1]:
            raise TransientError(f"PayPal's API was unreachable {now - failed[0]:.0f} s ago; "
                                 f"not asked again for {failed[1] - now:.0f} s")
        try:
            return self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self._unreachable = (now, now + self._retry_after_s)
            raise TransientError(f"cannot reach PayPal's API: {exc!r}") from exc

    @staticmethod
    def _raise_for_retryable(status: int, what: str) -> None:
        if status == 429 or status >= 500:
            raise TransientError(f"PayPal's API answered {status} for the {what}")

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise TransientError(f"PayPal's {what} answer is not JSON") from exc
        if not isinstance(data, dict):
            raise TransientError(f"PayPal's {what} answer is not a JSON object")
        return data


def _capture_from(data: Mapping[str, Any], capture_id: str) -> Capture:
    amount = data.get("amount")
    if data.get("id") != capture_id or not isinstance(amount, dict):
        raise InvalidInput(f"PayPal's answer for capture {capture_id} has another id or no amount")
    return Capture(
        id=capture_id,
        status=_opt_str(data.get("status")) or "",
        amount=decimal_amount(amount.get("value"), what="PayPal capture amount.value"),
        currency=currency_code(amount.get("currency_code")),
        proforma=_opt_str(data.get("custom_id")) or _opt_str(data.get("invoice_id")),
    )


__all__ = [
    "DEFAULT_CERT_HOSTS",
    "DEFAULT_SUBJECT_CNS",
    "PROVIDER",
    "Capture",
    "PayPalCaptures",
    "PayPalVerifier",
    "Transmission",
    "https_fetcher",
    "parse_paypal",
]
