"""One account-name rule: the controller, the role's module, the node's scripts and the
roles' asserts accept and refuse the same names, because they run the same file
(provisioner/domain/hosting_names.py, shipped to the roles as links)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.hosting import Target
from provisioner.adapters.hosting import accounts as controller_accounts
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts
from provisioner.adapters.hosting.backups import validate_backup_id
from provisioner.adapters.hosting.usage import parse_usage
from provisioner.domain import hosting_names
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.names import normalize_username, username_for_domain, validate_account_name
from provisioner.errors import InvalidInput, StepFailed
from tests.unit.adapters.node_code import (
    BACKUP,
    HELPER,
    MODULE,
    ROLES,
    SHIPPED_RULES,
    USAGE,
    load_file,
    load_node,
    load_node_template,
)

SOURCE = Path(hosting_names.__file__)

GOOD = ["a", "examplesi", "shop2", "u123si", "a" * 32, "hostingsi", "rootx"]
BAD = [
    "", "1abc", "Abc", "a_b", "a-b", "a" * 33, "../etc", "a b", "a\n", "ex\u0430mple", "$(reboot)",
    # reserved: before this rule had one home the controller accepted the second line
    # (only the node knew them) and the node accepted "administrator"
    "root", "admin", "administrator", "mysql", "www", "ftp", "postmaster",
    "hosting", "dovenull", "systemd", "ftpuser",
]
TABLE = [(name, True) for name in GOOD] + [(name, False) for name in BAD]
LIMITS = {"disk_mb": 2000, "mailbox_mb": 1000, "upload_max_mb": 250, "database_max_mb": 1024,
          "message_max_mb": 50, "recipients_max": 60, "mail_per_hour": 60, "mail_per_month": 10000,
          "cron_min_interval_min": 30, "cpu_percent": 50, "memory_mb": 512, "vmem_mb": 1024, "iops": 500,
          "tasks_max": 50}
PARAMS = {"default_plan": "mega", "default_limits": LIMITS, "node_root": "/srv/hosting"}


@pytest.mark.parametrize("shipped", SHIPPED_RULES, ids=lambda p: str(p.relative_to(ROLES)))
def test_every_copy_the_roles_ship_is_the_source(shipped: Path) -> None:
    assert shipped.read_bytes() == SOURCE.read_bytes()


def accepts(check: Callable[[str], Any], *refusals: type[BaseException]) -> Callable[[str], bool]:
    def run(name: str) -> bool:
        try:
            check(name)
        except refusals:
            return False
        return True
    return run


def _sides() -> dict[str, Callable[[str], bool]]:
    module = load_node("hosting_account_module", MODULE)
    helper = load_node("hosting_account_helper", HELPER)
    backup = load_node_template("hosting_backup_script", BACKUP)
    usage = load_node_template("hosting_usage_script", USAGE)
    plugin = load_file("hosting_account_tests", ROLES / "hosting_backup" / "test_plugins"
                       / "hosting_account_tests.py").TestModule().tests()["hosting_account_name"]

    def usage_report(name: str) -> None:
        entry = {"plan": "mega", "disk_bytes": 0, "mail_bytes": 0, "db_bytes": 0, "limits": {},
                 "over": {"disk": False, "database": False}, "over_quota": False}
        parse_usage(json.dumps({"version": 1, "generated_at": "2025-01-31T12:00:00Z", "errors": [],
                                "accounts": {name: entry}}))

    def module_normalize(name: str) -> None:
        raw = {"name": name, "domains": ["example.si"], "limits": None, "mailboxes": [], "cron": []}
        module.normalize(raw, PARAMS, helper)

    def truthy(test: Callable[[str], bool]) -> Callable[[str], None]:
        def check(name: str) -> None:
            if not test(name):
                raise ValueError(name)
        return check

    return {
        # the controller
        "domain.names.validate_account_name": accepts(validate_account_name, InvalidInput),
        "adapters.hosting.accounts.validate_account_name":
            accepts(controller_accounts.validate_account_name, InvalidInput),
        "adapters.hosting.backups.validate_backup_id":
            accepts(lambda n: validate_backup_id(n, "deadbeef"), InvalidInput),
        "adapters.hosting.usage.parse_usage": accepts(usage_report, StepFailed),
        # the node, run here as the node runs it
        "module hosting_account normalize": accepts(module_normalize, module.Refused),
        "helper hosting-account name": accepts(helper.name, helper.Refused),
        "hosting-backup account_name": accepts(backup.account_name, backup.Refused),
        "hosting-usage is_account_name": accepts(truthy(usage.is_account_name), ValueError),
        "roles' assert test hosting_account_name": accepts(truthy(plugin), ValueError),
    }


SIDES = _sides()


@pytest.mark.parametrize(("name", "ok"), TABLE, ids=[repr(n)[:40] for n, _ in TABLE])
@pytest.mark.parametrize("side", sorted(SIDES))
def test_controller_and_node_agree_on_every_name(side: str, name: str, ok: bool) -> None:
    assert SIDES[side](name) is ok


@pytest.mark.parametrize("name", ["hosting", "dovenull", "systemd", "ftpuser"])
def test_a_name_only_the_node_used_to_refuse_is_refused_before_anything_runs(name: str) -> None:
    """These passed the controller's check and failed late, in the module on the node."""
    ran: list[str] = []
    adapter = HostingAccounts(runner=lambda playbook, *a, **kw: ran.append(playbook))
    spec = AccountSpec(name, ("example.si",), DEFAULT_CATALOG.hosting_plan("mega"))
    with pytest.raises(InvalidInput, match="reserved"):
        adapter.create(Target("n1", "192.0.2.1"), spec)
    assert ran == []


@pytest.mark.parametrize("name", ["a_b", "shop-si"])
def test_a_name_the_node_refuses_is_no_user_name_on_the_controller(name: str) -> None:
    """domain.names.normalize_username used to allow '_' and '-'; no node ever did."""
    with pytest.raises(InvalidInput):
        normalize_username(name)


@pytest.mark.parametrize(("domain", "expected"), [
    ("example.si", "examplesi"), ("hosti.ng", "uhosting"), ("sys.temd", "usystemd"),
    ("ftp.user", "uftpuser"), ("ro.ot", "uroot"), ("1.si", "u1si")])
def test_a_user_name_made_from_a_domain_passes_the_node(domain: str, expected: str) -> None:
    helper = load_node("hosting_account_helper", HELPER)
    assert username_for_domain(domain) == expected
    assert helper.name(expected) == expected


def test_the_module_reinstalls_a_node_copy_of_another_rule(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """support_ok() is False while the node's hosting_names.py differs from the module's own."""
    module = load_node("hosting_account_module", MODULE)
    monkeypatch.setattr(module, "NAMES_FILE", str(SHIPPED_RULES[1]))
    assert module.names_current() is True
    other = tmp_path / "hosting_names.py"
    other.write_text(SOURCE.read_text().replace("hostmaster\n", "hostmaster extra\n"))
    assert other.read_text() != SOURCE.read_text()
    monkeypatch.setattr(module, "NAMES_FILE", str(other))
    assert module.names_current() is False
    monkeypatch.setattr(module, "NAMES_FILE", str(tmp_path / "missing.py"))
    assert module.names_current() is False
