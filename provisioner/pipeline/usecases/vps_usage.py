"""Fair use per VPS (issue 14 item 6; RULES 002 §13: an average of at most 50 % of the
leased capacity).

``sample_all`` (the beat, every ``vps_usage_minutes``) reads each live machine's
cumulative counters from its VPS host and stores them (store/vps_usage.py).
``average`` turns one machine's samples into averages over a window:

- CPU: the CPU time used between consecutive samples (the counter's delta), summed,
  over the time covered times the plan's vCPUs. A counter lower than the one before is a
  restart (a new cgroup starts from zero): the use since the restart is the new value
  (what ran between the earlier sample and the restart is lost: an under-count of at
  most one interval, never an over-count). A stopped machine (no counters) uses nothing;
  one that started between two samples used what its counter shows.
- memory: the time-weighted mean of the memory in use at each end of an interval (a
  stopped machine's is 0), over the plan's memory;
- IO: read/write operations and bytes per second from the counters' deltas, as above,
  over the plan's IOPS and MB/s caps; the largest of the four ratios is the IO share.
- A gap between two samples longer than ``max_gap`` (the beat did not run, the host was
  unreachable) is left out, its time and its use: the average is over the time we saw.
  ``coverage`` says how much of the window that is.

``report`` gives one row per live VPS; a row whose CPU, memory or IO share is above
``FAIR_USE_SHARE`` is flagged for ops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.domain.catalog import DEFAULT_CATALOG, Catalog, VpsPlan
from provisioner.errors import InvalidInput, ProvisionerError
from provisioner.pipeline.engine.ports import VpsHosts
from provisioner.store.db import transaction
from provisioner.store.vps import VpsHost, VpsMachine
from provisioner.store.vps_usage import VpsUsageSample

Factory = sessionmaker[Session]
log = logging.getLogger("provisioner.vps.usage")

#: RULES 002 §13: fair use is an average of at most half the leased capacity.
FAIR_USE_SHARE = 0.5
#: Samples older than this are deleted by the beat (a 30-day window and some slack).
KEEP = timedelta(days=62)
METERED_STATES = ("running", "suspended", "stopped")
MIB = 1024 * 1024
COUNTERS = ("cpu_ns", "memory_bytes", "io_read_bytes", "io_write_bytes", "io_read_ops", "io_write_ops")


@dataclass(frozen=True)
class Sample:
    taken_at: datetime
    cpu_ns: int | None = None
    memory_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    io_read_ops: int | None = None
    io_write_ops: int | None = None


@dataclass(frozen=True)
class Average:
    covered_s: float  # the time the averages are over (gaps left out)
    cpu_share: float  # of the plan's CPU (1.0: every vCPU busy all the time)
    memory_share: float  # of the plan's memory
    io_share: float  # the largest of read/write IOPS and MB/s over the plan's caps
    cpu_seconds: float
    memory_bytes: float
    io_read_iops: float
    io_write_iops: float
    io_read_bytes_s: float
    io_write_bytes_s: float

    def over(self, limit: float = FAIR_USE_SHARE) -> list[str]:
        """Which of cpu, memory, io are above ``limit`` of the plan."""
        return [k for k, v in (("cpu", self.cpu_share), ("memory", self.memory_share),
                               ("io", self.io_share)) if v > limit]


def counter_delta(before: int | None, after: int | None) -> int:
    """What a cumulative counter grew by between two readings: 0 when the later reading
    has none (stopped); the later value when the earlier has none (started in between)
    or is larger (a restart set the counter back to zero)."""
    if after is None:
        return 0
    if before is None or after < before:
        return after
    return after - before


def average(samples: Iterable[Sample], plan: VpsPlan, *, max_gap: timedelta) -> Average:
    """One machine's averages over its ``samples`` (any order; see the module doc)."""
    ordered = sorted(samples, key=lambda s: s.taken_at)
    covered = 0.0
    used = dict.fromkeys(COUNTERS, 0)
    memory_s = 0.0  # byte-seconds
    for a, b in zip(ordered, ordered[1:], strict=False):
        dt = (b.taken_at - a.taken_at).total_seconds()
        if dt <= 0 or dt > max_gap.total_seconds():
            continue
        covered += dt
        for key in COUNTERS:
            if key != "memory_bytes":
                used[key] += counter_delta(getattr(a, key), getattr(b, key))
        memory_s += ((a.memory_bytes or 0) + (b.memory_bytes or 0)) / 2 * dt
    if covered == 0:
        return Average(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    cpu_s = used["cpu_ns"] / 1e9
    memory = memory_s / covered
    rates = {k: used[k] / covered for k in ("io_read_ops", "io_write_ops", "io_read_bytes", "io_write_bytes")}
    io_share = max(rates["io_read_ops"] / plan.iops_read, rates["io_write_ops"] / plan.iops_write,
                   rates["io_read_bytes"] / (plan.disk_read_mbps * 1_000_000),
                   rates["io_write_bytes"] / (plan.disk_write_mbps * 1_000_000))
    return Average(covered, cpu_s / (covered * plan.vcpus), memory / (plan.memory_mb * MIB), io_share,
                   cpu_s, memory, rates["io_read_ops"], rates["io_write_ops"], rates["io_read_bytes"],
                   rates["io_write_bytes"])


def _target(h: VpsHost) -> VpsTarget:
    return VpsTarget(h.name, h.address, user=h.ssh_user, port=h.ssh_port, throwaway=bool(h.throwaway))


def sample_all(factory: Factory, hosts: VpsHosts, now: datetime) -> dict[str, Any]:
    """Read every live machine's counters from its host and store them (the beat). A host
    that cannot be read is logged and counted; the others are still sampled."""
    with transaction(factory) as s:
        rows = s.execute(select(VpsMachine, VpsHost).join(VpsHost, VpsHost.id == VpsMachine.host_id)
                         .where(VpsMachine.state.in_(METERED_STATES)).order_by(VpsMachine.id)).all()
        by_host: dict[int, tuple[VpsTarget, list[tuple[int, str, str]]]] = {}
        for m, h in rows:
            by_host.setdefault(h.id, (_target(h), []))[1].append((m.id, m.tag, m.image))
    taken: list[VpsUsageSample] = []
    failed: list[str] = []
    for target, machines in by_host.values():
        try:
            driver = hosts.driver(target, machines[0][2])
            for vps_id, tag, _image in machines:
                c = driver.usage(vps_id, tag)
                taken.append(VpsUsageSample(vps_id=vps_id, taken_at=now, running=c.running,
                                            **{k: getattr(c, k) for k in COUNTERS}))
        except (ProvisionerError, OSError) as exc:
            log.warning("VPS usage: host %s not read: %s", target.name, exc)
            failed.append(target.name)
    with transaction(factory) as s:
        s.add_all(taken)
        s.execute(delete(VpsUsageSample).where(VpsUsageSample.taken_at < now - KEEP))
    return {"sampled": len(taken), "hosts_failed": failed}


def report(factory: Factory, now: datetime, *, days: int = 30, interval: timedelta = timedelta(minutes=15),
           catalog: Catalog = DEFAULT_CATALOG) -> list[dict[str, Any]]:
    """Per live VPS, its averages over the last ``days`` (percent of its plan), flagged
    when one is above ``FAIR_USE_SHARE``; flagged rows first."""
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 366:
        raise InvalidInput(f"--days must be a whole number from 1 to 366, not {days!r}")
    since = now - timedelta(days=days)
    with transaction(factory) as s:
        machines = s.execute(select(VpsMachine, VpsHost).join(VpsHost, VpsHost.id == VpsMachine.host_id)
                             .where(VpsMachine.state.in_(METERED_STATES)).order_by(VpsMachine.id)).all()
        samples: dict[int, list[Sample]] = {}
        for row in s.scalars(select(VpsUsageSample).where(VpsUsageSample.taken_at >= since,
                                                          VpsUsageSample.taken_at <= now)):
            samples.setdefault(row.vps_id, []).append(
                Sample(row.taken_at, **{k: getattr(row, k) for k in COUNTERS}))
        out = [_row(m, h, samples.get(m.id, ()), catalog, interval, days) for m, h in machines]
    return sorted(out, key=lambda r: (not r["flagged"], r["vps_id"]))


def _row(m: VpsMachine, h: VpsHost, samples: Sequence[Sample], catalog: Catalog, interval: timedelta,
         days: int) -> dict[str, Any]:
    plan = catalog.vps_plan(m.plan)
    avg = average(samples, plan, max_gap=interval * 3)
    return {"vps_id": m.id, "hostname": m.hostname, "plan": plan.code, "host": h.name,
            "service_id": m.service_id, "samples": len(samples),
            "coverage_pct": round(100 * avg.covered_s / (days * 86400), 1),
            "cpu_pct": round(100 * avg.cpu_share, 1), "memory_pct": round(100 * avg.memory_share, 1),
            "io_pct": round(100 * avg.io_share, 1), "cpu_seconds": round(avg.cpu_seconds, 3),
            "memory_mb": round(avg.memory_bytes / MIB, 1), "read_iops": round(avg.io_read_iops, 2),
            "write_iops": round(avg.io_write_iops, 2), "over": avg.over(),
            "flagged": bool(avg.over())}


def ops_report(rows: Sequence[dict[str, Any]], days: int) -> str:
    """The plain-text report ops read: one line per flagged VPS (or that there is none)."""
    flagged = [r for r in rows if r["flagged"]]
    head = (f"Fair use over the last {days} days (limit {FAIR_USE_SHARE:.0%} of the plan): "
            f"{len(flagged)} of {len(rows)} VPS above it.")
    lines = [f"- vps-{r['vps_id']} {r['hostname']} (plan {r['plan']}, service {r['service_id']}, "
             f"host {r['host']}): {', '.join(r['over'])} above; CPU {r['cpu_pct']} %, memory "
             f"{r['memory_pct']} %, IO {r['io_pct']} %, coverage {r['coverage_pct']} %" for r in flagged]
    return "\n".join([head, *lines])
