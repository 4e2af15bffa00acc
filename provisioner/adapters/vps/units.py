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

import os
import shlex
import signal
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


@dataclass(frozen=True)
class UnitSpec:
    name: str  # vps-<id>
    tag: str
    exec_start: Argv
    exec_start_pre: tuple[Argv, ...] = ()
    exec_stop_post: tuple[Argv, ...] = ()
    cpu_percent: int | None = None
    memory_bytes: int | None = None
    tasks_max: int | None = None
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def render(self) -> str:
        lines = ["# Written by provisioner (adapters/vps); do not edit by hand.", "[Unit]",
                 f"Description=VPS {self.name} ({self.tag})", "After=network.target", "",
                 "[Service]", f"Environment=PROVISIONER_TAG={self.tag}"]
        lines += [f"ExecStartPre={shlex.join(a)}" for a in self.exec_start_pre]
        lines.append(f"ExecStart={shlex.join(self.exec_start)}")
        lines += [f"ExecStopPost={shlex.join(a)}" for a in self.exec_stop_post]
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
        limits: dict[str, int | None] = {"cpu": None, "mem": None, "tasks": None}
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
            elif key == "ExecStart":
                start = tuple(shlex.split(value))
            elif key == "ExecStartPre":
                pre.append(tuple(shlex.split(value)))
            elif key == "ExecStopPost":
                post.append(tuple(shlex.split(value)))
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
                   limits["tasks"], extra)


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

    def limits(self, name: str) -> dict[str, int | None]:
        out = self.runner.run(["systemctl", "show", "-p", "CPUQuotaPerSecUSec", "-p", "MemoryMax",
                               "-p", "TasksMax", f"{name}.service"]).stdout
        props = dict(line.partition("=")[::2] for line in out.splitlines())
        cpu = props.get("CPUQuotaPerSecUSec", "infinity")
        cpu_percent = None
        if cpu.endswith("ms"):
            cpu_percent = int(float(cpu[:-2]) / 10)
        elif cpu.endswith("s") and cpu[:-1].replace(".", "").isdigit():
            cpu_percent = int(float(cpu[:-1]) * 100)
        mem, tasks = props.get("MemoryMax", ""), props.get("TasksMax", "")
        return {"cpu_percent": cpu_percent, "memory_bytes": int(mem) if mem.isdigit() else None,
                "tasks_max": int(tasks) if tasks.isdigit() else None}


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

    def start(self, name: str) -> None:
        unit = self._unit(name)
        if self.is_active(name):
            return
        self._cleanup(name, unit)  # a machine that died leaves its mount behind
        for argv in unit.exec_start_pre:
            self.runner.run(argv, timeout=120)
        cgroups.prepare(name)
        cgroups.apply_limits(name, cpu_percent=unit.cpu_percent, memory_bytes=unit.memory_bytes,
                             tasks_max=unit.tasks_max)
        log = self.dir / f"{name}.log"
        with log.open("ab") as fh:
            # setsid -f: the machine is nobody's child here (a daemon, as under systemd);
            # it inherits the cgroups this process enters before exec.
            subprocess.run(["setsid", "-f", *unit.exec_start], stdin=subprocess.DEVNULL,
                           stdout=fh, stderr=fh, check=True, timeout=30,
                           env={"PATH": PATH, "SYSTEMD_LOG_LEVEL": "warning"},
                           preexec_fn=lambda: cgroups.enter(name))  # noqa: PLW1509
        deadline = time.monotonic() + self.start_timeout_s
        while not self.is_active(name):
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-800:]
                self._cleanup(name, unit)
                raise TransientError(f"{name}: systemd-nspawn did not start: {tail}")
            time.sleep(0.05)

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
            self.runner.run(argv, check=False, timeout=60)
        cgroups.remove(name)

    def limits(self, name: str) -> dict[str, int | None]:
        return cgroups.read_limits(name)

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
