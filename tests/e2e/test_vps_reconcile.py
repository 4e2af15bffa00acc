"""The VPS reconciler (issue 14 item 5) against real machines on this machine as the VPS
host: the product's wiring (`bootstrap` builds the nspawn driver from the settings:
LocalRunner, PlainUnits because PID 1 here is not systemd), two machines of the catalog's
vps-s plan made from our records (A running, B suspended), and things done behind the
reconciler's back: a CPU quota changed on A's cgroup, a machine dir with no tag, B's
record deleted, A's machine deleted. The reconciler reports each and changes nothing; the
CLI's exit status says whether anything was found; ops get one mail per set of findings
per day.

The tests run in file order on one pair of machines (each leaves the state the next one
starts from); the module's finalizer deletes every machine and checks that nothing
(state dir, loop device, veth, bridge) is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.adapters.vps import cgroups
from provisioner.adapters.vps.driver import RootAccess, VpsDriver
from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.bootstrap import Provisioner
from provisioner.cli.vps import app as vps_cli
from provisioner.config import Settings
from provisioner.pipeline.capabilities.vps import machine_of
from provisioner.pipeline.usecases import ops
from provisioner.store import vps as vps_store
from provisioner.store.db import dispose_all, transaction, upgrade
from provisioner.store.models import Service
from tests.helpers import MemoryMailer, customer, make_settings, wire

BRIDGE = "provvpsr0"
POOL = "10.216.0.0/24"
HOST = "local"  # the VPS host record that is this machine (the setting vps_local_hosts)
START = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)
VCPUS = 1  # the vps-s plan's


@dataclass
class Made:
    vps_id: int
    service_id: int
    tag: str

    @property
    def name(self) -> str:
        return f"vps-{self.vps_id}"


@dataclass
class ReconcileWorld:
    app: Provisioner
    mailer: MemoryMailer
    settings: Settings
    state_dir: Path
    a: Made
    b: Made

    def driver(self) -> VpsDriver:
        hosts = self.app.adapters.vps
        assert hosts is not None
        return hosts.driver(VpsTarget(HOST, "127.0.0.1"), "debian-12")

    def reconcile(self, now: datetime = START) -> dict[str, Any]:
        return self.app.vps_reconcile(now)

    def cli(self, *args: str) -> tuple[int, str]:
        s = self.settings
        env = {"PROVISIONER_DATABASE_URL": s.effective_database_url, "PROVISIONER_DATA_DIR": str(s.data_dir),
               "PROVISIONER_VPS_IMAGE_DIR": s.vps_image_dir, "PROVISIONER_VPS_STATE_DIR": s.vps_state_dir,
               "PROVISIONER_VPS_BRIDGE": s.vps_bridge, "PROVISIONER_VPS_LOCAL_HOSTS": HOST}
        res = CliRunner().invoke(vps_cli, ["reconcile", *args], env=env)
        return res.exit_code, res.output

    def record_state(self, vps_id: int) -> str:
        with transaction(self.app.factory) as s:
            row = s.get(vps_store.VpsMachine, vps_id)
            assert row is not None
            return row.state

    def reconcile_mails(self) -> list[dict[str, Any]]:
        return [m for m in self.mailer.sent if "VPS reconcile" in m["subject"]]


def _make(app: Provisioner, driver: VpsDriver, hostname: str) -> Made:
    """A VPS as the pipeline leaves it: the service, the reservation, the record running,
    the machine made from the spec the record implies."""
    c = ops.add_customer(app.factory, {**customer("en"), "brand": "fcb"}, "test")
    order = ops.create_order(app.factory, c["id"], [f"vps:vps-s:{hostname}:1m"], None, "fcb", "test")
    with transaction(app.factory) as s:
        sid = s.execute(select(Service.id).where(Service.order_id == order["order"])).scalar_one()
    alloc = vps_store.allocate(app.factory, sid, hostname=hostname, plan="vps-s", image="debian-12",
                               now=START)
    with transaction(app.factory) as s:
        row = s.get(vps_store.VpsMachine, alloc.vps_id)
        assert row is not None
        row.state = "running"
    machine = machine_of(app.factory, sid)
    assert machine is not None
    info = driver.create(machine.spec(), RootAccess(password=f"Pw-{os.urandom(9).hex()}"))
    assert info.running and info.tag == alloc.tag
    return Made(alloc.vps_id, sid, alloc.tag)


@pytest.fixture(scope="module")
def rw(hosts: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReconcileWorld]:
    work = tmp_path_factory.mktemp("vpsrec")
    image_root = work / "images"
    image_root.mkdir()
    (image_root / "debian-12").symlink_to(hosts.ensure_image()[-1])  # the cached Debian root
    url = f"sqlite:///{work / 'p.sqlite'}"
    upgrade(url)
    state_dir = work / "machines"
    settings = make_settings(work, url, 1, line_kinds="vps", vps_image_dir=str(image_root),
                             vps_state_dir=str(state_dir), vps_bridge=BRIDGE, vps_local_hosts=HOST)
    mailer = MemoryMailer()
    app, _ = wire(settings, mailer=mailer, now=lambda: START)
    with transaction(app.factory) as s:
        vps_store.add_host(s, HOST, "127.0.0.1", pool=POOL, capacity=10, now=START)
    assert app.adapters.vps is not None
    driver = app.adapters.vps.driver(VpsTarget(HOST, "127.0.0.1"), "debian-12")
    made: list[Made] = []
    try:
        made.append(_make(app, driver, "rec-a.example.si"))
        made.append(_make(app, driver, "rec-b.example.si"))
        yield ReconcileWorld(app, mailer, settings, state_dir, made[0], made[1])
    finally:
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
        assert all(f"vb-{m.name}" not in links for m in made), links  # no machine's veth left


def test_a_clean_state_reports_nothing_and_a_suspended_machine_counts_as_present(
        rw: ReconcileWorld) -> None:
    report = rw.reconcile()
    assert report["clean"] and report["findings"] == [], report["findings"]
    assert report["hosts"] == [{"host": HOST, "machines": 2, "records": 2, "error": None}]
    rw.driver().suspend(rw.b.vps_id, rw.b.tag)  # the clock's shutdown, as `capabilities.vps` does it
    with transaction(rw.app.factory) as s:
        row = s.get(vps_store.VpsMachine, rw.b.vps_id)
        assert row is not None
        row.state = "suspended"
    report = rw.reconcile()
    assert report["clean"], report["findings"]
    assert report["alerted"] is False and rw.reconcile_mails() == []
    code, out = rw.cli("--json")
    assert code == 0, out
    assert json.loads(out)["clean"] is True
    code, out = rw.cli()
    assert code == 0 and "clean" in out, out


def test_a_record_that_says_running_for_a_suspended_machine_is_a_state_finding(rw: ReconcileWorld) -> None:
    with transaction(rw.app.factory) as s:
        row = s.get(vps_store.VpsMachine, rw.b.vps_id)
        assert row is not None
        row.state = "running"
    try:
        [f] = rw.app.vps_reconcile(START, alert=False)["findings"]
        assert (f["kind"], f["vps_id"], f["data"]["suspended"]) == ("state", rw.b.vps_id, True), f
    finally:
        with transaction(rw.app.factory) as s:
            row = s.get(vps_store.VpsMachine, rw.b.vps_id)
            assert row is not None
            row.state = "suspended"


def test_an_untagged_machine_dir_is_neither_listed_nor_touched(rw: ReconcileWorld) -> None:
    strangers = [rw.state_dir / "vps-990001", rw.state_dir / "vps-manual"]
    for d in strangers:
        d.mkdir()
        (d / "disk.img").write_bytes(b"someone else's machine")
    try:
        report = rw.reconcile()
        assert report["clean"], report["findings"]
        assert report["hosts"][0]["machines"] == 2
        assert "990001" not in json.dumps(report) and "vps-manual" not in json.dumps(report)
        for d in strangers:
            assert (d / "disk.img").read_bytes() == b"someone else's machine"
            assert sorted(p.name for p in d.iterdir()) == ["disk.img"]
    finally:
        for d in strangers:
            (d / "disk.img").unlink()
            d.rmdir()


def test_a_cpu_quota_changed_behind_the_drivers_back_is_drift_alerted_once_a_day(rw: ReconcileWorld) -> None:
    cgroups.apply_limits(rw.a.name, cpu_percent=37)
    try:
        report = rw.reconcile()
        [f] = report["findings"]
        assert (f["kind"], f["host"], f["vps_id"], f["service_id"], f["tag"]) == (
            "drift", HOST, rw.a.vps_id, rw.a.service_id, rw.a.tag)
        assert f["data"] == {"cpu_percent": [VCPUS * 100, 37]}, f
        assert report["counts"]["drift"] == 1 and report["alerted"] is True
        [mail] = rw.reconcile_mails()
        assert f"{HOST}/{rw.a.name}" in mail["text"] and "cpu_percent 100 wanted, 37 in force" in mail["text"]
        assert rw.reconcile()["alerted"] is False  # the same findings the same day: no second mail
        assert len(rw.reconcile_mails()) == 1
        assert rw.reconcile(START + timedelta(days=1))["alerted"] is True  # a new day: one more
        assert len(rw.reconcile_mails()) == 2
        # The beat's hourly task: once per slot, however many beats send it.
        first = rw.app.on_beat("vps_reconcile", rw.app.vps_reconcile)
        assert first["counts"]["drift"] == 1 and rw.app.on_beat("vps_reconcile", rw.app.vps_reconcile)[
            "skipped"] is True
        code, out = rw.cli("--json")
        assert code == 3 and json.loads(out)["findings"][0]["kind"] == "drift", out
    finally:
        cgroups.apply_limits(rw.a.name, cpu_percent=VCPUS * 100)
    assert rw.reconcile()["clean"]


def test_a_machine_whose_record_is_gone_is_an_orphan_and_still_exists(rw: ReconcileWorld) -> None:
    vps_store.release(rw.app.factory, rw.b.vps_id, now=START)  # our record of B: deleted
    report = rw.reconcile()
    [f] = report["findings"]
    assert (f["kind"], f["vps_id"], f["tag"], f["data"]) == ("orphan", rw.b.vps_id, rw.b.tag,
                                                            {"record": "deleted"}), f
    assert "record is deleted" in f["detail"]
    [b] = [m for m in rw.driver().list_tagged() if m.vps_id == rw.b.vps_id]
    assert b.tag == rw.b.tag and b.suspended and not b.running  # as it was: nothing touched
    assert (rw.state_dir / rw.b.name / "disk.img").exists()
    code, out = rw.cli()
    assert code == 3 and "orphan" in out, out


def test_a_record_whose_machine_was_deleted_behind_our_back_is_missing(rw: ReconcileWorld) -> None:
    rw.driver().delete(rw.a.vps_id, rw.a.tag)
    report = rw.reconcile()
    kinds = sorted((f["kind"], f["vps_id"]) for f in report["findings"])
    assert kinds == sorted([("missing", rw.a.vps_id), ("orphan", rw.b.vps_id)]), report["findings"]
    assert report["hosts"][0]["machines"] == 1
    assert rw.record_state(rw.a.vps_id) == "running"  # the reconciler changed no record
    code, out = rw.cli("--json")
    assert code == 3 and {f["kind"] for f in json.loads(out)["findings"]} == {"missing", "orphan"}, out
