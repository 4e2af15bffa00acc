"""Ops change a running VPS through our interface (issue 14, item 4): a resize to a bigger
plan and a reinstall, journaled by `usecases.vps_ops` and run by the pipeline with the
product's own nspawn driver on this machine (the world of test_vps_pipeline: its
finalizer deletes every machine made here and checks nothing is left behind).

A resize keeps the disk's files and the guest sees the bigger disk; a shrinking one is
refused before anything; outside the maintenance window ``provisioner vps resize`` exits
4 and nothing changes. A reinstall leaves a fresh disk whose new root password, read
through the new one-time link, logs in, and the old one is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from provisioner.adapters.ssh import paramiko_module
from provisioner.cli import app as cli_app
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases.vps_ops import request_reinstall, request_resize
from provisioner.store import vps as vps_store
from provisioner.store.db import transaction
from provisioner.store.models import AuditEntry, Service, Step
from tests.e2e.test_vps_pipeline import VpsWorld, _ssh, _steps_done
from tests.e2e.test_vps_pipeline import world as world  # noqa: F401 - the module's VPS world
from tests.integration.test_window import _zone

GiB = 1024 * 1024 * 1024


def _df_mib(address: str, password: str) -> int:
    """The guest's own view of its root file system's size, MiB."""
    return int(_ssh(address, password, "df -B1M --output=size / | tail -n 1").split()[0])


def _audit(world: VpsWorld, service_id: int, action: str) -> list[AuditEntry]:
    with transaction(world.factory) as s:
        rows = list(s.execute(select(AuditEntry).where(AuditEntry.action == action,
                                                       AuditEntry.entity_id == str(service_id))).scalars())
        s.expunge_all()
        return rows


def _journal_size(world: VpsWorld, service_id: int) -> int:
    with transaction(world.factory) as s:
        return int(s.execute(select(func.count()).select_from(Step)
                             .where(Step.service_id == service_id)).scalar_one())


def _disk_bytes(world: VpsWorld, vps_id: int) -> int:
    return Path(world.driver().disk_path(vps_id)).stat().st_size


def test_a_forced_resize_up_keeps_the_files_and_the_guest_sees_the_bigger_disk(world: VpsWorld) -> None:
    order_id, sid = world.buy("grow.vps-ops.si")
    machine = world.machine(sid)
    password = world.reveal("grow.vps-ops.si")["password"]
    _ssh(machine.address, password, "echo kept > /root/kept; sync")
    assert _df_mib(machine.address, password) <= 40 * 1024  # vps-s: 40 GB
    gate, asked = request_resize(world.app.settings, world.factory, sid, "vps-m", "cli:ops",
                                 force_reason="customer upgrade, ticket 4711")
    assert gate is not None and asked is not None and asked["forced"] == "customer upgrade, ticket 4711"
    world.runner.dispatch(order_id)
    world.drain()
    _steps_done(world, order_id)
    assert _ssh(machine.address, password, "cat /root/kept").strip() == "kept"
    assert _df_mib(machine.address, password) > 75 * 1024  # vps-m: 80 GB, seen inside
    assert _disk_bytes(world, machine.id) == 80 * GiB
    limits = world.driver().limits(machine.id, machine.tag)
    assert (limits["cpu_percent"], limits["memory_bytes"]) == (200, 4096 * 1024 * 1024)  # 2 vCPU, 4 GB
    assert world.machine(sid).plan == "vps-m"
    with transaction(world.factory) as s:
        assert s.get(Service, sid).product == "vps-m"  # type: ignore[union-attr]
    [forced] = _audit_step(world, str(asked["step"]))
    assert (forced.actor, (forced.detail or {})["reason"]) == ("cli:ops", "customer upgrade, ticket 4711")
    [resized] = _audit(world, sid, "vps.resized")
    assert (resized.detail or {})["to"] == "vps-m"


def _audit_step(world: VpsWorld, key: str) -> list[AuditEntry]:
    with transaction(world.factory) as s:
        rows = list(s.execute(select(AuditEntry).where(AuditEntry.action == "step.window_force_set",
                                                       AuditEntry.entity_id == key)).scalars())
        s.expunge_all()
        return rows


def test_a_resize_to_a_smaller_disk_is_refused_and_nothing_changes(world: VpsWorld) -> None:
    order_id, sid = world.buy("shrink.vps-ops.si")
    machine = world.machine(sid)
    before = (_journal_size(world, sid), _disk_bytes(world, machine.id),
              world.driver().limits(machine.id, machine.tag))
    for plan in ("vps-s", "nonesuch"):  # the plan it is on; no such plan
        with pytest.raises(InvalidInput):
            request_resize(world.app.settings, world.factory, sid, plan, "cli:ops", force_reason="x")
    # a bigger plan for it first (forced), then back down: refused before anything
    assert request_resize(world.app.settings, world.factory, sid, "vps-m", "cli:ops",
                          force_reason="upgrade")[1] is not None
    world.runner.dispatch(order_id)
    world.drain()
    grown = (_journal_size(world, sid), _disk_bytes(world, machine.id),
             world.driver().limits(machine.id, machine.tag))
    assert grown[0] == before[0] + 1 and grown[1] == 80 * GiB
    with pytest.raises(InvalidInput, match="never shrunk"):
        request_resize(world.app.settings, world.factory, sid, "vps-s", "cli:ops", force_reason="downgrade")
    assert (_journal_size(world, sid), _disk_bytes(world, machine.id),
            world.driver().limits(machine.id, machine.tag)) == grown
    assert world.machine(sid).plan == "vps-m"
    assert len(_audit(world, sid, "vps.resize_requested")) == 1


def test_vps_resize_outside_the_window_exits_4_and_changes_nothing(
        world: VpsWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, sid = world.buy("night.vps-ops.si")
    machine = world.machine(sid)
    before = (_journal_size(world, sid), _disk_bytes(world, machine.id),
              world.driver().limits(machine.id, machine.tag))
    for key in [k for k in os.environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", f"sqlite:///{world.db_file}")
    monkeypatch.setenv("PROVISIONER_MAINTENANCE_TIMEZONE", _zone(open_=False))
    result = CliRunner().invoke(cli_app, ["vps", "resize", str(sid), "--plan", "vps-m"])
    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert "outside the maintenance window" in result.stderr
    assert (_journal_size(world, sid), _disk_bytes(world, machine.id),
            world.driver().limits(machine.id, machine.tag)) == before
    assert world.machine(sid).plan == "vps-s"
    assert _audit(world, sid, "vps.resize_requested") == []
    blank = CliRunner().invoke(cli_app, ["vps", "resize", str(sid), "--plan", "vps-m",
                                          "--force-window", "   "])
    assert blank.exit_code == 2 and "reason" in blank.stderr  # forcing needs a reason
    assert _journal_size(world, sid) == before[0]


def test_a_reinstall_leaves_a_fresh_disk_whose_new_password_works_and_the_old_is_refused(
        world: VpsWorld) -> None:
    order_id, sid = world.buy("again.vps-ops.si")
    machine = world.machine(sid)
    old = world.reveal("again.vps-ops.si")["password"]
    _ssh(machine.address, old, "echo mine > /root/old-file; sync")
    asked = request_reinstall(world.app.settings, world.factory, sid, "cli:ops")
    world.mailer.sent[:] = [m for m in world.mailer.sent if "again.vps-ops.si" not in m["subject"]]
    world.runner.dispatch(order_id)
    world.drain()
    _steps_done(world, order_id)
    data = world.reveal("again.vps-ops.si")  # the new link's page (one new mail)
    assert (data["address"], data["hostname"]) == (machine.address, "again.vps-ops.si")
    new = data["password"]
    assert new != old
    out = _ssh(machine.address, new, "hostname; test -e /root/old-file && echo still || echo gone")
    assert out.split() == ["again.vps-ops.si", "gone"]
    paramiko = paramiko_module()
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(machine.address, old, "true")
    assert new.encode() not in world.db_file.read_bytes()  # sealed in the link only
    [requested] = _audit(world, sid, "vps.reinstall_requested")
    assert (requested.actor, (requested.detail or {})["step"]) == ("cli:ops", asked["step"])
    assert len(_audit(world, sid, "vps.reinstalled")) == 1
    with transaction(world.factory) as s:
        row = s.get(vps_store.VpsMachine, machine.id)
        assert row is not None and row.state == "running"
