"""Store guarantees on SQLite and PostgreSQL: gapless numbering under concurrency
and rollbacks, immutable invoices, the ops alert e-mail."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from provisioner.bootstrap import planner_for
from provisioner.pipeline.capabilities.billing import issue_invoice
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import ingest
from provisioner.store.counters import next_number
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import Counter, Invoice, OutboxMail
from tests.helpers import CUSTOMER, make_settings, make_world, stripe_notice


class Rollback(Exception):
    pass


def test_numbers_are_gapless_with_concurrent_writers_and_rollbacks(db_url: str) -> None:
    factory = session_factory(db_url)
    committed: list[int] = []
    lock = threading.Lock()
    rng = random.Random(7)
    plan = [rng.random() < 0.3 for _ in range(120)]  # 30 % of the transactions roll back
    errors: list[BaseException] = []

    def worker(chunk: list[bool]) -> None:
        try:
            for rollback in chunk:
                try:
                    with transaction(factory) as s:
                        n = next_number(s, "test", "fcb", 2026)
                        if rollback:
                            raise Rollback
                except Rollback:
                    continue
                with lock:
                    committed.append(n)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(plan[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(committed) == list(range(1, plan.count(False) + 1))
    with transaction(factory) as s:
        last = s.execute(select(Counter.last).where(Counter.kind == "test")).scalar_one()
    assert last == plan.count(False)


def _paid_proforma(factory, n: int) -> int:  # noqa: ANN001
    customer = ops.add_customer(factory, CUSTOMER, "t")
    order = ops.create_order(factory, customer["id"], [f"hosting:mega:site{n}.si"], None,
                             "fcb", "t")
    p = order["proforma"]
    ingest(factory, stripe_notice(f"e{n}", f"t{n}", p["number"], p["gross"]), "t",
           planner_for(make_settings(Path("/nonexistent"), "sqlite://", 25)))
    with transaction(factory) as s:
        return int(s.execute(text("SELECT id FROM proformas WHERE number = :n"),
                             {"n": p["number"]}).scalar_one())


def test_invoices_are_immutable_and_one_per_proforma(db_url: str) -> None:
    factory = session_factory(db_url)
    proforma_id = _paid_proforma(factory, 1)
    with transaction(factory) as s:
        invoice, created = issue_invoice(s, proforma_id)
        number = invoice.number
    assert created
    with transaction(factory) as s:
        again, created = issue_invoice(s, proforma_id)
    assert not created and again.number == number
    with pytest.raises(DBAPIError, match="immutable"), transaction(factory) as s:
        s.execute(text("UPDATE invoices SET gross = 0"))
    with pytest.raises(DBAPIError, match="immutable"), transaction(factory) as s:
        s.execute(text("DELETE FROM invoices"))
    with transaction(factory) as s:
        inv = s.execute(select(Invoice)).scalar_one()
    assert inv.gross > Decimal("0") and inv.number == f"{datetime.now(UTC).year}-000001"


def test_ops_alert_is_emailed_through_the_outbox(sqlite_url, tmp_path, smtp_sink) -> None:  # noqa: ANN001
    settings = make_settings(tmp_path, sqlite_url, smtp_sink.port, ops_email="ops@host.example")
    world = make_world(settings)
    world.app.adapters.alert(step_key="service:7/hosting.account", order_id=3,
                             detail="node unreachable", attempts=5)
    with transaction(world.factory) as s:
        [row] = s.execute(select(OutboxMail)).scalars().all()
        assert row.state == "sent" and row.sent_at is not None and row.template == "ops_alert"
    [mail] = smtp_sink.messages()
    assert mail["To"] == "ops@host.example"
    assert "service:7/hosting.account" in mail.get_content() + str(mail["Subject"])
