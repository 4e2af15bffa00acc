"""The Must-hold lines of the pipeline core, against a live API (uvicorn), a live
Celery worker, a real SMTP server, and SQLite / PostgreSQL / Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from provisioner.bootstrap import planner_for
from provisioner.devstack.smtp_sink import MaildirHandler, SmtpSink
from provisioner.pipeline.usecases.payments import process_pending
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import (
    AuditEntry,
    Invoice,
    Notification,
    OutboxMail,
    Payment,
    Step,
)
from tests.helpers import STRIPE_SECRET, VENV_BIN, Stack, customer
from tests.payloads import camt053_statement, stripe_event, stripe_signature
from tests.servers import wait_for

CUSTOMER = customer()


def step_messages(stack: Stack) -> int:
    """``run_step`` messages waiting in the (filesystem) broker; one the file of which
    cannot be read counts as waiting."""
    folder = Path(stack.settings.effective_broker_url.removeprefix("filesystem://"))
    waiting = 0
    for path in folder.glob("*.msg"):
        try:
            task = json.loads(path.read_text()).get("headers", {}).get("task")
        except (OSError, ValueError):
            task = None
        waiting += task != "provisioner.redrive" and task != "provisioner.process_notifications"
    return waiting


def quiet(stack: Stack, *sinks: SmtpSink) -> dict[str, int]:
    """What could still change the counts: steps not finished, step messages waiting,
    e-mails being sent, SMTP connections open. All zero: nothing more can happen (a step
    runs only when claimed from queued or running, and every e-mail is sent by a step)."""
    factory = session_factory(stack.settings.effective_database_url)
    with transaction(factory) as s:
        open_steps = s.execute(select(func.count()).select_from(Step).where(
            Step.state.in_(("pending", "queued", "running")))).scalar_one()
        sending = s.execute(select(func.count()).select_from(OutboxMail).where(
            OutboxMail.state == "sending")).scalar_one()
    return {"open_steps": int(open_steps), "step_messages": step_messages(stack),
            "sending": int(sending), "smtp_sessions": sum(sink.open_sessions for sink in sinks)}


def wait_quiet(stack: Stack, *sinks: SmtpSink, timeout: float = 30) -> None:
    wait_for(lambda: not any(quiet(stack, *sinks).values()), timeout,
             f"the stack to be quiet: {quiet(stack, *sinks)}", interval=0.1)


def new_order(stack: Stack, items: list[str] | None = None) -> dict:
    with stack.client() as c:
        customer = c.post("/customers", json=CUSTOMER)
        assert customer.status_code == 201, customer.text
        order = c.post("/orders", json={"customer_id": customer.json()["id"],
                                        "items": items or ["hosting:giga5:example.si"]})
        assert order.status_code == 201, order.text
        return order.json()


def stripe_delivery(event_id: str, proforma: str, gross: str, currency: str = "eur",
                    txn: str | None = None, secret: str = STRIPE_SECRET,
                    timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    cents = int(Decimal(gross) * 100)
    body = stripe_event(event_id, proforma, cents, currency, txn_id=txn)
    return body, {"Stripe-Signature": stripe_signature(body, secret, timestamp),
                  "Content-Type": "application/json"}


def wait_done(stack: Stack, order_id: int, timeout: float = 60) -> dict[str, str]:
    factory = session_factory(stack.settings.effective_database_url)

    def states() -> dict[str, str]:
        with transaction(factory) as s:
            return dict(s.execute(select(Step.key, Step.state).where(Step.order_id == order_id)).all())

    def finished() -> bool:  # paid (the invoice step is planned) and every step done
        now = states()
        return any(k.endswith("/invoice.issue") for k in now) and set(now.values()) == {"done"}

    wait_for(finished, timeout, f"order {order_id} to be paid and finish: {states()}",
             interval=0.2)
    return states()


def counts(stack: Stack) -> dict[str, int]:
    factory = session_factory(stack.settings.effective_database_url)
    with transaction(factory) as s:
        return {
            "payments": s.execute(select(func.count()).select_from(Payment)).scalar_one(),
            "invoices": s.execute(select(func.count()).select_from(Invoice)).scalar_one(),
            "notifications": s.execute(select(func.count()).select_from(Notification)).scalar_one(),
            "mails": s.execute(select(func.count()).select_from(OutboxMail)).scalar_one(),
            "steps_run": s.execute(select(func.coalesce(func.sum(Step.attempts), 0))).scalar_one(),
        }


def test_one_event_delivered_100_times_20_at_once(stack_factory, db_url: str) -> None:
    stack = stack_factory(db_url)
    order = new_order(stack)
    p = order["proforma"]
    body, headers = stripe_delivery("evt_many", p["number"], p["gross"])

    def deliver(_: int) -> int:
        with httpx.Client(base_url=stack.api, timeout=60) as c:
            return c.post("/webhooks/stripe", content=body, headers=headers).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(deliver, range(100)))
    assert all(200 <= code < 300 for code in codes), codes
    wait_done(stack, order["order"])
    wait_quiet(stack)  # no duplicate run is waiting or running: the counts are final
    got = counts(stack)
    assert got["payments"] == 1
    assert got["invoices"] == 1
    assert got["notifications"] == 1
    assert got["mails"] == 3
    assert got["steps_run"] == 4  # one attempt per step: the plan ran once
    subjects = sorted(str(m["Subject"]) for m in stack.mails())
    assert len(subjects) == 3, subjects


def test_bank_statement_imported_twice_pays_once(stack_factory, sqlite_url: str, tmp_path) -> None:
    stack = stack_factory(sqlite_url)
    order = new_order(stack)
    p = order["proforma"]
    statement = camt053_statement([
        {"amount": p["gross"], "reference": p["reference"], "acct_svcr_ref": "BANK-1",
         "debtor_name": "Ana Novak"},
        {"amount": "12.00", "reference": "SI12 20269999995", "acct_svcr_ref": "BANK-2"},
        {"amount": "5.00", "credit": False, "acct_svcr_ref": "BANK-3"},
    ], iban=stack.settings.bank_iban)
    path = tmp_path / "statement.xml"
    path.write_bytes(statement)
    cli = subprocess.run([str(VENV_BIN / "provisioner"), "bank", "import", str(path), "--json"],
                         env=stack.env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    first = json.loads(cli.stdout)
    assert first["settled"] == 1
    with stack.client() as c:
        again = c.post("/bank-statements", content=statement,
                       headers={"Content-Type": "application/xml"})
    assert again.status_code == 200, again.text
    assert again.json()["settled"] == 0
    assert set(again.json()["outcomes"]) == {"duplicate"}
    wait_done(stack, order["order"])
    got = counts(stack)
    assert got["invoices"] == 1
    assert got["payments"] == 2  # ours, and the unknown reference kept for ops
    unmatched = subprocess.run(
        [str(VENV_BIN / "provisioner"), "payments", "list", "--unmatched", "--json"],
        env=stack.env, capture_output=True, text=True, timeout=60)
    assert [u["status"] for u in json.loads(unmatched.stdout)] == ["unknown_reference"]


def test_forged_and_bad_input_is_refused_and_nothing_is_lost(stack_factory, sqlite_url) -> None:
    stack = stack_factory(sqlite_url, worker=False)
    order = new_order(stack)
    p = order["proforma"]
    with httpx.Client(base_url=stack.api, timeout=60) as c:
        body, headers = stripe_delivery("evt_forged", p["number"], p["gross"], secret="whsec_bad")
        forged = c.post("/webhooks/stripe", content=body, headers=headers)
        body, headers = stripe_delivery("evt_stale", p["number"], p["gross"],
                                        timestamp=int(time.time()) - 3600)
        stale = c.post("/webhooks/stripe", content=body, headers=headers)
        unsigned = c.post("/webhooks/stripe", content=body)
        junk = b"{not json"
        malformed = c.post("/webhooks/stripe", content=junk,
                           headers={"Stripe-Signature": stripe_signature(junk, STRIPE_SECRET)})
        huge = c.post("/webhooks/stripe", content=b"x" * (50 * 1024 * 1024),
                      headers={"Stripe-Signature": "t=1,v1=00"})
        body, headers = stripe_delivery("evt_usd", p["number"], p["gross"], currency="usd")
        usd = c.post("/webhooks/stripe", content=body, headers=headers)
        bad_xml = c.post("/bank-statements", content=b"<Document><oops>",
                         headers={"Authorization": f"Bearer {stack.settings.api_token}"})
        bomb = c.post("/bank-statements", headers={
            "Authorization": f"Bearer {stack.settings.api_token}"},
            content=b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
        no_token = c.post("/bank-statements", content=b"<x/>")
        assert c.get("/health").status_code == 200  # still serving
    assert forged.status_code == 400
    assert stale.status_code == 400
    assert unsigned.status_code == 400
    assert malformed.status_code == 400
    assert huge.status_code == 413
    assert usd.status_code == 200 and usd.json()["status"] == "accepted"
    assert bad_xml.status_code == 400 and bomb.status_code == 400
    assert no_token.status_code == 401
    # no worker runs here: process what the webhooks stored, as the worker would
    results = process_pending(session_factory(stack.settings.effective_database_url),
                              planner_for(stack.settings))
    assert [r.status for r in results] == ["wrong_currency"]
    got = counts(stack)
    assert got["payments"] == 1  # only the USD one, recorded for ops, settling nothing
    assert got["invoices"] == 0
    factory = session_factory(stack.settings.effective_database_url)
    with transaction(factory) as s:
        rejected = s.execute(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "webhook.rejected")).scalar_one()
    # forged, stale, unsigned: one address, one minute, one audit row (RefusalLog)
    assert rejected == 1
    cli = subprocess.run([str(VENV_BIN / "provisioner"), "payment", "record", "--reference",
                          "SI12 20260000018", "--amount", p["gross"], "--txn", "x1"],
                         env=stack.env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "check digit" in cli.stderr


class SlowRcpt(MaildirHandler):
    """Holds every SMTP transaction in RCPT for a while, so a worker can be killed in
    the middle of sending (before the message is accepted)."""

    delay = 2.0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        await asyncio.sleep(self.delay)
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_worker_killed_mid_step_then_plan_completes_exactly_once(
    tmp_path: Path, stack_factory, sqlite_url
) -> None:
    slow = SmtpSink(tmp_path / "slowmail", handler=SlowRcpt(tmp_path / "slowmail"))
    slow.start()
    try:
        stack = stack_factory(sqlite_url, worker=False, smtp_port=slow.port, step_lease_s=3)
        stack.maildir = tmp_path / "slowmail"
        order = new_order(stack)
        p = order["proforma"]
        body, headers = stripe_delivery("evt_kill", p["number"], p["gross"])
        with httpx.Client(base_url=stack.api, timeout=60) as c:
            assert c.post("/webhooks/stripe", content=body, headers=headers).status_code == 200
        stack.start_worker("first")
        factory = session_factory(stack.settings.effective_database_url)

        def sending() -> bool:
            with transaction(factory) as s:
                return s.execute(select(func.count()).select_from(OutboxMail).where(
                    OutboxMail.state == "sending")).scalar_one() > 0

        wait_for(sending, 60, "a step to be in the middle of sending")
        stack.kill("first")  # SIGKILL to the whole worker process group
        with transaction(factory) as s:
            assert s.execute(select(func.count()).select_from(Step).where(
                Step.state == "running")).scalar_one() >= 1
        stack.start_worker("second")
        wait_done(stack, order["order"], timeout=90)
        wait_quiet(stack, slow)  # the killed worker's SMTP session is closed: nothing in flight
        got = counts(stack)
        assert got["invoices"] == 1
        subjects = [str(m["Subject"]) for m in stack.mails()]
        assert len(subjects) == 3, subjects
        assert len(set(subjects)) == 3
    finally:
        slow.stop()


def test_invoice_numbers_gapless_under_concurrent_payments(stack_factory, db_url: str) -> None:
    stack = stack_factory(db_url)
    stack.start_worker("extra", concurrency=2)
    orders = [new_order(stack) for _ in range(12)]

    def pay(o: dict) -> int:
        p = o["proforma"]
        body, headers = stripe_delivery(f"evt_{p['number']}", p["number"], p["gross"])
        with httpx.Client(base_url=stack.api, timeout=60) as c:
            return c.post("/webhooks/stripe", content=body, headers=headers).status_code

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(pay, orders)) == {200}
    for o in orders:
        wait_done(stack, o["order"], timeout=120)
    factory = session_factory(stack.settings.effective_database_url)
    with transaction(factory) as s:
        seqs = sorted(s.execute(select(Invoice.seq)).scalars())
    assert seqs == list(range(1, 13))


def test_redis_broker_runs_the_plan(stack_factory, sqlite_url, redis_url: str) -> None:
    stack = stack_factory(sqlite_url, broker_url=redis_url)
    order = new_order(stack)
    p = order["proforma"]
    body, headers = stripe_delivery("evt_redis", p["number"], p["gross"])
    with httpx.Client(base_url=stack.api, timeout=60) as c:
        assert c.post("/webhooks/stripe", content=body, headers=headers).status_code == 200
    wait_done(stack, order["order"])
    assert counts(stack)["invoices"] == 1
    assert len(stack.mails()) == 3


@pytest.mark.parametrize("path", ["/orders/1", "/orders/1/plan", "/services/1", "/metrics"])
def test_ops_api_needs_the_bearer_token(stack_factory, sqlite_url, path: str) -> None:
    stack = stack_factory(sqlite_url, worker=False)
    new_order(stack)
    with httpx.Client(base_url=stack.api, timeout=30) as c:
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    with stack.client() as c:
        assert c.get(path).status_code == 200
        spec = c.get("/openapi.json").json()
    assert "/webhooks/stripe" in spec["paths"]


# Every route of the HTTP interface (DESIGN.md, "The ops interface"), and nothing else:
# the customer pages (/credentials/...) stay out of the spec.
API_ROUTES = {
    ("/webhooks/stripe", "post"), ("/webhooks/paypal", "post"), ("/webhooks/braintree", "post"),
    ("/bank-statements", "post"), ("/customers", "post"), ("/orders", "post"),
    ("/orders/{order_id}", "get"), ("/orders/{order_id}/plan", "get"),
    ("/services/{service_id}", "get"), ("/health", "get"), ("/metrics", "get"),
    ("/services", "get"), ("/payments", "get"), ("/invoices", "get"), ("/proformas", "get"),
    ("/jobs", "get"),
}


def test_openapi_lists_every_route(stack_factory, sqlite_url) -> None:
    stack = stack_factory(sqlite_url, worker=False)
    with stack.client() as c:  # the spec is for bearers of the token (api_docs_public off)
        spec = c.get("/openapi.json")
    assert spec.status_code == 200
    routes = {(path, method) for path, methods in spec.json()["paths"].items() for method in methods}
    assert routes == API_ROUTES
