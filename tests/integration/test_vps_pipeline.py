"""A paid VPS order through the pipeline, on SQLite and PostgreSQL: the plan, the journal,
the one-time access data, a worker killed in the middle of ``vps.create``, the order's
completion, and what the clock asks of the machine. The VPS hosts are a recording fake
here (these tests are about the journal); tests/e2e/test_vps_pipeline.py runs the same
path with the nspawn driver and logs in."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from provisioner.adapters.vps.driver import MachineInfo, MachineSpec, RootAccess
from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.api.app import create_app
from provisioner.bootstrap import planner_for
from provisioner.cli.vps import app as vps_cli
from provisioner.config import Settings
from provisioner.errors import Conflict, NotFound
from provisioner.pipeline.capabilities import lifecycle
from provisioner.pipeline.capabilities.hosting import open_link
from provisioner.pipeline.engine.plan import OrderView, ServiceView
from provisioner.store import vps as vps_store
from provisioner.store.db import transaction
from provisioner.store.hosting import CredentialLink
from provisioner.store.lifecycle import Renewal, StageRecord
from provisioner.store.models import Base, Order, Proforma, Service, Step
from provisioner.store.vps_access import VpsRootAccess
from tests.helpers import API_TOKEN, MemoryMailer, World, make_settings, make_world

START = datetime(2027, 1, 4, 12, 0, tzinfo=UTC)


class WorkerKilled(BaseException):
    """The worker dies (SIGKILL): nothing of the handler's after this runs, and the runner
    records nothing either (it is not an Exception)."""


@dataclass
class FakeMachine:
    spec: MachineSpec
    password: str | None
    running: bool = True
    enabled: bool = True
    suspended: bool = False


@dataclass
class FakeVpsHosts:
    """VPS hosts that keep their machines in a dict and record every call; a create
    adopts a machine with the same id and tag, like the nspawn driver."""

    machines: dict[int, FakeMachine] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    kill_after_create: int = 0  # the next N creates kill the worker once the machine exists

    def driver(self, target: VpsTarget, image: str) -> FakeDriver:
        return FakeDriver(self, target, image)


@dataclass
class FakeDriver:
    hosts: FakeVpsHosts
    target: VpsTarget
    image: str

    def _info(self, m: FakeMachine, created: bool = False) -> MachineInfo:
        return MachineInfo(f"vps-{m.spec.vps_id}", m.spec.vps_id, m.spec.tag, m.spec.hostname,
                           m.spec.address, m.running, m.enabled, m.suspended, created)

    def _get(self, vps_id: int, tag: str) -> FakeMachine:
        m = self.hosts.machines.get(vps_id)
        if m is None:
            raise NotFound(f"no machine vps-{vps_id}")
        if m.spec.tag != tag:
            raise Conflict("tag mismatch: refused")
        return m

    def create(self, spec: MachineSpec, access: RootAccess) -> MachineInfo:
        spec, access = spec.validated(), access.validated()
        self.hosts.calls.append(("create", self.target.name, spec.vps_id, access.password))
        m = self.hosts.machines.get(spec.vps_id)
        created = m is None
        if m is None:
            m = self.hosts.machines[spec.vps_id] = FakeMachine(spec, access.password)
        elif m.spec.tag != spec.tag:
            raise Conflict("tag mismatch: refused")
        m.running = not m.suspended
        if self.hosts.kill_after_create:
            self.hosts.kill_after_create -= 1
            raise WorkerKilled()
        return self._info(m, created)

    def start(self, vps_id: int, tag: str) -> MachineInfo:
        m = self._get(vps_id, tag)
        self.hosts.calls.append(("start", vps_id))
        if m.suspended:
            raise Conflict("suspended")
        m.running = True
        return self._info(m)

    def stop(self, vps_id: int, tag: str) -> MachineInfo:
        m = self._get(vps_id, tag)
        m.running = False
        return self._info(m)

    def suspend(self, vps_id: int, tag: str) -> MachineInfo:
        m = self._get(vps_id, tag)
        self.hosts.calls.append(("suspend", vps_id))
        m.running, m.enabled, m.suspended = False, False, True
        return self._info(m)

    def unsuspend(self, vps_id: int, tag: str) -> MachineInfo:
        m = self._get(vps_id, tag)
        self.hosts.calls.append(("unsuspend", vps_id))
        m.running, m.enabled, m.suspended = True, True, False
        return self._info(m)

    def delete(self, vps_id: int, tag: str) -> dict[str, object]:
        self._get(vps_id, tag)
        self.hosts.calls.append(("delete", vps_id))
        del self.hosts.machines[vps_id]
        return {"machine": f"vps-{vps_id}", "tag": tag, "disk_bytes": 42}

    def list_tagged(self) -> list[MachineInfo]:
        return [self._info(m) for m in self.hosts.machines.values()]

    def limits(self, vps_id: int, tag: str) -> dict[str, int | None]:
        return {}


@dataclass
class VpsWorld(World):
    hosts: FakeVpsHosts = field(default_factory=FakeVpsHosts)
    mailer: MemoryMailer = field(default_factory=MemoryMailer)

    def buy(self, hostname: str, txn: str) -> tuple[int, int]:
        """A VPS ordered and paid; every ready step run. Returns (order id, service id)."""
        result = self.order([f"vps:vps-s:{hostname}:1m"])
        self.drain()
        proforma = result["proforma"]
        assert self.pay(proforma["number"], proforma["gross"], txn).settled
        self.runner.dispatch(result["order"])
        self.drain()
        return int(result["order"]), self.service_of(int(result["order"]))

    def service_of(self, order_id: int) -> int:
        with transaction(self.factory) as s:
            return int(s.execute(select(Service.id).where(Service.order_id == order_id)).scalar_one())

    def get_expiry(self, service_id: int) -> date:
        with transaction(self.factory) as s:
            expires = s.execute(select(Service.expires_on).where(Service.id == service_id)).scalar_one()
            assert expires is not None
            return expires

    def renewal_of(self, service_id: int) -> tuple[str, Any]:
        """The open renewal proforma of the service: (number, gross)."""
        with transaction(self.factory) as s:
            p = s.execute(select(Proforma).join(Renewal, Renewal.proforma_id == Proforma.id)
                          .where(Renewal.service_id == service_id)).scalar_one()
            return p.number, p.gross

    def token(self, to_hostname: str) -> str:
        texts = [m["text"] for m in self.mailer.sent if to_hostname in m["subject"]]
        assert len(texts) == 1, [m["subject"] for m in self.mailer.sent]
        match = re.search(r"/credentials/([A-Za-z0-9_-]{20,})", texts[0])
        assert match is not None
        return match.group(1)


def _world(db_url: str, tmp_path: Path, line_kinds: str = "vps") -> VpsWorld:
    hosts, mailer = FakeVpsHosts(), MemoryMailer()
    settings = make_settings(tmp_path, db_url, 1, line_kinds=line_kinds)
    clock = {"now": START}
    w = make_world(settings, now=lambda: clock["now"], vps=hosts, mailer=mailer)
    with transaction(w.factory) as s:
        vps_store.add_host(s, "vh1", "192.0.2.30", pool="10.230.0.0/28", capacity=5, now=START)
    return VpsWorld(w.app, w.queue, hosts, mailer)


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> VpsWorld:
    return _world(db_url, tmp_path)


def _all_rows_text(world: World) -> str:
    """Every row of every table, as text: what the database would give away."""
    out = []
    with transaction(world.factory) as s:
        for table in Base.metadata.sorted_tables:
            out += [repr(tuple(row)) for row in s.execute(select(table)).all()]
    return "\n".join(out)


def test_a_vps_line_plans_create_then_credentials_then_activation() -> None:
    planner = planner_for(Settings(line_kinds="vps"))
    service = ServiceView(7, "vps", "vps-s", "box.example.si", 1, "provisioning")
    view = OrderView(3, 4, "P-1", True, (service,))
    steps = [(st.kind, st.deps) for st in planner.plan(view) if st.service_id == 7]
    assert steps == [
        ("vps.create", ()),
        ("notify.credentials", ("service:7/vps.create",)),
        ("service.activate", ("service:7/vps.create", "service:7/notify.credentials")),
    ]
    renewal = replace(service, action="renew", term_expiry="2027-02-04", renew_months=1)
    kinds = [st.kind for st in planner.plan(replace(view, services=(renewal,))) if st.service_id == 7]
    assert kinds == ["service.renew"]  # a renewal changes nothing on the host


def test_a_paid_vps_order_gives_an_active_service_with_its_address_and_access_data(
        world: VpsWorld) -> None:
    order_id, sid = world.buy("box.example.si", "t-1")
    steps = world.steps(order_id)
    assert {k: st.state for k, st in steps.items()} == {k: "done" for k in steps}
    assert steps["vps.create"].result["address"] == "10.230.0.2"  # type: ignore[index]
    with transaction(world.factory) as s:
        service, order = s.get(Service, sid), s.get(Order, order_id)
        assert service is not None and order is not None
        assert service.state == "active" and service.expires_on is not None
        assert order.status == "completed"
        machine = s.execute(select(vps_store.VpsMachine)).scalar_one()
        assert (machine.state, machine.address) == ("running", "10.230.0.2")
        assert machine.tag == f"provisioner-service-{sid}"
    [(_, host, vps_id, password)] = world.hosts.calls
    assert (host, vps_id) == ("vh1", machine.id)
    data = open_link(world.factory, world.token("box.example.si"), START)
    assert data["server"] == {"hostname": "box.example.si", "address": "10.230.0.2", "port": 22,
                              "user": "root", "password": password, "ssh": "ssh root@10.230.0.2"}
    # the mail names the address and the ssh command, never the password
    mail = next(m for m in world.mailer.sent if "box.example.si" in m["subject"])
    assert "ssh root@10.230.0.2" in mail["text"] and password not in mail["text"]
    # our copy of the password is wiped once the link holds it; nothing in the database shows it
    with transaction(world.factory) as s:
        access = s.execute(select(VpsRootAccess)).scalar_one()
        assert access.sealed == b"-" and access.issued_at is not None
    assert password not in _all_rows_text(world)


def test_running_the_create_again_makes_nothing_and_issues_nothing(world: VpsWorld) -> None:
    order_id, sid = world.buy("again.example.si", "t-2")
    with transaction(world.factory) as s:
        step = s.execute(select(Step).where(Step.kind == "vps.create")).scalar_one()
        step.state = "queued"  # the broker delivered it again after it finished
    world.runner.run_step(step.key)
    assert [c[0] for c in world.hosts.calls] == ["create", "start"]  # started, never remade
    assert len(world.hosts.machines) == 1
    with transaction(world.factory) as s:
        assert s.execute(select(func.count()).select_from(CredentialLink)).scalar_one() == 1


def test_a_worker_killed_after_the_driver_call_is_redriven_to_one_machine_and_one_password(
        world: VpsWorld) -> None:
    world.hosts.kill_after_create = 1
    result = world.order(["vps:vps-s:crash.example.si:1m"])
    world.drain()
    proforma = result["proforma"]
    assert world.pay(proforma["number"], proforma["gross"], "t-3").settled
    world.runner.dispatch(result["order"])
    with pytest.raises(WorkerKilled):
        world.drain()
    steps = world.steps(int(result["order"]))
    assert steps["vps.create"].state == "running"  # the machine exists; the journal does not know
    assert len(world.hosts.machines) == 1
    # the lease runs out; the re-drive hands the step to another worker
    later = world.runner.now() + timedelta(seconds=world.app.settings.step_lease_s + 1)
    world.runner.now = lambda: later
    assert world.runner.redrive()["redriven"] >= 1
    world.drain()
    steps = world.steps(int(result["order"]))
    assert {k: st.state for k, st in steps.items()} == {k: "done" for k in steps}
    creates = [c for c in world.hosts.calls if c[0] == "create"]
    assert len(creates) == 2 and creates[0][1:] == creates[1][1:]  # same host, id, password
    assert len(world.hosts.machines) == 1
    with transaction(world.factory) as s:
        assert s.execute(select(func.count()).select_from(vps_store.VpsMachine)).scalar_one() == 1
        assert s.execute(select(func.count()).select_from(vps_store.VpsAddressLease)).scalar_one() == 1
        assert s.execute(select(func.count()).select_from(CredentialLink)).scalar_one() == 1
    data = open_link(world.factory, world.token("crash.example.si"), later)
    assert data["server"]["password"] == creates[0][3]  # the password the machine was made with


def test_an_order_whose_vps_line_is_not_planned_here_stays_paid_not_completed(
        db_url: str, tmp_path: Path) -> None:
    """The defect: every step of the order done (billing), the VPS service left
    ``provisioning`` forever, and the order marked completed."""
    world = _world(db_url, tmp_path, line_kinds="hosting")
    order_id, sid = world.buy("unplanned.example.si", "t-4")
    steps = world.steps(order_id)
    assert set(steps) == {"notify.proforma", "notify.payment", "invoice.issue", "notify.invoice"}
    assert {st.state for st in steps.values()} == {"done"}
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "provisioning"  # type: ignore[union-attr]
        assert s.get(Order, order_id).status == "paid"  # type: ignore[union-attr]
    assert world.hosts.calls == []


def test_no_vps_host_with_room_fails_the_step_with_a_refund_flag(db_url: str, tmp_path: Path) -> None:
    world = _world(db_url, tmp_path)
    with transaction(world.factory) as s:
        s.execute(vps_store.VpsHost.__table__.update().values(state="draining"))
    result = world.order(["vps:vps-s:nohost.example.si:1m"])
    world.drain()
    proforma = result["proforma"]
    assert world.pay(proforma["number"], proforma["gross"], "t-5").settled
    world.runner.dispatch(result["order"])
    world.drain(retry=True)
    steps = world.steps(int(result["order"]))
    assert steps["vps.create"].state == "failed"
    assert "every VPS host is full or draining" in (steps["vps.create"].last_error or "")
    with transaction(world.factory) as s:
        order = s.get(Order, int(result["order"]))
        assert order is not None and order.refund_flag and order.status == "failed"
    assert world.hosts.calls == []


def _sweep(world: VpsWorld, day: date) -> None:
    world.runner.now = lambda: datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    lifecycle.run_day(world.factory, world.runner, day)


def test_the_clock_suspends_the_machine_after_expiry_and_a_late_payment_brings_it_back(
        world: VpsWorld) -> None:
    _, sid = world.buy("late.example.si", "t-6")
    expires = world.get_expiry(sid)
    for day in (expires - timedelta(days=30), expires, expires + timedelta(days=1)):
        _sweep(world, day)
    [machine] = world.hosts.machines.values()
    assert (machine.suspended, machine.running, machine.enabled) == (True, False, False)
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "expired"  # type: ignore[union-attr]
        assert s.execute(select(vps_store.VpsMachine.state)).scalar_one() == "suspended"
        record = s.execute(select(StageRecord).where(StageRecord.service_id == sid)).scalar_one()
        assert record.stage == "shutdown" and record.manifest["suspended"] is True
    number, gross = world.renewal_of(sid)
    assert world.pay(number, gross, "t-6-late").settled
    world.run_queued()
    assert (machine.suspended, machine.running) == (False, True)
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "active"  # type: ignore[union-attr]
        assert s.execute(select(vps_store.VpsMachine.state)).scalar_one() == "running"


def test_the_deletion_stage_deletes_the_machine_keeps_its_record_and_quarantines_the_address(
        world: VpsWorld) -> None:
    _, sid = world.buy("gone.example.si", "t-7")
    expires = world.get_expiry(sid)
    day = expires - timedelta(days=30)
    while day <= expires + timedelta(days=61):
        _sweep(world, day)
        day += timedelta(days=1)
    assert world.hosts.machines == {}
    assert [c[0] for c in world.hosts.calls].count("delete") == 1
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "deleted"  # type: ignore[union-attr]
        machine = s.execute(select(vps_store.VpsMachine)).scalar_one()
        assert machine.state == "deleted" and machine.deleted_at is not None
        lease = s.execute(select(vps_store.VpsAddressLease)).scalar_one()
        assert lease.released_at is not None  # the address waits in quarantine
        record = s.execute(select(StageRecord).where(StageRecord.service_id == sid,
                                                     StageRecord.stage == "delete_data")).scalar_one()
        assert record.manifest["machine"] == f"vps-{machine.id}" and record.manifest["disk_bytes"] == 42
        assert record.manifest["address"] == machine.address


def test_vps_cli_registers_a_host_and_lists_and_shows_the_machine_without_a_secret(
        db_url: str, tmp_path: Path) -> None:
    world = _world(db_url, tmp_path)
    env = {"PROVISIONER_DATABASE_URL": db_url, "PROVISIONER_DATA_DIR": str(tmp_path / "data")}
    cli = CliRunner()
    res = cli.invoke(vps_cli, ["host", "add", "vh2", "--address", "192.0.2.31", "--pool", "10.231.0.0/28",
                               "--capacity", "3", "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"name": "vh2", "address": "192.0.2.31", "pool": "10.231.0.0/28",
                                      "gateway": "10.231.0.1", "capacity": 3, "state": "active"}
    bad = cli.invoke(vps_cli, ["host", "add", "vh3", "--address", "192.0.2.32", "--pool", "10.0.0.1/24"],
                     env=env)
    assert bad.exit_code == 2 and "address pool" in bad.output  # a clear error, nothing added
    _, sid = world.buy("listed.example.si", "t-8")
    [(_, host, vps_id, password)] = world.hosts.calls
    res = cli.invoke(vps_cli, ["list", "--json"], env=env)
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.output)
    assert (row["vps_id"], row["service_id"], row["host"], row["state"]) == (vps_id, sid, host, "running")
    assert row["ssh"] == f"ssh root@{row['address']}" and row["access_data"] == "issued"
    shown = cli.invoke(vps_cli, ["show", str(vps_id), "--json"], env=env)
    assert shown.exit_code == 0 and json.loads(shown.output) == row
    assert password not in res.output + shown.output
    missing = cli.invoke(vps_cli, ["show", "999", "--json"], env=env)
    assert missing.exit_code == 2


def test_get_service_shows_the_vps_with_its_address(world: VpsWorld) -> None:
    _, sid = world.buy("api.example.si", "t-9")
    app = create_app(world.app.settings, enqueue=world.queue)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
            return await client.get(f"/services/{sid}", headers={"Authorization": f"Bearer {API_TOKEN}"})

    r = anyio.run(get)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "active"
    assert body["vps"]["address"] == "10.230.0.2" and body["vps"]["hostname"] == "api.example.si"
    assert body["vps"]["state"] == "running" and body["vps"]["host"] == "vh1"
    [(_, _, _, password)] = world.hosts.calls
    assert password not in r.text


def test_no_vps_host_registered_fails_the_step_at_once_with_a_clear_error(
        db_url: str, tmp_path: Path) -> None:
    world = _world(db_url, tmp_path)
    with transaction(world.factory) as s:
        s.execute(vps_store.VpsHost.__table__.delete())
    order_id, sid = world.buy("nohost.example.si", "t-10")
    step = world.steps(order_id)["vps.create"]
    assert (step.state, step.attempts) == ("failed", 1)  # nothing to retry: ops must add a host
    assert "provisioner vps host add" in (step.last_error or "")
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "failed"  # type: ignore[union-attr]
        assert s.get(Order, order_id).refund_flag  # type: ignore[union-attr]
