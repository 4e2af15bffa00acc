"""cgroups for throwaway hosts on a cgroup v1 / hybrid machine (and the v2 case).

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
