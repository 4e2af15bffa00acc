"""Fair-use metering through the store (SQLite and PostgreSQL): the beat's sampling writes
one row per live machine and reading, a host that cannot be read loses nothing of the
others, and the report averages the rows per VPS and flags one above 50 % of its plan."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from provisioner.adapters.vps.driver import UsageCounters
from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.cli import app
from provisioner.cli import vps as cli_vps
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import InvalidInput, TransientError
from provisioner.pipeline.usecases import vps_usage
from provisioner.store import vps
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import Service
from provisioner.store.vps_usage import VpsUsageSample
from tests.helpers import make_settings, make_world

NOW = datetime(2027, 2, 1, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)
PLAN = DEFAULT_CATALOG.vps_plan("vps-s")


class CountingDriver:
    """The counters a host reports: ``rate`` of the plan's CPU per machine since a start
    at ``t0``; a machine not in ``rate`` is stopped."""

    def __init__(self, world: Hosts) -> None:
        self.world = world

    def usage(self, vps_id: int, tag: str) -> UsageCounters:
        share = self.world.rate.get(vps_id)
        if share is None:
            return UsageCounters(running=False)
        used = int(share * PLAN.vcpus * (self.world.now - NOW).total_seconds() * 1e9)
        return UsageCounters(running=True, cpu_ns=used, memory_bytes=64 * 1024 * 1024,
                             io_read_bytes=0, io_write_bytes=0, io_read_ops=0, io_write_ops=0)


class Hosts:
    def __init__(self) -> None:
        self.rate: dict[int, float] = {}
        self.now = NOW
        self.down: set[str] = set()

    def driver(self, target: VpsTarget, image: str) -> Any:
        if target.name in self.down:
            raise TransientError(f"{target.name}: ssh: connection refused")
        return CountingDriver(self)


@pytest.fixture
def machines(db_url: str, tmp_path: Path) -> tuple[Any, list[vps.Allocation]]:
    world = make_world(make_settings(tmp_path, db_url, 25, line_kinds=""))
    for i in range(3):
        world.order([f"vps:vps-s:use{i}.example.si:1m"])
    f = session_factory(db_url)
    with transaction(f) as s:
        vps.add_host(s, "vh1", "192.0.2.10", pool="10.220.1.0/27", capacity=2, now=NOW)
        vps.add_host(s, "vh2", "192.0.2.11", pool="10.220.2.0/27", capacity=2, now=NOW)
        services = list(s.execute(select(Service.id).order_by(Service.id)).scalars())
    made = [vps.allocate(f, sid, hostname=f"use{i}.example.si", plan="vps-s", image="debian-12", now=NOW)
            for i, sid in enumerate(services[:3])]
    with transaction(f) as s:
        s.execute(update(vps.VpsMachine).values(state="running"))
    return f, made


def test_samples_become_averages_and_the_heavy_vps_is_flagged(
        machines: tuple[Any, list[vps.Allocation]]) -> None:
    f, (busy, calm, stopped) = machines
    hosts = Hosts()
    hosts.rate = {busy.vps_id: 0.8, calm.vps_id: 0.1}
    for i in range(9):  # two hours, a reading every 15 minutes
        hosts.now = NOW + STEP * i
        assert vps_usage.sample_all(f, hosts, hosts.now)["sampled"] == 3
    rows = {r["vps_id"]: r for r in vps_usage.report(f, hosts.now, days=1, interval=STEP)}
    assert rows[busy.vps_id]["flagged"] and rows[busy.vps_id]["over"] == ["cpu"]
    assert rows[busy.vps_id]["cpu_pct"] == pytest.approx(80.0, abs=0.2)
    assert not rows[calm.vps_id]["flagged"]
    assert rows[calm.vps_id]["cpu_pct"] == pytest.approx(10.0, abs=0.2)
    assert rows[stopped.vps_id]["cpu_pct"] == 0 and rows[stopped.vps_id]["samples"] == 9
    assert rows[busy.vps_id]["coverage_pct"] == pytest.approx(100 * 2 / 24, abs=0.1)
    first = vps_usage.report(f, hosts.now, days=1, interval=STEP)[0]
    assert first["vps_id"] == busy.vps_id  # flagged rows first


def test_an_unreachable_host_is_reported_and_the_others_are_sampled(
        machines: tuple[Any, list[vps.Allocation]]) -> None:
    f, made = machines
    hosts = Hosts()
    down = made[0].host
    hosts.down = {down}
    got = vps_usage.sample_all(f, hosts, NOW)
    assert got["hosts_failed"] == [down]
    with transaction(f) as s:
        sampled = set(s.scalars(select(VpsUsageSample.vps_id)))
    assert sampled == {m.vps_id for m in made if m.host != down} != set()


def test_old_samples_are_pruned_and_bad_windows_refused(machines: tuple[Any, list[vps.Allocation]]) -> None:
    f, _ = machines
    hosts = Hosts()
    vps_usage.sample_all(f, hosts, NOW - vps_usage.KEEP - timedelta(days=1))
    vps_usage.sample_all(f, hosts, NOW)
    with transaction(f) as s:
        assert s.scalar(select(func.count()).select_from(VpsUsageSample).where(
            VpsUsageSample.taken_at < NOW - vps_usage.KEEP)) == 0
        assert s.scalar(select(func.count()).select_from(VpsUsageSample)) == 3
    for bad in (0, -3, 400):
        with pytest.raises(InvalidInput):
            vps_usage.report(f, NOW, days=bad)


def test_vps_usage_command_flags_the_heavy_vps(machines: tuple[Any, list[vps.Allocation]], db_url: str,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f, (busy, calm, _stopped) = machines
    hosts = Hosts()
    hosts.rate = {busy.vps_id: 0.6, calm.vps_id: 0.05}
    for i in range(5):
        hosts.now = NOW + STEP * i
        vps_usage.sample_all(f, hosts, hosts.now)
    for key in [k for k in os.environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", db_url)
    monkeypatch.setattr(cli_vps, "utcnow", lambda: hosts.now)
    result = CliRunner().invoke(app, ["vps", "usage", "--days", "1", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    rows = json.loads(result.stdout)
    assert [r["vps_id"] for r in rows if r["flagged"]] == [busy.vps_id]
    text = CliRunner().invoke(app, ["vps", "usage", "--days", "1"])
    assert text.exit_code == 0 and f"vps-{busy.vps_id} use0.example.si" in text.stdout
    assert "1 of 3 VPS above it" in text.stdout
    bad = CliRunner().invoke(app, ["vps", "usage", "--days", "0"])
    assert bad.exit_code != 0 and "--days" in bad.stderr


def test_the_beat_task_samples_once_per_interval(machines: tuple[Any, list[vps.Allocation]], db_url: str,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f, made = machines
    hosts = Hosts()
    clock = {"now": NOW + timedelta(minutes=1)}
    world = make_world(make_settings(tmp_path, db_url, 25, line_kinds="", vps_usage_minutes=15),
                       now=lambda: clock["now"], vps=hosts)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(world.app.settings.data_dir))
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", db_url)
    from provisioner import tasks  # imported here: its Celery app reads the environment above

    monkeypatch.setattr(tasks, "provisioner", lambda: world.app)
    entry = tasks.make_celery(world.app.settings).conf.beat_schedule["vps_usage"]
    assert entry["task"] == "provisioner.vps_usage" == tasks.vps_usage.name and entry["schedule"] == 900.0
    assert tasks.vps_usage()["sampled"] == len(made)
    clock["now"] = NOW + timedelta(minutes=9)  # a second beat in the same interval
    assert tasks.vps_usage()["skipped"]
    clock["now"] = NOW + timedelta(minutes=16)  # the next interval
    assert tasks.vps_usage()["sampled"] == len(made)
    with transaction(f) as s:
        assert s.scalar(select(func.count()).select_from(VpsUsageSample)) == 2 * len(made)
