"""A local stand-in for Stripe's refunds API, for the tests and the demo (a live Stripe
cannot run here). It speaks the documented API the SDK (stripe-python) calls:

* ``POST /v1/refunds``, form-encoded, ``Authorization: Bearer <secret key>``:
  ``payment_intent`` (or ``charge``), ``amount`` (minor units; default: what is left),
  ``reason``, ``metadata[...]`` -> the Refund object (``id`` ``re_...``, ``object:
  "refund"``, ``amount``, ``currency``, ``payment_intent``, ``charge``, ``status:
  "succeeded"``, ``metadata``, ``created``, ...). Errors as Stripe gives them:
  ``{"error": {"type", "code", "message", "param"}}``: 401 without a valid key, 400
  ``resource_missing`` for an unknown PaymentIntent, ``amount_too_large`` above what is
  left, ``charge_already_refunded`` when nothing is left.
* ``Idempotency-Key`` (https://docs.stripe.com/api/idempotent_requests): the first
  answer for a key is kept and replayed for a retry with the same parameters
  (``Idempotent-Replayed: true``); the same key with other parameters is refused with
  400 ``idempotency_error``. So a retried refund never refunds twice.

``hang_up_after_refund`` makes the next refund happen and then closes the connection
without answering (a crash between the refund and its record, as seen by the caller).
Plain HTTP on 127.0.0.1; the adapter is pointed at it with stripe's ``api_base``::

    with StripeApi("sk_test_local") as api:
        api.add_payment_intent("pi_123", 5990, "eur")
        settings = settings.with_overrides(stripe_api_base=api.url, stripe_secret_key=...)
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from provisioner.devstack.net import ServedInThread

REFUNDS_PATH = "/v1/refunds"


@dataclass
class PaymentIntent:
    id: str
    amount: int  # minor units
    currency: str = "eur"
    charge: str = field(default_factory=lambda: "ch_" + secrets.token_hex(12))
    refunded: int = 0


def _error(status: int, kind: str, message: str, code: str | None = None,
           param: str | None = None) -> tuple[int, dict[str, Any]]:
    err: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        err["code"] = code
        err["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        err["param"] = param
    return status, {"error": err}


class StripeApi(ServedInThread):
    """Stripe's refunds endpoint in memory. ``refunds`` holds every refund made;
    ``requests`` counts the POSTs; ``fail_with`` answers every request with that status."""

    thread_name = "stripe-api"
    _server: ThreadingHTTPServer

    def __init__(self, api_key: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.intents: dict[str, PaymentIntent] = {}
        self.refunds: list[dict[str, Any]] = []
        self.requests: Counter[str] = Counter()
        self.fail_with: int | None = None
        self.hang_up_after_refund = False
        self._idempotent: dict[str, tuple[list[tuple[str, str]], int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_payment_intent(self, intent_id: str, amount: int, currency: str = "eur") -> PaymentIntent:
        intent = PaymentIntent(intent_id, amount, currency.lower())
        with self._lock:
            self.intents[intent_id] = intent
        return intent


    # -- the endpoint ----------------------------------------------------------------------
    def _authorized(self, authorization: str) -> bool:
        return authorization == f"Bearer {self.api_key}"

    def _refund(self, params: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        values = dict(params)
        metadata = {k[len("metadata["):-1]: v for k, v in params
                    if k.startswith("metadata[") and k.endswith("]")}
        intent_id = values.get("payment_intent")
        intent = None
        if intent_id is not None:
            intent = self.intents.get(intent_id)
            if intent is None:
                return _error(400, "invalid_request_error", f"No such payment_intent: '{intent_id}'",
                              "resource_missing", "payment_intent")
        elif "charge" in values:
            intent = next((i for i in self.intents.values() if i.charge == values["charge"]), None)
            if intent is None:
                return _error(400, "invalid_request_error", f"No such charge: '{values['charge']}'",
                              "resource_missing", "charge")
        else:
            return _error(400, "invalid_request_error",
                          "One of the following params should be provided for this request: "
                          "payment_intent or charge.", "parameter_missing")
        left = intent.amount - intent.refunded
        if left <= 0:
            return _error(400, "invalid_request_error",
                          f"Charge {intent.charge} has already been refunded.",
                          "charge_already_refunded")
        try:
            amount = int(values["amount"]) if "amount" in values else left
        except ValueError:
            return _error(400, "invalid_request_error", "Invalid integer: " + values["amount"],
                          "parameter_invalid_integer", "amount")
        if amount <= 0:
            return _error(400, "invalid_request_error", "Invalid positive integer",
                          "parameter_invalid_integer", "amount")
        if amount > left:
            return _error(400, "invalid_request_error",
                          f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                          f"({left})", "amount_too_large", "amount")
        intent.refunded += amount
        refund = {
            "id": "re_" + secrets.token_hex(12), "object": "refund", "amount": amount,
            "balance_transaction": "txn_" + secrets.token_hex(12), "charge": intent.charge,
            "created": int(time.time()), "currency": intent.currency, "destination_details": None,
            "metadata": metadata, "payment_intent": intent.id, "reason": values.get("reason"),
            "receipt_number": None, "source_transfer_reversal": None, "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds.append(refund)
        return 200, refund

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _answer(self, status: int, payload: dict[str, Any],
                        replayed: bool = False) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", "req_" + secrets.token_hex(7))
                if replayed:
                    self.send_header("Idempotent-Replayed", "true")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                with api._lock:
                    api.requests["refunds"] += 1
                    if api.fail_with is not None:
                        status, payload = _error(api.fail_with, "api_error",
                                                 "An unknown error occurred")
                        self._answer(status, payload)
                        return
                    if self.path != REFUNDS_PATH:
                        self._answer(*_error(404, "invalid_request_error",
                                             f"Unrecognized request URL (POST: {self.path})."))
                        return
                    if not api._authorized(self.headers.get("Authorization", "")):
                        self._answer(*_error(401, "invalid_request_error",
                                             "Invalid API Key provided."))
                        return
                    params = sorted(parse_qsl(body, keep_blank_values=True))
                    key = self.headers.get("Idempotency-Key")
                    if key is not None and key in api._idempotent:
                        first, status, payload = api._idempotent[key]
                        if first != params:
                            self._answer(*_error(
                                400, "idempotency_error",
                                "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with. Try using a key other "
                                f"than '{key}' if you meant to execute a different request."))
                            return
                        self._answer(status, payload, replayed=True)
                        return
                    status, payload = api._refund(params)
                    if key is not None:
                        api._idempotent[key] = (params, status, payload)
                    hang_up = api.hang_up_after_refund and status == 200
                    if hang_up:
                        api.hang_up_after_refund = False
                if hang_up:  # the refund is made; the caller never hears of it
                    self.close_connection = True
                    return
                self._answer(status, payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
