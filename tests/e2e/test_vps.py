"""VPS machines on this machine as the VPS host (the ``nspawn`` driver, adapters/vps).

Two machines from the harness's cached Debian image, each on its own loop-mounted ext4
disk, under a unit of its own (units.PlainUnits: this machine's PID 1 is not systemd),
with a CPU quota, a memory limit and a tasks limit. The sizes are the plan's shape scaled
down to this test machine (1 GiB disk, 256 MiB memory, 30 % of one CPU, 200 tasks); the
catalog's plans map onto the same fields (tests/unit/adapters/test_vps_driver.py).
Every limit is tried from inside, over SSH as root with the order's password.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.ssh import paramiko_module
from provisioner.adapters.vps import cgroups
from provisioner.adapters.vps.driver import MachineInfo, MachineSpec, NspawnDriver, RootAccess
from provisioner.adapters.vps.runner import SshRunner
from provisioner.adapters.vps.units import PlainUnits
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import Conflict, StepFailed

BRIDGE = "provvpst0"
GATEWAY = "10.219.0.1"
CPU_PERCENT, MEMORY_MB, DISK_MB, TASKS_MAX = 30, 256, 1024, 200


@dataclass
class Vps:
    spec: MachineSpec
    password: str
    info: MachineInfo

    @property
    def name(self) -> str:
        return self.info.name


@dataclass
class VpsHost:
    driver: NspawnDriver
    units: PlainUnits
    state_dir: Path
    a: Vps
    b: Vps
    key_path: Path  # the private half of the SSH key A was ordered with


def _spec(vps_id: int, service_id: int, hostname: str, address: str) -> MachineSpec:
    plan = DEFAULT_CATALOG.vps_plan("vps-s")
    s = MachineSpec.for_plan(plan, vps_id=vps_id, tag=f"provisioner-service-{service_id}",
                             hostname=hostname, address=address, gateway=GATEWAY, prefixlen=24)
    return replace(s, cpu_percent=CPU_PERCENT, memory_mb=MEMORY_MB, disk_mb=DISK_MB, tasks_max=TASKS_MAX)


def _loops(state_dir: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines() if str(state_dir) in ln]


def _mounts(state_dir: Path) -> list[str]:
    return [ln for ln in Path("/proc/mounts").read_text().splitlines() if str(state_dir) in ln]


@pytest.fixture(scope="module")
def vps_host(hosts: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VpsHost]:
    image = hosts.ensure_image()[-1]  # the harness's cached Debian root (with sshd)
    state_dir = tmp_path_factory.mktemp("vps")
    units = PlainUnits(state_dir / "units")
    driver = NspawnDriver(units, image_dir=str(image), state_dir=str(state_dir / "machines"),
                          bridge=BRIDGE)
    run = os.getpid() % 1000
    specs = [_spec(run * 10 + 1, run * 10 + 1, "vps-a.example.si", "10.219.0.11"),
             _spec(run * 10 + 2, run * 10 + 2, "vps-b.example.si", "10.219.0.12")]
    made: list[MachineSpec] = []
    key = hosts.key_path.with_suffix(".pub").read_text().strip()
    try:
        machines = []
        for s in specs:
            password = f"Pw-{os.urandom(9).hex()}"
            made.append(s)
            # A gets the order's SSH key as well (the harness's key): both logins are tried.
            access = RootAccess(password=password, ssh_key=key if s is specs[0] else None)
            machines.append(Vps(s, password, driver.create(s, access)))
        yield VpsHost(driver, units, state_dir, machines[0], machines[1], Path(hosts.key_path))
    finally:
        for s in made:
            with contextlib.suppress(Exception):
                driver.delete(s.vps_id, s.tag)
        for name in units.installed():
            with contextlib.suppress(Exception):
                units.remove(name)
        for ln in reversed(_mounts(state_dir)):  # the disks, then the shared state dir
            subprocess.run(["umount", "-l", ln.split()[1]], check=False)
        for ln in _loops(state_dir):
            subprocess.run(["losetup", "-d", ln.split(":")[0]], check=False)
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)


def _client(vps: Vps, timeout_s: float = 60.0) -> Any:
    paramiko = paramiko_module()
    deadline = time.monotonic() + timeout_s
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(vps.spec.address, username="root", password=vps.password, timeout=5,
                           allow_agent=False, look_for_keys=False, banner_timeout=10, auth_timeout=10)
            return client
        except paramiko.AuthenticationException:
            client.close()
            raise
        except (paramiko.SSHException, OSError):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def sh(vps: Vps, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
    client = _client(vps)
    try:
        _, out, err = client.exec_command(command, timeout=timeout)
        o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        return out.channel.recv_exit_status(), o, e
    finally:
        client.close()


def _port_open(address: str) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((address, 22)) == 0


def test_vps_answers_ssh_with_password_and_has_its_hostname(vps_host: VpsHost) -> None:
    for vps in (vps_host.a, vps_host.b):
        rc, out, _ = sh(vps, "hostname; cat /etc/hostname; ip -4 -o addr show dev host0")
        assert rc == 0
        lines = out.splitlines()
        assert lines[0] == lines[1] == vps.spec.hostname
        assert f"{vps.spec.address}/24" in lines[2]


def test_wrong_password_is_refused(vps_host: VpsHost) -> None:
    paramiko = paramiko_module()
    _client(vps_host.a).close()  # sshd is up
    with pytest.raises(paramiko.AuthenticationException):
        sh(Vps(vps_host.a.spec, "Not-the-password-1", vps_host.a.info), "true")


def test_ssh_runner_reaches_a_host_by_key_with_argv_stdin_and_files(vps_host: VpsHost) -> None:
    """SshRunner (the remote VPS host's runner), against machine A as the host: root login
    with the ordered key; an argv with shell characters arrives as words, not as shell."""
    a = vps_host.a
    runner = SshRunner(a.spec.hostname, a.spec.address, key_path=vps_host.key_path, throwaway=True)
    try:
        done = runner.run(["printf", "%s|", "a b", "$(id)", "x;touch /root/pwned", "*"])
        assert done.stdout == "a b|$(id)|x;touch /root/pwned|*|"
        assert runner.run(["test", "-e", "/root/pwned"], check=False).rc == 1
        assert runner.run(["cat"], stdin=b"on stdin\n").stdout == "on stdin\n"
        runner.write_file("/root/through-sftp", b"payload", mode=0o600)
        assert runner.read_file("/root/through-sftp") == b"payload"
        assert runner.read_file("/root/no-such-file") is None
        with pytest.raises(StepFailed):
            runner.run(["false"])
    finally:
        runner.run(["rm", "-f", "/root/through-sftp"], check=False)
        runner.close()
    assert sh(vps_host.b, "test -e /root/.ssh/authorized_keys")[0] == 1  # B was ordered without one


def test_create_again_adopts_the_machine(vps_host: VpsHost) -> None:
    a = vps_host.a
    disk = Path(vps_host.driver.disk_path(a.spec.vps_id))
    inode = disk.stat().st_ino
    again = vps_host.driver.create(a.spec, RootAccess(password="Another-password-9"))
    assert not again.created and again.running
    assert disk.stat().st_ino == inode
    assert sh(a, "true")[0] == 0  # the first password still logs in: nothing was remade
    assert [m.tag for m in vps_host.driver.list_tagged()] == [a.spec.tag, vps_host.b.spec.tag]


def test_writing_past_the_disk_fails_with_enospc(vps_host: VpsHost) -> None:
    rc, _, err = sh(vps_host.a, f"dd if=/dev/zero of=/root/fill bs=1M count={DISK_MB + 100}; rc=$?;"
                    " rm -f /root/fill; sync; exit $rc")
    assert rc != 0 and "No space left on device" in err, err


def test_memory_hog_is_killed_inside_while_the_host_is_fine(vps_host: VpsHost) -> None:
    a = vps_host.a
    mem = cgroups.CGROUP_ROOT / "memory" / "machines" / a.name
    rc, out, _ = sh(a, "python3 -c 'b = b\"x\" * (600 * 1024 * 1024); print(len(b))'; echo rc=$?")
    assert "rc=137" in out  # SIGKILL: the OOM killer, inside the machine's memory limit
    assert cgroups.read_limits(a.name)["memory_bytes"] == MEMORY_MB * 1024 * 1024
    if mem.is_dir():  # cgroup v1: the kernel's own record of the kill
        oom = dict(ln.split() for ln in (mem / "memory.oom_control").read_text().splitlines())
        assert int(oom["oom_kill"]) >= 1
        assert int((mem / "memory.max_usage_in_bytes").read_text()) <= MEMORY_MB * 1024 * 1024
    assert sh(a, "echo alive")[1].strip() == "alive"  # the machine itself is fine too


FORK_BOMB = """python3 - <<'EOF'
import os, signal
kids = []
try:
    for _ in range(5000):
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", "120"])
        kids.append(pid)
    print("unbounded", len(kids))
except BlockingIOError:
    print("held", len(kids))
for pid in kids:
    os.kill(pid, signal.SIGKILL)
for pid in kids:
    os.waitpid(pid, 0)
EOF"""


def test_fork_bomb_is_held_by_the_tasks_limit(vps_host: VpsHost) -> None:
    rc, out, err = sh(vps_host.a, FORK_BOMB)
    verdict, count = out.split()
    assert verdict == "held", (out, err)
    assert 0 < int(count) < TASKS_MAX
    assert cgroups.read_limits(vps_host.a.name)["tasks_max"] == TASKS_MAX
    assert cgroups.tasks_current(vps_host.a.name) < TASKS_MAX


def test_cpu_burner_is_held_to_the_quota(vps_host: VpsHost) -> None:
    a = vps_host.a
    # Two burners (this host has two cores): unheld they would take up to 200 %.
    sh(a, "for i in 1 2; do setsid timeout 30 sh -c 'while :; do :; done' >/dev/null 2>&1 & done")
    try:
        time.sleep(1)
        used0, t0 = cgroups.cpu_usage_ns(a.name), time.monotonic_ns()
        while time.monotonic_ns() - t0 < 5_000_000_000:
            time.sleep(0.5)
        used1, t1 = cgroups.cpu_usage_ns(a.name), time.monotonic_ns()
    finally:
        sh(a, "pkill -f '^sh -c while' || true")
    share = (used1 - used0) / (t1 - t0)
    assert cgroups.read_limits(a.name)["cpu_percent"] == CPU_PERCENT
    assert share <= CPU_PERCENT / 100 * 1.2, share  # held to 30 % of a CPU (20 % margin)
    assert share >= CPU_PERCENT / 100 * 0.3, share  # and the burners did run


def test_two_vps_cannot_see_each_others_processes_or_files(vps_host: VpsHost) -> None:
    a, b = vps_host.a, vps_host.b
    sh(a, "echo secret > /root/only-a; setsid sleep 4321 >/dev/null 2>&1 < /dev/null &")
    try:
        assert "sleep 4321" in sh(a, "ps -eo args")[1]
        assert "sleep 4321" not in sh(b, "ps -eo args")[1]
        assert sh(b, "test -e /root/only-a")[0] == 1  # not there
        assert sh(a, "test -e /root/only-a")[0] == 0
        assert not cgroups.pids(a.name) & cgroups.pids(b.name)
    finally:
        sh(a, "pkill -x -f 'sleep 4321'; rm -f /root/only-a")


def test_a_tag_mismatch_makes_the_driver_refuse(vps_host: VpsHost) -> None:
    a, b = vps_host.a, vps_host.b
    d = vps_host.driver
    for act in (d.stop, d.suspend, d.delete):
        with pytest.raises(Conflict):
            act(a.spec.vps_id, b.spec.tag)
    assert vps_host.units.is_active(a.name) and vps_host.units.is_enabled(a.name)
    assert sh(a, "echo up")[1].strip() == "up"


def test_suspend_holds_through_a_host_reboot_and_unsuspend_keeps_the_disk(vps_host: VpsHost) -> None:
    a, b = vps_host.a, vps_host.b
    d, units = vps_host.driver, vps_host.units
    assert sh(a, "echo kept-$(hostname) > /root/marker; sync; echo ok")[1].strip() == "ok"
    info = d.suspend(a.spec.vps_id, a.spec.tag)
    assert (info.suspended, info.running, info.enabled) == (True, False, False)
    assert not _mounts(Path(d.root_path(a.spec.vps_id))) and not _loops(Path(d.machine_dir(a.spec.vps_id)))
    digest = d.disk_sha256(a.spec.vps_id, a.spec.tag)
    # The host goes down (every machine stops) and comes back: boot starts enabled units.
    units.stop(b.name)
    assert not units.is_active(b.name)
    assert units.boot() == [b.name]
    assert units.is_active(b.name) and not units.is_active(a.name)
    assert sh(b, "echo back")[1].strip() == "back"
    assert not _port_open(a.spec.address)
    with pytest.raises(Conflict, match="suspended"):
        d.start(a.spec.vps_id, a.spec.tag)
    assert not units.is_active(a.name)
    assert d.disk_sha256(a.spec.vps_id, a.spec.tag) == digest  # byte for byte
    info = d.unsuspend(a.spec.vps_id, a.spec.tag)
    assert (info.suspended, info.running, info.enabled) == (False, True, True)
    assert sh(a, "cat /root/marker")[1].strip() == f"kept-{a.spec.hostname}"


def test_delete_leaves_no_machine_mount_or_loop_device(vps_host: VpsHost) -> None:
    d = vps_host.driver
    for vps in (vps_host.a, vps_host.b):
        removed = d.delete(vps.spec.vps_id, vps.spec.tag)
        assert removed["machine"] == vps.name and removed["disk_bytes"] == DISK_MB * 1024 * 1024
        assert not cgroups.pids(vps.name) and not any(p.exists() for p in cgroups.machine_dirs(vps.name))
        assert not Path(d.machine_dir(vps.spec.vps_id)).exists()
    assert d.list_tagged() == [] and vps_host.units.installed() == []
    assert _loops(vps_host.state_dir) == []
    assert [ln.split()[1] for ln in _mounts(vps_host.state_dir)] == [d.state_dir]  # no disk, the shared dir
