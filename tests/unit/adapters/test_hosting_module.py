"""The role's module (roles/hosting_account/library/hosting_account.py): its validation and
its renderers, pure (no node, no Ansible run). The node-side helper it reuses is loaded
from the role's files, as the module loads it on the node."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

ROLE = Path(__file__).resolve().parents[3] / "roles" / "hosting_account"
LIMITS = {"disk_mb": 2000, "mailbox_mb": 1000, "upload_max_mb": 250, "database_max_mb": 1024,
          "message_max_mb": 50, "recipients_max": 60, "mail_per_hour": 60, "mail_per_month": 10000,
          "cron_min_interval_min": 30, "cpu_percent": 50, "memory_mb": 512, "vmem_mb": 1024, "iops": 500,
          "tasks_max": 50}
PARAMS = {"default_plan": "mega", "default_limits": LIMITS, "node_root": "/srv/hosting",
          "php_max_children": 5, "php_memory_limit": "256M", "io_device": ""}


def _load(name: str, path: Path) -> Any:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the helper imports crypt (Python 3.11)
        loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def module() -> Any:
    return _load("hosting_account_module", ROLE / "library" / "hosting_account.py")


@pytest.fixture(scope="module")
def helper() -> Any:
    return _load("hosting_account_helper", ROLE / "files" / "usr" / "local" / "sbin" / "hosting-account")


def account(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "examplesi", "domains": ["example.si", "example-shop.si"], "plan": "giga5", "limits": None,
        "mailboxes": [{"local": "info", "password": "Aa1" * 6}], "cron": [], "password": "Bb2" * 6,
        "db_password": "Cc3" * 6}
    base.update(kw)
    return base


def test_a_good_account_is_normalized(module: Any, helper: Any) -> None:
    a = module.normalize(account(cron=[{"minute": "0,30", "command": "date"}]), PARAMS, helper)
    assert a["home"] == "/srv/hosting/examplesi" and a["docroot"] == "/srv/hosting/examplesi/public_html"
    assert a["limits"] == LIMITS
    assert a["cron"] == [{"minute": "0,30", "hour": "*", "day": "*", "month": "*", "weekday": "*",
                          "command": "date"}]


@pytest.mark.parametrize("bad", ["../etc", "a;rm -rf /", "ex\u0430mple", "a" * 300, "root", "hosting",
                                 "x/../../etc", "$(reboot)", "", "Upper", "1abc", None])
def test_hostile_or_reserved_names_are_refused(module: Any, helper: Any, bad: Any) -> None:
    with pytest.raises(module.Refused, match="Refused"):
        module.normalize(account(name=bad), PARAMS, helper)


@pytest.mark.parametrize("bad", [[], ["../etc"], ["a;rm -rf /.si"], ["ex\u0430mple.si"], ["example.si\nroot"],
                                 ["exa mple.si"], ["x.si", "x.si"], [("a" * 300) + ".si"]])
def test_bad_domains_are_refused(module: Any, helper: Any, bad: list[str]) -> None:
    with pytest.raises(module.Refused, match="Refused"):
        module.normalize(account(domains=bad), PARAMS, helper)


@pytest.mark.parametrize("change", [
    {"mailboxes": [{"local": "../x"}]},
    {"mailboxes": [{"local": "info"}, {"local": "info"}]},
    {"mailboxes": [{"local": "info", "password": "short"}]},
    {"limits": {"cpu_percent": 0}},
    {"limits": {"memory_mb": "-5"}},
    {"limits": {"memory_mb": "512; reboot"}},
    {"limits": {"memory_mb": True}},
    {"limits": {"unknown_limit": 5}},
    {"plan": "giga 5"},
    {"password": "has space in it"},
    {"db_password": "colon:in:it:123"},
    {"cron": [{"minute": "*/5", "command": "date"}]},
    {"cron": [{"minute": "0", "command": "date\n* * * * * root reboot"}]},
    {"cron": [{"minute": "0;reboot", "command": "date"}]},
    {"cron": ["not a mapping"]},
])
def test_bad_parts_are_refused(module: Any, helper: Any, change: dict[str, Any]) -> None:
    with pytest.raises((module.Refused, helper.Refused)):
        module.normalize(account(**change), PARAMS, helper)


def test_a_cron_entry_too_often_names_its_interval(module: Any, helper: Any) -> None:
    with pytest.raises(module.Refused, match="every 5 minutes"):
        module.normalize(account(cron=[{"minute": "*/5", "command": "date"}]), PARAMS, helper)


def test_a_missing_limit_is_refused(module: Any, helper: Any) -> None:
    params = dict(PARAMS, default_limits={k: v for k, v in LIMITS.items() if k != "iops"})
    with pytest.raises(module.Refused, match="iops"):
        module.normalize(account(), params, helper)


def test_the_vhost_serves_the_docroot_and_includes_the_tls_drop_ins(module: Any, helper: Any) -> None:
    a = module.normalize(account(), PARAMS, helper)
    active = module.render_vhost(a, False)
    assert "    include /etc/nginx/hosting-tls/examplesi/*.conf;\n" in active
    assert "server_name example.si www.example.si example-shop.si www.example-shop.si;" in active
    assert "root /srv/hosting/examplesi/public_html;" in active
    assert "fastcgi_pass unix:/run/hosting-php-examplesi/php.sock;" in active
    assert "client_max_body_size 251m;" in active
    suspended = module.render_vhost(a, True)
    assert "include /etc/nginx/hosting-tls/examplesi/*.conf;" in suspended
    assert "include snippets/hosting-account-suspended.conf;" in suspended
    assert "root " not in suspended and "(SUSPENDED)" in suspended


def test_the_pool_slice_and_state_carry_the_plan(module: Any, helper: Any) -> None:
    a = module.normalize(account(), PARAMS, helper)
    pool = module.render_pool(a, PARAMS)
    assert "php_admin_value[upload_max_filesize] = 250M" in pool
    assert "php_admin_value[open_basedir] = /srv/hosting/examplesi/" in pool
    slice_conf = module.render_slice(a, PARAMS)
    assert "CPUQuota=50%" in slice_conf and "MemoryMax=512M" in slice_conf
    assert "IOReadIOPSMax" not in slice_conf
    with_io = module.render_slice(a, dict(PARAMS, io_device="/dev/vda"))
    assert "IOWriteIOPSMax=/dev/vda 500" in with_io
    state = json.loads(module.render_state(a, True))
    assert state == {"name": "examplesi", "plan": "giga5", "domains": ["example.si", "example-shop.si"],
                     "limits": LIMITS, "suspended": True, "home": "/srv/hosting/examplesi"}
    assert "LimitAS=1024M" in module.render_php_dropin(a)


def test_blocks_are_replaced_in_place_and_removed(module: Any) -> None:
    text = "a.si OK\n"
    once = module.set_block(text, "hosting account x", ["x.si OK"])
    assert once == "a.si OK\n# BEGIN hosting account x\nx.si OK\n# END hosting account x\n"
    assert module.set_block(once, "hosting account x", ["x.si OK"]) == once  # idempotent
    other = module.set_block(once, "hosting account y", ["y.si OK"])
    changed = module.set_block(other, "hosting account x", ["x.si OK", "x2.si OK"])
    assert changed.index("x2.si OK") < changed.index("# BEGIN hosting account y")  # in place
    assert module.set_block(changed, "hosting account x", None) == (
        "a.si OK\n# BEGIN hosting account y\ny.si OK\n# END hosting account y\n")


def test_files_are_written_only_when_they_differ(module: Any, tmp_path: Path) -> None:
    import os

    path = str(tmp_path / "f.conf")
    uid, gid = os.getuid(), os.getgid()
    assert module.ensure_file(path, "x\n", 0o644, False, uid, gid) is True
    assert module.ensure_file(path, "x\n", 0o644, False, uid, gid) is False
    assert module.ensure_file(path, "y\n", 0o644, True, uid, gid) is True  # check mode ...
    assert Path(path).read_text() == "x\n"  # ... writes nothing
    os.chmod(path, 0o600)
    assert module.ensure_file(path, "x\n", 0o644, False, uid, gid) is True  # the mode counts too
    assert os.stat(path).st_mode & 0o777 == 0o644
