"""The nspawn VPS driver without a VPS host: input checks, the unit it writes, the argv
it runs (recorded by a runner that keeps files in memory), and the tag it insists on."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import replace

import pytest

from provisioner.adapters.vps import validate
from provisioner.adapters.vps.driver import MachineSpec, NspawnDriver, RootAccess
from provisioner.adapters.vps.runner import Completed
from provisioner.adapters.vps.units import SystemdUnits, UnitSpec
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import Conflict, InvalidInput, NotFound

PASSWORD = "Corr3ct-Horse-Battery"
_BLOB = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + bytes(32)
KEY = "ssh-ed25519 " + base64.b64encode(_BLOB).decode()


class RecordingRunner:
    """A VPS host that records every argv (and its stdin) and keeps files in memory."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], bytes | None]] = []
        self.files: dict[str, bytes] = {}

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120.0,
            check: bool = True) -> Completed:
        self.calls.append((tuple(argv), stdin))
        rc = 1 if argv[0] == "systemctl" and argv[1] in ("is-active", "is-enabled") else 0
        return Completed(tuple(argv), rc, "", "")

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
                                 {"tasks_max": 2}, {"cpu_percent": 0}, {"hostname": "a" * 63 + ".si"}])
def test_bad_specs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        spec(**bad).validated()


def test_plan_sizes_become_the_machine_limits() -> None:
    plan = DEFAULT_CATALOG.vps_plan("vps-m")
    s = MachineSpec.for_plan(plan, vps_id=3, tag="provisioner-service-9", hostname="h.si",
                             address="10.220.0.9", gateway="10.220.0.1", prefixlen=24)
    assert (s.cpu_percent, s.memory_mb, s.disk_mb, s.tasks_max) == (
        plan.vcpus * 100, plan.memory_mb, plan.disk_gb * 1024, plan.tasks_max)


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
