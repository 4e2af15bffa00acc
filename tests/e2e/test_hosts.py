"""Throwaway hosts: up is idempotent, down leaves nothing, failures are clear and quick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.adapters.hosting import Target, run_playbook
from provisioner.cli.hosts import app
from provisioner.devstack.hosts import cgroups
from provisioner.devstack.hosts.ssh import ensure_keypair, wait_for_ssh
from provisioner.errors import InvalidInput, ProvisionerError, TransientError
from tests.servers import wait_for


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                          check=True).stdout


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_up_twice_gives_one_host(hosts: Any, host_name: str) -> None:
    first = hosts.up(host_name)
    second = hosts.up(host_name)
    assert (second.pid, second.address) == (first.pid, first.address)
    assert [h.name for h in hosts.list()].count(host_name) == 1
    assert second.state == "running"


def test_down_twice_leaves_nothing(hosts: Any, host_name: str) -> None:
    info = hosts.up(host_name)
    hdir = hosts.host_dir(host_name)
    assert info.veth in _links() and _alive(info.pid) and hdir.exists()
    hosts.down(host_name)
    hosts.down(host_name)
    assert f"{info.veth}@" not in _links() and f" {info.veth}:" not in _links()
    assert str(hdir) not in Path("/proc/mounts").read_text()
    assert not _alive(info.pid)
    assert not cgroups.pids(host_name)
    assert not any(d.exists() for d in cgroups.machine_dirs(host_name))
    assert not hdir.exists()
    assert host_name not in [h.name for h in hosts.list()]


def test_several_hosts_see_each_other(hosts: Any, host_name: str) -> None:
    other = f"{host_name}-b"
    try:
        a = hosts.up(host_name)
        b = hosts.up(other)
        assert a.address != b.address
        from provisioner.devstack.hosts.ssh import ssh_exec

        status, _ = ssh_exec(a.name, a.address, Path(a.ssh_key),
                             f"ping -c1 -W2 {b.address}")
        assert status == 0
    finally:
        hosts.down(other)


def test_a_reused_address_is_reachable_at_once_from_a_host_that_knew_the_old_one(
        hosts: Any, host_name: str) -> None:
    # Hosts share the bridge's L2: a host that talked to a thrown-away one keeps its MAC in
    # its ARP cache, and a new host given the same address (the lowest free one) was
    # unreachable from it for a while (a node re-enrolled with a new backup host timed out).
    from provisioner.devstack.hosts.ssh import ssh_exec

    old, new = f"{host_name}-old", f"{host_name}-new"
    try:
        a = hosts.up(host_name)
        b = hosts.up(old)
        probe = f"timeout 3 bash -c 'echo > /dev/tcp/{b.address}/22'"
        assert ssh_exec(a.name, a.address, Path(a.ssh_key), probe)[0] == 0
        hosts.down(old)
        c = hosts.up(new)
        assert c.address == b.address  # the freed address, reused
        assert ssh_exec(a.name, a.address, Path(a.ssh_key), probe)[0] == 0
    finally:
        hosts.down(old)
        hosts.down(new)


def test_cli_up_list_down(hosts: Any, host_name: str) -> None:
    runner = CliRunner()
    for _ in range(2):
        res = runner.invoke(app, ["up", host_name])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    listed = [h for h in json.loads(res.stdout) if h["name"] == host_name]
    assert len(listed) == 1
    assert listed[0]["state"] == "running" and listed[0]["address"].startswith("10.213.")
    for _ in range(2):
        res = runner.invoke(app, ["down", host_name])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["list", "--json"])
    assert host_name not in [h["name"] for h in json.loads(res.stdout)]


@pytest.mark.parametrize("bad", ["A", "1a", "a/b", "../etc", "a b", "a;id", "a" * 32, ""])
def test_bad_names_are_refused(hosts: Any, bad: str) -> None:
    with pytest.raises(InvalidInput):
        hosts.up(bad)
    assert CliRunner().invoke(app, ["down", bad]).exit_code == 2


def test_wrong_key_is_a_clear_error_naming_the_host(fresh_host: Any, tmp_path: Path) -> None:
    other_key = ensure_keypair(tmp_path / "other")
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=fresh_host.name):
        wait_for_ssh(fresh_host.name, fresh_host.address, other_key, timeout_s=10)
    assert time.monotonic() - started < 10


def test_unreachable_address_is_a_clear_error_within_the_timeout(hosts: Any) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="ghost"):
        wait_for_ssh("ghost", "10.213.0.254", hosts.key_path, timeout_s=3)
    assert time.monotonic() - started < 5


def test_unreachable_address_fails_the_ansible_run_naming_the_host(hosts: Any) -> None:
    started = time.monotonic()
    result = run_playbook("hosting_node", [Target("ghost", "10.213.0.254", throwaway=True)],
                          ssh_key=hosts.key_path, timeout_s=60,
                          connect_timeout_s=3)
    assert time.monotonic() - started < 30
    assert not result.ok
    assert result.stats["ghost"]["unreachable"] == 1
    with pytest.raises(ProvisionerError, match="ghost"):
        result.raise_for_status()


def test_wrong_key_fails_the_ansible_run_naming_the_host(fresh_host: Any, tmp_path: Path) -> None:
    other_key = ensure_keypair(tmp_path / "other")
    result = run_playbook("hosting_node", [fresh_host.target()],
                          ssh_key=other_key, timeout_s=60, connect_timeout_s=3)
    assert result.stats[fresh_host.name]["unreachable"] == 1
    assert fresh_host.name in result.errors


SLOW_PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Mark that the run has started.
      ansible.builtin.file:
        path: /root/e2e-started
        state: touch
        mode: "0644"
    - name: Take a long time.
      ansible.builtin.command: sleep 300
"""


@pytest.mark.destructive
def test_host_killed_mid_run_is_a_clear_error_not_a_hang(hosts: Any, fresh_host: Any,
                                                        tmp_path: Path) -> None:
    playbook = tmp_path / "slow.yml"
    playbook.write_text(SLOW_PLAYBOOK)
    marker = Path(fresh_host.root) / "root/e2e-started"

    def kill_when_started() -> None:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        hosts.down(fresh_host.name)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    started = time.monotonic()
    result = run_playbook(str(playbook), [fresh_host.target()],
                          ssh_key=hosts.key_path, timeout_s=120,
                          connect_timeout_s=3)
    killer.join(timeout=30)
    assert time.monotonic() - started < 60
    assert not result.ok
    assert fresh_host.name in result.failed_hosts() or result.status == "timeout"
    assert fresh_host.name in result.errors


@pytest.mark.destructive
def test_a_killed_host_is_listed_dead_and_up_brings_it_back(hosts: Any, host_name: str) -> None:
    first = hosts.up(host_name)
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: hosts.get(host_name).state == "dead", 10, "the host to be dead")
    again = hosts.up(host_name)
    assert again.state == "running" and again.pid != first.pid
    hosts.down(host_name)
    assert not cgroups.pids(host_name)
    assert not hosts.host_dir(host_name).exists()
