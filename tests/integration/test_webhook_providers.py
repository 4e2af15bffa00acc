"""Braintree and PayPal notifications through the live API: verified with the
provider's scheme (the Braintree SDK; PayPal's signing certificate fetched over
HTTPS from a pinned host), matched, and refused when forged. A PayPal payment settles
only after PayPal's REST API (the devstack's stand-in) confirms the capture, and a
PayPal transmission is used once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from provisioner.adapters.payments.braintree import BraintreeVerifier
from provisioner.config import Settings
from provisioner.devstack.paypal_api import PayPalApi, PayPalCertHost
from provisioner.errors import ConfigurationError
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import store_batch
from provisioner.store.db import session_factory, transaction, upgrade
from provisioner.store.models import AuditEntry, Notification, Proforma
from provisioner.store.webhooks import PayPalTransmission, PayPalTransmissions
from tests.helpers import Stack, stripe_notice, wire
from tests.integration.test_live import counts, new_order, wait_done
from tests.payloads import (
    braintree_notification,
    make_paypal_signing_cert,
    paypal_event,
    paypal_headers,
)
from tests.servers import wait_for
from tests.unit.adapters.test_paypal import crc_forged_body

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


PAYPAL_CLIENT = ("AYSq3RDGsmBLJE-otTkBtM-jBRd1TCQwFf9RGfwddNXWz0uFU9zt",
                 "EGnHDxD_qRPdaLdZz8iCr8N7_MzF-YHPTkjs6NKYQvQSBngp4PTT")
CAPTURE = "5TY05013RG002845M"


@pytest.fixture(scope="module")
def paypal_signing() -> tuple[rsa.RSAPrivateKey, bytes]:
    """PayPal's signing key and certificate (its subject name, self-signed); the same
    certificate serves the stand-in certificate host's TLS on 127.0.0.1."""
    return make_paypal_signing_cert(san_ip="127.0.0.1")


@pytest.fixture
def paypal_cert_host(paypal_signing: tuple[rsa.RSAPrivateKey, bytes]) -> Iterator[PayPalCertHost]:
    key, pem = paypal_signing
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with PayPalCertHost(pem, pem, key_pem) as host:
        yield host


@pytest.fixture
def paypal_api() -> Iterator[PayPalApi]:
    with PayPalApi(*PAYPAL_CLIENT) as api:
        yield api


def paypal_settings(cert_host: PayPalCertHost, api: PayPalApi) -> dict[str, Any]:
    return {"paypal_webhook_id": WEBHOOK_ID, "paypal_cert_hosts": cert_host.host,
            "paypal_ca_file": cert_host.ca_file, "paypal_api_base": api.url,
            "paypal_client_id": PAYPAL_CLIENT[0], "paypal_client_secret": PAYPAL_CLIENT[1]}


def proforma_state(stack: Stack, number: str) -> str:
    factory = session_factory(stack.settings.effective_database_url)
    with transaction(factory) as s:
        return s.execute(select(Proforma.state).where(Proforma.number == number)).scalar_one()


def notification_states(stack: Stack) -> dict[str, str]:
    factory = session_factory(stack.settings.effective_database_url)
    with transaction(factory) as s:
        return dict(s.execute(select(Notification.event_id, Notification.status)
                              .where(Notification.provider == "paypal")).all())


def rejections(stack: Stack) -> list[str]:
    """The details of the refused deliveries' audit rows (rate-limited per address)."""
    factory = session_factory(stack.settings.effective_database_url)
    with transaction(factory) as s:
        return [e.detail["detail"] for e in s.execute(select(AuditEntry).where(
            AuditEntry.action == "webhook.rejected").order_by(AuditEntry.id)).scalars()]


def test_paypal_capture_pays_and_unpinned_or_forged_is_refused(
    stack_factory, sqlite_url, paypal_cert_host, paypal_api, paypal_signing
) -> None:
    stack = stack_factory(sqlite_url, **paypal_settings(paypal_cert_host, paypal_api))
    order = new_order(stack)
    p = order["proforma"]
    paypal_api.add_capture(CAPTURE, p["gross"], custom_id=p["number"])
    body = paypal_event("WH-EVT-1", p["number"], p["gross"], capture_id=CAPTURE)
    cert_url = paypal_cert_host.cert_url("CERT-test")
    key = paypal_signing[0]
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
    assert paypal_api.requests["capture"] == 1  # settled after PayPal confirmed it


def test_a_replayed_paypal_delivery_is_refused_and_records_nothing(
    stack_factory, sqlite_url, paypal_cert_host, paypal_api, paypal_signing
) -> None:
    """One captured header set is good for one body, once: the same delivery again, and
    a body re-crafted to its CRC under the same headers, are both refused."""
    stack = stack_factory(sqlite_url, **paypal_settings(paypal_cert_host, paypal_api))
    victim, target = new_order(stack), new_order(stack)
    p, q = victim["proforma"], target["proforma"]
    paypal_api.add_capture(CAPTURE, p["gross"], custom_id=p["number"])
    body = paypal_event("WH-EVT-1", p["number"], p["gross"], capture_id=CAPTURE)
    headers = paypal_headers(body, WEBHOOK_ID, paypal_signing[0], paypal_cert_host.cert_url())
    forged = crc_forged_body(body, "WH-EVT-FORGED", q["number"], q["gross"], CAPTURE)
    with httpx.Client(base_url=stack.api, timeout=30) as c:
        good = c.post("/webhooks/paypal", content=body, headers=headers)
        replayed = c.post("/webhooks/paypal", content=body, headers=headers)
        recrafted = c.post("/webhooks/paypal", content=forged, headers=headers)
    assert good.status_code == 200 and good.json()["status"] == "accepted", good.text
    assert replayed.status_code == 400, replayed.text
    assert recrafted.status_code == 400, recrafted.text
    wait_done(stack, victim["order"])
    assert counts(stack)["payments"] == 1
    assert notification_states(stack) == {"WH-EVT-1": "processed"}
    assert proforma_state(stack, q["number"]) == "open"
    assert "was used before" in rejections(stack)[0]  # logged (one row per minute and address)


@pytest.mark.parametrize("capture", ["UNKNOWNCAPTURE01", CAPTURE],
                         ids=["capture-paypal-does-not-know", "real-capture-other-amount"])
def test_a_body_recrafted_under_an_unused_transmission_settles_nothing(
    stack_factory, sqlite_url, paypal_cert_host, paypal_api, paypal_signing, capture
) -> None:
    """The signed delivery never reached us (captured on the way): its headers are fresh
    to us, so the forged body passes the signature; PayPal's API then does not confirm
    it, and it is recorded for ops, never settled."""
    stack = stack_factory(sqlite_url, **paypal_settings(paypal_cert_host, paypal_api))
    victim, target = new_order(stack), new_order(stack)
    p, q = victim["proforma"], target["proforma"]
    paypal_api.add_capture(CAPTURE, p["gross"], custom_id=p["number"])
    body = paypal_event("WH-EVT-1", p["number"], p["gross"], capture_id=CAPTURE)
    headers = paypal_headers(body, WEBHOOK_ID, paypal_signing[0], paypal_cert_host.cert_url())
    forged = crc_forged_body(body, "WH-EVT-FORGED", q["number"], q["gross"], capture)
    with httpx.Client(base_url=stack.api, timeout=30) as c:
        taken = c.post("/webhooks/paypal", content=forged, headers=headers)
    assert taken.status_code == 200 and taken.json()["status"] == "accepted", taken.text
    wait_for(lambda: notification_states(stack).get("WH-EVT-FORGED") != "stored", 30,
             f"the forged notification to be processed: {notification_states(stack)}")
    assert notification_states(stack) == {"WH-EVT-FORGED": "unconfirmed"}
    assert proforma_state(stack, q["number"]) == "open"
    assert paypal_api.requests["capture"] == 1
    unmatched = ops.list_payments(session_factory(stack.settings.effective_database_url),
                                  unmatched=True)
    assert [(u["txn_id"], u["status"], u["proforma"]) for u in unmatched] == [
        (capture, "unconfirmed", q["number"])]
    assert counts(stack)["invoices"] == 0


def test_a_genuine_paypal_delivery_settles_only_after_the_api_confirms_the_capture(
    stack_factory, sqlite_url, paypal_cert_host, paypal_api, paypal_signing,
    request: pytest.FixtureRequest,
) -> None:
    stack = stack_factory(sqlite_url, worker=False, **paypal_settings(paypal_cert_host, paypal_api))
    order = new_order(stack)
    p = order["proforma"]
    paypal_api.add_capture(CAPTURE, p["gross"], custom_id=p["number"])
    body = paypal_event("WH-EVT-1", p["number"], p["gross"], capture_id=CAPTURE)
    headers = paypal_headers(body, WEBHOOK_ID, paypal_signing[0], paypal_cert_host.cert_url())
    with httpx.Client(base_url=stack.api, timeout=30) as c:
        assert c.post("/webhooks/paypal", content=body, headers=headers).json()["status"] == "accepted"
    app, queue = wire(stack.settings)
    captures = app.verifiers.paypal_captures
    assert captures is not None
    request.addfinalizer(captures.close)
    paypal_api.fail_with = 503  # PayPal is down: the notification waits for the re-drive
    down = app.process_notifications()
    assert down["settled"] == 0
    assert notification_states(stack) == {"WH-EVT-1": "stored"}
    assert counts(stack)["payments"] == 0 and proforma_state(stack, p["number"]) == "open"
    paypal_api.fail_with = None
    up = app.process_notifications()
    assert up["settled"] == 1, up
    assert notification_states(stack) == {"WH-EVT-1": "processed"}
    assert proforma_state(stack, p["number"]) == "paid"
    assert paypal_api.requests == {"token": 2, "capture": 1}  # the first try got a 503
    assert queue.keys  # the plan went to the workers


def test_a_paypal_webhook_without_api_credentials_does_not_start(tmp_path) -> None:
    settings = Settings().with_overrides(data_dir=tmp_path, paypal_webhook_id=WEBHOOK_ID)
    with pytest.raises(ConfigurationError, match="paypal_client_id"):
        wire(settings)


# ------------------------------------------------- the transmission ids, per database


def stored_events(factory: Any) -> set[str]:
    with transaction(factory) as s:
        return set(s.execute(select(Notification.event_id)).scalars())


def test_a_paypal_transmission_id_stores_one_notification(db_url: str) -> None:
    upgrade(db_url)
    factory = session_factory(db_url)
    ledger = PayPalTransmissions(factory)
    until = datetime.now(UTC) + timedelta(seconds=300)
    assert not ledger.used("T-1")
    first = store_batch(factory, [stripe_notice("E-1", "t1", "PF-1", "1.00")],
                        [ledger.claim("T-1", until)])
    other = PayPalTransmissions(factory)  # another process: the database refuses it
    again = store_batch(factory, [stripe_notice("E-2", "t2", "PF-1", "1.00"),
                                  stripe_notice("E-3", "t3", "PF-1", "1.00")],
                        [other.claim("T-1", until), other.claim("T-2", until)])
    assert [r.status for r in first] == ["accepted"]
    assert [r.status for r in again] == ["replayed", "accepted"]
    assert stored_events(factory) == {"E-1", "E-3"}
    assert ledger.used("T-1") and ledger.used("T-2")


def test_a_process_refuses_the_ids_it_stored_before_checking_anything_else(db_url: str) -> None:
    upgrade(db_url)
    factory = session_factory(db_url)
    ledger = PayPalTransmissions(factory)
    claim = ledger.claim("T-1", datetime.now(UTC) + timedelta(seconds=300))
    store_batch(factory, [stripe_notice("E-1", "t1", "PF-1", "1.00")], [claim])
    assert not ledger.seen("T-1")  # not before the storing transaction has committed
    claim.stored()
    assert ledger.seen("T-1")
    assert not PayPalTransmissions(factory).seen("T-1")  # another process asks the claim
    stale = ledger.claim("T-2", datetime.now(UTC) - timedelta(seconds=1))
    stale.stored()
    assert not ledger.seen("T-2")  # past its window: the time check refuses it anyway


def test_a_transmission_whose_notification_is_not_stored_is_not_used(db_url: str) -> None:
    """The claim is part of the transaction that stores the notification: a failed store
    leaves the id free for PayPal's next delivery."""
    upgrade(db_url)
    factory = session_factory(db_url)
    ledger = PayPalTransmissions(factory)
    until = datetime.now(UTC) + timedelta(seconds=300)

    class Failing:
        def __call__(self, cur: Any, dialect: str) -> bool:
            raise RuntimeError("the database went away")

        def stored(self) -> None:
            raise AssertionError("not stored")

    with pytest.raises(RuntimeError):  # the batch's second store fails after T-1 was claimed
        store_batch(factory, [stripe_notice("E-1", "t1", "PF-1", "1.00"),
                              stripe_notice("E-2", "t2", "PF-1", "1.00")],
                    [ledger.claim("T-1", until), Failing()])
    assert stored_events(factory) == set()
    assert not ledger.used("T-1")
    assert [r.status for r in store_batch(factory, [stripe_notice("E-1", "t1", "PF-1", "1.00")],
                                          [ledger.claim("T-1", until)])] == ["accepted"]


def test_transmission_ids_are_forgotten_once_their_time_cannot_pass_the_skew_check(
    db_url: str,
) -> None:
    upgrade(db_url)
    factory = session_factory(db_url)
    now = datetime.now(UTC)
    clock = {"now": now}
    ledger = PayPalTransmissions(factory, now=lambda: clock["now"], purge_every_s=0)
    store_batch(factory, [stripe_notice("E-1", "t1", "PF-1", "1.00")],
                [ledger.claim("T-OLD", now + timedelta(seconds=300))])
    clock["now"] = now + timedelta(seconds=301)
    store_batch(factory, [stripe_notice("E-2", "t2", "PF-1", "1.00")],
                [ledger.claim("T-NEW", now + timedelta(seconds=601))])
    with transaction(factory) as s:
        kept = set(s.execute(select(PayPalTransmission.transmission_id)).scalars())
    assert kept == {"T-NEW"}


def test_one_transmission_delivered_ten_times_at_once_stores_one_notification(db_url: str) -> None:
    upgrade(db_url)
    factory = session_factory(db_url)
    ledger = PayPalTransmissions(factory)
    until = datetime.now(UTC) + timedelta(seconds=300)

    def deliver(n: int) -> str:
        return store_batch(factory, [stripe_notice(f"E-{n}", f"t{n}", "PF-1", "1.00")],
                           [ledger.claim("T-1", until)])[0].status

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(deliver, range(10)))
    assert sorted(outcomes) == ["accepted"] + ["replayed"] * 9
    assert len(stored_events(factory)) == 1
