"""Fixtures for tests against throwaway hosts (systemd-nspawn) and testinfra.

- ``hosts``: the throwaway-host adapter on the shared cache
  (``PROVISIONER_HOSTS_DIR``; images are built once and reused).
- ``node``: a session-scoped shared-hosting node booted from the converged-node
  image and converged once more through the product's Ansible adapter.
- ``node_host``: testinfra over SSH (paramiko) to that node.
- ``backup_host``: a session-scoped bare host set up as a backup host (restic over SFTP).
- ``enrolled_node``: the session's node enrolled with that backup host (once a session;
  each module that asks is given it pointed there again if another module pointed it
  elsewhere meanwhile). For modules that only need "a node enrolled with a backup host";
  a module that destroys, re-enrols for good or oddly converges a node keeps its own.
- ``fresh_host``: a function-scoped bare host for destructive tests.
Every host is thrown away in a finalizer, whatever the test did.
"""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nodes import Enrolment, enrol, ensure_enrolled, infra_host, own_node

E2E_PREFIX = "t-"


def pytest_configure(config: pytest.Config) -> None:
    # paramiko still touches TripleDES/Blowfish, which cryptography deprecates.
    config.addinivalue_line(
        "filterwarnings",
        "ignore::cryptography.utils.CryptographyDeprecationWarning")
    config.addinivalue_line("markers", "xdist_group(name): run the group's tests on one pytest-xdist worker")


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist with ``--dist loadgroup`` every host-based test runs on one worker,
    in file order, so the session's hosts (node, backup host, old provider) are booted once,
    while the other workers run the unit and integration tests beside them. Without xdist
    the mark does nothing."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.xdist_group("hosts"))


def _unavailable() -> str:
    if os.geteuid() != 0:
        return "throwaway hosts need root"
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter")
               if shutil.which(t) is None]
    if missing:
        return f"missing {missing}: run scripts/install-deps-hosts.sh"
    return ""


@pytest.fixture(scope="session")
def hosts() -> Any:
    reason = _unavailable()
    if reason:  # `make test` installs the tools and runs as root; anything else is an error
        pytest.fail(f"cannot run the host-based tests: {reason}", pytrace=False)
    from provisioner.devstack.hosts import NspawnHosts

    return NspawnHosts(ssh_timeout_s=30.0)


@dataclass
class Node:
    info: Any
    first_converge: Any


@pytest.fixture(scope="session")
def node(hosts: Any) -> Iterator[Node]:
    """A converged shared-hosting node (from the cached converged-node image)."""
    from provisioner.devstack.hosts.node import converge, up_node

    name = f"{E2E_PREFIX}node-{os.getpid()}"  # sessions of several people may overlap
    try:
        info = up_node(hosts, name)
        result = converge(info)
        result.raise_for_status("e2e.node")
        yield Node(info=info, first_converge=result)
    finally:
        hosts.down(name)


@pytest.fixture(scope="session")
def old_provider(hosts: Any) -> Iterator[Any]:
    """A converged hosting node playing the customer's old provider in the migration
    tests (issue 13): sshd, MariaDB, pure-ftpd (FTPS) and Dovecot. Shared by the session:
    each module puts its own account, SSH login and data there (unique names) and never
    changes what another module put there."""
    with own_node(hosts, f"{E2E_PREFIX}oldprov-{os.getpid()}", "e2e.old_provider") as info:
        yield info


@pytest.fixture(scope="session")
def node_host(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """testinfra over SSH (paramiko) to the session's node."""
    return infra_host(node.info, tmp_path_factory.mktemp("ssh"))


@pytest.fixture(scope="session")
def backup_host(hosts: Any) -> Iterator[Any]:
    """A bare host the session's node keeps its restic repository on (roles/backup_host,
    converged at the node's enrolment)."""
    name = f"{E2E_PREFIX}bks-{os.getpid()}"
    try:
        yield hosts.up(name)
    finally:
        hosts.down(name)


@pytest.fixture(scope="session")
def _session_enrolment(backup_host: Any, node: Node, node_host: Any) -> Enrolment:
    return enrol(backup_host, node.info, node_host, "ns", secrets.token_urlsafe(32))


@pytest.fixture(scope="module")
def enrolled_node(_session_enrolment: Enrolment, node_host: Any) -> Enrolment:
    """The session's node enrolled with the session's backup host (its account there
    ``rn-ns``), pointed there again if a module before enrolled it elsewhere."""
    ensure_enrolled(_session_enrolment, node_host)
    return _session_enrolment


@pytest.fixture
def fresh_host(hosts: Any) -> Iterator[Any]:
    """A bare throwaway host of its own, for tests that damage it."""
    name = f"{E2E_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        yield hosts.up(name)
    finally:
        hosts.down(name)


@pytest.fixture
def host_name(hosts: Any) -> Iterator[str]:
    """A unique host name that is thrown away after the test (if it was used)."""
    name = f"{E2E_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        hosts.down(name)
