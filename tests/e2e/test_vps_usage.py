"""Fair-use metering with the real driver on this machine (units.PlainUnits): a CPU
burner inside one VPS shows up as CPU time in the counters the driver reads from the
host (a reading before and after), the idle VPS beside it does not; direct-IO writes show
up as operations on the machine's own disk. The machines are test_vps.py's two (made and
deleted by its ``vps_host`` fixture, here for this module)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from provisioner.adapters.vps.driver import UsageCounters
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.pipeline.usecases.vps_usage import COUNTERS, Sample, average
from tests.e2e.test_vps import CPU_PERCENT, Vps, VpsHost, sh
from tests.e2e.test_vps import vps_host as vps_host  # noqa: F401 - the module's two machines

BURN_S = 4
WRITES = 120


def _read(host: VpsHost, vps: Vps) -> UsageCounters:
    return host.driver.usage(vps.spec.vps_id, vps.spec.tag)


def test_a_cpu_burner_shows_up_in_the_counters_and_an_idle_vps_does_not(vps_host: VpsHost) -> None:
    busy, idle = vps_host.a, vps_host.b
    for v in (busy, idle):
        assert sh(v, "true")[0] == 0  # booted and logged in once: what follows is steady state
    before = {v.name: _read(vps_host, v) for v in (busy, idle)}
    start = datetime.now(UTC)
    rc, _, err = sh(busy, f"timeout {BURN_S} sh -c 'while :; do :; done'; "
                          f"dd if=/dev/zero of=/root/usage.bin bs=4096 count={WRITES} oflag=direct 2>&1; "
                          "rm -f /root/usage.bin")
    assert rc == 0, err
    after = {v.name: _read(vps_host, v) for v in (busy, idle)}
    elapsed = datetime.now(UTC) - start
    for v in (busy, idle):
        b, a = before[v.name], after[v.name]
        assert b.running and a.running
        assert a.memory_bytes is not None and a.memory_bytes > 0
        assert None not in (b.cpu_ns, a.cpu_ns, a.io_write_ops, b.io_write_ops)
    b, a = before[busy.name], after[busy.name]
    assert b.cpu_ns is not None and a.cpu_ns is not None
    burned = a.cpu_ns - b.cpu_ns
    # held to CPU_PERCENT of one CPU: at least half of what the quota allows in BURN_S
    assert burned >= CPU_PERCENT / 100 * BURN_S * 1e9 * 0.5, burned
    ib, ia = before[idle.name], after[idle.name]
    assert ib.cpu_ns is not None and ia.cpu_ns is not None
    assert ia.cpu_ns - ib.cpu_ns < burned / 5, (ia.cpu_ns - ib.cpu_ns, burned)
    # the direct writes went to the machine's own disk (its loop device), counted there
    assert a.io_write_ops is not None and b.io_write_ops is not None
    assert a.io_write_ops - b.io_write_ops >= WRITES
    assert a.io_write_bytes is not None and b.io_write_bytes is not None
    assert a.io_write_bytes - b.io_write_bytes >= WRITES * 4096
    assert ia.io_write_ops is not None and ib.io_write_ops is not None
    assert ia.io_write_ops - ib.io_write_ops < WRITES
    # the two readings, as the beat stores them, average to the burner's share of its plan
    plan = DEFAULT_CATALOG.vps_plan("vps-s")
    got = average([Sample(start, **_counters(b)), Sample(start + elapsed, **_counters(a))], plan,
                  max_gap=timedelta(hours=1))
    assert got.cpu_seconds == burned / 1e9
    quiet = average([Sample(start, **_counters(ib)), Sample(start + elapsed, **_counters(ia))], plan,
                    max_gap=timedelta(hours=1))
    assert quiet.cpu_share < got.cpu_share / 5


def _counters(c: UsageCounters) -> dict[str, int | None]:
    return {k: getattr(c, k) for k in COUNTERS}
