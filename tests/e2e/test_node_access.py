"""Node access: a node skips the SSH host-key check only when its record says it is a
throwaway host (``Target.throwaway``, ``hosting_nodes.throwaway``), never by inference.

Every other node's host key must be in known_hosts. Here a node that is NOT marked
throwaway (the session's converged node, reached with the throwaway hosts' own key,
which is on this machine) is refused when its key is unknown: a ConfigurationError that
names the node and the SHA256 fingerprint its sshd presents (the one ``ssh-keygen -lf``
prints on the node), over paramiko (the usage report, the certificate target) and over
Ansible (the account and backup playbooks, also when a shared SSH master connection to
the node is open), before anything runs on the node; a changed key is refused too. With
the node's key in known_hosts the same calls go through under strict checking, so the
refusal is about the key, not a broken connection. Through the pipeline, a node
registered without ``throwaway`` fails ``hosting.account`` with that error.

Non-destructive: the positive control creates one account and removes it again.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.hosting import Target, run_playbook
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts
from provisioner.adapters.hosting.backups import HostingBackups
from provisioner.adapters.hosting.usage import read_usage
from provisioner.adapters.tls_targets.node import NodeAccess, NodeNginxTarget
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.errors import ConfigurationError
from provisioner.store.db import dispose_all, transaction, upgrade
from provisioner.store.hosting import add_node
from tests.helpers import MemoryMailer, World, customer, make_settings, wire

PING = """\
- name: Reach the node.
  hosts: all
  gather_facts: false
  tasks:
    - name: Run one module on the node.
      ansible.builtin.ping:
"""

# What the node looks like from outside; it must be the same after a refused run.
SNAPSHOT = ("sha256sum /etc/passwd /etc/group; ls -1 /etc/nginx/sites-enabled /etc/hosting/accounts "
            "/etc/php/8.2/fpm/hosting /srv/hosting")


@pytest.fixture(scope="module")
def node_key(hosts: Any, node: Any) -> Path:
    """The SSH key the session's node accepts: the throwaway hosts' key, on this machine
    (so nothing may infer "throwaway" from the key or the address)."""
    key = Path(node.info.ssh_key)
    assert key.is_file() and key == Path(hosts.key_path)
    return key


@pytest.fixture(scope="module")
def strict(node: Any) -> Target:
    """The session's node as a real node: not marked throwaway."""
    target = Target(node.info.name, node.info.address)
    assert target.throwaway is False
    return target


@pytest.fixture(scope="module")
def fingerprint(node_host: Any) -> str:
    """The node's ed25519 host key fingerprint, read on the node itself (as ops would on
    its console), not through the code under test."""
    out = str(node_host.check_output("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"))
    value = out.split()[1]
    assert value.startswith("SHA256:"), out
    return value


@pytest.fixture(scope="module")
def unknown(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A known_hosts file that does not know the node."""
    path = tmp_path_factory.mktemp("known-hosts") / "empty"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def changed(node: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A known_hosts file that has another ed25519 key for the node's address."""
    directory = tmp_path_factory.mktemp("known-hosts")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "other")],
                   check=True, capture_output=True)
    kind, blob = (directory / "other.pub").read_text().split()[:2]
    path = directory / "changed"
    path.write_text(f"{node.info.address} {kind} {blob}\n")
    return path


@pytest.fixture(scope="module")
def known(node: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A known_hosts file with the node's keys (ssh-keyscan)."""
    scan = subprocess.run(["ssh-keyscan", "-T", "10", node.info.address], capture_output=True, text=True,
                          timeout=30, check=False)
    assert scan.stdout.strip(), scan.stderr
    path = tmp_path_factory.mktemp("known-hosts") / "known"
    path.write_text(scan.stdout)
    return path


def usage_report(target: Target, key: Path, known_hosts: Path) -> Any:
    return read_usage(target, key, known_hosts=known_hosts)


def certificate_target(target: Target, key: Path, known_hosts: Path) -> Any:
    access = NodeAccess(target.name, target.address, key, user=target.user, port=target.port,
                        throwaway=target.throwaway, known_hosts=known_hosts)
    return NodeNginxTarget(access, "nosuchaccount", ["no-such-site.test"]).current_certificate(
        "no-such-site.test")


PARAMIKO: dict[str, Callable[[Target, Path, Path], Any]] = {
    "usage report": usage_report, "certificate target": certificate_target}


def assert_names_the_key(exc: ConfigurationError, target: Target, fingerprint: str,
                         why: str = "is not in") -> None:
    """The error names the node and the fingerprint of the key it presents."""
    message = str(exc)
    assert f"node {target.name} ({target.address})" in message, message
    assert f"ssh-ed25519 host key {fingerprint} {why}" in message, message


def snapshot(node_host: Any) -> str:
    return str(node_host.run(SNAPSHOT).stdout)


def new_spec() -> AccountSpec:
    name = f"na{uuid.uuid4().hex[:10]}"
    return AccountSpec(name, (f"{name}.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",))


@pytest.fixture
def shared_master(node: Any, node_key: Path, tmp_path: Path) -> None:
    """An Ansible run against the node as a throwaway host just before: its shared SSH
    master connection (opened without a host-key check) is still up for the next run."""
    playbook = tmp_path / "ping.yml"
    playbook.write_text(PING)
    result = run_playbook(str(playbook), [node.info.target()], ssh_key=node_key, timeout_s=120)
    assert result.ok, result.errors


# -- paramiko --------------------------------------------------------------------------------
@pytest.mark.parametrize("call", list(PARAMIKO))
def test_paramiko_refuses_an_unknown_host_key_naming_node_and_fingerprint(
        call: str, strict: Target, node_key: Path, unknown: Path, fingerprint: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        PARAMIKO[call](strict, node_key, unknown)
    assert_names_the_key(refused.value, strict, fingerprint)


@pytest.mark.parametrize("call", list(PARAMIKO))
def test_paramiko_refuses_a_changed_host_key(call: str, strict: Target, node_key: Path, changed: Path,
                                             fingerprint: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        PARAMIKO[call](strict, node_key, changed)
    assert_names_the_key(refused.value, strict, fingerprint, "does not match")


@pytest.mark.parametrize("call", list(PARAMIKO))
def test_paramiko_goes_through_with_the_key_in_known_hosts(call: str, strict: Target, node_key: Path,
                                                           known: Path) -> None:
    result = PARAMIKO[call](strict, node_key, known)
    if call == "usage report":
        assert isinstance(result, dict)
    else:
        assert result is None  # no such certificate: the node answered


# -- Ansible ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("shared_master")
def test_the_account_playbook_refuses_an_unknown_host_key_and_changes_nothing(
        strict: Target, node_key: Path, unknown: Path, fingerprint: str, node_host: Any) -> None:
    spec = new_spec()
    before = snapshot(node_host)
    with pytest.raises(ConfigurationError) as refused:
        HostingAccounts(ssh_key=node_key, known_hosts=unknown).create(strict, spec)
    assert_names_the_key(refused.value, strict, fingerprint)
    assert snapshot(node_host) == before
    assert not node_host.user(spec.name).exists


@pytest.mark.usefixtures("shared_master")
def test_the_backup_playbook_refuses_an_unknown_host_key(strict: Target, node_key: Path, unknown: Path,
                                                         fingerprint: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        HostingBackups(ssh_key=node_key, known_hosts=unknown).list(strict, "nosuchaccount")
    assert_names_the_key(refused.value, strict, fingerprint)


@pytest.mark.usefixtures("shared_master")
def test_ansible_refuses_a_changed_host_key(strict: Target, node_key: Path, changed: Path,
                                            fingerprint: str, tmp_path: Path) -> None:
    playbook = tmp_path / "ping.yml"
    playbook.write_text(PING)
    with pytest.raises(ConfigurationError) as refused:
        run_playbook(str(playbook), [strict], ssh_key=node_key, known_hosts=changed, timeout_s=120)
    assert_names_the_key(refused.value, strict, fingerprint, "does not match")


@pytest.mark.usefixtures("shared_master")
def test_ansible_goes_through_with_the_key_in_known_hosts(strict: Target, node_key: Path, known: Path,
                                                          node: Any, node_host: Any) -> None:
    accounts = HostingAccounts(ssh_key=node_key, known_hosts=known)
    spec = new_spec()
    try:
        result = accounts.create(strict, spec)
        assert result.ok, result.run.errors
        assert node_host.user(spec.name).exists
    finally:
        HostingAccounts(ssh_key=node_key).terminate(node.info.target(), spec)
    assert not node_host.user(spec.name).exists


# -- the pipeline ----------------------------------------------------------------------------
@pytest.fixture
def unmarked_world(node: Any, node_key: Path, unknown: Path, tmp_path: Path) -> Iterator[World]:
    """The product wired to reach nodes with the throwaway hosts' key and a known_hosts
    file that does not know the session's node, which is registered WITHOUT throwaway."""
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    upgrade(url)
    settings = make_settings(tmp_path, url, 1, line_kinds="hosting", step_max_attempts=1,
                             node_ssh_key=str(node_key), node_known_hosts=str(unknown))
    app, queue = wire(settings, mailer=MemoryMailer())
    with transaction(app.factory) as s:
        node_row, _ = add_node(s, node.info.name, node.info.address, capacity_accounts=10,
                               capacity_disk_mb=100_000)
        assert node_row.throwaway is False
    yield World(app, queue)
    dispose_all()


def test_a_node_registered_without_throwaway_fails_the_account_step_on_its_unknown_key(
        unmarked_world: World, node: Any, fingerprint: str, node_host: Any) -> None:
    w = unmarked_world
    domain = f"na{uuid.uuid4().hex[:8]}.si"
    before = snapshot(node_host)
    order = w.order([f"hosting:mega:{domain}"], who=customer("en"))
    w.pay(order["proforma"]["number"], Decimal(str(order["proforma"]["gross"])), f"bank-{domain}")
    w.runner.dispatch(order["order"])
    w.drain()
    step = w.steps(int(order["order"]))["hosting.account"]
    assert step.state == "failed"
    assert "ConfigurationError" in (step.last_error or "")
    assert f"node {node.info.name}" in (step.last_error or "") and fingerprint in (step.last_error or "")
    assert snapshot(node_host) == before
