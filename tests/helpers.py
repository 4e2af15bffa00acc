"""What the tests share, in one place: settings, customers, a queue, and a world (the
product wired by its own composition root, with a list as the queue).

Fixtures stay in conftest.py; modules import these helpers from here, never from a
conftest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from provisioner.adapters.payments import PaymentNotice
from provisioner.adapters.registry import EppClient
from provisioner.bootstrap import Provisioner, bootstrap
from provisioner.config import Settings
from provisioner.devstack.registry import Sandbox
from provisioner.devstack.smtp_sink import read_maildir
from provisioner.domain.lifecycle import earliest_event
from provisioner.errors import TransientError
from provisioner.pipeline.capabilities import lifecycle
from provisioner.pipeline.engine.runner import Runner, run_queued
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import IngestResult, ingest, record_manual_payment
from provisioner.store.db import session_factory, transaction
from provisioner.store.domains import DomainRecord
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import Proforma, ProformaLine, Service, Step
from provisioner.timeutil import iter_days, now_at

VENV_BIN = Path(sys.executable).parent
STRIPE_SECRET = "whsec_test_" + "k" * 24
API_TOKEN = "test-token-" + "t" * 20


def make_settings(tmp_path: Path, db: str, smtp_port: int, **over: object) -> Settings:
    values: dict[str, object] = dict(
        data_dir=tmp_path / "data",
        database_url=db,
        broker_url=f"filesystem://{tmp_path / 'broker'}",
        api_token=API_TOKEN,
        stripe_webhook_secret=STRIPE_SECRET,
        smtp_port=smtp_port,
        step_lease_s=30,
        step_backoff_s=0.2,
        redrive_interval_s=1.0,
        line_kinds="",  # the core's tests: billing steps only; capabilities test themselves
    )
    values.update(over)
    return Settings().with_overrides(**values)


def settings_env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    for name in ("data_dir", "database_url", "broker_url", "api_token", "stripe_webhook_secret",
                 "smtp_host", "smtp_port", "step_lease_s", "step_max_attempts", "step_backoff_s",
                 "redrive_interval_s", "max_body_bytes", "braintree_merchant_id",
                 "braintree_public_key", "braintree_private_key", "paypal_webhook_id",
                 "paypal_cert_hosts", "paypal_ca_file", "paypal_api_base", "paypal_client_id",
                 "paypal_client_secret", "ops_email", "line_kinds"):
        env[f"PROVISIONER_{name.upper()}"] = str(getattr(s, name))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Stack:
    settings: Settings
    api: str
    maildir: Path
    logs: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30,
                            headers={"Authorization": f"Bearer {API_TOKEN}"})

    def start_worker(self, name: str = "worker", concurrency: int = 2) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own fd
            proc = subprocess.Popen(
                [str(VENV_BIN / "celery"), "-A", "provisioner.tasks", "worker", "-B",
                 "--concurrency", str(concurrency), "--loglevel", "INFO", "-Q", "provisioner",
                 "--pool", "prefork", "-s", str(self.logs / f"{name}-beat"), "-n",
                 f"{name}@%h"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def mails(self) -> list:  # type: ignore[type-arg]
        return read_maildir(self.maildir)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM if name == "api" else signal.SIGKILL)


def customer(lang: str = "sl", **over: str) -> dict[str, str]:
    """A customer as `provisioner customer add` takes it (Ana Novak, Ljubljana)."""
    data = {"name": "Ana Novak", "address": "Slovenska cesta 1", "postal_code": "1000",
            "city": "Ljubljana", "country": "SI", "email": "ana@example.si",
            "phone": "+386.41123456", "lang": lang}
    data.update(over)
    return data


CUSTOMER = customer()


@dataclass
class Queue:
    """The queue of a world: step keys in the order the runner handed them over."""

    keys: list[str] = field(default_factory=list)

    def __call__(self, key: str) -> None:
        self.keys.append(key)


@dataclass
class SentMail:
    to: str
    subject: str
    text: str


@dataclass
class MemoryMailer:
    """A mailer that keeps what it was given (the SMTP sink tests the real path)."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None,
             sender: str | None = None) -> None:
        self.sent.append({"to": to, "subject": rendered.subject, "text": rendered.text,
                          "message_id": message_id, "sender": sender})


def wire(settings: Settings, *, queue: Queue | None = None, now: Callable[[], datetime] | None = None,
         **overrides: Any) -> tuple[Provisioner, Queue]:
    """The product as its composition root builds it, with a list as the queue."""
    queue = queue if queue is not None else Queue()
    kwargs: dict[str, Any] = {"now": now} if now is not None else {}
    return bootstrap(settings, enqueue=queue, factory=session_factory(settings.effective_database_url),
                     **kwargs, **overrides), queue


def stripe_notice(event: str, txn: str, proforma: str, amount: str | Decimal,
                  currency: str = "EUR") -> PaymentNotice:
    return PaymentNotice(
        provider="stripe", event_id=event, kind="payment", txn_id=txn,
        amount=Decimal(amount), currency=currency, proforma=proforma, reference=None,
        payer="Ana Novak", occurred_at=datetime.now(UTC), raw=b"{}",
    )


@dataclass
class World:
    """The product in one process: order, pay, run what became ready."""

    app: Provisioner
    queue: Queue = field(default_factory=Queue)

    @property
    def runner(self) -> Runner:
        return self.app.runner

    @property
    def factory(self) -> Any:
        return self.app.factory

    def at(self, day: date) -> None:
        """Move the runner's clock to noon of ``day``."""
        self.runner.now = now_at(day)

    def drain(self, limit: int = 100, *, retry: bool = False) -> list[str]:
        """Run queued steps in order; with ``retry`` a step the runner retries goes back on
        the queue, to run when its backoff is over (the runner refuses it before; the
        backoff is the runner's business, not the test's)."""
        ran: list[str] = []
        while self.queue.keys and limit:
            limit -= 1
            key = self.queue.keys.pop(0)
            try:
                self.runner.run_step(key)
            except TransientError:
                if not retry:
                    raise
                self.skip_backoff(key)
                self.queue.keys.append(key)
            ran.append(key)
        return ran

    def skip_backoff(self, key: str) -> None:
        """Move the runner's clock on to the step's ``next_attempt_at`` (tests move the
        clock; they do not wait for it)."""
        with transaction(self.factory) as s:
            due = s.execute(select(Step.next_attempt_at).where(Step.key == key)).scalar_one()
        if due is None:
            return
        ahead = due - self.runner.now()
        if ahead.total_seconds() > 0:
            clock = self.runner.now
            self.runner.now = lambda: clock() + ahead

    def run_queued(self) -> int:
        """Every ready step, in this process, whatever the queue holds."""
        return run_queued(self.runner)

    def order(self, items: Iterable[str], *, who: dict[str, str] | None = None, brand: str = "fcb",
              discount: str | None = None) -> dict[str, Any]:
        c = ops.add_customer(self.factory, {**(who or CUSTOMER), "brand": brand}, "test")
        result = ops.create_order(self.factory, c["id"], list(items), discount, brand, "test")
        self.runner.dispatch(result["order"])
        return result

    def ingest(self, notice: PaymentNotice, actor: str = "test") -> IngestResult:
        return ingest(self.factory, notice, actor, self.app.planner)

    def pay(self, number: str, amount: str | Decimal, txn: str, method: str = "bank") -> IngestResult:
        return record_manual_payment(self.factory, self.app.planner, proforma_number=number, reference=None,
                                     amount=Decimal(amount), currency="EUR", method=method, txn=txn,
                                     actor="test")

    def show(self, order_id: int) -> dict[str, Any]:
        return ops.show_order(self.factory, str(order_id), "test", self.app.planner.planned_kinds())

    def steps(self, order_id: int) -> dict[str, Step]:
        with transaction(self.factory) as s:
            rows = s.execute(select(Step).where(Step.order_id == order_id)).scalars().all()
            s.expunge_all()
            return {r.kind: r for r in rows}


def make_world(settings: Settings, *, now: Callable[[], datetime] | None = None,
               **overrides: Any) -> World:
    app, queue = wire(settings, now=now, **overrides)
    return World(app, queue)


@dataclass
class ClockWorld(World):
    """The lifecycle clock's world: services made active at a chosen expiry, the
    runner's clock at the simulated day, and helpers to pay and sweep."""

    day: date = date(2026, 1, 1)
    sink: Any = None

    def at(self, day: date) -> None:
        self.day = day
        super().at(day)

    def service(self, item: str, expires_on: date, *, brand: str = "fcb",
                who: dict[str, str] | None = None, discount: str | None = None) -> int:
        """A service as if it had been provisioned: active until ``expires_on``."""
        c = ops.add_customer(self.factory, {**(who or customer("en")), "brand": brand}, "test")
        order = ops.create_order(self.factory, c["id"], [item], discount, brand, "test")
        with transaction(self.factory) as s:
            sv = s.execute(select(Service).where(Service.order_id == order["order"])).scalar_one()
            sv.state = "active"
            sv.expires_on = expires_on
            sv.clock_on = earliest_event(expires_on)
            p = s.execute(select(Proforma).where(Proforma.order_id == order["order"])).scalar_one()
            p.state = "paid"  # its billing is another test's business
            return sv.id

    def sweep(self, day: date | None = None) -> lifecycle.SweepReport:
        if day is not None:
            self.at(day)
        return lifecycle.run_day(self.factory, self.runner, self.day)

    def renewal(self, service_id: int) -> tuple[Renewal, Proforma] | None:
        with transaction(self.factory) as s:
            row = s.execute(select(Renewal, Proforma).join(Proforma, Proforma.id == Renewal.proforma_id)
                            .where(Renewal.service_id == service_id)
                            .order_by(Renewal.id.desc())).first()
            if row is None:
                return None
            s.expunge_all()
            return row[0], row[1]

    def pay(self, number: str, amount: str | Decimal, txn: str, method: str = "bank") -> IngestResult:
        result = super().pay(number, amount, txn, method)
        self.run_queued()
        return result

    def get(self, service_id: int) -> Service:
        with transaction(self.factory) as s:
            sv = s.get(Service, service_id)
            assert sv is not None
            s.expunge(sv)
            return sv


def make_clock_world(db_url: str, tmp_path: Path, sink: Any, start: date,
                     line_kinds: str = "hosting,vps,tls", **overrides: Any) -> ClockWorld:
    """``sink`` is the SMTP sink the mail goes to, or None with ``mailer=MemoryMailer()``
    for long simulations (thousands of messages), whose subject is the clock, not SMTP."""
    port = sink.port if sink is not None else 1
    settings = make_settings(tmp_path, db_url, port, step_max_attempts=2, line_kinds=line_kinds)
    w = make_world(settings, now=now_at(start), **overrides)
    return ClockWorld(w.app, w.queue, start, sink)


class RegistrarWorld(ClockWorld):
    """The clock world with the sandbox registry, both clocks on the simulated day."""

    sandbox: Sandbox
    client: EppClient

    def at(self, day: date) -> None:
        super().at(day)
        self.sandbox.at(day)

    def register(self, name: str, on: date | None = None, brand: str = "fcb") -> int:
        """A domain ordered and paid on ``on`` (default: the world's day): registered at
        the registry through the pipeline (our name servers); its expiry is the registry's."""
        self.at(on or self.day)
        c = ops.add_customer(self.factory, {**customer("en"), "brand": brand}, "test")
        order = ops.create_order(self.factory, c["id"], [f"domain:{name}:1y"], None, brand, "test")
        proforma = order["proforma"]
        assert self.pay(proforma["number"], proforma["gross"], f"txn-{name}").settled
        with transaction(self.factory) as s:
            service = s.execute(select(Service).where(Service.order_id == order["order"])).scalar_one()
            assert service.state == "active", service.detail
            return service.id

    def days(self, first: date, last: date) -> None:
        for day in iter_days(first, last):
            self.sweep(day)

    def renewal_proforma(self, sid: int) -> tuple[str, Decimal, list[tuple[str, Decimal]]]:
        with transaction(self.factory) as s:
            p = s.execute(select(Proforma).join(Renewal, Renewal.proforma_id == Proforma.id)
                          .where(Renewal.service_id == sid)).scalar_one()
            lines = [(ln.description, ln.gross) for ln in s.execute(
                select(ProformaLine).where(ProformaLine.proforma_id == p.id)
                .order_by(ProformaLine.position)).scalars()]
            return p.number, p.gross, lines

    def record(self, sid: int) -> DomainRecord:
        with transaction(self.factory) as s:
            rec = s.execute(select(DomainRecord).where(DomainRecord.service_id == sid)).scalar_one()
            s.expunge(rec)
            return rec

    def step(self, key_part: str) -> Step:
        with transaction(self.factory) as s:
            step = s.execute(select(Step).where(Step.key.contains(key_part))).scalar_one()
            s.expunge(step)
            return step


def make_registrar_world(db_url: str, tmp_path: Path, sink: Any, sandbox: Sandbox,
                         start: date) -> RegistrarWorld:
    """The clock world with the domain capability on the sandbox registry (close its
    ``client`` at the end)."""
    settings = make_settings(tmp_path, db_url, sink.port, step_max_attempts=2, line_kinds="domain",
                             **sandbox.settings_overrides())
    client = EppClient(sandbox.config())
    w = make_world(settings, now=now_at(start), registry=client)
    r = RegistrarWorld(w.app, w.queue, start, sink)
    r.sandbox, r.client = sandbox, client
    return r
