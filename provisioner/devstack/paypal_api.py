"""Local stand-ins for PayPal, for the tests and the benchmark (a live PayPal cannot run
here): the REST API's two endpoints the provisioner calls, and the host that serves
the webhook signing certificate.

`PayPalApi` speaks the documented JSON of

* ``POST /v1/oauth2/token``: HTTP Basic ``client_id:client_secret``, form body
  ``grant_type=client_credentials`` -> ``{"scope", "access_token", "token_type":
  "Bearer", "app_id", "expires_in", "nonce"}``; wrong credentials -> 401
  ``{"error": "invalid_client", "error_description": "Client Authentication failed"}``;
* ``GET /v2/payments/captures/{capture_id}`` with ``Authorization: Bearer <token>`` ->
  the capture (``id``, ``status``, ``amount: {currency_code, value}``, ``custom_id``,
  ``invoice_id``, ``final_capture``, ``seller_protection``,
  ``seller_receivable_breakdown``, ``links``, ``create_time``, ``update_time``); an
  unknown id -> 404 ``RESOURCE_NOT_FOUND`` / ``INVALID_RESOURCE_ID``; a missing, unknown
  or expired token -> 401 ``invalid_token``.

Plain HTTP on 127.0.0.1 (the production adapter accepts ``http`` for loopback only)::

    with PayPalApi("client", "secret") as api:
        api.add_capture("5TY05013RG002845M", "12.34", "EUR", custom_id="PF-2026-0001")
        settings = settings.with_overrides(paypal_api_base=api.url, ...)

`PayPalCertHost` serves any ``/v1/notifications/certs/...`` path with one PEM over TLS,
standing in for PayPal's pinned certificate host (name it in ``paypal_cert_hosts``,
trust its TLS certificate with ``paypal_ca_file``).
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

from provisioner.devstack.net import ServedInThread

OAUTH_PATH = "/v1/oauth2/token"
CAPTURES_PATH = "/v2/payments/captures/"


@dataclass
class Capture:
    id: str
    value: str
    currency: str = "EUR"
    custom_id: str | None = None
    invoice_id: str | None = None
    status: str = "COMPLETED"

    def as_json(self, base: str) -> dict[str, Any]:
        """The capture as ``GET /v2/payments/captures/{id}`` answers it."""
        fee = (Decimal(self.value) * Decimal("0.0349") + Decimal("0.35")).quantize(Decimal("0.01"))
        money = {"currency_code": self.currency, "value": self.value}
        out: dict[str, Any] = {
            "id": self.id,
            "amount": money,
            "final_capture": True,
            "seller_protection": {"status": "ELIGIBLE",
                                  "dispute_categories": ["ITEM_NOT_RECEIVED",
                                                         "UNAUTHORIZED_TRANSACTION"]},
            "seller_receivable_breakdown": {
                "gross_amount": money,
                "paypal_fee": {"currency_code": self.currency, "value": str(fee)},
                "net_amount": {"currency_code": self.currency,
                               "value": str(Decimal(self.value) - fee)},
            },
            "status": self.status,
            "create_time": "2026-11-21T10:00:00Z",
            "update_time": "2026-11-21T10:00:00Z",
            "links": [
                {"href": f"{base}{CAPTURES_PATH}{self.id}", "rel": "self", "method": "GET"},
                {"href": f"{base}{CAPTURES_PATH}{self.id}/refund", "rel": "refund",
                 "method": "POST"},
            ],
        }
        if self.custom_id is not None:
            out["custom_id"] = self.custom_id
        if self.invoice_id is not None:
            out["invoice_id"] = self.invoice_id
        return out


class PayPalApi(ServedInThread):
    """PayPal's OAuth2 token and captures endpoints, in memory. ``requests`` counts the
    requests by endpoint (``"token"``, ``"capture"``); ``fail_with`` makes every request
    answer that status (a 503 while PayPal is down)."""

    thread_name = "paypal-api"
    _server: ThreadingHTTPServer

    def __init__(self, client_id: str, client_secret: str, *, token_ttl_s: int = 32400,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl_s = token_ttl_s
        self.captures: dict[str, Capture] = {}
        self.tokens: dict[str, float] = {}  # token -> expiry (time.time())
        self.requests: Counter[str] = Counter()
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_capture(self, capture_id: str, value: str, currency: str = "EUR", *,
                    custom_id: str | None = None, invoice_id: str | None = None,
                    status: str = "COMPLETED") -> Capture:
        capture = Capture(capture_id, str(value), currency, custom_id, invoice_id, status)
        with self._lock:
            self.captures[capture_id] = capture
        return capture

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (as PayPal's do after ``expires_in``)."""
        with self._lock:
            self.tokens.clear()


    # -- the endpoints -------------------------------------------------------------------
    def _token(self, authorization: str, form: bytes) -> tuple[int, dict[str, Any]]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {"error": "invalid_client", "error_description": "Client Authentication failed"}
        fields = parse_qs(form.decode("ascii", "replace"))
        if fields.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "Grant Type is NULL or not supported"}
        token = "A21AA" + secrets.token_urlsafe(48)
        with self._lock:
            self.tokens[token] = time.time() + self.token_ttl_s
        return 200, {
            "scope": "https://uri.paypal.com/services/payments/payment/authcapture "
                     "https://uri.paypal.com/services/payments/refund",
            "access_token": token,
            "token_type": "Bearer",
            "app_id": "APP-80W284485P519543T",
            "expires_in": self.token_ttl_s,
            "nonce": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + secrets.token_hex(16),
        }

    def _capture(self, authorization: str, capture_id: str) -> tuple[int, dict[str, Any]]:
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        with self._lock:
            expiry = self.tokens.get(token)
            capture = self.captures.get(capture_id)
        if expiry is None or expiry < time.time():
            return 401, {"error": "invalid_token", "error_description": "Access Token not found in cache"}
        if capture is None:
            return 404, {
                "name": "RESOURCE_NOT_FOUND",
                "details": [{"issue": "INVALID_RESOURCE_ID",
                             "description": "Specified resource ID does not exist. Please check "
                                            "the resource ID and try again."}],
                "message": "The requested resource does not exist.",
                "debug_id": secrets.token_hex(7),
                "links": [{"href": "https://developer.paypal.com/docs/api/payments/v2/"
                                   "#error-INVALID_RESOURCE_ID", "rel": "information_link"}],
            }
        return 200, capture.as_json(self.url)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Paypal-Debug-Id", secrets.token_hex(7))
                self.end_headers()
                self.wfile.write(data)

            def _failing(self) -> bool:
                if api.fail_with is None:
                    return False
                self._answer(api.fail_with, {"name": "SERVICE_UNAVAILABLE",
                                             "message": "Service Unavailable."})
                return True

            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length)
                if self.path != OAUTH_PATH:
                    self._answer(404, {"name": "NOT_FOUND"})
                    return
                with api._lock:
                    api.requests["token"] += 1
                if not self._failing():
                    self._answer(*api._token(self.headers.get("Authorization", ""), form))

            def do_GET(self) -> None:  # noqa: N802 - http.server's API
                if not self.path.startswith(CAPTURES_PATH):
                    self._answer(404, {"name": "NOT_FOUND"})
                    return
                with api._lock:
                    api.requests["capture"] += 1
                if not self._failing():
                    capture_id = unquote(self.path[len(CAPTURES_PATH):])
                    self._answer(*api._capture(self.headers.get("Authorization", ""), capture_id))

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class PayPalCertHost:
    """An HTTPS server on 127.0.0.1 answering every ``/v1/notifications/certs/...`` GET
    with ``signing_pem`` (anything else: 404). ``tls_cert_pem``/``tls_key_pem`` are its
    own TLS certificate and key (give ``ca_file`` to the verifier as ``paypal_ca_file``)."""

    def __init__(self, signing_pem: bytes, tls_cert_pem: bytes, tls_key_pem: bytes) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="paypal-cert-host-"))
        self.ca_file = str(self._dir / "tls.pem")
        key_file = self._dir / "tls.key"
        Path(self.ca_file).write_bytes(tls_cert_pem)
        key_file.touch(0o600)
        key_file.write_bytes(tls_key_pem)
        self.fetches = 0
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's API
                host.fetches += 1
                ok = self.path.startswith("/v1/notifications/certs/")
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-pem-file")
                self.send_header("Content-Length", str(len(signing_pem) if ok else 0))
                self.end_headers()
                if ok:
                    self.wfile.write(signing_pem)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="paypal-cert-host")

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, as ``paypal_cert_hosts`` names it."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def cert_url(self, name: str = "CERT-local") -> str:
        return f"https://{self.host}/v1/notifications/certs/{name}"

    def __enter__(self) -> PayPalCertHost:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        for path in self._dir.iterdir():
            path.unlink()
        self._dir.rmdir()
