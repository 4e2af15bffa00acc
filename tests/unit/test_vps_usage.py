"""Fair-use metering without a VPS host: the averaging over synthetic samples (deltas,
counter resets after a restart, stopped machines, gaps), the counters read from cgroup
files (v1: IO on the machine's own device only) and from ``systemctl show``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provisioner.adapters.vps import cgroups
from provisioner.adapters.vps.driver import NspawnDriver, RootAccess, UsageCounters, parse_systemd_usage
from provisioner.adapters.vps.runner import Completed
from provisioner.adapters.vps.units import SystemdUnits
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import Conflict
from provisioner.pipeline.usecases.vps_usage import Sample, average, counter_delta, ops_report
from tests.unit.adapters.test_vps_driver import PASSWORD, RecordingRunner, spec

PLAN = DEFAULT_CATALOG.vps_plan("vps-s")
T0 = datetime(2026, 11, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)
GAP = STEP * 3
NS = 1_000_000_000


def at(i: int, **counters: int | None) -> Sample:
    return Sample(T0 + STEP * i, **counters)


def cpu_series(shares: Sequence[float]) -> list[Sample]:
    """Samples every STEP of a machine using ``shares[i]`` of its plan's CPU in interval i."""
    used, out = 0, [at(0, cpu_ns=0)]
    for i, share in enumerate(shares, start=1):
        used += int(share * PLAN.vcpus * STEP.total_seconds() * NS)
        out.append(at(i, cpu_ns=used))
    return out


def test_counter_delta_reads_growth_restarts_and_stops() -> None:
    assert counter_delta(100, 250) == 150
    assert counter_delta(900, 40) == 40  # restarted in between: what it used since
    assert counter_delta(None, 70) == 70  # started in between
    assert counter_delta(500, None) == 0  # stopped: no counter, no use


def test_cpu_average_is_the_deltas_over_the_time_and_the_plans_vcpus() -> None:
    avg = average(cpu_series([0.2, 0.8, 0.5, 0.9]), PLAN, max_gap=GAP)
    assert avg.covered_s == 4 * STEP.total_seconds()
    assert avg.cpu_share == pytest.approx(0.6)
    assert avg.over() == ["cpu"]
    assert average(cpu_series([0.2, 0.4, 0.5, 0.3]), PLAN, max_gap=GAP).over() == []


def test_samples_in_any_order_give_the_same_average() -> None:
    samples = cpu_series([0.1, 0.7, 0.4])
    assert average(reversed(samples), PLAN, max_gap=GAP) == average(samples, PLAN, max_gap=GAP)


def test_a_restart_does_not_turn_into_a_negative_or_a_huge_delta() -> None:
    # 30 % in each interval; the machine restarts between samples 2 and 3 (its counter starts
    # again from zero and shows 30 % of an interval by sample 3).
    part = int(0.3 * PLAN.vcpus * STEP.total_seconds() * NS)
    samples = [at(0, cpu_ns=10 * part), at(1, cpu_ns=11 * part), at(2, cpu_ns=12 * part),
               at(3, cpu_ns=part), at(4, cpu_ns=2 * part)]
    avg = average(samples, PLAN, max_gap=GAP)
    assert avg.cpu_share == pytest.approx(0.3)
    # the old code's failure mode, a plain difference, would give a negative interval
    assert all(x >= 0 for x in (avg.cpu_seconds, avg.cpu_share))


def test_a_stopped_machine_uses_nothing_while_stopped_and_its_use_after_start_counts() -> None:
    part = int(0.8 * PLAN.vcpus * STEP.total_seconds() * NS)
    samples = [at(0, cpu_ns=0), at(1, cpu_ns=part), at(2), at(3), at(4, cpu_ns=part)]
    avg = average(samples, PLAN, max_gap=GAP)
    assert avg.covered_s == 4 * STEP.total_seconds()
    assert avg.cpu_share == pytest.approx(0.4)  # 2 intervals at 80 %, 2 stopped


def test_a_gap_is_left_out_with_its_use() -> None:
    # 10 % busy, then the beat is down for two days (the counter grew by a lot meanwhile),
    # then 10 % again: the gap's time and use are both left out.
    part = int(0.1 * PLAN.vcpus * STEP.total_seconds() * NS)
    later = T0 + timedelta(days=2)
    samples = [at(0, cpu_ns=0), at(1, cpu_ns=part),
               Sample(later, cpu_ns=part + 10**15), Sample(later + STEP, cpu_ns=2 * part + 10**15)]
    avg = average(samples, PLAN, max_gap=GAP)
    assert avg.covered_s == 2 * STEP.total_seconds()
    assert avg.cpu_share == pytest.approx(0.1)
    # the same samples counting the gap would read the counter jump as heavy use
    assert average(samples, PLAN, max_gap=timedelta(days=3)).cpu_share > 1


def test_no_interval_no_average() -> None:
    assert average([], PLAN, max_gap=GAP).covered_s == 0
    assert average([at(0, cpu_ns=5)], PLAN, max_gap=GAP).cpu_share == 0


def test_memory_is_time_weighted_against_the_plan() -> None:
    mib = 1024 * 1024
    plan_bytes = PLAN.memory_mb * mib
    samples = [at(0, memory_bytes=plan_bytes // 2), at(1, memory_bytes=plan_bytes // 2),
               at(3, memory_bytes=plan_bytes)]  # 1 interval at 50 %, 2 from 50 % to 100 %
    avg = average(samples, PLAN, max_gap=GAP)
    assert avg.memory_share == pytest.approx((0.5 * 1 + 0.75 * 2) / 3)
    assert avg.over() == ["memory"]


def test_io_share_is_the_busiest_of_iops_and_throughput() -> None:
    s = STEP.total_seconds()
    reads = int(PLAN.iops_read * 0.7 * s)  # 70 % of the read IOPS cap
    written = int(PLAN.disk_write_mbps * 1_000_000 * 0.2 * s)  # 20 % of the write MB/s cap
    samples = [at(0, io_read_ops=0, io_write_ops=0, io_read_bytes=0, io_write_bytes=0),
               at(1, io_read_ops=reads, io_write_ops=10, io_read_bytes=reads * 4096, io_write_bytes=written)]
    avg = average(samples, PLAN, max_gap=GAP)
    assert avg.io_read_iops == pytest.approx(PLAN.iops_read * 0.7, rel=1e-6)
    assert avg.io_share == pytest.approx(max(0.7, reads * 4096 / s / (PLAN.disk_read_mbps * 1e6)), rel=1e-6)
    assert avg.over() == ["io"]


def test_ops_report_names_each_flagged_vps() -> None:
    rows = [{"vps_id": 3, "hostname": "a.example.si", "plan": "vps-s", "service_id": 9, "host": "h1",
             "over": ["cpu"], "cpu_pct": 71.0, "memory_pct": 10.0, "io_pct": 1.0, "coverage_pct": 99.0,
             "flagged": True},
            {"vps_id": 4, "hostname": "b.example.si", "plan": "vps-s", "service_id": 10, "host": "h1",
             "over": [], "cpu_pct": 5.0, "memory_pct": 10.0, "io_pct": 1.0, "coverage_pct": 99.0,
             "flagged": False}]
    text = ops_report(rows, 30)
    assert "1 of 2 VPS" in text and "vps-3 a.example.si" in text and "vps-4" not in text


def test_v1_cgroup_counters_count_io_on_the_machines_own_device_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(cgroups, "mode", lambda: "hybrid")
    for ctl in ("cpuacct", "memory", "blkio"):
        (tmp_path / ctl / "machines" / "vps-7").mkdir(parents=True)
    d = tmp_path / "blkio" / "machines" / "vps-7"
    (tmp_path / "cpuacct/machines/vps-7/cpuacct.usage").write_text("123456789\n")
    (tmp_path / "memory/machines/vps-7/memory.usage_in_bytes").write_text("52428800\n")
    (d / "blkio.throttle.io_service_bytes_recursive").write_text(
        "8:0 Read 999\n8:0 Write 999\n7:3 Read 4096\n7:3 Write 8192\n7:3 Sync 1\n7:3 Total 12288\nTotal 1\n")
    (d / "blkio.throttle.io_serviced_recursive").write_text("7:3 Read 1\n7:3 Write 2\n8:0 Read 50\n")
    got = cgroups.usage_counters("vps-7", "7:3")
    assert got == {"cpu_ns": 123456789, "memory_bytes": 52428800, "io_read_bytes": 4096,
                   "io_write_bytes": 8192, "io_read_ops": 1, "io_write_ops": 2}
    assert cgroups.usage_counters("vps-8", "7:3")["cpu_ns"] is None  # no cgroup: not running
    with pytest.raises(ValueError):
        cgroups.usage_counters("vps-7", "7:3/../x")


SHOW = ("CPUUsageNSec=4200000000\nMemoryCurrent=104857600\nIOReadBytes=18446744073709551615\n"
        "IOWriteBytes=65536\nIOReadOperations=[not set]\nIOWriteOperations=16\n")


def test_systemctl_show_output_becomes_counters_and_unknowns_are_none() -> None:
    assert parse_systemd_usage(SHOW) == {"cpu_ns": 4_200_000_000, "memory_bytes": 104857600,
                                         "io_read_bytes": None, "io_write_bytes": 65536,
                                         "io_read_ops": None, "io_write_ops": 16}


class ShowingRunner(RecordingRunner):
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120.0,
            check: bool = True) -> Completed:
        done = super().run(argv, stdin=stdin, timeout=timeout, check=check)
        if list(argv[:2]) == ["systemctl", "show"]:
            return Completed(tuple(argv), 0, SHOW, "")
        return done


def test_driver_reads_a_systemd_units_counters_and_checks_the_tag_first() -> None:
    runner = ShowingRunner()
    driver = NspawnDriver(SystemdUnits(runner), image_dir="/srv/images/debian-12",
                          state_dir="/var/lib/provisioner/vps")
    driver.create(spec(), RootAccess(password=PASSWORD))
    assert driver.usage(7, "provisioner-service-107") == UsageCounters(running=False)
    runner.active = True
    runner.calls.clear()
    got = driver.usage(7, "provisioner-service-107")
    assert got.running and got.cpu_ns == 4_200_000_000 and got.io_write_ops == 16
    show = [a for a, _ in runner.calls if a[:2] == ("systemctl", "show")]
    assert show == [("systemctl", "show", "-p", "CPUUsageNSec", "-p", "MemoryCurrent", "-p", "IOReadBytes",
                     "-p", "IOWriteBytes", "-p", "IOReadOperations", "-p", "IOWriteOperations",
                     "vps-7.service")]
    with pytest.raises(Conflict):
        driver.usage(7, "provisioner-service-5")
