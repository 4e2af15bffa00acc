"""Many shared-hosting accounts in one Ansible run (``HostingAccounts.create_many``): the
role's module converges the whole batch in one call. On a throwaway node of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner.adapters.hosting import Target, run_playbook
from provisioner.adapters.hosting.accounts import AccountResult, AccountSpec, HostingAccounts
from provisioner.adapters.hosting.ansible import ROLES_DIR
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.errors import InvalidInput
from tests.e2e.nodes import infra_host

NODE_NAME = "t-acctbatch"
BATCH = 20


@pytest.fixture(scope="module")
def batch_node(hosts: Any) -> Iterator[Any]:
    """A node booted from the converged-node image (nothing converged on it since)."""
    from provisioner.devstack.hosts.node import up_node

    name = f"{NODE_NAME}-{os.getpid() % 10000}"
    try:
        yield up_node(hosts, name)
    finally:
        hosts.down(name)


@pytest.fixture(scope="module")
def accounts(batch_node: Any) -> HostingAccounts:
    return HostingAccounts(ssh_key=Path(batch_node.ssh_key))


@pytest.fixture(scope="module")
def target(batch_node: Any) -> Target:
    target: Target = batch_node.target()  # a throwaway host: its host key is not checked
    return target


def specs(prefix: str, n: int) -> list[AccountSpec]:
    plan = CATALOG.hosting_plan("mega")
    return [AccountSpec(f"{prefix}{i}", (f"{prefix}{i}.si",), plan, mailboxes=("info",)) for i in range(n)]


@pytest.fixture(scope="module")
def batch(accounts: HostingAccounts, target: Target) -> tuple[list[AccountSpec], AccountResult]:
    made = specs("batch", BATCH)
    result = accounts.create_many(target, made)
    assert result.ok, result.run.errors
    return made, result


def test_the_batch_is_one_run_with_one_converge_call(batch: tuple[list[AccountSpec], AccountResult]) -> None:
    _, result = batch
    assert result.action == "create"
    assert result.account.split(",") == [f"batch{i}" for i in range(BATCH)]
    # The node had no account support: the module was called, the support installed,
    # the module called again; every other task is controller-side.
    assert result.changed >= 1


@pytest.mark.parametrize("i", range(BATCH))
def test_every_account_of_the_batch_answers_http_with_its_host_header(
        batch: tuple[list[AccountSpec], AccountResult], batch_node: Any, i: int) -> None:
    made, _ = batch
    domain = made[i].domains[0]
    r = httpx.get(f"http://{batch_node.address}/", headers={"Host": domain}, timeout=20)
    assert r.status_code == 200
    assert f"<h1>{domain}</h1>" in r.text


def test_the_batch_has_its_users_services_and_logins(
        batch: tuple[list[AccountSpec], AccountResult], batch_node: Any, tmp_path: Path) -> None:
    host = infra_host(batch_node, tmp_path)
    made, _ = batch
    hosting = host.group("hosting").members
    ftp = host.file("/etc/pure-ftpd/pureftpd.passwd").content_string
    mail = host.file("/etc/dovecot/users").content_string
    for spec in made:
        assert host.user(spec.name).exists and spec.name in hosting
        assert host.service(f"hosting-php@{spec.name}").is_running
        assert f"\n{spec.name}:" in f"\n{ftp}"
        assert f"info@{spec.domains[0]}:" in mail


def test_running_the_batch_again_changes_nothing(
        batch: tuple[list[AccountSpec], AccountResult], accounts: HostingAccounts, target: Target) -> None:
    made, _ = batch
    again = accounts.create_many(target, made)
    assert again.ok, again.run.errors
    assert again.changed == 0  # the module reported changed=false


def test_check_mode_reports_a_new_account_and_writes_nothing(
        batch: tuple[list[AccountSpec], AccountResult], accounts: HostingAccounts, target: Target,
        tmp_path: Path) -> None:
    playbook = tmp_path / "check.yml"
    playbook.write_text(f"""---
- name: Converge in check mode.
  hosts: all
  gather_facts: false
  check_mode: true
  roles:
    - role: {ROLES_DIR / 'hosting_account'}
""")
    spec = specs("checkonly", 1)[0]
    ev = spec.extravars("create", None, accounts.provider_url)
    ev.update({"hosting_account_password": "Aa1" * 6, "hosting_account_db_password": "Bb2" * 6,
               "hosting_account_mailboxes": [{"local": "info", "password": "Cc3" * 6}]})
    result = run_playbook(str(playbook), [target], ev, ssh_key=accounts.ssh_key)
    assert result.ok, result.errors
    assert result.changed == 1  # it would create the account ...
    r = httpx.get(f"http://{target.address}/", headers={"Host": spec.domains[0]}, timeout=20)
    assert spec.domains[0] not in r.text  # ... but did not
    again = accounts.create_many(target, batch[0])
    assert again.changed == 0


def test_one_hostile_account_refuses_the_whole_batch_before_anything_runs(target: Target) -> None:
    calls: list[Any] = []

    def runner(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("nothing may run for hostile input")

    fake = HostingAccounts(runner=runner)
    bad = [*specs("fine", 2), AccountSpec("a;reboot", ("x.si",), CATALOG.hosting_plan("mega"))]
    with pytest.raises(InvalidInput):
        fake.create_many(target, bad)
    with pytest.raises(InvalidInput):
        fake.create_many(target, [*specs("twice", 1), *specs("twice", 1)])
    with pytest.raises(InvalidInput):
        fake.create_many(target, [])
    assert calls == []


def test_the_role_refuses_a_hostile_batch_when_run_by_hand(
        accounts: HostingAccounts, target: Target) -> None:
    good = specs("byhand", 1)[0].extravars("create", None, accounts.provider_url)
    entry = {"name": "byhand0", "domains": good["hosting_account_domains"],
             "limits": good["hosting_account_limits"], "password": "Aa1" * 6, "db_password": "Bb2" * 6}
    bad = dict(entry, name="x/../../etc", domains=["evil.si"])
    result = run_playbook("hosting_account_create", [target], {"hosting_account_batch": [entry, bad]},
                          ssh_key=accounts.ssh_key)
    assert not result.ok
    assert "Refused" in " ".join(result.errors.values())
    r = httpx.get(f"http://{target.address}/", headers={"Host": "byhand0.si"}, timeout=20)
    assert "byhand0.si" not in r.text  # the good one was not created either
