"""What `usecases.vps_ops` journals and audits for a VPS resize and reinstall (issue 14,
item 4), on SQLite and PostgreSQL: the maintenance window (23:00-05:00 Europe/Ljubljana)
and its forcing, the refusals that change nothing, the new root password sealed for a
reinstall. The VPS hosts are the recording fake of test_vps_pipeline (nothing here runs
a resize or reinstall step: tests/e2e/test_vps_ops.py does, with the nspawn driver)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases.vps_ops import request_reinstall, request_resize
from provisioner.store import vps as vps_store
from provisioner.store.db import transaction
from provisioner.store.models import AuditEntry, Step
from provisioner.store.vps_access import WIPED, VpsRootAccess
from tests.integration.test_vps_pipeline import VpsWorld
from tests.integration.test_vps_pipeline import world as world  # noqa: F401 - fake VPS hosts, both DBs

MORNING = datetime(2027, 1, 14, 9, 0, tzinfo=UTC)  # 10:00 in Ljubljana (CET): closed
NIGHT = datetime(2027, 1, 14, 22, 30, tzinfo=UTC)  # 23:30 CET: open


def _steps(world: VpsWorld, kind: str) -> list[Step]:
    with transaction(world.factory) as s:
        rows = list(s.execute(select(Step).where(Step.kind == kind).order_by(Step.id)).scalars())
        s.expunge_all()
        return rows


def _audit(world: VpsWorld, action: str) -> list[AuditEntry]:
    with transaction(world.factory) as s:
        rows = list(s.execute(select(AuditEntry).where(AuditEntry.action == action)).scalars())
        s.expunge_all()
        return rows


def _resize(world: VpsWorld, sid: int, plan: str, now: datetime, reason: str | None = None) -> object:
    return request_resize(world.app.settings, world.factory, sid, plan, "cli:ops", force_reason=reason,
                          now=now)[1]


def test_a_resize_in_the_window_is_journaled_unforced_and_audited(world: VpsWorld) -> None:
    order_id, sid = world.buy("grow.example.si", "t-1")
    gate, asked = request_resize(world.app.settings, world.factory, sid, "vps-m", "cli:ops", now=NIGHT)
    assert gate is not None and gate.in_window and not gate.forced
    with transaction(world.factory) as s:
        vps_id = s.execute(select(vps_store.VpsMachine.id)).scalar_one()
    assert asked == {"service": sid, "order": order_id, "vps_id": vps_id,
                     "step": f"service:{sid}/vps.resize#1", "from": "vps-s", "to": "vps-m", "forced": None}
    [step] = _steps(world, "vps.resize")
    assert (step.params, step.force_window, step.state) == ({"service_id": sid, "plan": "vps-m"}, None,
                                                            "pending")
    [row] = _audit(world, "vps.resize_requested")
    assert (row.actor, row.entity_id, (row.detail or {})["to"]) == ("cli:ops", str(sid), "vps-m")
    assert _audit(world, "step.window_force_set") == []
    with pytest.raises(InvalidInput, match="not finished"):  # one resize at a time
        _resize(world, sid, "vps-l", NIGHT)
    assert len(_steps(world, "vps.resize")) == 1


def test_outside_the_window_nothing_is_journaled_unless_forced_with_a_reason(world: VpsWorld) -> None:
    _, sid = world.buy("late.example.si", "t-2")
    gate, asked = request_resize(world.app.settings, world.factory, sid, "vps-m", "cli:ops", now=MORNING)
    assert asked is None and gate is not None and not gate.allowed
    assert gate.next_opening == datetime(2027, 1, 14, 22, 0, tzinfo=UTC)  # 23:00 CET
    assert _steps(world, "vps.resize") == [] and _audit(world, "vps.resize_requested") == []
    with pytest.raises(InvalidInput, match="reason"):
        _resize(world, sid, "vps-m", MORNING, "  ")
    assert _steps(world, "vps.resize") == []
    assert _resize(world, sid, "vps-m", MORNING, "disk  full,\nticket 9") is not None
    [step] = _steps(world, "vps.resize")
    assert step.force_window == "disk full, ticket 9"
    [forced] = _audit(world, "step.window_force_set")
    assert (forced.actor, forced.entity_id, (forced.detail or {})["reason"]) == (
        "cli:ops", step.key, "disk full, ticket 9")


def test_a_smaller_disk_the_same_plan_or_no_plan_is_refused_before_anything(world: VpsWorld) -> None:
    _, sid = world.buy("big.example.si", "t-3")
    with transaction(world.factory) as s:  # as if it had been resized to vps-l before
        machine = s.execute(select(vps_store.VpsMachine)).scalar_one()
        machine.plan = "vps-l"
    for plan, match in (("vps-m", "never shrunk"), ("vps-s", "never shrunk"), ("vps-l", "already"),
                        ("vps-xxl", "unknown VPS plan")):
        with pytest.raises(InvalidInput, match=match):
            _resize(world, sid, plan, NIGHT, "forced")
    assert _steps(world, "vps.resize") == [] and _audit(world, "vps.resize_requested") == []


def test_a_reinstall_seals_a_new_password_and_journals_its_mail(world: VpsWorld) -> None:
    order_id, sid = world.buy("fresh.example.si", "t-4")
    with transaction(world.factory) as s:
        assert s.execute(select(VpsRootAccess.sealed)).scalar_one() == WIPED  # the first one issued
    asked = request_reinstall(world.app.settings, world.factory, sid, "cli:ops", now=MORNING)
    key = f"service:{sid}/vps.reinstall#1"
    assert (asked["step"], asked["notify"]) == (key, f"service:{sid}/notify.credentials#1")
    [step] = _steps(world, "vps.reinstall")
    [notify] = [st for st in _steps(world, "notify.credentials") if st.key == asked["notify"]]
    assert (step.order_id, step.deps, notify.deps) == (order_id, [], [key])
    with transaction(world.factory) as s:
        access = s.execute(select(VpsRootAccess)).scalar_one()
        assert access.issued_at is None and access.sealed != WIPED  # sealed for the step
    [row] = _audit(world, "vps.reinstall_requested")
    assert (row.actor, (row.detail or {})["step"]) == ("cli:ops", key)
    with pytest.raises(InvalidInput, match="not issued yet|not finished"):
        request_reinstall(world.app.settings, world.factory, sid, "cli:ops", now=MORNING)
    assert len(_steps(world, "vps.reinstall")) == 1
    with transaction(world.factory) as s:  # it failed for good: a new request is taken
        s.execute(select(Step).where(Step.key == key)).scalar_one().state = "failed"
    again = request_reinstall(world.app.settings, world.factory, sid, "cli:ops", now=MORNING)
    assert again["step"] == f"service:{sid}/vps.reinstall#2"


def test_a_reinstall_waits_for_the_first_access_data(world: VpsWorld) -> None:
    _, sid = world.buy("early.example.si", "t-5")
    with transaction(world.factory) as s:  # as if its link were not held yet
        access = s.execute(select(VpsRootAccess)).scalar_one()
        access.issued_at = None
    with pytest.raises(InvalidInput, match="not issued yet"):
        request_reinstall(world.app.settings, world.factory, sid, "cli:ops", now=MORNING)
    assert _steps(world, "vps.reinstall") == [] and _audit(world, "vps.reinstall_requested") == []
