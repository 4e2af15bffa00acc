"""The VPS reconciler (issue 14 item 5): what is on the VPS hosts against our records.

For every VPS host we have a record of, the driver's ``observe()`` lists the machines
that carry a tag of ours (a machine dir with no ``tag`` is not ours and is never listed,
let alone touched) with the limits the host holds each to now. Compared with our
``vps_machines`` records, a finding is one of:

- ``orphan``: a tagged machine with no live record of it on that host (no record, a
  deleted one, one on another host or under another tag). It is reported, never deleted:
  whoever removes it checks it first;
- ``missing``: a live record (running, suspended or stopped) with no machine on its
  host. A suspended machine is present (its disk and tag are there, stopped); a
  ``reserved`` record is a create in flight, not expected on the host yet;
- ``drift``: a limit in force differs from the one the record's plan implies
  (`ObservedMachine.drift`: of a machine that is not running, only its disk);
- ``state``: a record says running and the machine is not (or is held suspended), or a
  record says suspended and the machine runs;
- ``unchecked``: a host that could not be observed (its records are not judged), a
  machine whose limits could not be read, or a record whose plan is unknown.

Nothing here changes a machine, a record or a host: `reconcile` only reads. `alert_ops`
e-mails ops through the outbox once per distinct set of findings per UTC day (the beat
runs the reconciler hourly; the same findings all day make one mail).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.vps.driver import MachineSpec, ObservedMachine, VpsDriver
from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import Conflict, InvalidInput, NotFound, ProvisionerError
from provisioner.pipeline.capabilities.vps import DEFAULT_IMAGE
from provisioner.pipeline.engine.ports import VpsHosts
from provisioner.pipeline.outbox import Outbox
from provisioner.store.db import transaction
from provisioner.store.vps import LIVE_STATES, VpsHost, VpsMachine

log = logging.getLogger("provisioner.vps.reconcile")
TEMPLATE = "ops_vps_reconcile"
KINDS = ("orphan", "missing", "drift", "state", "unchecked")
#: Records the host must hold a machine for (``reserved``: a create in flight).
EXPECTED_STATES = tuple(s for s in LIVE_STATES if s != "reserved")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    host: str
    machine: str  # vps-<id>, or "" for a whole host
    vps_id: int | None
    tag: str
    service_id: int | None
    detail: str
    data: dict[str, Any] = field(default_factory=dict)  # drift: {limit: [wanted, found]}

    def identity(self) -> list[Any]:
        """What makes two findings the same (the alert's once-per-day key): no free text."""
        return [self.kind, self.host, self.vps_id, self.tag, self.data]

    def line(self) -> str:
        where = f"{self.host}/{self.machine}" if self.machine else self.host
        return f"{self.kind}: {where} ({self.tag or 'no tag'}): {self.detail}"


@dataclass(frozen=True)
class Report:
    checked_at: datetime
    hosts: list[dict[str, Any]]  # {host, machines, records, error}
    findings: list[Finding]

    @property
    def clean(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for f in self.findings if f.kind == k) for k in KINDS}

    def digest(self) -> str:
        ids = sorted(json.dumps(f.identity(), sort_keys=True, default=str) for f in self.findings)
        return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:24]

    def as_dict(self) -> dict[str, Any]:
        return {"checked_at": self.checked_at.isoformat(), "clean": self.clean, "counts": self.counts(),
                "hosts": self.hosts, "findings": [asdict(f) for f in self.findings]}


@dataclass(frozen=True)
class _Record:
    vps_id: int
    service_id: int
    tag: str
    state: str
    host_id: int
    spec: Callable[[], MachineSpec]


def _records(s: Session) -> tuple[list[VpsHost], dict[int, _Record]]:
    hosts = list(s.execute(select(VpsHost).order_by(VpsHost.name)).scalars())
    by_id = {h.id: h for h in hosts}
    out: dict[int, _Record] = {}
    for m in s.execute(select(VpsMachine).order_by(VpsMachine.id)).scalars():
        h = by_id[m.host_id]
        out[m.id] = _Record(m.id, m.service_id, m.tag, m.state, m.host_id, _spec_of(m, h))
    for h in hosts:
        s.expunge(h)
    return hosts, out


def _spec_of(m: VpsMachine, h: VpsHost) -> Callable[[], MachineSpec]:
    plan, vps_id, tag, hostname, address = m.plan, m.id, m.tag, m.hostname, m.address
    gateway, prefixlen = h.gateway, ipaddress.ip_network(h.pool).prefixlen

    def spec() -> MachineSpec:  # InvalidInput: the plan is not in the catalog any more
        return MachineSpec.for_plan(DEFAULT_CATALOG.vps_plan(plan), vps_id=vps_id, tag=tag,
                                    hostname=hostname, address=address, gateway=gateway,
                                    prefixlen=prefixlen)

    return spec


def _orphan_reason(o: ObservedMachine, rec: _Record | None, host: VpsHost,
                   host_names: dict[int, str]) -> str | None:
    """Why a tagged machine on ``host`` is not one of our live machines (None: it is)."""
    if rec is None:
        return "no record of this machine"
    if rec.host_id != host.id:
        return f"its record places it on host {host_names.get(rec.host_id, rec.host_id)}"
    if rec.tag != o.info.tag:
        return f"its record carries tag {rec.tag}"
    if rec.state not in LIVE_STATES:
        return f"its record is {rec.state}"
    return None


def _state_problem(o: ObservedMachine, rec: _Record) -> str | None:
    running, suspended = o.info.running, o.info.suspended
    if rec.state == "running" and (suspended or not running):
        return "held suspended on its host" if suspended else "not running on its host"
    if rec.state == "suspended" and running:
        return "running on its host while suspended here"
    return None


def _check_machine(o: ObservedMachine, rec: _Record, host: VpsHost, out: list[Finding]) -> None:
    name, base = o.info.name, (host.name, o.info.name, rec.vps_id, rec.tag, rec.service_id)
    problem = _state_problem(o, rec)
    if problem is not None:
        out.append(Finding("state", *base, f"record {rec.state}: {problem}",
                           {"record": rec.state, "running": o.info.running,
                            "suspended": o.info.suspended}))
    try:
        spec = rec.spec()
    except ProvisionerError as exc:
        out.append(Finding("unchecked", *base, f"its limits were not compared: {exc}"))
        return
    if not o.limits:
        out.append(Finding("unchecked", *base, "its limits could not be read (its tags disagree?)"))
        return
    drift = o.drift(spec)
    if drift:
        text = ", ".join(f"{k} {want} wanted, {found} in force" for k, (want, found) in sorted(drift.items()))
        out.append(Finding("drift", *base, f"{name}: {text}",
                           {k: [want, found] for k, (want, found) in sorted(drift.items())}))


def _observe(driver: VpsDriver) -> list[ObservedMachine]:
    """``driver.observe()``; when one machine makes it fail (its unit's tag disagrees with
    its dir's, or it went away meanwhile), each machine is read apart, so that one damaged
    machine hides none of the others (it is listed with no limits)."""
    try:
        return driver.observe()
    except (Conflict, NotFound) as exc:
        log.warning("observe() failed (%s); reading each machine apart", exc)
    out = []
    for info in driver.list_tagged():
        try:
            limits = driver.limits(info.vps_id, info.tag)
        except (Conflict, NotFound, InvalidInput):
            limits = {}
        out.append(ObservedMachine(info, limits))
    return out


def reconcile(factory: sessionmaker[Session], hosts: VpsHosts, *, now: datetime) -> Report:
    """Every VPS host observed and compared with our records (see the module doc).
    Read-only: nothing on a host or in the database changes."""
    with transaction(factory) as s:
        host_rows, records = _records(s)
    host_names = {h.id: h.name for h in host_rows}
    findings: list[Finding] = []
    summary: list[dict[str, Any]] = []
    for host in host_rows:
        expected = {r.vps_id: r for r in records.values()
                    if r.host_id == host.id and r.state in EXPECTED_STATES}
        target = VpsTarget(host.name, host.address, user=host.ssh_user, port=host.ssh_port,
                           throwaway=bool(host.throwaway))
        try:
            observed = _observe(hosts.driver(target, DEFAULT_IMAGE))
        except (ProvisionerError, OSError) as exc:
            log.warning("VPS host %s could not be observed: %s", host.name, exc)
            findings.append(Finding("unchecked", host.name, "", None, "", None,
                                    f"the host could not be observed: {exc}"))
            summary.append({"host": host.name, "machines": None, "records": len(expected),
                            "error": str(exc)})
            continue
        seen: set[int] = set()
        for o in observed:
            rec = records.get(o.info.vps_id)
            reason = _orphan_reason(o, rec, host, host_names)
            if reason is not None:
                findings.append(Finding("orphan", host.name, o.info.name, o.info.vps_id, o.info.tag,
                                        rec.service_id if rec else None, reason,
                                        {"record": rec.state if rec else None}))
                continue
            assert rec is not None
            seen.add(rec.vps_id)
            if rec.state in EXPECTED_STATES:
                _check_machine(o, rec, host, findings)
        for vps_id, rec in sorted(expected.items()):
            if vps_id not in seen:
                findings.append(Finding("missing", host.name, f"vps-{vps_id}", vps_id, rec.tag,
                                        rec.service_id, f"record {rec.state}, no machine on its host",
                                        {"record": rec.state}))
        summary.append({"host": host.name, "machines": len(observed), "records": len(expected),
                        "error": None})
    return Report(now, summary, findings)


def alert_ops(report: Report, outbox: Outbox, ops_email: str) -> bool:
    """E-mail ops the report's findings, once per distinct set of findings per UTC day;
    True if a mail went out now."""
    if report.clean:
        return False
    day = report.checked_at.date().isoformat()
    key = f"vps-reconcile:{day}:{report.digest()}"
    context = {"day": day, "counts": report.counts(), "total": len(report.findings),
               "lines": [f.line() for f in report.findings]}
    sent = outbox.send_once(key, ops_email, TEMPLATE, "en", context)
    if sent.sent_now:
        log.error("OPS ALERT: VPS reconcile found %d finding(s): %s", len(report.findings), report.counts())
    return sent.sent_now
