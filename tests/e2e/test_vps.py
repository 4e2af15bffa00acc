"""VPS machines on this machine as the VPS host (the ``nspawn`` driver, adapters/vps).

Two machines from the harness's cached Debian image, each on its own loop-mounted ext4
disk, under a unit of its own (units.PlainUnits: this machine's PID 1 is not systemd),
with a CPU quota, a memory limit, a tasks limit, IOPS caps on its disk and its bandwidth
shaped. The sizes are the plan's shape scaled down to this test machine (1 GiB disk,
256 MiB memory, 30 % of one CPU, 200 tasks; A with 300/150 read/write IOPS and 8 Mbit/s,
B with four times that, so that a test takes seconds); the catalog's plans map onto the
same fields (tests/unit/adapters/test_vps_driver.py). Every limit is tried from inside,
over SSH as root with the order's password; rates are compared with the cap and with
the other machine's (ratios, not wall-clock bounds). B is then resized and reinstalled.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.ssh import paramiko_module
from provisioner.adapters.vps import cgroups, validate
from provisioner.adapters.vps.driver import MachineInfo, MachineSpec, NspawnDriver, RootAccess
from provisioner.adapters.vps.runner import SshRunner
from provisioner.adapters.vps.units import PlainUnits, UnitSpec
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import Conflict, InvalidInput, StepFailed
from tests.e2e.test_iops import iops

BRIDGE = "provvpst0"
GATEWAY = "10.219.0.1"
CPU_PERCENT, MEMORY_MB, DISK_MB, TASKS_MAX = 30, 256, 1024, 200
IOPS_READ, IOPS_WRITE, MBIT = 300, 150, 8  # machine A's; B gets FASTER times each
FASTER = 4


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


def _spec(vps_id: int, service_id: int, hostname: str, address: str, *, scale: int = 1) -> MachineSpec:
    plan = DEFAULT_CATALOG.vps_plan("vps-s")
    s = MachineSpec.for_plan(plan, vps_id=vps_id, tag=f"provisioner-service-{service_id}",
                             hostname=hostname, address=address, gateway=GATEWAY, prefixlen=24)
    return replace(s, cpu_percent=CPU_PERCENT, memory_mb=MEMORY_MB, disk_mb=DISK_MB, tasks_max=TASKS_MAX,
                   iops_read=IOPS_READ * scale, iops_write=IOPS_WRITE * scale, bandwidth_mbit=MBIT * scale)


def _links(*names: str) -> list[str]:
    """Those of ``names`` that exist as network devices on this machine."""
    return [n for n in names
            if subprocess.run(["ip", "link", "show", "dev", n], capture_output=True).returncode == 0]


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
             _spec(run * 10 + 2, run * 10 + 2, "vps-b.example.si", "10.219.0.12", scale=FASTER)]
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
        for s in made:
            subprocess.run(["ip", "link", "del", validate.ifb_name(s.vps_id)], check=False,
                           capture_output=True)
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


BLOCK = 4096


def _dd_iops(vps: Vps, args: str, count: int) -> float:
    rc, out, _ = sh(vps, f"dd {args} bs={BLOCK} count={count} 2>&1")
    assert rc == 0, out
    return iops(out, count)


@pytest.mark.parametrize("direction", ["write", "read"])
def test_direct_io_in_the_vps_is_held_near_its_iops_cap(vps_host: VpsHost, direction: str) -> None:
    """dd with direct IO inside each machine, on its root disk: A held near its cap, B
    (four times the cap) runs the same count far faster. The caps sit on each machine's
    own loop device (what the kernel holds, read back)."""
    a, b = vps_host.a, vps_host.b
    count = (IOPS_WRITE if direction == "write" else IOPS_READ) * 3  # about three seconds for A
    target = "/root/iops.bin"
    rates = {}
    for vps in (a, b):
        if direction == "write":
            rates[vps.name] = _dd_iops(vps, f"if=/dev/zero of={target} oflag=direct", count)
        else:
            fill = f"dd if=/dev/zero of={target} bs={BLOCK} count={count} status=none && sync"
            assert sh(vps, fill)[0] == 0
            rates[vps.name] = _dd_iops(vps, f"if={target} of=/dev/null iflag=direct", count)
        assert sh(vps, f"rm -f {target}")[0] == 0
        limits = vps_host.driver.limits(vps.spec.vps_id, vps.spec.tag)
        assert (limits["iops_read"], limits["iops_write"]) == (vps.spec.iops_read, vps.spec.iops_write)
    cap = IOPS_WRITE if direction == "write" else IOPS_READ
    print(f"IOPS {direction}: A cap {cap} -> {rates[a.name]:.0f}; "
          f"B cap {cap * FASTER} -> {rates[b.name]:.0f}")
    assert rates[a.name] <= cap * 1.2, rates  # held at the cap ...
    assert rates[a.name] >= cap * 0.5, rates  # ... near it, not starved
    assert rates[b.name] >= rates[a.name] * 2, rates  # the higher cap is the one that counts


SINK = """python3 - <<'EOF'
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
got, t0 = 0, 0.0
while True:
    b = c.recv(65536)
    if not b:
        break
    t0 = t0 or time.monotonic()
    got += len(b)
print(got * 8 / (time.monotonic() - t0) / 1e6)
EOF"""

SOURCE = """python3 - <<'EOF'
import socket
c = socket.create_connection(("{host}", {port}))
left = {nbytes}
while left > 0:
    left -= c.send(b"x" * min(left, 65536))
c.close()
EOF"""


def _drain(server: socket.socket, out: list[float]) -> None:
    conn, _ = server.accept()
    with conn:
        got, t0 = 0, 0.0
        while chunk := conn.recv(65536):
            t0 = t0 or time.monotonic()
            got += len(chunk)
    out.append(got * 8 / (time.monotonic() - t0) / 1e6)


def _upload_mbit(vps: Vps, nbytes: int) -> float:
    """The machine sends ``nbytes`` to this host; the rate this host receives them at."""
    with socket.create_server((GATEWAY, 0)) as server:
        server.settimeout(60)
        rates: list[float] = []
        sink = threading.Thread(target=_drain, args=(server, rates))
        sink.start()
        rc, _, err = sh(vps, SOURCE.format(host=GATEWAY, port=server.getsockname()[1], nbytes=nbytes))
        sink.join(60)
    assert rc == 0 and rates, err
    return rates[0]


def _download_mbit(vps: Vps, nbytes: int) -> float:
    """This host sends ``nbytes`` to the machine; the rate the machine receives them at."""
    client = _client(vps)
    try:
        _, out, err = client.exec_command(SINK, timeout=120)
        assert out.readline().strip() == "listening", err.read()
        with socket.create_connection((vps.spec.address, 5201), timeout=30) as conn:
            conn.sendall(b"x" * nbytes)
        return float(out.read().decode().strip())
    finally:
        client.close()


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_bandwidth_is_held_near_the_plans_rate(vps_host: VpsHost, direction: str) -> None:
    """Both directions between each machine and its host: A held near its rate, B (four
    times it) faster; the rate is on the host side (tc on the veth and the machine's ifb)."""
    a, b = vps_host.a, vps_host.b
    measure = _upload_mbit if direction == "upload" else _download_mbit
    nbytes = MBIT * 1_000_000 // 8 * 3  # about three seconds for A
    rates = {vps.name: measure(vps, nbytes) for vps in (a, b)}
    print(f"{direction}: A at {MBIT} Mbit/s -> {rates[a.name]:.2f}; "
          f"B at {MBIT * FASTER} -> {rates[b.name]:.2f}")
    for vps in (a, b):
        limits = vps_host.driver.limits(vps.spec.vps_id, vps.spec.tag)
        assert limits["bandwidth_down_mbit"] == limits["bandwidth_up_mbit"] == vps.spec.bandwidth_mbit
    assert rates[a.name] <= MBIT * 1.15, rates
    assert rates[a.name] >= MBIT * 0.5, rates
    assert rates[b.name] >= rates[a.name] * 2, rates


def test_observe_lists_each_machine_with_the_limits_in_force_and_finds_drift(vps_host: VpsHost) -> None:
    """What a reconciler reads: every tagged machine with what the kernel holds it to; a
    limit changed behind the driver's back shows as drift."""
    a, b = vps_host.a, vps_host.b
    seen = {o.info.tag: o for o in vps_host.driver.observe()}
    assert set(seen) == {a.spec.tag, b.spec.tag}
    assert seen[a.spec.tag].drift(a.spec) == {} and seen[b.spec.tag].drift(b.spec) == {}
    cgroups.apply_limits(a.name, cpu_percent=90)
    try:
        found = next(o for o in vps_host.driver.observe() if o.info.tag == a.spec.tag)
        assert found.drift(a.spec) == {"cpu_percent": (CPU_PERCENT, 90)}
    finally:
        cgroups.apply_limits(a.name, cpu_percent=CPU_PERCENT)


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


def _df_mb(vps: Vps) -> tuple[int, int]:
    """The guest's own view of its root: (size, available) in MiB."""
    rc, out, err = sh(vps, "df -B1M --output=size,avail / | tail -n 1")
    assert rc == 0, err
    size, avail = out.split()
    return int(size), int(avail)


def test_resize_grows_the_disk_inside_and_changes_every_limit_in_place(vps_host: VpsHost) -> None:
    b, d = vps_host.b, vps_host.driver
    assert sh(b, "echo kept > /root/resized; sync; echo ok")[1].strip() == "ok"
    before = d.limits(b.spec.vps_id, b.spec.tag)
    size_before, free_before = _df_mb(b)
    with pytest.raises(InvalidInput, match="never shrunk"):
        d.resize(replace(b.spec, disk_mb=b.spec.disk_mb - 256, cpu_percent=60))
    assert d.limits(b.spec.vps_id, b.spec.tag) == before  # refused before anything changed
    bigger = replace(b.spec, disk_mb=b.spec.disk_mb + 512, cpu_percent=50, memory_mb=384, tasks_max=300,
                     iops_read=900, iops_write=450, bandwidth_mbit=16)
    info = d.resize(bigger)
    b.spec = bigger
    assert info.running and info.enabled
    assert sh(b, "cat /root/resized")[1].strip() == "kept"
    assert _df_mb(b)[0] - size_before >= 500, (size_before, _df_mb(b))  # the guest's own df sees it
    assert d.limits(b.spec.vps_id, b.spec.tag) == {
        "cpu_percent": 50, "memory_bytes": 384 * 1024 * 1024, "tasks_max": 300,
        "iops_read": 900, "iops_write": 450, "bandwidth_down_mbit": 16, "bandwidth_up_mbit": 16,
        "disk_bytes": (DISK_MB + 512) * 1024 * 1024}
    unit = UnitSpec.parse(b.name, Path(vps_host.units.unit_path(b.name)).read_text())
    assert (unit.cpu_percent, unit.tasks_max, unit.iops_read) == (50, 300, 900)  # the next start too
    rc, out, _ = sh(b, f"dd if=/dev/zero of=/root/big bs=1M count={free_before + 200} status=none;"
                    " echo rc=$?; rm -f /root/big; sync")
    assert "rc=0" in out  # more than the old disk had room for now fits
    # Without a bigger disk a plan change is live: the machine keeps running (its processes too).
    sh(b, "setsid sleep 4322 >/dev/null 2>&1 < /dev/null &")
    live = replace(bigger, cpu_percent=40, iops_write=300, bandwidth_mbit=12)
    d.resize(live)
    b.spec = live
    assert "sleep 4322" in sh(b, "ps -eo args")[1]
    limits = d.limits(b.spec.vps_id, b.spec.tag)
    assert (limits["cpu_percent"], limits["iops_write"], limits["bandwidth_down_mbit"],
            limits["bandwidth_up_mbit"]) == (40, 300, 12, 12)
    sh(b, "pkill -x -f 'sleep 4322'")


def test_reinstall_gives_a_fresh_disk_and_new_access_under_the_same_identity(vps_host: VpsHost) -> None:
    paramiko = paramiko_module()
    b, d = vps_host.b, vps_host.driver
    assert sh(b, "echo old > /root/old-file; sync; echo ok")[1].strip() == "ok"
    old = b.password
    new = f"Pw-{os.urandom(9).hex()}"
    info = d.reinstall(b.spec.vps_id, b.spec.tag, RootAccess(password=new))
    assert (info.tag, info.hostname, info.address, info.running, info.enabled) == (
        b.spec.tag, b.spec.hostname, b.spec.address, True, True)
    b.password = new
    rc, out, _ = sh(b, "test -e /root/old-file; echo $?; hostname; ip -4 -o addr show dev host0")
    lines = out.splitlines()
    assert (lines[0], lines[1]) == ("1", b.spec.hostname) and f"{b.spec.address}/24" in lines[2]
    with pytest.raises(paramiko.AuthenticationException):
        sh(Vps(b.spec, old, b.info), "true")
    limits = d.limits(b.spec.vps_id, b.spec.tag)
    assert (limits["disk_bytes"], limits["iops_read"], limits["bandwidth_up_mbit"]) == (
        b.spec.disk_mb * 1024 * 1024, b.spec.iops_read, b.spec.bandwidth_mbit)


def test_suspend_holds_through_a_host_reboot_and_unsuspend_keeps_the_disk(vps_host: VpsHost) -> None:
    a, b = vps_host.a, vps_host.b
    d, units = vps_host.driver, vps_host.units
    assert sh(a, "echo kept-$(hostname) > /root/marker; sync; echo ok")[1].strip() == "ok"
    info = d.suspend(a.spec.vps_id, a.spec.tag)
    assert (info.suspended, info.running, info.enabled) == (True, False, False)
    assert not _mounts(Path(d.root_path(a.spec.vps_id))) and not _loops(Path(d.machine_dir(a.spec.vps_id)))
    assert _links(validate.veth_name(a.spec.vps_id), validate.ifb_name(a.spec.vps_id)) == []
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
        assert removed["machine"] == vps.name and removed["disk_bytes"] == vps.spec.disk_mb * 1024 * 1024
        assert _links(validate.veth_name(vps.spec.vps_id), validate.ifb_name(vps.spec.vps_id)) == []
        assert not cgroups.pids(vps.name) and not any(p.exists() for p in cgroups.machine_dirs(vps.name))
        assert not Path(d.machine_dir(vps.spec.vps_id)).exists()
    assert d.list_tagged() == [] and vps_host.units.installed() == []
    assert _loops(vps_host.state_dir) == []
    assert [ln.split()[1] for ln in _mounts(vps_host.state_dir)] == [d.state_dir]  # no disk, the shared dir
