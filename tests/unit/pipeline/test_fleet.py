"""The fleet rollout's decisions (batches, canary, stop at a failure, the window, the
JUnit file), with the Ansible run replaced by a recorder of what it was asked to do.
The same rollout against real nodes: tests/e2e/test_fleet.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy import select

from provisioner.adapters.hosting.ansible import RunResult, Target
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases import fleet
from provisioner.store.db import session_factory, transaction
from provisioner.store.hosting import add_node
from provisioner.store.models import AuditEntry
from tests.helpers import make_settings

IN_WINDOW = datetime(2027, 1, 12, 0, 30, tzinfo=UTC)  # 01:30 in Ljubljana
OUT_OF_WINDOW = datetime(2027, 1, 12, 12, 0, tzinfo=UTC)  # 13:00 in Ljubljana


class Ansible:
    """Records each run's hosts and mode; ``broken`` hosts fail, ``drifted`` ones change."""

    def __init__(self, broken: set[str] = frozenset(), drifted: set[str] = frozenset()) -> None:
        self.broken, self.drifted = set(broken), set(drifted)
        self.runs: list[tuple[tuple[str, ...], bool]] = []

    def __call__(self, playbook: str, targets: list[Target], extravars: dict[str, Any], *,
                 check: bool = False, **_: Any) -> RunResult:
        assert playbook == "hosting_node.yml"
        names = tuple(t.name for t in targets)
        self.runs.append((names, check))
        stats = {n: {"ok": 10, "changed": int(n in self.drifted), "failures": int(n in self.broken),
                     "unreachable": 0, "skipped": 0} for n in names}
        changes = {n: ["Write /etc/nginx/nginx.conf"] for n in names if n in self.drifted}
        errors = {n: "Write /etc/postfix/main.cf: is a directory" for n in names if n in self.broken}
        if not check:
            self.drifted -= set(names) - self.broken
        bad = any(n in self.broken for n in names)
        return RunResult("failed" if bad else "successful", 2 if bad else 0, stats, errors, 1.0, changes)

    def touched(self) -> list[str]:
        return [n for names, check in self.runs if not check for n in names]


def _xml(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - the report this test just made


@pytest.fixture
def ctx(sqlite_url: str, tmp_path: Path) -> Any:
    settings = make_settings(tmp_path, sqlite_url, 25)
    factory = session_factory(sqlite_url)
    with transaction(factory) as s:
        for name in ("node-a", "node-b", "node-c", "node-d", "node-e"):
            add_node(s, name, f"192.0.2.{len(name)}", capacity_accounts=10, capacity_disk_mb=1000,
                     ssh_user="root", ssh_port=22, throwaway=True, country="SI")
    return settings, factory


def _rollout(ctx: Any, ansible: Ansible, now: datetime = IN_WINDOW, **kw: Any) -> fleet.FleetReport:
    settings, factory = ctx
    return fleet.rollout(settings, factory, actor="test", now=now, run=ansible, **kw)


def test_the_canary_goes_first_then_batches_of_serial(ctx: Any) -> None:
    ansible = Ansible(drifted={"node-a", "node-d"})
    report = _rollout(ctx, ansible, serial=2, canary=1)
    assert [names for names, _ in ansible.runs] == [("node-a",), ("node-b", "node-c"), ("node-d", "node-e")]
    assert {o.node: o.status for o in report.outcomes} == {
        "node-a": "converged", "node-b": "unchanged", "node-c": "unchanged",
        "node-d": "converged", "node-e": "unchanged"}
    assert report.exit_code == 0 and not report.stopped


def test_a_failed_canary_stops_the_rollout_and_leaves_the_rest_untouched(ctx: Any) -> None:
    ansible = Ansible(broken={"node-a"})
    report = _rollout(ctx, ansible, serial=2, canary=1, max_fail=3)  # max_fail does not save a canary
    assert ansible.touched() == ["node-a"]
    assert [o.status for o in report.outcomes] == ["failed"] + ["untouched"] * 4
    assert report.exit_code == 1 and "canary" in report.stopped


def test_a_broken_node_stops_the_rollout_at_its_batch(ctx: Any) -> None:
    ansible = Ansible(broken={"node-c"})
    report = _rollout(ctx, ansible, serial=1, canary=1)
    assert ansible.touched() == ["node-a", "node-b", "node-c"]
    assert {o.node: o.status for o in report.outcomes}["node-d"] == "untouched"
    suite = _xml(report.junit())
    failures = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    assert failures["node-c"] is not None and "is a directory" in (failures["node-c"].text or "")
    assert suite.get("failures") == "1" and suite.get("skipped") == "2"


def test_max_fail_lets_the_rollout_go_on_past_that_many_failures(ctx: Any) -> None:
    ansible = Ansible(broken={"node-b"})
    report = _rollout(ctx, ansible, serial=1, canary=1, max_fail=1)
    assert ansible.touched() == ["node-a", "node-b", "node-c", "node-d", "node-e"]
    assert report.exit_code == 1 and not report.stopped


def test_outside_the_window_a_fleet_with_drift_is_refused_with_exit_4_and_nothing_changes(ctx: Any) -> None:
    ansible = Ansible(drifted={"node-b"})
    report = _rollout(ctx, ansible, now=OUT_OF_WINDOW)
    assert report.refused and report.exit_code == 4
    assert ansible.touched() == [] and all(check for _, check in ansible.runs)
    assert {o.node: o.status for o in report.outcomes}["node-b"] == "drift"


def test_outside_the_window_a_fleet_without_drift_has_nothing_to_do(ctx: Any) -> None:
    ansible = Ansible()
    report = _rollout(ctx, ansible, now=OUT_OF_WINDOW)
    assert not report.refused and report.exit_code == 0 and ansible.touched() == []


def test_forcing_the_window_needs_a_reason_and_is_audited(ctx: Any) -> None:
    ansible = Ansible(drifted={"node-b"})
    with pytest.raises(InvalidInput, match="reason"):
        _rollout(ctx, ansible, now=OUT_OF_WINDOW, force_reason="  ")
    report = _rollout(ctx, ansible, now=OUT_OF_WINDOW, force_reason="CVE-2027-0001 in nginx")
    assert report.exit_code == 0 and "node-b" in ansible.touched()
    with transaction(ctx[1]) as s:
        forced = s.execute(select(AuditEntry).where(AuditEntry.action == "nodes.window_forced")).scalar_one()
        assert forced.detail["reason"] == "CVE-2027-0001 in nginx"


def test_drift_checks_every_node_and_exits_3(ctx: Any) -> None:
    settings, factory = ctx
    ansible = Ansible(broken=set(), drifted={"node-e"})
    report = fleet.drift(settings, factory, now=OUT_OF_WINDOW, run=ansible)
    assert all(check for _, check in ansible.runs)
    assert sorted(n for names, _ in ansible.runs for n in names) == [
        "node-a", "node-b", "node-c", "node-d", "node-e"]
    assert report.exit_code == 3
    case = next(c for c in _xml(report.junit()).iter("testcase") if c.get("name") == "node-e")
    assert "nginx.conf" in (case.find("failure").text or "")  # type: ignore[union-attr]


def test_bad_batch_sizes_are_refused() -> None:
    with pytest.raises(InvalidInput):
        fleet.batches_of(["a"], canary=1, serial=0)
    assert fleet.batches_of(["a", "b", "c"], canary=0, serial=2) == [("a", "b"), ("c",)]
