"""Braintree and PayPal notifications through the live API: verified with the
provider's scheme (the Braintree SDK; PayPal's signing certificate fetched over
HTTPS from a pinned host), matched, and refused when forged."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from provisioner.adapters.payments.braintree import BraintreeVerifier
from tests.integration.test_live import counts, new_order, wait_done
from tests.payloads import (
    braintree_notification,
    make_paypal_signing_cert,
    paypal_event,
    paypal_headers,
)

BT = {"braintree_merchant_id": "merchant1", "braintree_public_key": "pubkey1",
      "braintree_private_key": "privkey1"}
WEBHOOK_ID = "WH-TEST-1"


def test_braintree_settlement_pays_and_forgery_is_refused(stack_factory, sqlite_url) -> None:
    stack = stack_factory(sqlite_url, **BT)
    order = new_order(stack)
    p = order["proforma"]
    gateway = BraintreeVerifier("sandbox", BT["braintree_merchant_id"], BT["braintree_public_key"],
                                BT["braintree_private_key"]).gateway
    signature, payload = braintree_notification(gateway, "transaction_settled", "bt_txn_1",
                                                p["number"], p["gross"])
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=stack.api, timeout=30) as c:
        good = c.post("/webhooks/braintree", headers=form,
                      content=urlencode({"bt_signature": signature, "bt_payload": payload}))
        again = c.post("/webhooks/braintree", headers=form,
                       content=urlencode({"bt_signature": signature, "bt_payload": payload}))
        forged = c.post("/webhooks/braintree", headers=form, content=urlencode(
            {"bt_signature": "pubkey1|" + "0" * 40, "bt_payload": payload}))
    assert good.status_code == 200 and good.json()["status"] == "accepted", good.text
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert forged.status_code == 400
    wait_done(stack, order["order"])
    assert counts(stack)["invoices"] == 1


class _CertHandler(BaseHTTPRequestHandler):
    pem = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's API
        self.send_response(200)
        self.send_header("Content-Type", "application/x-pem-file")
        self.send_header("Content-Length", str(len(self.pem)))
        self.end_headers()
        self.wfile.write(self.pem)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def paypal_cert_host(tmp_path: Path) -> Iterator[tuple[str, str, object]]:
    """An HTTPS server on 127.0.0.1 standing in for PayPal's certificate host: it
    serves the signing certificate (PayPal's subject name, self-signed)."""
    key, pem = make_paypal_signing_cert(san_ip="127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "cert.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_CertHandler,), {"pem": pem}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", str(cert_file), key
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_paypal_capture_pays_and_unpinned_or_forged_is_refused(
    stack_factory, sqlite_url, paypal_cert_host
) -> None:
    host, ca_file, key = paypal_cert_host
    stack = stack_factory(sqlite_url, paypal_webhook_id=WEBHOOK_ID, paypal_cert_hosts=host,
                          paypal_ca_file=ca_file)
    order = new_order(stack)
    p = order["proforma"]
    body = paypal_event("WH-EVT-1", p["number"], p["gross"])
    cert_url = f"https://{host}/v1/notifications/certs/CERT-test"
    other_key, _ = make_paypal_signing_cert()
    with httpx.Client(base_url=stack.api, timeout=30) as c:
        good = c.post("/webhooks/paypal", content=body,
                      headers=paypal_headers(body, WEBHOOK_ID, key, cert_url))
        forged = c.post("/webhooks/paypal", content=body,
                        headers=paypal_headers(body, WEBHOOK_ID, other_key, cert_url))
        unpinned = c.post("/webhooks/paypal", content=body, headers=paypal_headers(
            body, WEBHOOK_ID, key, "https://evil.example/v1/notifications/certs/CERT-test"))
    assert good.status_code == 200 and good.json()["status"] == "accepted", good.text
    assert forged.status_code == 400
    assert unpinned.status_code == 400
    wait_done(stack, order["order"])
    assert counts(stack)["payments"] == 1
