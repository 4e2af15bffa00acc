"""The nspawn VPS driver without a VPS host: input checks, the unit it writes, the argv
it runs (recorded by a runner that keeps files in memory), and the tag it insists on."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import replace

import pytest

from provisioner.adapters.vps import shaping, validate
from provisioner.adapters.vps.driver import (
    MachineInfo,
    MachineSpec,
    NspawnDriver,
    ObservedMachine,
    RootAccess,
)
from provisioner.adapters.vps.runner import Completed
from provisioner.adapters.vps.units import SystemdUnits, UnitSpec
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import Conflict, InvalidInput, NotFound

PASSWORD = "Corr3ct-Horse-Battery"
_BLOB = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + bytes(32)
KEY = "ssh-ed25519 " + base64.b64encode(_BLOB).decode()


class RecordingRunner:
    """A VPS host that records every argv (and its stdin) and keeps files in memory; its
    machines are stopped (``active``: running), nothing is mounted, and ``stat`` knows the
    size ``truncate`` gave."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], bytes | None]] = []
        self.files: dict[str, bytes] = {}
        self.sizes: dict[str, int] = {}
        self.active = False

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120.0,
            check: bool = True) -> Completed:
        self.calls.append((tuple(argv), stdin))
        rc, out = 0, ""
        if argv[0] == "systemctl" and argv[1] == "is-active":
            rc = 0 if self.active else 1
        elif argv[0] == "systemctl" and argv[1] == "is-enabled" or argv[0] == "mountpoint":
            rc = 1
        elif argv[0] == "truncate":
            self.sizes[argv[-1]] = int(argv[2].removesuffix("M")) * 1024 * 1024
        elif argv[0] == "stat":
            out = str(self.sizes.get(argv[-1], ""))
        return Completed(tuple(argv), rc, out, "")

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self.files[path] = data

    def read_file(self, path: str) -> bytes | None:
        return self.files.get(path)


def spec(vps_id: int = 7, **kw: object) -> MachineSpec:
    base = MachineSpec.for_plan(DEFAULT_CATALOG.vps_plan("vps-s"), vps_id=vps_id,
                                tag=f"provisioner-service-{vps_id + 100}", hostname="web1.example.si",
                                address="10.220.0.5", gateway="10.220.0.1", prefixlen=24)
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def host() -> tuple[NspawnDriver, RecordingRunner]:
    runner = RecordingRunner()
    return NspawnDriver(SystemdUnits(runner), image_dir="/srv/images/debian-12",
                        state_dir="/var/lib/provisioner/vps"), runner


@pytest.mark.parametrize("name", ["web1.example.si", "a", "x-1.b-2.si"])
def test_good_hostnames_pass(name: str) -> None:
    assert validate.hostname(name) == name


@pytest.mark.parametrize("name", ["", "-a.si", "a-.si", "A.si", "a..si", "a b", "a;rm -rf /", "$(id)",
                                  "a/../b", "x" * 64 + ".si", "ä.si", "a.si\n"])
def test_bad_hostnames_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate.hostname(name)


@pytest.mark.parametrize("pw", ["short", "has:colon-in-it", "has space in it!", "tab\there-xxxxx",
                                "newline\nxxxxxxxx", "ünïcode-password", "x" * 129])
def test_bad_passwords_are_refused_without_echo(pw: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate.password(pw)
    assert pw not in str(err.value)


@pytest.mark.parametrize("key", ["ssh-ed25519", "ssh-dss AAAA", "ssh-ed25519 !!!notbase64",
                                 "ssh-rsa " + KEY.split()[1],  # blob of another type
                                 KEY + " comment; rm -rf /", KEY + "\nssh-ed25519 AAAA"])
def test_bad_ssh_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput):
        validate.ssh_key(key)


def test_good_ssh_key_passes() -> None:
    assert validate.ssh_key(KEY + " ops@example.si") == KEY + " ops@example.si"


@pytest.mark.parametrize("bad", [{"vps_id": 0}, {"vps_id": -3}, {"tag": "other-7"},
                                 {"tag": "provisioner-service-7; x"}, {"address": "10.221.0.5"},
                                 {"address": "10.220.0.1"}, {"memory_mb": 8}, {"disk_mb": 10},
                                 {"tasks_max": 2}, {"cpu_percent": 0}, {"hostname": "a" * 63 + ".si"},
                                 {"iops_read": 5}, {"iops_write": True}, {"bandwidth_mbit": 0},
                                 {"vps_id": 10**8}])  # vb-vps-100000000: longer than a device name
def test_bad_specs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        spec(**bad).validated()


def test_plan_sizes_become_the_machine_limits() -> None:
    plan = DEFAULT_CATALOG.vps_plan("vps-m")
    s = MachineSpec.for_plan(plan, vps_id=3, tag="provisioner-service-9", hostname="h.si",
                             address="10.220.0.9", gateway="10.220.0.1", prefixlen=24)
    assert (s.cpu_percent, s.memory_mb, s.disk_mb, s.tasks_max) == (
        plan.vcpus * 100, plan.memory_mb, plan.disk_gb * 1024, plan.tasks_max)
    assert (s.iops_read, s.iops_write, s.bandwidth_mbit) == (plan.iops_read, plan.iops_write,
                                                             plan.bandwidth_mbit)


def test_unit_carries_tag_limits_and_the_nspawn_argv(host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, _ = host
    unit = driver._unit_spec(spec(cpu_percent=150, memory_mb=512, tasks_max=300))
    text = unit.render()
    assert "Environment=PROVISIONER_TAG=provisioner-service-107" in text
    assert "Description=VPS vps-7 (provisioner-service-107)" in text
    assert "CPUQuota=150%" in text and f"MemoryMax={512 * 1024 * 1024}" in text and "TasksMax=300" in text
    assert unit.exec_start[:2] == ("systemd-nspawn", "--quiet")
    assert "--machine=vps-7" in unit.exec_start and "--hostname=web1.example.si" in unit.exec_start
    assert unit.exec_start_pre == (("mount", "-o", "loop", "/var/lib/provisioner/vps/vps-7/disk.img",
                                    "/var/lib/provisioner/vps/vps-7/root"),)
    assert UnitSpec.parse("vps-7", text) == unit  # what PlainUnits executes is what was written


def test_create_puts_the_password_on_stdin_only(host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD, ssh_key=KEY))
    argvs = [a for a, _ in runner.calls]
    assert not any(PASSWORD in arg for a in argvs for arg in a)
    assert not any(PASSWORD.encode() in data for data in runner.files.values())
    chpasswd = [(a, s) for a, s in runner.calls if a[0] == "chpasswd"]
    assert chpasswd == [(("chpasswd", "--root", "/var/lib/provisioner/vps/vps-7/root"),
                         f"root:{PASSWORD}\n".encode())]
    assert PASSWORD not in repr(RootAccess(password=PASSWORD))
    keys = runner.files["/var/lib/provisioner/vps/vps-7/root/root/.ssh/authorized_keys"]
    assert keys == f"{KEY}\n".encode()
    assert ("mkfs.ext4", "-q", "-F", "-m", "0", "-L", "vps-7", "-d", "/srv/images/debian-12/",
            "/var/lib/provisioner/vps/vps-7/disk.img") in argvs
    assert ("truncate", "-s", f"{40 * 1024}M", "/var/lib/provisioner/vps/vps-7/disk.img") in argvs
    assert ("systemctl", "enable", "vps-7.service") in argvs
    assert ("systemctl", "start", "vps-7.service") in argvs


def test_create_twice_adopts_instead_of_making_a_second_disk(
        host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    first = driver.create(spec(), RootAccess(password=PASSWORD))
    runner.calls.clear()
    second = driver.create(spec(), RootAccess(password=PASSWORD))
    assert first.created and not second.created
    assert not any(a[0] in ("mkfs.ext4", "truncate", "chpasswd") for a, _ in runner.calls)


def test_another_services_machine_is_refused_everywhere(host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    runner.calls.clear()
    with pytest.raises(Conflict):
        driver.create(spec(tag="provisioner-service-999"), RootAccess(password=PASSWORD))
    for act in (driver.stop, driver.suspend, driver.unsuspend, driver.start, driver.delete):
        with pytest.raises(Conflict):
            act(7, "provisioner-service-999")
    assert not any(a[0] in ("systemctl", "rm", "umount") for a, _ in runner.calls)
    with pytest.raises(NotFound):
        driver.stop(8, "provisioner-service-108")


def test_a_unit_with_another_tag_is_refused(host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    path = "/etc/systemd/system/vps-7.service"
    runner.files[path] = runner.files[path].replace(b"provisioner-service-107", b"provisioner-service-5")
    with pytest.raises(Conflict):
        driver.delete(7, "provisioner-service-107")


def test_suspended_machine_refuses_start(host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    driver.suspend(7, "provisioner-service-107")
    argvs = [a for a, _ in runner.calls]
    assert argvs.index(("systemctl", "disable", "vps-7.service")) < argvs.index(
        ("systemctl", "stop", "vps-7.service"))
    with pytest.raises(Conflict, match="suspended"):
        driver.start(7, "provisioner-service-107")


ROOT = "/var/lib/provisioner/vps/vps-7/root"
DISK = "/var/lib/provisioner/vps/vps-7/disk.img"


def test_iops_caps_are_set_after_the_disk_is_mounted(host: tuple[NspawnDriver, RecordingRunner]) -> None:
    """systemd resolves an IOReadIOPSMax= path to its device when it sets up the cgroup, before
    ExecStartPre: as a [Service] line it would cap the state dir's device. So the caps are an
    ExecStartPre after the mount, naming the mounted root."""
    driver, _ = host
    text = driver._unit_spec(spec(iops_read=1000, iops_write=500)).render()
    pre = [ln for ln in text.splitlines() if ln.startswith("ExecStartPre=")]
    assert pre == [f"ExecStartPre=mount -o loop {DISK} {ROOT}",
                   "ExecStartPre=systemctl set-property --runtime vps-7.service "
                   f"'IOReadIOPSMax={ROOT} 1000' 'IOWriteIOPSMax={ROOT} 500'"]
    assert not any(ln.startswith(("IOReadIOPSMax", "IOWriteIOPSMax")) for ln in text.splitlines())
    unit = UnitSpec.parse("vps-7", text)
    assert (unit.io_path, unit.iops_read, unit.iops_write) == (ROOT, 1000, 500)
    assert unit.exec_start_pre == (("mount", "-o", "loop", DISK, ROOT),)  # PlainUnits runs no systemctl


def test_bandwidth_is_shaped_on_host_devices_once_the_machine_is_ready(
        host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, _ = host
    unit = driver._unit_spec(spec(bandwidth_mbit=100))
    text = unit.render()
    assert "Type=notify" in text  # ExecStartPost waits for nspawn's READY=1: the veth is there
    post = [ln.partition("=")[2] for ln in text.splitlines() if ln.startswith("ExecStartPost=")]
    assert post == ["-ip link del dev vi-vps-7", "ip link add name vi-vps-7 type ifb",
                    "ip link set dev vi-vps-7 up",
                    "tc qdisc replace dev vi-vps-7 root tbf rate 100mbit burst 125000 latency 50ms",
                    "tc qdisc replace dev vb-vps-7 root tbf rate 100mbit burst 125000 latency 50ms",
                    "tc qdisc replace dev vb-vps-7 handle ffff: ingress",
                    "tc filter replace dev vb-vps-7 parent ffff: protocol all prio 1 handle 800::1 u32 "
                    "match u32 0 0 action mirred egress redirect dev vi-vps-7"]
    assert unit.exec_stop_post == (("umount", ROOT), ("-ip", "link", "del", "dev", "vi-vps-7"))
    assert UnitSpec.parse("vps-7", text) == unit
    plain = driver._unit_spec(spec(bandwidth_mbit=None, iops_read=None, iops_write=None))
    assert plain.exec_start_post == () and plain.iops_properties() == [] and plain.io_path is None


def test_burst_is_ten_milliseconds_at_the_rate_but_never_below_a_few_frames() -> None:
    assert shaping.burst_bytes(8) == shaping.MIN_BURST
    assert shaping.burst_bytes(500) == 500_000_000 // 8 // 100


def test_unit_lines_keep_dollar_and_percent_literal() -> None:
    unit = UnitSpec(name="vps-7", tag="provisioner-service-107", exec_start=("echo", "$HOME", "50%"))
    text = unit.render()
    assert "ExecStart=echo '$$HOME' 50%%" in text
    assert UnitSpec.parse("vps-7", text).exec_start == ("echo", "$HOME", "50%")


def test_a_shrinking_resize_is_refused_before_any_command(host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    meta = runner.files["/var/lib/provisioner/vps/vps-7/machine.json"]
    runner.calls.clear()
    with pytest.raises(InvalidInput, match="never shrunk"):
        driver.resize(spec(disk_mb=20 * 1024, cpu_percent=400))
    assert runner.calls == []
    assert runner.files["/var/lib/provisioner/vps/vps-7/machine.json"] == meta
    with pytest.raises(InvalidInput, match="hostname"):
        driver.resize(spec(hostname="other.example.si"))
    with pytest.raises(Conflict):
        driver.resize(spec(tag="provisioner-service-999"))
    assert runner.calls == []


def test_resize_of_a_stopped_machine_grows_its_disk_offline_and_rewrites_its_unit(
        host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    runner.calls.clear()
    driver.resize(spec(disk_mb=80 * 1024, cpu_percent=200, memory_mb=4096, tasks_max=2000,
                       iops_read=2000, iops_write=1000, bandwidth_mbit=200))
    argvs = [a for a, _ in runner.calls]
    disk_steps = [a for a in argvs if a[0] in ("truncate", "e2fsck", "resize2fs")]
    assert disk_steps == [("truncate", "-s", f"{80 * 1024}M", "--", DISK), ("e2fsck", "-f", "-p", DISK),
                          ("resize2fs", DISK)]
    assert not any(a[0] == "tc" or a[1] in ("start", "stop") for a in argvs)  # it stays stopped
    unit = UnitSpec.parse("vps-7", runner.files["/etc/systemd/system/vps-7.service"].decode())
    assert (unit.cpu_percent, unit.iops_read, unit.exec_start_post[3][8]) == (200, 2000, "200mbit")
    meta = json.loads(runner.files["/var/lib/provisioner/vps/vps-7/machine.json"])
    assert (meta["disk_mb"], meta["bandwidth_mbit"], meta["hostname"]) == (80 * 1024, 200, "web1.example.si")


def test_reinstall_makes_a_fresh_disk_with_the_new_password_on_stdin_only(
        host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    runner.calls.clear()
    new = "N3w-Pass-For-Root"
    with pytest.raises(Conflict):
        driver.reinstall(7, "provisioner-service-999", RootAccess(password=new))
    with pytest.raises(InvalidInput):
        driver.reinstall(7, "provisioner-service-107", RootAccess(password=new), image_dir="../etc")
    assert runner.calls == []
    driver.reinstall(7, "provisioner-service-107", RootAccess(password=new))
    argvs = [a for a, _ in runner.calls]
    assert not any(new in arg for a in argvs for arg in a)
    assert [(a, s) for a, s in runner.calls if a[0] == "chpasswd"] == [
        (("chpasswd", "--root", ROOT), f"root:{new}\n".encode())]
    ready_gone = argvs.index(("rm", "-f", "--", "/var/lib/provisioner/vps/vps-7/ready"))
    assert argvs.index(("systemctl", "stop", "vps-7.service")) < ready_gone < argvs.index(
        ("mkfs.ext4", "-q", "-F", "-m", "0", "-L", "vps-7", "-d", "/srv/images/debian-12/", DISK))
    assert ("truncate", "-s", f"{40 * 1024}M", DISK) in argvs  # the same size
    assert [a for a in argvs if a[1] in ("start", "enable")][-2:] == [
        ("systemctl", "enable", "vps-7.service"), ("systemctl", "start", "vps-7.service")]
    driver.suspend(7, "provisioner-service-107")
    with pytest.raises(Conflict, match="suspended"):
        driver.reinstall(7, "provisioner-service-107", RootAccess(password=new))


def test_a_running_machine_is_stopped_for_its_disk_to_grow_and_started_on_the_new_unit(
        host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    runner.active = True
    runner.calls.clear()
    driver.resize(spec(disk_mb=60 * 1024, cpu_percent=200))
    argvs = [a for a, _ in runner.calls]
    order = [argvs.index(a) for a in (("systemctl", "stop", "vps-7.service"),
                                      ("truncate", "-s", f"{60 * 1024}M", "--", DISK),
                                      ("resize2fs", DISK), ("systemctl", "start", "vps-7.service"),
                                      ("rm", "-f", "--", "/var/lib/provisioner/vps/vps-7/resizing"))]
    assert order == sorted(order)
    # A crash after the stop: the marker says it ran; the re-drive grows (again) and starts it.
    runner.files["/var/lib/provisioner/vps/vps-7/resizing"] = b"running"
    runner.active = False
    runner.calls.clear()
    driver.resize(spec(disk_mb=60 * 1024, cpu_percent=200))
    argvs = [a for a, _ in runner.calls]
    assert ("resize2fs", DISK) in argvs and argvs.index(("resize2fs", DISK)) < argvs.index(
        ("systemctl", "start", "vps-7.service"))


def test_a_resize_without_a_bigger_disk_changes_the_running_limits_in_place(
        host: tuple[NspawnDriver, RecordingRunner]) -> None:
    driver, runner = host
    driver.create(spec(), RootAccess(password=PASSWORD))
    runner.active = True
    runner.calls.clear()
    driver.resize(spec(cpu_percent=150, memory_mb=1024, tasks_max=500, iops_read=300, iops_write=200))
    argvs = [a for a, _ in runner.calls]
    assert ("systemctl", "set-property", "--runtime", "vps-7.service", "CPUQuota=150%",
            f"MemoryMax={1024 * 1024 * 1024}", "TasksMax=500", f"IOReadIOPSMax={ROOT} 300",
            f"IOWriteIOPSMax={ROOT} 200") in argvs
    assert not any(a[0] in ("truncate", "resize2fs") or a[1] in ("start", "stop") for a in argvs)
    # tc reports no qdisc on this recorder, so the plan's rate is set again
    assert ("tc", "qdisc", "replace", "dev", "vb-vps-7", "root", "tbf", "rate", "100mbit", "burst", "125000",
            "latency", "50ms") in argvs


@pytest.mark.parametrize("running", [True, False])
def test_drift_compares_every_limit_of_a_running_machine_and_the_disk_of_a_stopped_one(running: bool) -> None:
    s = spec(iops_read=300, iops_write=150, bandwidth_mbit=8)
    info = MachineInfo("vps-7", 7, s.tag, s.hostname, s.address, running=running, enabled=True,
                       suspended=False)
    found = dict(s.expected_limits(), iops_write=None, bandwidth_up_mbit=4,
                 disk_bytes=s.disk_mb * 1024 * 1024 - 1)
    drift = ObservedMachine(info, found).drift(s)
    expected = {"disk_bytes": (s.disk_mb * 1024 * 1024, s.disk_mb * 1024 * 1024 - 1)}
    if running:
        expected |= {"iops_write": (150, None), "bandwidth_up_mbit": (8, 4)}
    assert drift == expected
    assert ObservedMachine(info, s.expected_limits()).drift(s) == {}
