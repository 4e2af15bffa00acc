"""A step that takes longer than its lease (issue 12, medium 2): its run keeps the step
(a heartbeat runs while the handler works, whatever it calls), so a second worker's
re-drive cannot take it over; and a run that lost its step anyway (stalled for longer
than the lease) writes nothing final and sends nothing: the run that holds the step
does, once. Fakes of the adapters; the database is SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from provisioner.pipeline.capabilities.hosting import open_link
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.pipeline.engine.runner import LeaseLost, RunOutcome, StepContext, record
from provisioner.store.db import transaction
from provisioner.store.hosting import CredentialLink, HostingAccount, add_node
from provisioner.store.models import Order, OutboxMail, Step
from provisioner.store.tls import TlsCertificate
from tests.helpers import World, make_settings, make_world
from tests.unit.pipeline.fakes import Alerts, FakeAcme, FakeHosting, FakeTarget, SlowMailer

LEASE_S = 1
SLOW_S = 3  # the adapter call: three leases long
# Where a test stalls a run itself (its lease set to the past), the heartbeat must not
# beat in between: a lease long enough for none to fall within the test.
LONG_LEASE_S = 60


class Fixture:
    """Two workers (each the product as its composition root builds it) on one database
    and the same fake outside world: ``a`` runs the order; ``b`` is the other worker,
    whose re-drive looks for steps to take over."""

    def __init__(self, tmp_path: Path, db_url: str, lease_s: int = LEASE_S) -> None:
        self.hosting = FakeHosting()
        self.mailer = SlowMailer()
        self.acme = FakeAcme()
        self.target = FakeTarget()
        self.alerts = Alerts()
        config = make_settings(tmp_path, db_url, 25, line_kinds="hosting", step_lease_s=lease_s)
        fakes = {"hosting": self.hosting, "mailer": self.mailer, "acme": self.acme,
                 "tls_fallback": self.target, "alert": self.alerts}
        self.a: World = make_world(config, **fakes)
        self.b: World = make_world(config, **fakes)
        with transaction(self.a.factory) as s:
            add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)

    def paid_order(self, domain: str = "shop.si") -> int:
        order = self.a.order([f"hosting:giga5:{domain}"])
        p = order["proforma"]
        assert self.a.pay(p["number"], p["gross"], f"txn-{domain}").settled
        self.a.runner.dispatch(order["order"])
        return int(order["order"])

    def run_until(self, key: str) -> None:
        """Run a's queue up to (not including) the step ``key``."""
        while self.a.queue.keys and self.a.queue.keys[0] != key:
            self.a.runner.run_step(self.a.queue.keys.pop(0))
        assert self.a.queue.keys and self.a.queue.keys[0] == key, self.a.queue.keys
        self.a.queue.keys.pop(0)

    def step_key(self, kind: str) -> str:
        with transaction(self.a.factory) as s:
            return str(s.execute(select(Step.key).where(Step.kind == kind)).scalar_one())

    def run_all(self) -> None:
        for world in (self.a, self.b):
            while world.queue.keys:
                world.runner.run_step(world.queue.keys.pop(0))

    def credential_mails(self) -> list[dict[str, Any]]:
        return [m for m in self.mailer.sent if "/credentials/" in m["text"]]

    def links(self) -> int:
        with transaction(self.a.factory) as s:
            return len(s.execute(select(CredentialLink)).scalars().all())

    def mailed_access_data(self) -> dict[str, Any]:
        (mail,) = self.credential_mails()
        token = re.search(r"/credentials/([A-Za-z0-9_-]{20,})", mail["text"])
        assert token, mail["text"]
        return open_link(self.a.factory, token.group(1), datetime.now(UTC))

    def expire_lease(self, key: str) -> None:
        """As if the run holding ``key`` had stalled for longer than its lease."""
        with transaction(self.a.factory) as s:
            s.execute(update(Step).where(Step.key == key)
                      .values(lease_until=datetime.now(UTC) - timedelta(seconds=1)))


def _run_in_thread(fn: Callable[[], RunOutcome]) -> tuple[threading.Thread, list[RunOutcome]]:
    out: list[RunOutcome] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def _blocking(entered: threading.Event, release: threading.Event) -> Callable[[], None]:
    def block() -> None:
        entered.set()
        release.wait(SLOW_S)  # the slow part of the adapter call
    return block


def _take_over_attempts(f: Fixture, key: str, busy: threading.Thread) -> list[str]:
    """Worker b's re-drive and a run of ``key``, again and again while ``busy`` works."""
    outcomes = []
    while busy.is_alive():
        f.b.runner.redrive()
        for queued in list(f.b.queue.keys):
            f.b.queue.keys.remove(queued)
            outcome = f.b.runner.run_step(queued)
            if queued == key:
                outcomes.append(outcome.status)
        outcomes.append(f.b.runner.run_step(key).status)
        busy.join(0.05)
    return outcomes


# -- the heartbeat keeps a slow step with the run that works on it --------------------------
def test_a_converge_longer_than_the_lease_is_not_taken_over(tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url)
    entered, release = threading.Event(), threading.Event()
    f.hosting.during["create"] = _blocking(entered, release)
    f.paid_order()
    key = f.step_key("hosting.account")
    f.run_until(key)
    busy, result = _run_in_thread(lambda: f.a.runner.run_step(key))
    assert entered.wait(10)
    attempts = _take_over_attempts(f, key, busy)
    assert result[0].status == "done"
    assert attempts and set(attempts) == {"skipped"}  # three leases long, never taken over
    f.hosting.during.clear()
    f.run_all()
    assert [c[0] for c in f.hosting.calls] == ["create"]  # one converge
    assert f.hosting.password_sets == 1
    assert len(f.credential_mails()) == 1 and f.links() == 1
    data = f.mailed_access_data()
    assert data["ftp"]["password"] == f.hosting.passwords[data["ftp"]["user"]].account


def test_a_credentials_mail_longer_than_the_lease_goes_out_once(tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url)
    entered, release = threading.Event(), threading.Event()
    f.mailer.slow_text, f.mailer.during = "/credentials/", _blocking(entered, release)
    f.paid_order()
    key = f.step_key("notify.credentials")
    f.run_until(key)
    busy, result = _run_in_thread(lambda: f.a.runner.run_step(key))
    assert entered.wait(10)
    attempts = _take_over_attempts(f, key, busy)
    assert result[0].status == "done"
    assert attempts and set(attempts) == {"skipped"}
    f.mailer.during = None
    f.run_all()
    assert len(f.credential_mails()) == 1 and f.links() == 1
    assert f.hosting.password_sets == 1  # the passwords mailed are the ones set, once
    data = f.mailed_access_data()
    assert data["mail"]["password"] == f.hosting.passwords[data["ftp"]["user"]].mailboxes["info"]


def test_an_acme_order_longer_than_the_lease_is_placed_once(tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url)
    entered, release = threading.Event(), threading.Event()
    f.acme.during = _blocking(entered, release)
    key = _tls_step(f)
    busy, result = _run_in_thread(lambda: f.a.runner.run_step(key))
    assert entered.wait(10)
    attempts = _take_over_attempts(f, key, busy)
    assert result[0].status == "done"
    assert attempts and set(attempts) == {"skipped"}
    assert len(f.acme.orders) == 1 and f.target.deployed == [1]
    assert _certificates(f) == ["1"]


# -- a run that lost its step anyway: nothing final, nothing sent, no failure ----------------
def test_a_converge_whose_run_lost_the_step_holds_no_access_data(tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url, LONG_LEASE_S)
    f.paid_order()
    key = f.step_key("hosting.account")
    f.run_until(key)
    taken: list[RunOutcome] = []

    def stall_and_be_overtaken() -> None:
        f.hosting.during.clear()  # the other run's converge is quick
        f.expire_lease(key)  # this run stalled for longer than its lease ...
        f.b.runner.redrive()  # ... and the other worker took the step and finished it
        taken.extend(f.b.runner.run_step(k) for k in list(f.b.queue.keys) if k == key)

    f.hosting.during["create"] = stall_and_be_overtaken
    lost = f.a.runner.run_step(key)
    assert [t.status for t in taken] == ["done"]
    assert lost.status == "lost"
    with transaction(f.a.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        assert step.state == "done"
        order = s.get(Order, step.order_id)
        assert order is not None and not order.refund_flag
        held = s.execute(select(OutboxMail).where(OutboxMail.template == "credentials")).scalars().all()
        assert len(held) == 1
        assert s.execute(select(HostingAccount.state)).scalar_one() == "active"
    assert f.alerts.sent == [] and f.links() == 1
    f.run_all()  # what the other run's finish made ready: notify.credentials
    # Both runs reached the node; the stale run, arriving after the run that holds the step,
    # was refused there (its fence is lower): the access data mailed are the ones the node
    # accepts.
    assert [c[0] for c in f.hosting.calls] == ["create", "create"]
    assert f.hosting.password_sets == 1 and len(f.credential_mails()) == 1
    data = f.mailed_access_data()
    assert data["ftp"]["password"] == f.hosting.passwords[data["ftp"]["user"]].account


def test_a_credentials_mail_of_a_run_that_lost_the_step_is_not_sent(tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url, LONG_LEASE_S)
    f.paid_order()
    key = f.step_key("notify.credentials")
    f.run_until(key)
    with transaction(f.a.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        step.state, step.owner = "running", "the-other-run"  # another run holds it now
        s.expunge(step)
    ctx = StepContext(f.a.app.settings, f.a.factory, key, "this-run", f.a.app.adapters, f.a.runner.now)
    with pytest.raises(LeaseLost):
        f.a.runner.handlers["notify.credentials"](ctx, step)
    assert f.credential_mails() == []
    with transaction(f.a.factory) as s:
        row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one()
        assert row.state == "pending" and row.attempts == 0  # left for the run that holds the step
    assert f.hosting.password_sets == 1


def test_any_e_mail_of_a_run_that_lost_its_step_is_not_sent(tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url, LONG_LEASE_S)
    f.paid_order()
    key = f.step_key("notify.invoice")
    f.run_until(key)
    with transaction(f.a.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        step.state, step.owner = "running", "the-other-run"
        s.expunge(step)
    before = len(f.mailer.sent)
    ctx = StepContext(f.a.app.settings, f.a.factory, key, "this-run", f.a.app.adapters, f.a.runner.now)
    with pytest.raises(LeaseLost):
        f.a.runner.handlers["notify.invoice"](ctx, step)
    assert len(f.mailer.sent) == before
    with transaction(f.a.factory) as s:
        assert s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one_or_none() is None


def test_a_certificate_ordered_by_a_run_that_lost_the_step_is_neither_stored_nor_deployed(
        tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url, LONG_LEASE_S)
    key = _tls_step(f)
    taken: list[RunOutcome] = []

    def stall_and_be_overtaken() -> None:
        f.expire_lease(key)
        f.b.runner.redrive()
        taken.extend(f.b.runner.run_step(k) for k in list(f.b.queue.keys) if k == key)

    f.acme.during = stall_and_be_overtaken
    lost = f.a.runner.run_step(key)
    assert [t.status for t in taken] == ["done"] and lost.status == "lost"
    assert len(f.acme.orders) == 2  # the order was placed before the run knew
    assert f.target.deployed == [2]  # only the certificate of the run that holds the step
    assert _certificates(f) == ["2"]
    assert f.alerts.sent == []


def test_a_run_that_lost_its_step_neither_fails_it_nor_retries_it(tmp_path: Path, db_url: str) -> None:
    f = Fixture(tmp_path, db_url, LONG_LEASE_S)
    f.hosting.fail = True
    f.paid_order()
    key = f.step_key("hosting.account")
    f.run_until(key)
    f.hosting.during["create"] = lambda: _reclaim_for_another(f, key)
    outcome = f.a.runner.run_step(key)  # its converge failed, but the step is not its own now
    assert outcome.status == "lost"
    with transaction(f.a.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        assert (step.state, step.owner) == ("running", "the-other-run")
        order = s.get(Order, step.order_id)
        assert order is not None and not order.refund_flag
    assert f.alerts.sent == []


def _reclaim_for_another(f: Fixture, key: str) -> None:
    with transaction(f.a.factory) as s:
        s.execute(update(Step).where(Step.key == key).values(
            owner="the-other-run", lease_until=datetime.now(UTC) + timedelta(minutes=5)))


def _tls_step(f: Fixture) -> str:
    """A certificate for a site no account of ours serves (the fallback target), queued."""
    order_id = f.paid_order("tls-holder.si")
    key = "order:tls/tls.issue"
    with transaction(f.a.factory) as s:
        record(s, order_id, [StepSpec(key, "tls.issue", (), {"service_id": None, "names": ["x.si"],
                                                            "challenge": "http-01"}, None)])
    f.a.queue.keys.clear()
    f.a.runner.dispatch(order_id)
    f.a.queue.keys.clear()
    with transaction(f.a.factory) as s:
        assert s.execute(select(Step.state).where(Step.key == key)).scalar_one() == "queued"
    return key


def _certificates(f: Fixture) -> list[str]:
    with transaction(f.a.factory) as s:
        return sorted(s.execute(select(TlsCertificate.serial)).scalars())
