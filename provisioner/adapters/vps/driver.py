"""The VPS driver interface and the ``nspawn`` driver.

A VPS on an ``nspawn`` host is ``<state_dir>/vps-<id>/``:

- ``tag``: our service's tag (``provisioner-service-<id>``), written before anything else;
  the unit carries it too (``Environment=PROVISIONER_TAG=``); every act on a machine
  checks both and refuses a mismatch;
- ``disk.img``: a fixed-size ext4 image holding the machine's whole root (made from the
  cached image with ``mkfs.ext4 -d``), loop-mounted at ``root/`` while the machine runs:
  the disk cap is the file system's size, nothing can write past it;
- ``machine.json``: what the machine was made with (no secrets); ``ready``: it is whole;
  ``suspended``: it is suspended, and ``start`` refuses it.

The machine runs under a unit of its own (units.py) with the plan's CPU quota, memory
and tasks limits and IOPS caps on its own disk's loop device, on the host's VPS bridge
with its own address and its bandwidth shaped on the host side of its veth (shaping.py).
The root password goes to ``chpasswd`` on stdin and is stored hashed in the image only.
A plan change (``resize``) grows the disk (never shrinks it) and changes every limit in
place; ``reinstall`` makes a fresh disk with new root access under the same identity.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Protocol

from provisioner.adapters.vps import cgroups, shaping, validate
from provisioner.adapters.vps.units import SystemdUnits, UnitManager, UnitSpec
from provisioner.domain.catalog import VpsPlan
from provisioner.errors import Conflict, InvalidInput, NotFound, StepFailed

HOST_NAME_MAX = 64  # the kernel's limit for a machine's host name


@dataclass(frozen=True)
class MachineSpec:
    """What a machine is made with (all validated; no secrets)."""

    vps_id: int
    tag: str
    hostname: str
    address: str
    gateway: str
    prefixlen: int
    cpu_percent: int  # 100 per vCPU
    memory_mb: int
    disk_mb: int
    tasks_max: int
    iops_read: int | None = None  # caps on the machine's disk (None: none)
    iops_write: int | None = None
    bandwidth_mbit: int | None = None  # each direction, shaped on the host side (None: unshaped)

    @classmethod
    def for_plan(cls, plan: VpsPlan, *, vps_id: int, tag: str, hostname: str, address: str,
                 gateway: str, prefixlen: int) -> MachineSpec:
        return cls(vps_id, tag, hostname, address, gateway, prefixlen,
                   cpu_percent=plan.vcpus * 100, memory_mb=plan.memory_mb,
                   disk_mb=plan.disk_gb * 1024, tasks_max=plan.tasks_max,
                   iops_read=plan.iops_read, iops_write=plan.iops_write,
                   bandwidth_mbit=plan.bandwidth_mbit)

    def expected_limits(self) -> dict[str, int | None]:
        """What ``NspawnDriver.limits`` reads back from a running machine made from this spec."""
        return {"cpu_percent": self.cpu_percent, "memory_bytes": self.memory_mb * 1024 * 1024,
                "tasks_max": self.tasks_max, "iops_read": self.iops_read, "iops_write": self.iops_write,
                "bandwidth_down_mbit": self.bandwidth_mbit, "bandwidth_up_mbit": self.bandwidth_mbit,
                "disk_bytes": self.disk_mb * 1024 * 1024}

    def with_sizes(self, other: MachineSpec) -> MachineSpec:
        """This machine with ``other``'s sizes and limits (a plan change); refused when
        ``other`` names another machine."""
        identity = ("vps_id", "tag", "hostname", "address", "gateway", "prefixlen")
        changed = [k for k in identity if getattr(self, k) != getattr(other, k)]
        if changed:
            raise InvalidInput(f"a resize changes sizes only, not {', '.join(changed)}")
        return other

    def validated(self) -> MachineSpec:
        validate.vps_id(self.vps_id)
        validate.veth_name(self.vps_id)
        validate.tag(self.tag)
        validate.hostname(self.hostname)
        if len(self.hostname) > HOST_NAME_MAX:
            raise InvalidInput(f"VPS host name {self.hostname!r} is longer than {HOST_NAME_MAX}")
        net = ipaddress.ip_network(f"{validate.address(self.gateway)}/{self.prefixlen}", strict=False)
        if ipaddress.ip_address(validate.address(self.address)) not in net or self.address == self.gateway:
            raise InvalidInput(f"address {self.address} is not a machine address in {net}")
        for name, value, low in (("cpu_percent", self.cpu_percent, 1),
                                 ("memory_mb", self.memory_mb, 64),
                                 ("disk_mb", self.disk_mb, 512), ("tasks_max", self.tasks_max, 16)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInput(f"{name} must be an integer >= {low}, not {value!r}")
        for name, opt, low in (("iops_read", self.iops_read, 10), ("iops_write", self.iops_write, 10),
                               ("bandwidth_mbit", self.bandwidth_mbit, 1)):
            if opt is not None and (not isinstance(opt, int) or isinstance(opt, bool) or opt < low):
                raise InvalidInput(f"{name} must be an integer >= {low} or none, not {opt!r}")
        return self


@dataclass(frozen=True)
class RootAccess:
    """How the customer logs in as root: a password, an SSH key, or both."""

    password: str | None = None
    ssh_key: str | None = None

    def __repr__(self) -> str:
        return f"RootAccess(password={'***' if self.password else None}, ssh_key={self.ssh_key!r})"

    def validated(self) -> RootAccess:
        if not self.password and not self.ssh_key:
            raise InvalidInput("a VPS needs a root password or an SSH key")
        if self.password is not None:
            validate.password(self.password)
        if self.ssh_key is not None:
            validate.ssh_key(self.ssh_key)
        return self


@dataclass(frozen=True)
class MachineInfo:
    name: str
    vps_id: int
    tag: str
    hostname: str
    address: str
    running: bool
    enabled: bool  # started when its host boots
    suspended: bool
    created: bool = False  # this call made it (False: found and adopted)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ObservedMachine:
    """A tagged machine on a VPS host and the limits the host holds it to now."""

    info: MachineInfo
    limits: dict[str, int | None]

    def drift(self, spec: MachineSpec) -> dict[str, tuple[int | None, int | None]]:
        """Where the machine differs from ``spec``: {limit: (wanted, found)}. A machine that
        is not running holds no limit but its disk, so only the disk is compared then."""
        want = spec.expected_limits()
        keys = list(want) if self.info.running else ["disk_bytes"]
        return {k: (want[k], self.limits.get(k)) for k in keys if want[k] != self.limits.get(k)}


@dataclass(frozen=True)
class UsageCounters:
    """A machine's cumulative counters as its VPS host reads them now (fair-use metering).

    ``cpu_ns``: CPU time used since the machine last started (its cgroup is new on every
    start, so the counter falls back to zero after a restart); ``memory_bytes``: in use
    now; ``io_*``: bytes and operations read and written since it started. None: the host
    gives no such number (a stopped machine has none)."""

    running: bool
    cpu_ns: int | None = None
    memory_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    io_read_ops: int | None = None
    io_write_ops: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


#: ``systemctl show`` properties -> UsageCounters fields (SystemdUnits).
SYSTEMD_USAGE = {"CPUUsageNSec": "cpu_ns", "MemoryCurrent": "memory_bytes",
                 "IOReadBytes": "io_read_bytes", "IOWriteBytes": "io_write_bytes",
                 "IOReadOperations": "io_read_ops", "IOWriteOperations": "io_write_ops"}
_UINT64_MAX = (1 << 64) - 1  # systemd's "not known"


def parse_systemd_usage(text: str) -> dict[str, int | None]:
    """``systemctl show -p CPUUsageNSec -p MemoryCurrent ...`` output as UsageCounters
    fields; ``[not set]``, an empty value or UINT64_MAX (accounting off, unit stopped) is None."""
    out: dict[str, int | None] = dict.fromkeys(SYSTEMD_USAGE.values())
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key in SYSTEMD_USAGE and value.isdigit() and int(value) != _UINT64_MAX:
            out[SYSTEMD_USAGE[key]] = int(value)
    return out


class VpsDriver(Protocol):
    """What the pipeline asks of a VPS host. Every act names the tag it expects and is
    refused when the machine carries another one."""

    def create(self, spec: MachineSpec, access: RootAccess) -> MachineInfo: ...
    def start(self, vps_id: int, tag: str) -> MachineInfo: ...
    def stop(self, vps_id: int, tag: str) -> MachineInfo: ...
    def suspend(self, vps_id: int, tag: str) -> MachineInfo: ...
    def unsuspend(self, vps_id: int, tag: str) -> MachineInfo: ...
    def delete(self, vps_id: int, tag: str) -> dict[str, object]: ...
    def list_tagged(self) -> list[MachineInfo]: ...
    def limits(self, vps_id: int, tag: str) -> dict[str, int | None]: ...
    def resize(self, spec: MachineSpec) -> MachineInfo: ...
    def reinstall(self, vps_id: int, tag: str, access: RootAccess) -> MachineInfo: ...
    def observe(self) -> list[ObservedMachine]: ...
    def usage(self, vps_id: int, tag: str) -> UsageCounters: ...


class NspawnDriver:
    """VPS machines as systemd-nspawn containers on a VPS host (see the module doc)."""

    def __init__(self, units: UnitManager, *, image_dir: str, state_dir: str = "/var/lib/provisioner/vps",
                 bridge: str = "provvps0") -> None:
        self.units = units
        self.runner = units.runner
        self.image_dir = image_dir.rstrip("/")
        self.state_dir = state_dir.rstrip("/")
        self.bridge = validate.bridge(bridge)

    # -- paths ---------------------------------------------------------------------
    def machine_dir(self, vps_id: int) -> str:
        return f"{self.state_dir}/{validate.machine_name(vps_id)}"

    def disk_path(self, vps_id: int) -> str:
        return f"{self.machine_dir(vps_id)}/disk.img"

    def root_path(self, vps_id: int) -> str:
        return f"{self.machine_dir(vps_id)}/root"

    # -- observe -------------------------------------------------------------------
    def _read(self, vps_id: int, leaf: str) -> str | None:
        data = self.runner.read_file(f"{self.machine_dir(vps_id)}/{leaf}")
        return None if data is None else data.decode().strip()

    def _unit_tag(self, name: str) -> str | None:
        data = self.runner.read_file(self.units.unit_path(name))
        if data is None:
            return None
        for line in data.decode().splitlines():
            if line.startswith("Environment=PROVISIONER_TAG="):
                return line.partition("PROVISIONER_TAG=")[2].strip()
        return ""

    def _check_tag(self, vps_id: int, tag: str) -> str:
        """The machine exists and carries ``tag`` (in its state dir and its unit)."""
        validate.tag(tag)
        name = validate.machine_name(vps_id)
        found = self._read(vps_id, "tag")
        if found is None:
            raise NotFound(f"no machine {name} on VPS host {self.runner.name}")
        unit_tag = self._unit_tag(name)
        if found != tag or unit_tag not in (None, tag):
            raise Conflict(f"machine {name} carries tag {found!r} (unit: {unit_tag!r}), not {tag!r}:"
                           " refused")
        return name

    def _info(self, vps_id: int, *, created: bool = False) -> MachineInfo:
        name = validate.machine_name(vps_id)
        meta = json.loads(self._read(vps_id, "machine.json") or "{}")
        return MachineInfo(name=name, vps_id=vps_id, tag=self._read(vps_id, "tag") or "",
                           hostname=str(meta.get("hostname", "")), address=str(meta.get("address", "")),
                           running=self.units.is_active(name), enabled=self.units.is_enabled(name),
                           suspended=self._read(vps_id, "suspended") is not None, created=created)

    def list_tagged(self) -> list[MachineInfo]:
        out = self.runner.run(["find", self.state_dir, "-mindepth", "2", "-maxdepth", "2",
                               "-name", "tag", "-path", f"{self.state_dir}/vps-*/tag"],
                              check=False).stdout
        ids = sorted(int(p.split("/")[-2].removeprefix("vps-")) for p in out.split()
                     if p.split("/")[-2].removeprefix("vps-").isdigit())
        return [self._info(i) for i in ids]

    def limits(self, vps_id: int, tag: str) -> dict[str, int | None]:
        """The limits the VPS host holds the machine to now, read back from the kernel
        (cgroups, tc) and the disk image: cpu_percent, memory_bytes, tasks_max, iops_read,
        iops_write (on its own disk only), bandwidth_down_mbit, bandwidth_up_mbit,
        disk_bytes. None: no such limit in force (a stopped machine has none but its disk)."""
        name = self._check_tag(vps_id, tag)
        out = dict(self.units.limits(name))
        running = self.units.is_active(name)
        out.update(shaping.rates(self.runner, vps_id) if running else
                   {"bandwidth_down_mbit": None, "bandwidth_up_mbit": None})
        out["disk_bytes"] = self._disk_bytes(vps_id)
        return out

    def observe(self) -> list[ObservedMachine]:
        """Every tagged machine on this host with the limits the host holds it to now (for
        a reconciler: compare with ``ObservedMachine.drift(spec)``). Read-only; a machine
        whose tag is damaged is listed with no limits."""
        out = []
        for info in self.list_tagged():
            try:
                limits = self.limits(info.vps_id, info.tag)
            except InvalidInput:
                limits = {}
            out.append(ObservedMachine(info, limits))
        return out

    def usage(self, vps_id: int, tag: str) -> UsageCounters:
        """The machine's cumulative usage counters, read from its VPS host now (see
        UsageCounters). Under systemd: ``systemctl show`` of its unit (CPU, memory and IO
        accounting; IO over the unit's devices, i.e. its own disk). Under PlainUnits (this
        machine): its own cgroups, IO on its mounted disk's device only. Read-only."""
        name = self._check_tag(vps_id, tag)
        running = self.units.is_active(name)
        if not running:
            return UsageCounters(running=False)
        if isinstance(self.units, SystemdUnits):
            out = self.runner.run(["systemctl", "show", *(a for p in SYSTEMD_USAGE for a in ("-p", p)),
                                   f"{name}.service"]).stdout
            return UsageCounters(running=True, **parse_systemd_usage(out))
        root = self.root_path(vps_id)
        device = None
        if os.path.ismount(root):
            st = os.stat(root)
            device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        return UsageCounters(running=True, **cgroups.usage_counters(name, device))

    def _disk_bytes(self, vps_id: int) -> int | None:
        size = self.runner.run(["stat", "-c", "%s", "--", self.disk_path(vps_id)], check=False).stdout.strip()
        return int(size) if size.isdigit() else None

    # -- create --------------------------------------------------------------------
    def create(self, spec: MachineSpec, access: RootAccess) -> MachineInfo:
        """Make the machine and start it. Observe first: a machine with our tag is adopted
        (completed if a crash left it half made), never made twice; another tag is refused."""
        spec, access = spec.validated(), access.validated()
        name = validate.machine_name(spec.vps_id)
        found = self._read(spec.vps_id, "tag")
        if found is not None and found != spec.tag:
            raise Conflict(f"machine {name} exists with tag {found!r}, not {spec.tag!r}: refused")
        if found is not None and self._read(spec.vps_id, "ready") is not None:
            if self._read(spec.vps_id, "suspended") is None:
                self._ensure_shared_state_dir()
                self._ensure_network(spec)
                self.units.start(name)
            return self._info(spec.vps_id, created=False)
        mdir = self.machine_dir(spec.vps_id)
        self._ensure_shared_state_dir()
        self.runner.run(["mkdir", "-p", "-m", "0700", "--", f"{mdir}/root"])
        self.runner.write_file(f"{mdir}/tag", f"{spec.tag}\n".encode(), mode=0o600)
        meta = {k: v for k, v in asdict(spec).items()}
        self.runner.write_file(f"{mdir}/machine.json", json.dumps(meta, indent=2).encode(), mode=0o600)
        unit = self._unit_spec(spec)
        self.units.install(unit)  # before the disk: a half-made machine carries its tag twice
        self._build_disk(spec, access, unit)
        self.units.enable(name)
        self.runner.write_file(f"{mdir}/ready", b"", mode=0o600)
        self._ensure_network(spec)
        self.units.start(name)
        return self._info(spec.vps_id, created=True)

    def _unit_spec(self, spec: MachineSpec) -> UnitSpec:
        name = validate.machine_name(spec.vps_id)
        root, disk = self.root_path(spec.vps_id), self.disk_path(spec.vps_id)
        nspawn = ("systemd-nspawn", "--quiet", "--boot", "--keep-unit", "--register=no",
                  f"--machine={name}", f"--hostname={spec.hostname}", "-D", root,
                  f"--network-bridge={self.bridge}", "--console=passive", "--resolv-conf=off",
                  "--timezone=off", "--link-journal=no")
        shaped = spec.bandwidth_mbit is not None
        return UnitSpec(name=name, tag=spec.tag, exec_start=nspawn,
                        exec_start_pre=(("mount", "-o", "loop", disk, root),),
                        exec_stop_post=(("umount", root),
                                        *(shaping.stop_commands(spec.vps_id) if shaped else ())),
                        cpu_percent=spec.cpu_percent, memory_bytes=spec.memory_mb * 1024 * 1024,
                        tasks_max=spec.tasks_max, notify=True,
                        exec_start_post=(shaping.start_commands(spec.vps_id, spec.bandwidth_mbit)
                                         if spec.bandwidth_mbit is not None else ()),
                        io_path=root if (spec.iops_read, spec.iops_write) != (None, None) else None,
                        iops_read=spec.iops_read, iops_write=spec.iops_write)

    def _build_disk(self, spec: MachineSpec, access: RootAccess, unit: UnitSpec,
                    image_dir: str | None = None) -> None:
        disk, root = self.disk_path(spec.vps_id), self.root_path(spec.vps_id)
        self.runner.run(["umount", root], check=False)  # a crash may have left it mounted
        self.runner.run(["rm", "-f", "--", disk])
        self.runner.run(["truncate", "-s", f"{spec.disk_mb}M", disk])
        self.runner.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", unit.name[:16],
                         "-d", f"{image_dir or self.image_dir}/", disk], timeout=600)
        self.runner.run(["mount", "-o", "loop", disk, root])
        try:
            self._seed(spec, access, root)
        finally:
            self.runner.run(["umount", root])
            self._release_loops(spec.vps_id)

    def _seed(self, spec: MachineSpec, access: RootAccess, root: str) -> None:
        w = self.runner.write_file
        short = spec.hostname.split(".")[0]
        w(f"{root}/etc/hostname", f"{spec.hostname}\n".encode())
        w(f"{root}/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {spec.hostname} {short}\n".encode())
        w(f"{root}/etc/machine-id", b"")
        sshd = ["PermitRootLogin " + ("yes" if access.password else "prohibit-password"),
                "PasswordAuthentication " + ("yes" if access.password else "no"), ""]
        self.runner.run(["mkdir", "-p", f"{root}/etc/ssh/sshd_config.d", f"{root}/root/.ssh"])
        w(f"{root}/etc/ssh/sshd_config.d/10-provisioner.conf", "\n".join(sshd).encode())
        self.runner.run(["rm", "-f", "--", f"{root}/etc/ssh/ssh_host_ed25519_key",
                         f"{root}/etc/ssh/ssh_host_ed25519_key.pub"])
        self.runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{spec.hostname}",
                         "-f", f"{root}/etc/ssh/ssh_host_ed25519_key"])
        self.runner.run(["chmod", "0700", f"{root}/root/.ssh"])
        if access.ssh_key:
            w(f"{root}/root/.ssh/authorized_keys", f"{access.ssh_key}\n".encode(), mode=0o600)
        # The machine's own address, set by a unit inside when it boots.
        net = (f"[Unit]\nDescription=VPS address (provisioner)\nBefore=network.target ssh.service\n"
               f"[Service]\nType=oneshot\nRemainAfterExit=yes\n"
               f"ExecStart=/sbin/ip link set host0 up\n"
               f"ExecStart=/sbin/ip addr replace {spec.address}/{spec.prefixlen} dev host0\n"
               f"ExecStart=/sbin/ip route replace default via {spec.gateway}\n"
               f"[Install]\nWantedBy=multi-user.target\n")
        w(f"{root}/etc/systemd/system/provisioner-net.service", net.encode())
        self.runner.run(["ln", "-sfn", "/etc/systemd/system/provisioner-net.service",
                         f"{root}/etc/systemd/system/multi-user.target.wants/provisioner-net.service"])
        if access.password:
            # Hashed by chpasswd into the image's /etc/shadow; the password is on stdin only.
            self.runner.run(["chpasswd", "--root", root], stdin=f"root:{access.password}\n".encode())
        else:
            self.runner.run(["passwd", "--root", root, "--lock", "root"])

    def _ensure_shared_state_dir(self) -> None:
        """The state dir is a shared mount point. systemd-nspawn copies every mount of the
        host into each machine's namespace (as slaves); a disk mounted under a shared
        mount point then leaves those copies again when it is unmounted here, so no other
        machine keeps its loop device. (On a host whose PID 1 is not systemd, mounts are
        private unless made shared.)"""
        sd = self.state_dir
        self.runner.run(["mkdir", "-p", "-m", "0700", "--", sd])
        cur = self.runner.run(["findmnt", "-n", "-o", "PROPAGATION", "--mountpoint", sd], check=False)
        if cur.rc != 0 or not cur.stdout.strip():
            self.runner.run(["mount", "--bind", sd, sd])
        if "shared" not in cur.stdout:
            self.runner.run(["mount", "--make-shared", sd])

    def _ensure_network(self, spec: MachineSpec) -> None:
        """The host's VPS bridge with the pool's gateway address on it."""
        br = self.bridge
        if self.runner.run(["ip", "link", "show", "dev", br], check=False).rc != 0:
            self.runner.run(["ip", "link", "add", br, "type", "bridge"], check=False)
        self.runner.run(["ip", "addr", "replace", f"{spec.gateway}/{spec.prefixlen}", "dev", br])
        self.runner.run(["ip", "link", "set", br, "up"])

    # -- lifecycle -----------------------------------------------------------------
    def _spec(self, vps_id: int) -> MachineSpec:
        meta = json.loads(self._read(vps_id, "machine.json") or "{}")
        try:
            return MachineSpec(**meta).validated()
        except TypeError:
            raise StepFailed("vps.driver", f"machine vps-{vps_id}: machine.json is damaged") from None

    def start(self, vps_id: int, tag: str) -> MachineInfo:
        name = self._check_tag(vps_id, tag)
        if self._read(vps_id, "suspended") is not None:
            raise Conflict(f"machine {name} is suspended: unsuspend it first")
        self._ensure_shared_state_dir()
        self._ensure_network(self._spec(vps_id))
        self.units.start(name)
        return self._info(vps_id)

    def stop(self, vps_id: int, tag: str) -> MachineInfo:
        name = self._check_tag(vps_id, tag)
        self.units.stop(name)
        self._release_loops(vps_id)
        return self._info(vps_id)

    def _release_loops(self, vps_id: int, timeout_s: float = 10.0) -> None:
        """No loop device left on the machine's disk once it is unmounted (the kernel
        clears an autoclear loop device a moment after the unmount; detach it if not)."""
        disk = self.disk_path(vps_id)
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.runner.run(["losetup", "--noheadings", "--output", "NAME", "-j", disk],
                                  check=False).stdout.split()
            if not out:
                return
            if time.monotonic() > deadline:
                raise StepFailed("vps.driver", f"vps-{vps_id}: loop devices {out} stay on its disk")
            for dev in out:
                self.runner.run(["losetup", "--detach", dev], check=False)
            time.sleep(0.1)

    def suspend(self, vps_id: int, tag: str) -> MachineInfo:
        """Hold the machine down: marked suspended (start refuses it), not started at boot,
        stopped."""
        name = self._check_tag(vps_id, tag)
        self.runner.write_file(f"{self.machine_dir(vps_id)}/suspended", b"", mode=0o600)
        self.units.disable(name)
        self.units.stop(name)
        self._release_loops(vps_id)
        return self._info(vps_id)

    def unsuspend(self, vps_id: int, tag: str) -> MachineInfo:
        name = self._check_tag(vps_id, tag)
        self.units.enable(name)
        self.runner.run(["rm", "-f", "--", f"{self.machine_dir(vps_id)}/suspended"])
        self._ensure_shared_state_dir()
        self._ensure_network(self._spec(vps_id))
        self.units.start(name)
        return self._info(vps_id)

    def disk_sha256(self, vps_id: int, tag: str) -> str:
        """The disk image's SHA-256 (for a stopped machine: proof it is unchanged)."""
        self._check_tag(vps_id, tag)
        out = self.runner.run(["sha256sum", "--", self.disk_path(vps_id)], timeout=600).stdout
        digest = out.split()[0] if out.split() else ""
        if len(digest) != len(hashlib.sha256().hexdigest()):
            raise StepFailed("vps.driver", f"sha256sum gave {out!r}")
        return digest

    # -- plan changes and reinstall ------------------------------------------------
    def resize(self, spec: MachineSpec) -> MachineInfo:
        """Give a machine new sizes and limits (a plan change), running or not.

        The disk only grows: a smaller disk is refused before any command runs. A larger
        one is grown offline (the image file, ``e2fsck``, ``resize2fs``): a running machine
        is stopped for it and started again, so the guest sees the new size at once.
        (Online growth needs CAP_SYS_RESOURCE, which a VPS host in a container may lack; a
        plan change runs in the maintenance window anyway.) CPU, memory, tasks and IOPS go
        into the unit and, with no restart, onto the running machine's cgroups; the
        bandwidth onto its tc qdiscs. Safe to run again after a crash: a ``resizing``
        marker remembers an unfinished disk growth and whether the machine was running."""
        spec = spec.validated()
        name = self._check_tag(spec.vps_id, spec.tag)
        current = self._spec(spec.vps_id)
        spec = current.with_sizes(spec)
        if spec.disk_mb < current.disk_mb:
            raise InvalidInput(f"machine {name}: its disk is {current.disk_mb} MB; a plan with "
                               f"{spec.disk_mb} MB would shrink it, and a disk is never shrunk: refused")
        have = self._disk_bytes(spec.vps_id)
        if have is None:
            raise StepFailed("vps.resize", f"machine {name} has no disk image")
        if have > spec.disk_mb * 1024 * 1024:
            raise InvalidInput(f"machine {name}: its disk holds {have} bytes, more than the "
                               f"{spec.disk_mb} MB asked for; a disk is never shrunk: refused")
        mdir = self.machine_dir(spec.vps_id)
        self.runner.write_file(f"{mdir}/machine.json", json.dumps(asdict(spec), indent=2).encode(),
                               mode=0o600)
        unit = self._unit_spec(spec)
        self.units.install(unit)
        marker = self._read(spec.vps_id, "resizing")
        if have < spec.disk_mb * 1024 * 1024 or marker is not None:
            running = marker == "running" if marker is not None else self.units.is_active(name)
            self.runner.write_file(f"{mdir}/resizing", b"running" if running else b"stopped", mode=0o600)
            if running:
                self.units.stop(name)
                self._release_loops(spec.vps_id)
            self._grow_disk(spec)
            if running:  # the new unit: every new limit from the start
                self._ensure_shared_state_dir()
                self._ensure_network(spec)
                self.units.start(name)
            self.runner.run(["rm", "-f", "--", f"{mdir}/resizing"])
            return self._info(spec.vps_id)
        self.units.set_limits(unit)
        if self.units.is_active(name):
            want = {"bandwidth_down_mbit": spec.bandwidth_mbit, "bandwidth_up_mbit": spec.bandwidth_mbit}
            if shaping.rates(self.runner, spec.vps_id) != want:
                shaping.run_all(self.runner, shaping.change_commands(spec.vps_id, spec.bandwidth_mbit))
        return self._info(spec.vps_id)

    def _grow_disk(self, spec: MachineSpec) -> None:
        """The (unmounted) disk image and its ext4 to ``spec.disk_mb``; idempotent."""
        disk, root = self.disk_path(spec.vps_id), self.root_path(spec.vps_id)
        if self.runner.run(["mountpoint", "-q", root], check=False).rc == 0:
            raise StepFailed("vps.resize", f"vps-{spec.vps_id}: its disk is still mounted after stop")
        self.runner.run(["truncate", "-s", f"{spec.disk_mb}M", "--", disk])
        fsck = self.runner.run(["e2fsck", "-f", "-p", disk], check=False, timeout=600)
        if fsck.rc not in (0, 1):  # 1: errors fixed
            raise StepFailed("vps.resize", f"vps-{spec.vps_id}: e2fsck exited {fsck.rc}: "
                             f"{fsck.stdout.strip()[-300:]}")
        self.runner.run(["resize2fs", disk], timeout=600)

    def reinstall(self, vps_id: int, tag: str, access: RootAccess, *,
                  image_dir: str | None = None) -> MachineInfo:
        """A fresh disk from the image (``image_dir`` or the driver's), with new root
        access; the same id, tag, host name, address, sizes and limits. Everything on the
        old disk is gone. A suspended machine is refused (unsuspend it first)."""
        name = self._check_tag(vps_id, tag)
        access = access.validated()
        if image_dir is not None and (not image_dir.startswith("/") or ".." in image_dir.split("/")):
            raise InvalidInput(f"image directory {image_dir!r} must be an absolute path")
        if self._read(vps_id, "suspended") is not None:
            raise Conflict(f"machine {name} is suspended: unsuspend it first")
        spec = self._spec(vps_id)
        mdir = self.machine_dir(vps_id)
        self.units.stop(name)
        self._release_loops(vps_id)
        self.runner.run(["rm", "-f", "--", f"{mdir}/ready"])  # half reinstalled is not whole
        unit = self._unit_spec(spec)
        self.units.install(unit)
        self._build_disk(spec, access, unit, image_dir.rstrip("/") if image_dir else None)
        self.units.enable(name)
        self.runner.write_file(f"{mdir}/ready", b"", mode=0o600)
        self._ensure_shared_state_dir()
        self._ensure_network(spec)
        self.units.start(name)
        return self._info(vps_id)

    def delete(self, vps_id: int, tag: str) -> dict[str, object]:
        """Stop the machine and remove its unit, disk and state; returns what was removed."""
        name = self._check_tag(vps_id, tag)
        mdir = self.machine_dir(vps_id)
        self.units.remove(name)
        if self.runner.run(["mountpoint", "-q", self.root_path(vps_id)], check=False).rc == 0:
            raise StepFailed("vps.delete", f"{name}: its disk is still mounted after stop")
        self._release_loops(vps_id)
        size = self.runner.run(["stat", "-c", "%s", self.disk_path(vps_id)], check=False).stdout.strip()
        self.runner.run(["rm", "-rf", "--one-file-system", "--", mdir], timeout=600)
        return {"machine": name, "tag": tag, "unit": self.units.unit_path(name), "state_dir": mdir,
                "disk_bytes": int(size) if size.isdigit() else None}
