"""The maintenance window (issue 17, item 11; 002 §12): a disruptive step planned outside
23:00-05:00 Europe/Ljubljana waits for the window's opening in the journal, without an
attempt counted; forced with a reason it runs now, audited. The node converge asks the
same window and exits 4 outside it. Fakes of the node adapters; SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.adapters.hosting.ansible import RunResult
from provisioner.cli import app
from provisioner.config import load_settings
from provisioner.domain.maintenance import in_window
from provisioner.errors import InvalidInput
from provisioner.pipeline.engine.plan import service_step
from provisioner.pipeline.usecases.maintenance import (
    converge_node,
    force_order_window,
    request_plan_change,
)
from provisioner.store.db import session_factory, transaction
from provisioner.store.hosting import HostingAccount, add_node
from provisioner.store.models import AuditEntry, Order, Service, Step
from tests.helpers import MemoryMailer, World, make_settings, make_world
from tests.unit.pipeline.fakes import FakeHosting

W = ("23:00", "05:00")
MORNING = datetime(2026, 1, 14, 9, 0, tzinfo=UTC)  # 10:00 in Ljubljana (CET)
OPENING = datetime(2026, 1, 14, 22, 0, tzinfo=UTC)  # 23:00 CET


def _world(tmp_path: Path, db_url: str) -> tuple[World, FakeHosting]:
    hosting = FakeHosting()
    world = make_world(make_settings(tmp_path, db_url, 25, line_kinds="hosting"), hosting=hosting,
                       mailer=MemoryMailer())
    with transaction(world.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    return world, hosting


def _hosted(world: World) -> tuple[int, int]:
    """A paid hosting order whose account step ran (it is not disruptive: it runs at any
    hour): (order, service)."""
    order = world.order(["hosting:giga5:shop.si"])
    p = order["proforma"]
    assert world.pay(p["number"], p["gross"], "txn-shop").settled
    with transaction(world.factory) as s:
        service_id = s.execute(select(Service.id).where(Service.order_id == order["order"])).scalar_one()
    world.runner.now = lambda: MORNING
    world.runner.dispatch(order["order"])
    assert world.runner.run_step(service_step(service_id, "hosting.account")).status == "done"
    with transaction(world.factory) as s:
        assert s.execute(select(HostingAccount.state)).scalar_one() == "active"
    return int(order["order"]), int(service_id)


def _plan_change(world: World, order_id: int, service_id: int, plan: str = "giga10") -> str:
    """Ops ask for a plan change (`provisioner services change-plan`): a journal step."""
    requested = request_plan_change(world.factory, service_id, plan, "cli:ops")
    assert requested["order"] == order_id and requested["from"] == "giga5"
    return str(requested["step"])


def _step(world: World, key: str) -> Step:
    with transaction(world.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        s.expunge(step)
        return step


def _audit(world: World, action: str) -> list[AuditEntry]:
    with transaction(world.factory) as s:
        rows = list(s.execute(select(AuditEntry).where(AuditEntry.action == action)).scalars())
        s.expunge_all()
        return rows


def test_a_plan_change_outside_the_window_waits_for_its_opening(tmp_path: Path, db_url: str) -> None:
    world, hosting = _world(tmp_path, db_url)
    order_id, service_id = _hosted(world)
    key = _plan_change(world, order_id, service_id)
    world.runner.now = lambda: MORNING
    assert key in world.runner.dispatch(order_id)
    outcome = world.runner.run_step(key)
    assert outcome.status == "waiting"
    step = _step(world, key)
    assert step.state == "queued" and step.attempts == 0  # not a failed attempt
    assert step.next_attempt_at == OPENING
    assert not [c for c in hosting.calls if c[0] == "change_plan"]
    assert world.runner.run_step(key).status == "waiting"  # asked again: still waits
    assert _step(world, key).attempts == 0
    # a minute before the opening the re-drive sends nothing; at the opening it does
    world.queue.keys.clear()
    world.runner.now = lambda: OPENING - timedelta(minutes=1)
    world.runner.redrive()
    assert key not in world.queue.keys
    world.runner.now = lambda: OPENING
    world.runner.redrive()
    assert key in world.queue.keys
    assert world.runner.run_step(key).status == "done"
    assert [c[0] for c in hosting.calls].count("change_plan") == 1
    step = _step(world, key)
    assert step.attempts == 1
    with transaction(world.factory) as s:
        account = s.execute(select(HostingAccount)).scalar_one()
        assert (account.plan, account.disk_mb) == ("giga10", 10000)
    [wait] = _audit(world, "step.window_wait")
    assert wait.detail is not None and wait.detail["until"] == OPENING.isoformat()


def test_inside_the_window_a_plan_change_runs_at_once(tmp_path: Path, db_url: str) -> None:
    world, hosting = _world(tmp_path, db_url)
    order_id, service_id = _hosted(world)
    key = _plan_change(world, order_id, service_id)
    world.runner.now = lambda: OPENING + timedelta(hours=3)  # 02:00 CET
    world.runner.dispatch(order_id)
    assert world.runner.run_step(key).status == "done"
    assert not _audit(world, "step.window_wait")


def test_forced_with_a_reason_it_runs_now_and_is_audited(tmp_path: Path, db_url: str) -> None:
    world, hosting = _world(tmp_path, db_url)
    order_id, service_id = _hosted(world)
    key = _plan_change(world, order_id, service_id)
    world.runner.now = lambda: MORNING
    world.runner.dispatch(order_id)
    assert world.runner.run_step(key).status == "waiting"
    forced = force_order_window(world.factory, str(order_id), "customer's shop is down", "cli:ops",
                                now=MORNING)
    assert key in forced["steps"]
    assert world.runner.run_step(key).status == "done"
    assert [c[0] for c in hosting.calls].count("change_plan") == 1
    [by_ops] = _audit(world, "order.window_forced")
    assert by_ops.actor == "cli:ops" and by_ops.detail is not None
    assert by_ops.detail["reason"] == "customer's shop is down" and key in by_ops.detail["steps"]
    [at_run] = _audit(world, "step.window_forced")
    assert at_run.entity_id == key and at_run.detail is not None
    assert at_run.detail["reason"] == "customer's shop is down"


def test_forcing_needs_a_reason(tmp_path: Path, db_url: str) -> None:
    world, _ = _world(tmp_path, db_url)
    order_id, service_id = _hosted(world)
    with pytest.raises(InvalidInput, match="needs a reason"):
        force_order_window(world.factory, str(order_id), "   ", "cli:ops")
    with pytest.raises(InvalidInput, match="needs a reason"):
        request_plan_change(world.factory, service_id, "giga10", "cli:ops", force_reason="")
    with pytest.raises(InvalidInput, match="already"):
        request_plan_change(world.factory, service_id, "giga5", "cli:ops")
    with pytest.raises(InvalidInput):
        request_plan_change(world.factory, service_id, "ultra", "cli:ops")


def test_a_failed_plan_change_leaves_the_running_service_alone(tmp_path: Path, db_url: str) -> None:
    world, hosting = _world(tmp_path, db_url)
    order_id, service_id = _hosted(world)
    requested = request_plan_change(world.factory, service_id, "giga10", "cli:ops",
                                    force_reason="customer outgrew the plan", now=MORNING)
    assert requested["step"] == service_step(service_id, "hosting.change_plan") + "#1"
    world.runner.dispatch(order_id)
    with transaction(world.factory) as s:
        before = s.execute(select(Service.state).where(Service.id == service_id)).scalar_one()
    hosting.fail = True
    assert world.runner.run_step(requested["step"]).status == "failed"  # a role failure: no retry
    with transaction(world.factory) as s:
        service = s.get(Service, service_id)
        order = s.get(Order, order_id)
        assert service is not None and order is not None
        assert service.state == before != "failed" and not order.refund_flag
        assert s.execute(select(HostingAccount.plan)).scalar_one() == "giga5"
    hosting.fail = False
    again = request_plan_change(world.factory, service_id, "giga10", "cli:ops", force_reason="retry")
    assert again["step"].endswith("#2")
    world.runner.dispatch(order_id)
    assert world.runner.run_step(again["step"]).status == "done"


# -- the node converge: the same window ------------------------------------------------------
def _zone(open_: bool) -> str:
    """A fixed-offset zone whose wall clock is now (and for the next hour) inside, or
    outside, 23:00-05:00: the CLI reads the real clock."""
    now = datetime.now(UTC)
    for hours in range(-12, 13):
        tz = f"Etc/GMT{'+' if hours >= 0 else '-'}{abs(hours)}"
        if all(in_window(now + timedelta(minutes=m), W, tz) is open_ for m in (0, 30, 60)):
            return tz
    raise AssertionError("some zone is always inside or outside the window")


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in [k for k in __import__("os").environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    return CliRunner()


def test_node_converge_outside_the_window_exits_4_and_runs_nothing(
        cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.invoke(app, ["nodes", "add", "n1", "--address", "192.0.2.10"]).exit_code == 0
    monkeypatch.setenv("PROVISIONER_MAINTENANCE_TIMEZONE", _zone(open_=False))
    result = cli.invoke(app, ["nodes", "converge", "n1"])
    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert "outside the maintenance window" in result.stderr
    checked = cli.invoke(app, ["nodes", "converge", "n1", "--check"])
    assert checked.exit_code == 4 and json.loads(checked.stdout)["in_window"] is False
    forced = cli.invoke(app, ["nodes", "converge", "n1", "--check", "--force-window", "CVE fix"])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["forced"] is True
    monkeypatch.setenv("PROVISIONER_MAINTENANCE_TIMEZONE", _zone(open_=True))
    assert cli.invoke(app, ["nodes", "converge", "n1", "--check"]).exit_code == 0
    with transaction(session_factory(load_settings().effective_database_url)) as s:
        assert not list(s.execute(select(AuditEntry).where(AuditEntry.entity == "node")).scalars())


def test_a_forced_converge_is_audited_before_it_runs(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, 25).with_overrides(maintenance_timezone=_zone(open_=False))
    factory = session_factory(settings.effective_database_url)
    with transaction(factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    runs: list[tuple[Any, ...]] = []

    def playbook(name: str, targets: list[Any], extravars: dict[str, Any], **kw: Any) -> RunResult:
        with transaction(factory) as s:  # the audit row is there before the node is touched
            forced = select(AuditEntry.action).where(AuditEntry.action == "node.window_forced")
            assert s.execute(forced).first()
        runs.append((name, [t.name for t in targets]))
        return RunResult("successful", 0, {"n1": {"changed": 2}})

    gate, result = converge_node(settings, factory, "n1", force_reason=None, actor="cli:ops", run=playbook)
    assert result is None and not gate.allowed and not runs
    gate, result = converge_node(settings, factory, "n1", force_reason="openssl CVE", actor="cli:ops",
                                 run=playbook)
    assert result is not None and result.changed == 2 and gate.forced
    assert runs == [("hosting_node.yml", ["n1"])]
    with transaction(factory) as s:
        [row] = s.execute(select(AuditEntry).where(AuditEntry.action == "node.window_forced")).scalars()
        reason = (row.detail or {}).get("reason")
        assert (row.actor, row.entity_id, reason) == ("cli:ops", "n1", "openssl CVE")
