"""The VPS reconciler's comparison across several VPS hosts, on SQLite and PostgreSQL:
which host a finding is on, why a machine is an orphan, what a host that cannot be
reached gives. The hosts are a stand-in answering ``observe()`` (two hosts and an
unreachable one do not exist on this machine); tests/e2e/test_vps_reconcile.py runs the
reconciler against real machines with the nspawn driver."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisioner.adapters.vps.driver import MachineInfo, ObservedMachine
from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.errors import Conflict, TransientError
from provisioner.pipeline.capabilities.vps import machine_of
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.vps_reconcile import reconcile
from provisioner.store import vps as vps_store
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import Service
from tests.helpers import MemoryMailer, customer, make_settings, wire

NOW = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)


@dataclass
class ObservedHosts:
    """VPS hosts whose ``observe()`` answers what a test put there; a host in ``down``
    cannot be reached; a machine in ``damaged`` makes ``observe()`` and its own ``limits``
    fail as the nspawn driver's do when its unit's tag disagrees with its dir's."""

    machines: dict[str, list[ObservedMachine]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    damaged: set[int] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    def driver(self, target: VpsTarget, image: str) -> Any:
        return _Observer(self, target.name)


@dataclass
class _Observer:
    hosts: ObservedHosts
    host: str

    def observe(self) -> list[ObservedMachine]:
        self.hosts.calls.append(self.host)
        if self.host in self.hosts.down:
            raise TransientError(f"ssh to {self.host}: connection refused")
        for o in self.hosts.machines.get(self.host, []):
            self.limits(o.info.vps_id, o.info.tag)
        return list(self.hosts.machines.get(self.host, []))

    def list_tagged(self) -> list[MachineInfo]:
        return [o.info for o in self.hosts.machines.get(self.host, [])]

    def limits(self, vps_id: int, tag: str) -> dict[str, int | None]:
        if vps_id in self.hosts.damaged:
            raise Conflict(f"machine vps-{vps_id} carries tag {tag!r} (unit: 'other'): refused")
        [o] = [o for o in self.hosts.machines.get(self.host, []) if o.info.vps_id == vps_id]
        return o.limits


def _record(factory: Any, hostname: str, state: str) -> tuple[int, str]:
    """A VPS service and its record (``state``) on whichever host the allocation picks."""
    c = ops.add_customer(factory, {**customer("en"), "brand": "fcb"}, "test")
    order = ops.create_order(factory, c["id"], [f"vps:vps-s:{hostname}:1m"], None, "fcb", "test")
    with transaction(factory) as s:
        sid = s.execute(select(Service.id).where(Service.order_id == order["order"])).scalar_one()
    alloc = vps_store.allocate(factory, sid, hostname=hostname, plan="vps-s", image="debian-12", now=NOW)
    with transaction(factory) as s:
        row = s.get(vps_store.VpsMachine, alloc.vps_id)
        assert row is not None
        row.state = state
    return alloc.vps_id, alloc.host


def _machine(factory: Any, vps_id: int, *, tag: str | None = None, running: bool = True) -> ObservedMachine:
    """The machine the record implies, with the limits its plan sets in force."""
    with transaction(factory) as s:
        row = s.get(vps_store.VpsMachine, vps_id)
        assert row is not None
        sid = row.service_id
    m = machine_of(factory, sid)
    assert m is not None
    spec = m.spec()
    info = MachineInfo(f"vps-{vps_id}", vps_id, tag or spec.tag, spec.hostname, spec.address,
                       running=running, enabled=running, suspended=False)
    return ObservedMachine(info, spec.expected_limits())


@pytest.fixture
def factory(db_url: str, tmp_path: Path) -> Any:
    app, _ = wire(make_settings(tmp_path, db_url, 1, line_kinds="vps"), mailer=MemoryMailer())
    with transaction(app.factory) as s:  # capacity 1 each: the allocation fills vh1, then vh2
        vps_store.add_host(s, "vh1", "192.0.2.41", pool="10.241.0.0/28", capacity=1, now=NOW)
        vps_store.add_host(s, "vh2", "192.0.2.42", pool="10.242.0.0/28", capacity=1, now=NOW)
    return session_factory(db_url)


def test_a_machine_on_another_host_or_under_another_tag_is_an_orphan_and_its_record_missing(
        factory: Any) -> None:
    one, host_one = _record(factory, "one.example.si", "running")
    two, host_two = _record(factory, "two.example.si", "running")
    assert {host_one, host_two} == {"vh1", "vh2"}
    hosts = ObservedHosts()
    # one's machine sits on the other host; two's host has a machine under two's id with a
    # tag that is not two's.
    hosts.machines[host_two] = [_machine(factory, one), _machine(factory, two, tag="provisioner-service-999")]
    report = reconcile(factory, hosts, now=NOW)
    found = sorted((f.kind, f.host, f.vps_id) for f in report.findings)
    assert found == sorted([("orphan", host_two, one), ("orphan", host_two, two),
                            ("missing", host_one, one), ("missing", host_two, two)])
    why = {(f.kind, f.vps_id): f.detail for f in report.findings}
    assert why["orphan", one] == f"its record places it on host {host_one}"
    assert why["orphan", two] == f"its record carries tag {vps_store.tag_for(_service(factory, two))}"
    assert sorted(hosts.calls) == ["vh1", "vh2"]


def _service(factory: Any, vps_id: int) -> int:
    with transaction(factory) as s:
        row = s.get(vps_store.VpsMachine, vps_id)
        assert row is not None
        return row.service_id


def test_a_reserved_record_is_not_missing_and_its_machine_not_an_orphan(factory: Any) -> None:
    half, host = _record(factory, "half.example.si", "reserved")  # a create in flight
    hosts = ObservedHosts()
    assert reconcile(factory, hosts, now=NOW).clean
    hosts.machines[host] = [_machine(factory, half)]
    assert reconcile(factory, hosts, now=NOW).clean


def test_an_unreachable_host_is_unchecked_and_the_other_hosts_are_still_compared(factory: Any) -> None:
    one, host_one = _record(factory, "one.example.si", "running")
    two, host_two = _record(factory, "two.example.si", "running")
    hosts = ObservedHosts(down={host_one})
    hosts.machines[host_two] = [_machine(factory, two, running=False)]
    report = reconcile(factory, hosts, now=NOW)
    found = {(f.kind, f.host): f for f in report.findings}
    assert set(found) == {("unchecked", host_one), ("state", host_two)}
    assert "connection refused" in found["unchecked", host_one].detail
    assert found["state", host_two].detail == "record running: not running on its host"
    summary = {h["host"]: h for h in report.hosts}
    assert summary[host_one]["machines"] is None and "connection refused" in summary[host_one]["error"]
    assert summary[host_two] == {"host": host_two, "machines": 1, "records": 1, "error": None}
    # the same findings make the same digest (the alert's once-a-day key); others another
    assert reconcile(factory, hosts, now=NOW).digest() == report.digest()
    hosts.down.clear()
    assert reconcile(factory, hosts, now=NOW).digest() != report.digest()


def test_a_machine_whose_tags_disagree_hides_none_of_the_others(factory: Any) -> None:
    one, host_one = _record(factory, "one.example.si", "running")
    hosts = ObservedHosts(damaged={one})
    stray = _machine(factory, one)
    stray = ObservedMachine(replace(stray.info, name="vps-7777", vps_id=7777), stray.limits)
    hosts.machines[host_one] = [_machine(factory, one), stray]
    found = {(f.kind, f.vps_id): f.detail for f in reconcile(factory, hosts, now=NOW).findings}
    assert found == {("unchecked", one): "its limits could not be read (its tags disagree?)",
                     ("orphan", 7777): "no record of this machine"}
