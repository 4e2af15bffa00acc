"""A paid VPS order through the pipeline to a machine that answers ``ssh root@ADDRESS``
(issue 14), on this machine as the VPS host: the product's own wiring (`bootstrap`
builds the nspawn driver from the settings: this machine through LocalRunner, PlainUnits
because PID 1 here is not systemd, the state under the data dir), the catalog's plan
(vps-s), the harness's cached Debian image. Then a worker killed in the middle of
``vps.create`` and its re-drive, and the clock: the shutdown the day after an unpaid
expiry suspends the machine for real, the deletion stage removes its disk.

Every machine these tests start is deleted by the module's finalizer, which also checks
that nothing (state dir, loop device, veth, bridge) is left behind."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import func, select

from provisioner.adapters.ssh import paramiko_module
from provisioner.adapters.vps.driver import MachineInfo, MachineSpec, NspawnDriver, RootAccess
from provisioner.adapters.vps.hosts import NspawnHosts, VpsTarget
from provisioner.api.app import create_app
from provisioner.bootstrap import build_vps_hosts
from provisioner.errors import Conflict
from provisioner.pipeline.capabilities import lifecycle
from provisioner.store import vps as vps_store
from provisioner.store.db import dispose_all, transaction, upgrade
from provisioner.store.hosting import CredentialLink
from provisioner.store.lifecycle import Renewal, StageRecord
from provisioner.store.models import Order, Proforma, Service, Step
from tests.helpers import MemoryMailer, World, customer, make_settings, stripe_notice, wire

BRIDGE = "provvpsp0"
POOL = "10.217.0.0/24"
HOST = "local"  # the VPS host record that is this machine (the setting vps_local_hosts)
PUBLIC = "https://panel.provider.example"


class WorkerKilled(BaseException):
    """The worker dies (SIGKILL) right after the driver call: nothing after it runs, and
    the runner records nothing either (it is not an Exception)."""


@dataclass
class KillAfterCreate:
    """The product's VPS hosts, with the worker killed after the next ``kills`` creates
    (the machine made and running, the step's result not recorded)."""

    real: NspawnHosts
    kills: int = 0

    def driver(self, target: VpsTarget, image: str) -> Any:
        return _KillingDriver(self, self.real.driver(target, image))


@dataclass
class _KillingDriver:
    hosts: KillAfterCreate
    real: NspawnDriver

    def create(self, spec: MachineSpec, access: RootAccess) -> MachineInfo:
        info = self.real.create(spec, access)
        if self.hosts.kills:
            self.hosts.kills -= 1
            raise WorkerKilled()
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@dataclass
class VpsWorld(World):
    mailer: MemoryMailer = field(default_factory=MemoryMailer)
    hosts: KillAfterCreate | None = None
    db_file: Path = Path()
    state_dir: Path = Path()

    @property
    def real(self) -> NspawnHosts:
        assert self.hosts is not None
        return self.hosts.real

    def driver(self) -> NspawnDriver:
        return self.real.driver(VpsTarget(HOST, "127.0.0.1"), "debian-12")

    def buy(self, hostname: str) -> tuple[int, int]:
        """A VPS ordered, paid by card, its steps run. (order id, service id)."""
        order = self.order([f"vps:vps-s:{hostname}:1m"], who=customer("en"))
        order_id = int(order["order"])
        self.drain()
        proforma = order["proforma"]
        assert self.ingest(stripe_notice(f"evt_{hostname}", f"pi_{hostname}", proforma["number"],
                                         Decimal(str(proforma["gross"])))).settled
        self.runner.dispatch(order_id)
        self.drain()
        with transaction(self.factory) as s:
            sid = s.execute(select(Service.id).where(Service.order_id == order_id)).scalar_one()
        return order_id, int(sid)

    def machine(self, service_id: int) -> vps_store.VpsMachine:
        with transaction(self.factory) as s:
            m = s.execute(select(vps_store.VpsMachine).where(
                vps_store.VpsMachine.service_id == service_id)).scalar_one()
            s.expunge(m)
            return m

    def token(self, hostname: str) -> str:
        texts = [m["text"] for m in self.mailer.sent if hostname in m["subject"]]
        assert len(texts) == 1, [m["subject"] for m in self.mailer.sent]
        match = re.search(re.escape(PUBLIC) + r"/credentials/([A-Za-z0-9_-]{20,})", texts[0])
        assert match, texts[0]
        return match.group(1)

    def reveal(self, hostname: str) -> dict[str, str]:
        """The access data as the customer reads them: the link's page, confirmed."""
        token = self.token(hostname)
        app = create_app(self.app.settings, enqueue=self.queue)

        async def visit() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
                assert (await client.get(f"/credentials/{token}")).status_code == 200
                return await client.post(f"/credentials/{token}")

        page = anyio.run(visit)
        assert page.status_code == 200, page.text
        fields = dict(re.findall(r'<code id="server-([a-z]+)">([^<]*)</code>', page.text))
        assert {"address", "user", "password", "hostname"} <= set(fields), page.text
        return fields


@pytest.fixture(scope="module")
def world(hosts: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VpsWorld]:
    work = tmp_path_factory.mktemp("vpspipe")
    image_root = work / "images"
    image_root.mkdir()
    (image_root / "debian-12").symlink_to(hosts.ensure_image()[-1])  # the cached Debian root
    db_file = work / "p.sqlite"
    url = f"sqlite:///{db_file}"
    upgrade(url)
    state_dir = work / "machines"
    settings = make_settings(work, url, 1, public_base_url=PUBLIC, line_kinds="vps",
                             vps_image_dir=str(image_root), vps_state_dir=str(state_dir),
                             vps_bridge=BRIDGE, vps_local_hosts=HOST)
    killing = KillAfterCreate(build_vps_hosts(settings))  # the adapter bootstrap builds
    mailer = MemoryMailer()
    app, queue = wire(settings, mailer=mailer, vps=killing)
    with transaction(app.factory) as s:
        vps_store.add_host(s, HOST, "127.0.0.1", pool=POOL, capacity=10, now=datetime.now(UTC))
    w = VpsWorld(app, queue, mailer, killing, db_file, state_dir)
    try:
        yield w
    finally:
        driver = w.driver()
        for m in driver.list_tagged():
            with contextlib.suppress(Exception):
                driver.delete(m.vps_id, m.tag)
        left = sorted(p.name for p in state_dir.glob("vps-*")) if state_dir.exists() else []
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        for ln in reversed(Path("/proc/mounts").read_text().splitlines()):
            if str(work) in ln:
                subprocess.run(["umount", "-l", ln.split()[1]], check=False)
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)
        dispose_all()
        assert left == [], left
        assert str(state_dir) not in loops, loops
        assert "vb-vps-" not in links, links  # no machine's veth left on the host


def _ssh(address: str, password: str, command: str, timeout_s: float = 90.0) -> str:
    paramiko = paramiko_module()
    deadline = time.monotonic() + timeout_s
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(address, username="root", password=password, timeout=5, allow_agent=False,
                           look_for_keys=False, banner_timeout=10, auth_timeout=10)
            break
        except paramiko.AuthenticationException:
            client.close()
            raise
        except (paramiko.SSHException, OSError):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        _, out, _ = client.exec_command(command, timeout=60)
        text = out.read().decode()
        assert out.channel.recv_exit_status() == 0
        return text
    finally:
        client.close()


def _port_22_open(address: str) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((address, 22)) == 0


def _steps_done(world: VpsWorld, order_id: int) -> None:
    bad = {k: (st.state, st.last_error) for k, st in world.steps(order_id).items() if st.state != "done"}
    assert not bad, bad


def test_a_paid_vps_order_answers_ssh_with_the_delivered_access_data_and_its_hostname(
        world: VpsWorld) -> None:
    order_id, sid = world.buy("first.vps-e2e.si")
    _steps_done(world, order_id)
    machine = world.machine(sid)
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "active"  # type: ignore[union-attr]
        assert s.get(Order, order_id).status == "completed"  # type: ignore[union-attr]
    data = world.reveal("first.vps-e2e.si")
    assert (data["address"], data["user"], data["hostname"]) == (machine.address, "root", "first.vps-e2e.si")
    out = _ssh(data["address"], data["password"], "hostname; cat /etc/hostname; nproc")
    assert out.split()[:2] == ["first.vps-e2e.si", "first.vps-e2e.si"]
    # the plan's limits are on the machine's unit (vps-s: 1 vCPU, 2048 MB, 1000 tasks)
    limits = world.driver().limits(machine.id, machine.tag)
    shown = {k: limits.get(k) for k in ("cpu_percent", "memory_bytes", "tasks_max")}
    assert shown == {"cpu_percent": 100, "memory_bytes": 2048 * 1024 * 1024, "tasks_max": 1000}
    # the database holds no copy of the password
    assert data["password"].encode() not in world.db_file.read_bytes()


def test_a_worker_killed_in_vps_create_is_redriven_to_one_machine_one_address_one_password(
        world: VpsWorld) -> None:
    assert world.hosts is not None
    world.hosts.kills = 1
    order = world.order(["vps:vps-s:crash.vps-e2e.si:1m"], who=customer("en"))
    order_id = int(order["order"])
    world.drain()
    proforma = order["proforma"]
    assert world.ingest(stripe_notice("evt_crash", "pi_crash", proforma["number"],
                                      Decimal(str(proforma["gross"])))).settled
    world.runner.dispatch(order_id)
    with pytest.raises(WorkerKilled):
        world.drain()
    assert world.steps(order_id)["vps.create"].state == "running"
    with transaction(world.factory) as s:
        sid = int(s.execute(select(Service.id).where(Service.order_id == order_id)).scalar_one())
    machine = world.machine(sid)
    made = [m for m in world.driver().list_tagged() if m.tag == machine.tag]
    assert len(made) == 1 and made[0].running  # made on the host; the journal does not know
    disk = Path(world.driver().disk_path(machine.id))
    inode = disk.stat().st_ino
    # its lease runs out; the re-drive hands the step to another worker
    clock = world.runner.now
    world.runner.now = lambda: clock() + timedelta(seconds=world.app.settings.step_lease_s + 1)
    try:
        assert world.runner.redrive()["redriven"] >= 1
        world.drain()
    finally:
        world.runner.now = clock
    _steps_done(world, order_id)
    again = [m for m in world.driver().list_tagged() if m.tag == machine.tag]
    assert len(again) == 1 and again[0].running
    assert disk.stat().st_ino == inode  # adopted: the same disk, not made again
    assert sorted(p.name for p in world.state_dir.glob("vps-*")).count(f"vps-{machine.id}") == 1
    with transaction(world.factory) as s:
        assert s.execute(select(func.count()).select_from(vps_store.VpsMachine)
                         .where(vps_store.VpsMachine.service_id == sid)).scalar_one() == 1
        assert s.execute(select(func.count()).select_from(vps_store.VpsAddressLease)
                         .where(vps_store.VpsAddressLease.vps_id == machine.id)).scalar_one() == 1
        assert s.execute(select(func.count()).select_from(CredentialLink)
                         .where(CredentialLink.service_id == sid)).scalar_one() == 1
    data = world.reveal("crash.vps-e2e.si")
    assert data["address"] == machine.address
    # the one password delivered is the one the machine was made with before the kill
    assert _ssh(machine.address, data["password"], "hostname").strip() == "crash.vps-e2e.si"


def _sweep(world: VpsWorld, day: date) -> None:
    clock = world.runner.now
    world.runner.now = lambda: datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    try:
        lifecycle.run_day(world.factory, world.runner, day)
    finally:
        world.runner.now = clock


def test_the_clock_stops_an_unpaid_vps_the_day_after_expiry_and_its_stage_removes_the_disk(
        world: VpsWorld) -> None:
    _, sid = world.buy("clock.vps-e2e.si")
    machine = world.machine(sid)
    driver = world.driver()
    data = world.reveal("clock.vps-e2e.si")
    _ssh(machine.address, data["password"], "echo kept > /root/marker; sync")
    with transaction(world.factory) as s:
        expires = s.get(Service, sid).expires_on  # type: ignore[union-attr]
    assert expires is not None
    day = expires - timedelta(days=30)
    while day <= expires:  # the renewal proforma goes out; nobody pays it
        _sweep(world, day)
        day += timedelta(days=1)
    assert _port_22_open(machine.address)  # still paid for on its expiry day
    _sweep(world, expires + timedelta(days=1))
    info = next(m for m in driver.list_tagged() if m.tag == machine.tag)
    assert (info.running, info.enabled, info.suspended) == (False, False, True)
    assert not _port_22_open(machine.address)
    with pytest.raises(Conflict, match="suspended"):  # started by hand through our interface: refused
        driver.start(machine.id, machine.tag)
    disk = Path(driver.disk_path(machine.id))
    assert disk.is_file()  # the disk is kept until its stage
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "expired"  # type: ignore[union-attr]
        shutdown = s.execute(select(StageRecord).where(StageRecord.service_id == sid,
                                                       StageRecord.stage == "shutdown")).scalar_one()
        assert shutdown.manifest["suspended"] is True and shutdown.manifest["vps"] == f"vps-{machine.id}"
        assert s.execute(select(Proforma.state).join(Renewal, Renewal.proforma_id == Proforma.id)
                         .where(Renewal.service_id == sid)).scalar_one() == "open"
    day = expires + timedelta(days=2)
    while day <= expires + timedelta(days=61):  # FCB keeps the data 60 days after expiry
        _sweep(world, day)
        day += timedelta(days=1)
    assert not disk.exists() and not Path(driver.machine_dir(machine.id)).exists()
    assert all(m.tag != machine.tag for m in driver.list_tagged())
    assert not [ln for ln in Path("/proc/mounts").read_text().splitlines() if str(disk.parent) in ln]
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "deleted"  # type: ignore[union-attr]
        record = s.execute(select(StageRecord).where(StageRecord.service_id == sid,
                                                     StageRecord.stage == "delete_data")).scalar_one()
        assert record.manifest["machine"] == f"vps-{machine.id}"
        assert record.manifest["disk_bytes"] == 40 * 1024 * 1024 * 1024  # vps-s: 40 GB, removed
        assert record.manifest["state_dir"] == driver.machine_dir(machine.id)
        row = s.get(vps_store.VpsMachine, machine.id)
        assert row is not None and row.state == "deleted"  # the id is never handed out again
        failed = s.execute(select(Step.key).where(Step.state == "failed")).scalars().all()
        assert failed == []
