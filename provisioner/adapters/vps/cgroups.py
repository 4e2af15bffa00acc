"""cgroups for machines started by systemd-nspawn on a cgroup v1 / hybrid host (and v2).

Used by the VPS driver on a VPS host whose PID 1 is not systemd (units.PlainUnits) and
by the throwaway-host harness (provisioner/devstack/hosts, which imports it from here).

On v1/hybrid, systemd inside an nspawn container sees its controllers mounted
read-only and accepts CPUQuota/MemoryMax without enforcing them. What works here:
start nspawn from a process already placed in its own cgroups
(``/sys/fs/cgroup/<controller>/machines/<name>``), then, once the container has booted,
remount each controller read-write inside it and ``systemctl daemon-reexec``.
On a pure v2 machine nspawn delegates a cgroup subtree and nothing else is needed;
we still place nspawn in ``machines/<name>`` so that teardown finds every process.
Real nodes (systemd on cgroup v2) need none of this; it stays in this adapter.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")


def mode() -> str:
    """'v2' (unified), 'hybrid' (v1 controllers + unified) or 'v1'."""
    try:
        kind = _fstype(CGROUP_ROOT)
    except OSError:
        return "v1"
    if kind == "cgroup2":
        return "v2"
    return "hybrid" if (CGROUP_ROOT / "unified").is_dir() else "v1"


def _fstype(path: Path) -> str:
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) >= len(best):
            best, kind = parts[1], parts[2]
    return kind


def hierarchies() -> list[Path]:
    """Every hierarchy the host's processes live in that we manage for a machine."""
    if mode() == "v2":
        return [CGROUP_ROOT]
    out = [CGROUP_ROOT / c for c in V1_CONTROLLERS if (CGROUP_ROOT / c).is_dir()]
    for extra in ("systemd", "unified"):
        if (CGROUP_ROOT / extra).is_dir():
            out.append(CGROUP_ROOT / extra)
    return out


def machine_dirs(name: str) -> list[Path]:
    return [h / "machines" / name for h in hierarchies()]


def prepare(name: str) -> None:
    """Create the machine's cgroups (idempotent)."""
    for d in machine_dirs(name):
        d.mkdir(parents=True, exist_ok=True)
    if mode() == "v2":
        # Let the machine's subtree use the controllers systemd inside wants.
        for parent in (CGROUP_ROOT, CGROUP_ROOT / "machines"):
            ctl = parent / "cgroup.subtree_control"
            wanted = {"cpu", "memory", "pids", "io"}
            have = set((parent / "cgroup.controllers").read_text().split())
            for c in sorted(wanted & have):
                try:
                    ctl.write_text(f"+{c}")
                except OSError:
                    pass


def enter(name: str) -> None:
    """Move the calling process into the machine's cgroups (runs in the child before exec)."""
    pid = str(os.getpid())
    for d in machine_dirs(name):
        (d / "cgroup.procs").write_text(pid)


def pids(name: str) -> set[int]:
    found: set[int] = set()
    for d in machine_dirs(name):
        if not d.is_dir():
            continue
        # os.walk ignores directories that vanish while it walks (scopes end all the time)
        for root, _dirs, files in os.walk(d):
            if "cgroup.procs" not in files:
                continue
            try:
                found.update(int(p) for p in Path(root, "cgroup.procs").read_text().split())
            except OSError:
                continue
    return found


def kill_all(name: str, timeout_s: float = 10.0) -> None:
    """SIGKILL everything in the machine's cgroups until they are empty."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = pids(name)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes of host {name!r} survive SIGKILL: {sorted(left)}")
        time.sleep(0.05)


def remove(name: str) -> None:
    """Remove the machine's cgroup trees, deepest first (they must be empty)."""
    for d in machine_dirs(name):
        if not d.is_dir():
            continue
        subdirs = sorted((p for p in d.rglob("*") if p.is_dir()),
                         key=lambda p: len(p.parts), reverse=True)
        for sub in [*subdirs, d]:
            try:
                sub.rmdir()
            except FileNotFoundError:
                pass


CPU_PERIOD_US = 100_000


def apply_limits(name: str, *, cpu_percent: int | None = None, memory_bytes: int | None = None,
                 tasks_max: int | None = None, io_device: str | None = None,
                 iops_read: int | None = None, iops_write: int | None = None) -> None:
    """Write the machine's CPU quota, memory limit, tasks limit and IOPS caps to its own
    cgroups (the host-side ones: nothing inside the machine can raise them). The IOPS caps
    hold on ``io_device`` ("major:minor", the machine's loop device): a direct-IO request
    is throttled where the machine's process submits it to that device."""
    v2 = mode() == "v2"
    if io_device is not None:
        _apply_iops(name, io_device, iops_read, iops_write, v2)
    if cpu_percent is not None:
        quota = max(1000, cpu_percent * CPU_PERIOD_US // 100)
        if v2:
            _write(CGROUP_ROOT / "machines" / name / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        else:
            d = CGROUP_ROOT / "cpu" / "machines" / name
            _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(d / "cpu.cfs_quota_us", str(quota))
    if memory_bytes is not None:
        if v2:
            _write(CGROUP_ROOT / "machines" / name / "memory.max", str(memory_bytes))
        else:
            _write(CGROUP_ROOT / "memory" / "machines" / name / "memory.limit_in_bytes",
                   str(memory_bytes))
    if tasks_max is not None:
        d = (CGROUP_ROOT if v2 else CGROUP_ROOT / "pids") / "machines" / name
        _write(d / "pids.max", str(tasks_max))


def _apply_iops(name: str, device: str, read: int | None, write: int | None, v2: bool) -> None:
    if not re.fullmatch(r"[0-9]+:[0-9]+", device):
        raise ValueError(f"bad block device number {device!r}")
    if v2:
        riops = "max" if read is None else str(read)
        wiops = "max" if write is None else str(write)
        _write(CGROUP_ROOT / "machines" / name / "io.max", f"{device} riops={riops} wiops={wiops}")
        return
    d = CGROUP_ROOT / "blkio" / "machines" / name
    # v1 takes "major:minor 0" as "no cap on this device".
    _write(d / "blkio.throttle.read_iops_device", f"{device} {read or 0}")
    _write(d / "blkio.throttle.write_iops_device", f"{device} {write or 0}")


def read_iops(name: str) -> dict[str, dict[str, int]]:
    """The IOPS caps on the machine's cgroup per device ("major:minor"):
    ``{"7:2": {"read": 300, "write": 150}}``; a direction without a cap is left out."""
    out: dict[str, dict[str, int]] = {}
    if mode() == "v2":
        for line in _read(CGROUP_ROOT / "machines" / name / "io.max").splitlines():
            dev, *kvs = line.split()
            caps = dict(kv.partition("=")[::2] for kv in kvs)
            for key, field in (("read", "riops"), ("write", "wiops")):
                if caps.get(field, "").isdigit():
                    out.setdefault(dev, {})[key] = int(caps[field])
        return out
    d = CGROUP_ROOT / "blkio" / "machines" / name
    for key in ("read", "write"):
        for line in _read(d / f"blkio.throttle.{key}_iops_device").splitlines():
            dev, _, value = line.partition(" ")
            if value.strip().isdigit() and int(value) > 0:
                out.setdefault(dev, {})[key] = int(value)
    return out


def read_limits(name: str) -> dict[str, int | None]:
    """The limits the kernel holds the machine to (None: no limit / no cgroup)."""
    v2 = mode() == "v2"
    out: dict[str, int | None] = {"cpu_percent": None, "memory_bytes": None, "tasks_max": None}
    if v2:
        d = CGROUP_ROOT / "machines" / name
        cpu = _read(d / "cpu.max").split()
        if len(cpu) == 2 and cpu[0] != "max":
            out["cpu_percent"] = int(cpu[0]) * 100 // int(cpu[1])
        mem, tasks = _read(d / "memory.max"), _read(d / "pids.max")
    else:
        d = CGROUP_ROOT / "cpu" / "machines" / name
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            out["cpu_percent"] = int(quota) * 100 // int(period)
        mem = _read(CGROUP_ROOT / "memory" / "machines" / name / "memory.limit_in_bytes")
        tasks = _read(CGROUP_ROOT / "pids" / "machines" / name / "pids.max")
        if mem and int(mem) >= 1 << 60:  # v1's "unlimited"
            mem = ""
    out["memory_bytes"] = int(mem) if mem.isdigit() else None
    out["tasks_max"] = int(tasks) if tasks.isdigit() else None
    return out


def cpu_usage_ns(name: str) -> int:
    """CPU time the machine's processes used so far, in nanoseconds."""
    if mode() == "v2":
        for line in _read(CGROUP_ROOT / "machines" / name / "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) * 1000
        return 0
    raw = _read(CGROUP_ROOT / "cpuacct" / "machines" / name / "cpuacct.usage")
    return int(raw) if raw else 0


def tasks_current(name: str) -> int:
    d = (CGROUP_ROOT if mode() == "v2" else CGROUP_ROOT / "pids") / "machines" / name
    raw = _read(d / "pids.current")
    return int(raw) if raw else 0


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def usage_counters(name: str, io_device: str | None = None) -> dict[str, int | None]:
    """The machine's cumulative counters from its own cgroups (for fair-use metering):
    ``cpu_ns`` (CPU time used since its cgroup was made, i.e. since it started),
    ``memory_bytes`` (in use now), and ``io_read_bytes``/``io_write_bytes``/
    ``io_read_ops``/``io_write_ops`` on ``io_device`` ("major:minor", its own disk) only;
    None where the kernel gives nothing (no cgroup: the machine is not running, or no
    device is known)."""
    out: dict[str, int | None] = dict.fromkeys(
        ("cpu_ns", "memory_bytes", "io_read_bytes", "io_write_bytes", "io_read_ops", "io_write_ops"))
    if io_device is not None and not re.fullmatch(r"[0-9]+:[0-9]+", io_device):
        raise ValueError(f"bad block device number {io_device!r}")
    if mode() == "v2":
        d = CGROUP_ROOT / "machines" / name
        if not d.is_dir():
            return out
        for line in _read(d / "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.isdigit():
                out["cpu_ns"] = int(value) * 1000
        mem = _read(d / "memory.current")
        out["memory_bytes"] = int(mem) if mem.isdigit() else None
        if io_device is not None:
            out.update(dict.fromkeys(("io_read_bytes", "io_write_bytes", "io_read_ops", "io_write_ops"), 0))
            for line in _read(d / "io.stat").splitlines():
                dev, *kvs = line.split()
                if dev != io_device:
                    continue
                stat = dict(kv.partition("=")[::2] for kv in kvs)
                for key, field in (("io_read_bytes", "rbytes"), ("io_write_bytes", "wbytes"),
                                   ("io_read_ops", "rios"), ("io_write_ops", "wios")):
                    if stat.get(field, "").isdigit():
                        out[key] = int(stat[field])
        return out
    cpu = CGROUP_ROOT / "cpuacct" / "machines" / name
    if not cpu.is_dir():
        return out
    raw = _read(cpu / "cpuacct.usage")
    out["cpu_ns"] = int(raw) if raw.isdigit() else None
    mem = _read(CGROUP_ROOT / "memory" / "machines" / name / "memory.usage_in_bytes")
    out["memory_bytes"] = int(mem) if mem.isdigit() else None
    if io_device is not None:
        blkio = CGROUP_ROOT / "blkio" / "machines" / name
        for leaf, kind in (("blkio.throttle.io_service_bytes", "bytes"),
                           ("blkio.throttle.io_serviced", "ops")):
            # v1 lists "major:minor Read|Write|Sync|Async|Discard|Total value" per device;
            # the _recursive file counts the whole tree (systemd inside makes sub-cgroups).
            recursive = blkio / f"{leaf}_recursive"
            counts = _device_counts(_read(recursive if recursive.exists() else blkio / leaf), io_device)
            out[f"io_read_{kind}"], out[f"io_write_{kind}"] = counts.get("Read", 0), counts.get("Write", 0)
    return out


def _device_counts(text: str, device: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == device and parts[2].isdigit():
            counts[parts[1]] = counts.get(parts[1], 0) + int(parts[2])
    return counts
