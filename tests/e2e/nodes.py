"""Nodes of a test module's own, the ``PROVISIONER_E2E_REUSE_NODE`` shortcut, testinfra
over SSH to a throwaway host, and a node's enrolment with a backup host.

``own_hosts`` boots the hosts a module needs at once (threads: ``NspawnHosts.up`` is safe to
call concurrently) and converges its nodes in one Ansible run (Ansible's forks, one host
each); booted one after the other they cost a module the sum of their boots.

``PROVISIONER_E2E_REUSE_NODE=NAME`` runs a module against an already running,
converged throwaway host instead (kept afterwards): quicker while working on a role.

A throwaway host is one by data: its target is ``info.target()`` (``throwaway=True``),
and a test that registers it in a database passes ``add_node(..., throwaway=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from provisioner.adapters.hosting import run_playbook

T = TypeVar("T")
BACKUP_SCRIPT = "/usr/local/sbin/hosting-backup"
BACKUP_CONF = "/etc/hosting/backup"


def reused_node(hosts: Any) -> Any | None:
    """The host named by ``PROVISIONER_E2E_REUSE_NODE``, or None when it is not set."""
    reuse = os.environ.get("PROVISIONER_E2E_REUSE_NODE")
    if not reuse:
        return None
    info = hosts.get(reuse)
    if info is None or info.state != "running":
        pytest.fail(f"PROVISIONER_E2E_REUSE_NODE={reuse}: no such running host")
    return info


@contextmanager
def own_node(hosts: Any, name: str, label: str) -> Iterator[Any]:
    """A converged hosting node called ``name``, thrown away on exit (or the reused one)."""
    from provisioner.devstack.hosts.node import converge, up_node

    info = reused_node(hosts)
    if info is not None:
        yield info
        return
    try:
        info = up_node(hosts, name)
        converge(info).raise_for_status(label)
        yield info
    finally:
        hosts.down(name)


def infra_host(info: Any, directory: Path) -> Any:
    """testinfra over SSH (paramiko) to the throwaway host ``info``. Its host key is new
    at every boot, so it is not checked (the ssh config written into ``directory``)."""
    import testinfra

    ssh_config = directory / "ssh_config"
    ssh_config.write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    return testinfra.get_host(f"paramiko://root@{info.address}", ssh_identity_file=str(info.ssh_key),
                              ssh_config=str(ssh_config))


def in_parallel(*calls: Callable[[], T]) -> list[T]:
    """Run ``calls`` at once, each in a thread of its own; their results in order. Every call
    runs to its end; then the first error is raised."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="e2e-boot") as pool:
        futures = [pool.submit(call) for call in calls]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


@dataclass
class OwnHosts:
    nodes: list[Any]  # HostInfo of each converged node, in the order asked for
    bare: list[Any]  # HostInfo of each bare host (the base image), in the order asked for


@contextmanager
def own_hosts(hosts: Any, label: str, *, nodes: Sequence[str] = (), bare: Sequence[str] = ()
              ) -> Iterator[OwnHosts]:
    """Converged hosting nodes and bare hosts of a module's own, booted at once, the nodes
    converged once more through the product's Ansible adapter in one run; every one of them
    thrown away on exit, whatever happened. (Not for ``PROVISIONER_E2E_REUSE_NODE``: a module
    with several hosts of its own needs them to be its own.)"""
    from provisioner.devstack.hosts.node import converge_all, up_node

    try:
        booted = in_parallel(*[partial(up_node, hosts, n) for n in nodes],
                             *[partial(hosts.up, n) for n in bare])
        infos = booted[:len(nodes)]
        if infos:
            converge_all(infos).raise_for_status(label)
        yield OwnHosts(nodes=infos, bare=booted[len(nodes):])
    finally:
        for name in [*nodes, *bare]:
            hosts.down(name)


def playbook(name: str, info: Any, extravars: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
    """Run a playbook against one throwaway host; the JSON its role wrote (or {}), with the
    run itself under ``_run``."""
    with tempfile.TemporaryDirectory(prefix="e2e-backup-") as private:
        result = Path(private) / "result.json"
        key = "backup_host_result_file" if name == "backup_host.yml" else "hosting_backup_result_file"
        extravars = {key: str(result), **extravars}
        run = run_playbook(name, [info.target()], extravars, ssh_key=Path(info.ssh_key), throwaway=True,
                           timeout_s=900)
        data = json.loads(result.read_text()) if result.is_file() else {}
    if check:
        assert run.ok, (run.status, run.errors, data)
    data["_run"] = run
    return data


def backup_key(node_host: Any) -> str:
    """The public key a node logs in to its backup host with (made by its converge)."""
    out = node_host.run(f"{BACKUP_SCRIPT} key")
    assert out.rc == 0, out.stdout + out.stderr
    return str(json.loads(out.stdout)["public_key"])


@dataclass
class Enrolment:
    """A node enrolled with a backup host: its repository there, as ``name``."""

    name: str  # the node's name on the backup host (its account rn-NAME)
    node: Any  # the node's HostInfo
    backup: Any  # the backup host's HostInfo
    host_key: str  # the backup host's key, as the node's known_hosts line
    password: str = field(repr=False)

    @property
    def repository(self) -> str:
        return f"sftp:rn-{self.name}@{self.backup.address}:/repo"


def enrol(backup: Any, node: Any, node_host: Any, name: str, password: str) -> Enrolment:
    """Give the node an account on the backup host (its key authorised there; the backup
    host's other accounts are left as they are) and point the node at its repository there,
    created with ``password`` (playbooks/backup_host.yml, then hosting_node_backup.yml)."""
    host_key = playbook("backup_host.yml", backup, {
        "backup_host_nodes": [{"name": name, "authorized_keys": [backup_key(node_host)]}]})["host_key"]
    enrolment = Enrolment(name, node, backup, host_key, password)
    point_at(enrolment)
    return enrolment


def point_at(enrolment: Enrolment) -> dict[str, Any]:
    """Point the node at its repository on the backup host (hosting_node_backup.yml)."""
    return playbook("hosting_node_backup.yml", enrolment.node, {
        "hosting_node_backup_repository": enrolment.repository,
        "hosting_node_backup_password": enrolment.password,
        "hosting_node_backup_known_hosts": enrolment.host_key,
        "hosting_backup_result_file": ""})


def ensure_enrolled(enrolment: Enrolment, node_host: Any) -> bool:
    """Observe, then act: the node points at the enrolment's repository with its password
    and the backup host's key, or it is pointed there again (another module may have
    enrolled the same node with a backup host of its own meanwhile). True if it was."""
    digest = hashlib.sha256(enrolment.password.encode()).hexdigest()
    seen = node_host.run(f"cat {BACKUP_CONF}/repository && sha256sum {BACKUP_CONF}/password "
                         f"&& cat {BACKUP_CONF}/known_hosts")
    lines = seen.stdout.splitlines() if seen.rc == 0 else []
    if (lines[:1] == [enrolment.repository] and len(lines) > 1 and lines[1].split()[0] == digest
            and enrolment.host_key.strip() in seen.stdout):
        return False
    point_at(enrolment)
    return True
