"""Each VPS runs under a service unit of its own: boot-time start is the unit's
enablement, so a suspended machine (unit disabled) stays down when its host reboots.

``UnitSpec`` renders a systemd service unit (and reads one back). Two managers put it
to work:

- ``SystemdUnits``: a VPS host whose PID 1 is systemd (production): the unit goes to
  /etc/systemd/system and ``systemctl`` does the rest, through the host's runner;
- ``PlainUnits``: a VPS host without systemd as PID 1 (a container, this CI machine):
  the same unit file, executed the way systemd would (ExecStartPre, ExecStart detached
  in the machine's own cgroups with the unit's CPUQuota/MemoryMax/TasksMax written to
  them, ExecStopPost), enablement as a link in ``boot.wants/``, and ``boot()`` doing what
  the host's boot does: start every enabled unit.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from provisioner.adapters.vps import cgroups
from provisioner.adapters.vps.process import is_nspawn
from provisioner.adapters.vps.runner import PATH, CommandRunner, LocalRunner
from provisioner.errors import StepFailed, TransientError

Argv = tuple[str, ...]


IOPS_KEYS = ("IOReadIOPSMax", "IOWriteIOPSMax")


def _exec_line(key: str, argv: Argv) -> str:
    """An Exec*= line: shell-style quoting (systemd's own rules accept it), with ``%`` and
    ``$`` doubled so systemd takes them literally. A leading ``-`` on the command is
    systemd's "failure allowed"."""
    return f"{key}={shlex.join(argv).replace('%', '%%').replace('$', '$$')}"


def _exec_argv(value: str) -> Argv:
    return tuple(shlex.split(value.replace("$$", "$").replace("%%", "%")))


@dataclass(frozen=True)
class UnitSpec:
    """A VPS's service unit.

    ``notify``: the unit is ``Type=notify`` (systemd-nspawn reports the machine ready once
    its network is set up; ExecStartPost runs after that). ``io_path`` with ``iops_read``
    / ``iops_write``: IOPS caps on the block device backing ``io_path`` (the machine's
    mounted disk). systemd resolves such a path to its device when it sets up the unit's
    cgroup, which is before ExecStartPre mounts the disk: an ``IOReadIOPSMax=`` line in
    [Service] would cap the state directory's device, not the machine's. So the caps are
    set by an ExecStartPre after the mount (``systemctl set-property --runtime``), which
    systemd resolves then, on every start, boot included.
    """

    name: str  # vps-<id>
    tag: str
    exec_start: Argv
    exec_start_pre: tuple[Argv, ...] = ()
    exec_stop_post: tuple[Argv, ...] = ()
    cpu_percent: int | None = None
    memory_bytes: int | None = None
    tasks_max: int | None = None
    extra: dict[str, str] = field(default_factory=dict, hash=False)
    exec_start_post: tuple[Argv, ...] = ()
    notify: bool = False
    io_path: str | None = None
    iops_read: int | None = None
    iops_write: int | None = None

    def iops_properties(self) -> list[str]:
        """``IOReadIOPSMax=<io_path> <n>`` and its write twin, for the caps that are set."""
        if self.io_path is None:
            return []
        return [f"{key}={self.io_path} {value}"
                for key, value in zip(IOPS_KEYS, (self.iops_read, self.iops_write), strict=True)
                if value is not None]

    def render(self) -> str:
        lines = ["# Written by provisioner (adapters/vps); do not edit by hand.", "[Unit]",
                 f"Description=VPS {self.name} ({self.tag})", "After=network.target", "",
                 "[Service]"]
        if self.notify:
            lines.append("Type=notify")
        lines.append(f"Environment=PROVISIONER_TAG={self.tag}")
        lines += [_exec_line("ExecStartPre", a) for a in self.exec_start_pre]
        if self.iops_properties():
            lines.append(_exec_line("ExecStartPre", ("systemctl", "set-property", "--runtime",
                                                     f"{self.name}.service", *self.iops_properties())))
        lines.append(_exec_line("ExecStart", self.exec_start))
        lines += [_exec_line("ExecStartPost", a) for a in self.exec_start_post]
        lines += [_exec_line("ExecStopPost", a) for a in self.exec_stop_post]
        lines += ["KillMode=mixed", "Delegate=yes", "TimeoutStopSec=60"]
        if self.cpu_percent is not None:
            lines.append(f"CPUQuota={self.cpu_percent}%")
        if self.memory_bytes is not None:
            lines.append(f"MemoryMax={self.memory_bytes}")
        if self.tasks_max is not None:
            lines.append(f"TasksMax={self.tasks_max}")
        lines += [f"{k}={v}" for k, v in sorted(self.extra.items())]
        lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
        return "\n".join(lines)

    @classmethod
    def parse(cls, name: str, text: str) -> UnitSpec:
        """Read back a unit ``render`` wrote (the keys it writes; others are kept as extra)."""
        tag, start = "", cast(Argv, ())
        pre: list[Argv] = []
        post: list[Argv] = []
        start_post: list[Argv] = []
        limits: dict[str, int | None] = {"cpu": None, "mem": None, "tasks": None}
        iops: dict[str, int] = {}
        io_path: str | None = None
        notify = False
        extra: dict[str, str] = {}
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line
                continue
            key, _, value = line.partition("=")
            if section != "[Service]":
                continue
            if key == "Environment" and value.startswith("PROVISIONER_TAG="):
                tag = value.partition("=")[2]
            elif key == "Type":
                notify = value == "notify"
            elif key == "ExecStart":
                start = _exec_argv(value)
            elif key == "ExecStartPre":
                argv = _exec_argv(value)
                if argv[:3] == ("systemctl", "set-property", "--runtime") and len(argv) > 4:
                    for prop in argv[4:]:
                        k, _, v = prop.partition("=")
                        io_path, _, n = v.rpartition(" ")
                        iops[k] = int(n)
                else:
                    pre.append(argv)
            elif key == "ExecStartPost":
                start_post.append(_exec_argv(value))
            elif key == "ExecStopPost":
                post.append(_exec_argv(value))
            elif key == "CPUQuota":
                limits["cpu"] = int(value.rstrip("%"))
            elif key == "MemoryMax":
                limits["mem"] = int(value)
            elif key == "TasksMax":
                limits["tasks"] = int(value)
            elif key not in ("KillMode", "Delegate", "TimeoutStopSec"):
                extra[key] = value
        if not start:
            raise StepFailed("vps.unit", f"unit {name} has no ExecStart")
        return cls(name, tag, start, tuple(pre), tuple(post), limits["cpu"], limits["mem"],
                   limits["tasks"], extra, exec_start_post=tuple(start_post), notify=notify,
                   io_path=io_path, iops_read=iops.get(IOPS_KEYS[0]), iops_write=iops.get(IOPS_KEYS[1]))


class UnitManager(Protocol):
    """Where a VPS host keeps its machines' units and how it runs them."""

    runner: CommandRunner

    def unit_path(self, name: str) -> str: ...
    def install(self, unit: UnitSpec) -> None: ...
    def remove(self, name: str) -> None: ...
    def enable(self, name: str) -> None: ...
    def disable(self, name: str) -> None: ...
    def is_enabled(self, name: str) -> bool: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def is_active(self, name: str) -> bool: ...
    def limits(self, name: str) -> dict[str, int | None]: ...
    def set_limits(self, unit: UnitSpec) -> None: ...


class SystemdUnits:
    """A VPS host run by systemd: ``/etc/systemd/system/<name>.service`` and systemctl."""

    def __init__(self, runner: CommandRunner, unit_dir: str = "/etc/systemd/system") -> None:
        self.runner, self.unit_dir = runner, unit_dir

    def unit_path(self, name: str) -> str:
        return f"{self.unit_dir}/{name}.service"

    def install(self, unit: UnitSpec) -> None:
        self.runner.write_file(self.unit_path(unit.name), unit.render().encode())
        self.runner.run(["systemctl", "daemon-reload"])

    def remove(self, name: str) -> None:
        self.runner.run(["systemctl", "disable", "--now", f"{name}.service"], check=False)
        self.runner.run(["rm", "-f", "--", self.unit_path(name)])
        self.runner.run(["systemctl", "daemon-reload"])

    def enable(self, name: str) -> None:
        self.runner.run(["systemctl", "enable", f"{name}.service"])

    def disable(self, name: str) -> None:
        self.runner.run(["systemctl", "disable", f"{name}.service"])

    def is_enabled(self, name: str) -> bool:
        return self.runner.run(["systemctl", "is-enabled", "--quiet", f"{name}.service"],
                               check=False).rc == 0

    def start(self, name: str) -> None:
        self.runner.run(["systemctl", "start", f"{name}.service"], timeout=180)

    def stop(self, name: str) -> None:
        self.runner.run(["systemctl", "stop", f"{name}.service"], timeout=180)

    def is_active(self, name: str) -> bool:
        return self.runner.run(["systemctl", "is-active", "--quiet", f"{name}.service"],
                               check=False).rc == 0

    def set_limits(self, unit: UnitSpec) -> None:
        """The installed unit's limits onto the running unit's cgroup now (``--runtime``:
        the unit file stays what a start or a boot reads)."""
        props = [f"CPUQuota={unit.cpu_percent}%" if unit.cpu_percent is not None else "CPUQuota=",
                 f"MemoryMax={unit.memory_bytes if unit.memory_bytes is not None else 'infinity'}",
                 f"TasksMax={unit.tasks_max if unit.tasks_max is not None else 'infinity'}"]
        if self.is_active(unit.name):
            props += unit.iops_properties()  # a path resolves to the mounted disk only while it runs
        self.runner.run(["systemctl", "set-property", "--runtime", f"{unit.name}.service", *props])

    def limits(self, name: str) -> dict[str, int | None]:
        out = self.runner.run(["systemctl", "show", "-p", "CPUQuotaPerSecUSec", "-p", "MemoryMax",
                               "-p", "TasksMax", "-p", "IOReadIOPSMax", "-p", "IOWriteIOPSMax",
                               f"{name}.service"]).stdout
        props = dict(line.partition("=")[::2] for line in out.splitlines())
        cpu = props.get("CPUQuotaPerSecUSec", "infinity")
        cpu_percent = None
        if cpu.endswith("ms"):
            cpu_percent = int(float(cpu[:-2]) / 10)
        elif cpu.endswith("s") and cpu[:-1].replace(".", "").isdigit():
            cpu_percent = int(float(cpu[:-1]) * 100)
        mem, tasks = props.get("MemoryMax", ""), props.get("TasksMax", "")
        iops = {k: props.get(k, "").rpartition(" ")[2] for k in IOPS_KEYS}
        return {"cpu_percent": cpu_percent, "memory_bytes": int(mem) if mem.isdigit() else None,
                "tasks_max": int(tasks) if tasks.isdigit() else None,
                "iops_read": int(iops[IOPS_KEYS[0]]) if iops[IOPS_KEYS[0]].isdigit() else None,
                "iops_write": int(iops[IOPS_KEYS[1]]) if iops[IOPS_KEYS[1]].isdigit() else None}


class PlainUnits:
    """A VPS host whose PID 1 is not systemd: this machine, run by this process."""

    def __init__(self, unit_dir: Path, *, stop_timeout_s: float = 30.0,
                 start_timeout_s: float = 30.0) -> None:
        self.runner: LocalRunner = LocalRunner()
        self.dir = unit_dir
        self.wants = unit_dir / "boot.wants"
        self.stop_timeout_s, self.start_timeout_s = stop_timeout_s, start_timeout_s

    def unit_path(self, name: str) -> str:
        return str(self.dir / f"{name}.service")

    def _unit(self, name: str) -> UnitSpec:
        try:
            text = Path(self.unit_path(name)).read_text()
        except FileNotFoundError:
            raise StepFailed("vps.unit", f"no unit {name} on this host") from None
        return UnitSpec.parse(name, text)

    def install(self, unit: UnitSpec) -> None:
        self.wants.mkdir(parents=True, exist_ok=True)
        self.runner.write_file(self.unit_path(unit.name), unit.render().encode())

    def remove(self, name: str) -> None:
        if Path(self.unit_path(name)).exists():
            self.stop(name)
        self.disable(name)
        Path(self.unit_path(name)).unlink(missing_ok=True)
        cgroups.remove(name)

    def enable(self, name: str) -> None:
        self.wants.mkdir(parents=True, exist_ok=True)
        link = self.wants / f"{name}.service"
        if not link.is_symlink():
            link.symlink_to(self.unit_path(name))

    def disable(self, name: str) -> None:
        (self.wants / f"{name}.service").unlink(missing_ok=True)

    def is_enabled(self, name: str) -> bool:
        return (self.wants / f"{name}.service").is_symlink()

    def is_active(self, name: str) -> bool:
        return any(is_nspawn(p) for p in cgroups.pids(name)) if self._exists(name) else False

    def _exists(self, name: str) -> bool:
        return any(d.is_dir() for d in cgroups.machine_dirs(name))

    def _exec(self, argv: Argv, *, timeout: float = 120.0, check: bool = True) -> None:
        """One Exec*= command as systemd runs it (a leading ``-``: failure allowed)."""
        allowed = argv[0].startswith("-")
        self.runner.run((argv[0].lstrip("-"), *argv[1:]), timeout=timeout, check=check and not allowed)

    def start(self, name: str) -> None:
        unit = self._unit(name)
        if self.is_active(name):
            return
        self._cleanup(name, unit)  # a machine that died leaves its mount behind
        for argv in unit.exec_start_pre:
            self._exec(argv)
        cgroups.prepare(name)
        self._apply(unit)
        log = self.dir / f"{name}.log"
        with contextlib.ExitStack() as stack:
            env = {"PATH": PATH, "SYSTEMD_LOG_LEVEL": "warning"}
            ready = None
            if unit.notify:  # Type=notify: nspawn says READY=1 once the machine's network is set up
                ready = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
                sock_path = self.dir / f"{name}.notify"
                sock_path.unlink(missing_ok=True)
                ready.bind(str(sock_path))
                stack.callback(sock_path.unlink, missing_ok=True)
                env["NOTIFY_SOCKET"] = str(sock_path)
            with log.open("ab") as fh:
                # setsid -f: the machine is nobody's child here (a daemon, as under systemd);
                # it inherits the cgroups this process enters before exec.
                subprocess.run(["setsid", "-f", *unit.exec_start], stdin=subprocess.DEVNULL,
                               stdout=fh, stderr=fh, check=True, timeout=30, env=env,
                               preexec_fn=lambda: cgroups.enter(name))  # noqa: PLW1509
            deadline = time.monotonic() + self.start_timeout_s
            while not (self.is_active(name) and (ready is None or self._ready(ready))):
                if time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-800:]
                    self._cleanup(name, unit)
                    raise TransientError(f"{name}: systemd-nspawn did not start: {tail}")
                time.sleep(0.05)
        try:
            for argv in unit.exec_start_post:
                self._exec(argv)
        except StepFailed:
            self.stop(name)  # as systemd does when ExecStartPost fails
            raise

    @staticmethod
    def _ready(sock: socket.socket) -> bool:
        sock.settimeout(0.05)
        try:
            return b"READY=1" in sock.recv(4096).split(b"\n")
        except TimeoutError:
            return False

    def _apply(self, unit: UnitSpec) -> None:
        device = None
        if unit.io_path is not None and (unit.iops_read is not None or unit.iops_write is not None):
            if not os.path.ismount(unit.io_path):  # else it would cap the state dir's device
                raise StepFailed("vps.unit", f"{unit.name}: {unit.io_path} is not mounted; "
                                 "its IOPS caps have no device")
            st = os.stat(unit.io_path)
            device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        try:
            cgroups.apply_limits(unit.name, cpu_percent=unit.cpu_percent,
                                 memory_bytes=unit.memory_bytes, tasks_max=unit.tasks_max,
                                 io_device=device, iops_read=unit.iops_read, iops_write=unit.iops_write)
        except OSError as exc:
            raise StepFailed("vps.unit", f"{unit.name}: the kernel refused a limit: {exc}") from None

    def set_limits(self, unit: UnitSpec) -> None:
        """The installed unit's limits onto the running machine's cgroups now."""
        if self.is_active(unit.name):
            self._apply(unit)

    def stop(self, name: str) -> None:
        unit = self._unit(name)
        for pid in cgroups.pids(name):
            if is_nspawn(pid):
                try:
                    os.kill(pid, signal.SIGTERM)  # nspawn asks the machine's init to halt
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.stop_timeout_s
        while cgroups.pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._cleanup(name, unit)

    def _cleanup(self, name: str, unit: UnitSpec) -> None:
        cgroups.kill_all(name)
        for argv in unit.exec_stop_post:
            self._exec(argv, check=False, timeout=60)
        cgroups.remove(name)

    def limits(self, name: str) -> dict[str, int | None]:
        """The kernel's limits; IOPS only as far as they are on the machine's mounted disk."""
        out = cgroups.read_limits(name)
        unit = self._unit(name) if Path(self.unit_path(name)).exists() else None
        caps: dict[str, int] = {}
        if unit is not None and unit.io_path is not None and os.path.ismount(unit.io_path):
            st = os.stat(unit.io_path)
            caps = cgroups.read_iops(name).get(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", {})
        out["iops_read"], out["iops_write"] = caps.get("read"), caps.get("write")
        return out

    def boot(self) -> list[str]:
        """What the host's boot does: start every enabled unit. Returns the names started."""
        started = []
        for link in sorted(self.wants.glob("*.service")) if self.wants.is_dir() else []:
            name = link.name.removesuffix(".service")
            if not self.is_active(name):
                self.start(name)
                started.append(name)
        return started

    def installed(self) -> Sequence[str]:
        return sorted(p.name.removesuffix(".service") for p in self.dir.glob("*.service"))
