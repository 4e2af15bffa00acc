"""Step handlers with recording fakes of the typed adapters (`engine.ports`): what each
asks of the outside world, and that a re-run asks nothing twice. The database is a
SQLite file; the real adapters are tested against real servers elsewhere."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from provisioner import bootstrap
from provisioner.errors import ConfigurationError, StepFailed
from provisioner.pipeline.capabilities.hosting import open_link
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.pipeline.engine.runner import StepContext, record
from provisioner.store.db import transaction
from provisioner.store.hosting import CredentialLink, HostingAccount, add_node
from provisioner.store.models import Order, OutboxMail, Proforma, Service, Step
from tests.helpers import MemoryMailer, World, make_settings, make_world
from tests.unit.pipeline.fakes import FakeHosting


@pytest.fixture
def hosting() -> FakeHosting:
    return FakeHosting()


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


@pytest.fixture
def world(sqlite_url: str, tmp_path: Path, hosting: FakeHosting, mailer: MemoryMailer) -> World:
    settings = make_settings(tmp_path, sqlite_url, 25, line_kinds="hosting")
    w = make_world(settings, hosting=hosting, mailer=mailer)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    return w


def _paid_hosting(world: World, domain: str = "shop.si") -> int:
    order = world.order([f"hosting:giga5:{domain}"])
    p = order["proforma"]
    assert world.pay(p["number"], p["gross"], f"txn-{domain}").settled
    world.runner.dispatch(order["order"])
    return int(order["order"])


def _run_kinds(world: World) -> None:
    """Run every queued step, and what they make ready, in order."""
    for _ in range(20):
        if not world.queue.keys:
            return
        world.drain()


def test_hosting_account_places_once_and_converges_on_the_recorded_node(
        world: World, hosting: FakeHosting) -> None:
    order_id = _paid_hosting(world)
    _run_kinds(world)
    creates = [c for c in hosting.calls if c[0] == "create"]
    assert len(creates) == 1
    _, target, account = creates[0]
    # the node's record decides host-key checking: a real node is never throwaway
    assert (target.name, target.address, target.throwaway) == ("n1", "192.0.2.10", False)
    with transaction(world.factory) as s:
        row = s.execute(select(HostingAccount)).scalar_one()
        assert (row.username, row.state) == (account, "active")
        assert s.get(Order, order_id).status == "completed"  # type: ignore[union-attr]


def test_a_throwaway_node_record_gives_a_throwaway_target(world: World, hosting: FakeHosting) -> None:
    with transaction(world.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000, throwaway=True)
    _paid_hosting(world)
    _run_kinds(world)
    assert {c[1].throwaway for c in hosting.calls} == {True}


def test_a_failed_converge_fails_the_step_and_flags_the_refund(world: World, hosting: FakeHosting) -> None:
    hosting.fail = True
    order_id = _paid_hosting(world)
    _run_kinds(world)
    with transaction(world.factory) as s:
        step = s.execute(select(Step).where(Step.kind == "hosting.account")).scalar_one()
        assert step.state == "failed" and "disk full" in (step.last_error or "")
        assert s.get(Order, order_id).refund_flag  # type: ignore[union-attr]


def test_credentials_are_set_in_the_converge_and_mailed_once_with_a_one_time_link(
        world: World, hosting: FakeHosting, mailer: MemoryMailer) -> None:
    _paid_hosting(world)
    _run_kinds(world)
    credentials = [m for m in mailer.sent if "/credentials/" in m["text"]]
    # One node run: the account's converge set the passwords the link holds; the e-mail
    # step only sent the mail the converge's step held.
    assert [c[0] for c in hosting.calls] == ["create"] and hosting.password_sets == 1
    assert len(credentials) == 1
    with transaction(world.factory) as s:
        step = s.execute(select(Step).where(Step.kind == "notify.credentials")).scalar_one()
        step.state = "queued"  # delivered again after a crash
        account_step = s.execute(select(Step).where(Step.kind == "hosting.account")).scalar_one()
        account_step.state = "queued"  # and the account's step too
        link = s.execute(select(CredentialLink)).scalar_one()
        assert b"password" not in link.sealed  # sealed, not stored in the clear
        row = s.execute(select(OutboxMail).where(OutboxMail.template == "credentials")).scalar_one()
        assert row.state == "sent" and row.sent_at is not None
        assert row.sealed is None  # the held context is gone once sent
    world.runner.run_step(account_step.key)
    world.runner.run_step(step.key)
    assert hosting.password_sets == 1  # the re-run converged without new passwords
    assert [c[0] for c in hosting.calls] == ["create", "create"]
    assert len([m for m in mailer.sent if "/credentials/" in m["text"]]) == 1
    with transaction(world.factory) as s:
        assert len(s.execute(select(CredentialLink)).scalars().all()) == 1


def test_an_account_converged_before_access_data_were_held_gets_fresh_ones_by_mail(
        world: World, hosting: FakeHosting, mailer: MemoryMailer) -> None:
    """A journal of the version before: its account step held no mail, so the e-mail
    step sets fresh passwords (fenced like the converge's) and sends them, once."""
    _paid_hosting(world)
    while any(not k.endswith("/notify.credentials") for k in world.queue.keys):
        key = next(k for k in world.queue.keys if not k.endswith("/notify.credentials"))
        world.queue.keys.remove(key)
        world.runner.run_step(key)
    with transaction(world.factory) as s:
        s.query(OutboxMail).filter(OutboxMail.template == "credentials").delete()
        s.query(CredentialLink).delete()
    _run_kinds(world)
    assert [c[0] for c in hosting.calls] == ["create", "reset_password"]
    (mail,) = [m for m in mailer.sent if "/credentials/" in m["text"]]
    token = re.search(r"/credentials/([A-Za-z0-9_-]{20,})", mail["text"])
    assert token is not None
    data = open_link(world.factory, token.group(1), datetime.now(UTC))
    assert data["ftp"]["password"] == hosting.passwords[data["ftp"]["user"]].account
    assert hosting.fences[data["ftp"]["user"]] == 1  # the e-mail step's first attempt


def test_the_held_access_data_mail_is_sealed_until_sent(
        world: World, hosting: FakeHosting, mailer: MemoryMailer) -> None:
    _paid_hosting(world)
    for _ in range(20):  # everything up to the e-mail step
        keys = [k for k in world.queue.keys if not k.endswith("/notify.credentials")]
        if not keys:
            break
        world.queue.keys.remove(keys[0])
        world.runner.run_step(keys[0])
    secret = next(iter(hosting.passwords.values()))
    with transaction(world.factory) as s:
        row = s.execute(select(OutboxMail).where(OutboxMail.template == "credentials")).scalar_one()
        assert row.state == "pending" and row.sealed is not None
        assert b"/credentials/" not in row.sealed and secret.account.encode() not in row.sealed
    assert not [m for m in mailer.sent if "/credentials/" in m["text"]]
    raw = Path(world.app.settings.effective_database_url.split("///", 1)[1]).read_bytes()
    assert b"/credentials/" not in raw and secret.account.encode() not in raw


def test_a_zone_without_a_dns_server_is_a_configuration_error(world: World) -> None:
    step = Step(key="service:1/dns.zone", kind="dns.zone", params={"service_id": None, "zone": "x.si"},
                deps=[], state="running", attempts=1)
    ctx = _ctx(world, step.key)
    with pytest.raises(ConfigurationError, match="DNS server"):
        world.runner.handlers["dns.zone"](ctx, step)


def test_a_certificate_no_account_of_ours_serves_has_nowhere_to_go_in_production(world: World) -> None:
    step = Step(key="service:1/tls.issue", kind="tls.issue",
                params={"service_id": None, "names": ["x.si"]}, deps=[], state="running", attempts=1)
    with pytest.raises(ConfigurationError, match="certificate target"):
        world.runner.handlers["tls.issue"](_ctx(world, step.key), step)


def _ctx(world: World, key: str) -> StepContext:
    return StepContext(world.app.settings, world.factory, key, "test", world.app.adapters, world.runner.now)


def test_shutdown_suspends_on_the_node_and_tells_the_customer_once(
        world: World, hosting: FakeHosting, mailer: MemoryMailer) -> None:
    _paid_hosting(world)
    _run_kinds(world)
    with transaction(world.factory) as s:
        service = s.execute(select(Service)).scalar_one()
        service.state = "expired"
        term = service.expires_on or date(2027, 1, 1)
        service.expires_on = term
        sid, order_id = service.id, service.order_id
    world.at(term + timedelta(days=1))
    spec = StepSpec(f"service:{sid}/clock.shutdown@{term}", "clock.shutdown", (), {
        "service_id": sid, "term_expiry": term.isoformat(), "due_on": (term + timedelta(days=1)).isoformat(),
        "proforma_id": _proforma_id(world, order_id)}, sid)
    with transaction(world.factory) as s:
        record(s, order_id, [spec])
    before = len(mailer.sent)
    world.runner.dispatch(order_id)
    world.drain()
    assert [c[0] for c in hosting.calls].count("suspend") == 1
    assert len(mailer.sent) == before + 1
    with transaction(world.factory) as s:
        s.execute(select(Step).where(Step.key == spec.key)).scalar_one().state = "queued"
    world.runner.run_step(spec.key)  # a second delivery: the stage is recorded, mail sent
    assert len(mailer.sent) == before + 1


def _proforma_id(world: World, order_id: int) -> int:
    with transaction(world.factory) as s:
        return int(s.execute(select(Proforma.id).where(Proforma.order_id == order_id)).scalar_one())


def test_a_step_kind_with_no_handler_is_a_configuration_error_not_a_refund(world: World) -> None:
    order_id = _paid_hosting(world)
    with transaction(world.factory) as s:
        sid = s.execute(select(Service.id)).scalar_one()
        record(s, order_id, [StepSpec(f"service:{sid}/vps.machine", "vps.machine", (), {}, sid)])
    world.runner.dispatch(order_id)
    key = f"service:{sid}/vps.machine"
    with pytest.raises(ConfigurationError, match="vps.machine"):
        world.runner.run_step(key)
    with transaction(world.factory) as s:
        assert s.execute(select(Step.state).where(Step.key == key)).scalar_one() == "queued"
        assert not s.get(Order, order_id).refund_flag  # type: ignore[union-attr]
        assert s.get(Service, sid).state != "failed"  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="vps.machine"):
        world.runner.check_journal()  # what a worker checks when it starts


def test_bootstrap_refuses_a_registry_without_the_core_handlers(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, 25)
    with pytest.raises(ConfigurationError, match="notify.proforma"):
        bootstrap.bootstrap(settings, enqueue=lambda key: None, handlers={})


def test_a_stage_step_refuses_to_run_before_its_day(world: World) -> None:
    order_id = _paid_hosting(world)
    _run_kinds(world)
    with transaction(world.factory) as s:
        sid = s.execute(select(Service.id)).scalar_one()
    due = date(2030, 1, 1)
    step = Step(key=f"service:{sid}/clock.delete_data@{due}", kind="clock.delete_data",
                params={"service_id": sid, "term_expiry": due.isoformat(), "due_on": due.isoformat()},
                deps=[], state="running", attempts=1, order_id=order_id)
    world.at(due - timedelta(days=1))
    with pytest.raises(StepFailed, match="not due before"):
        world.runner.handlers["clock.delete_data"](_ctx(world, step.key), step)
