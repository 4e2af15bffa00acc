"""The role's module (roles/hosting_account/library/hosting_account.py): its validation, its
renderers, the home it reaches through directory descriptors (a customer racing it with
symbolic links) and the fence of the secrets it sets; no node, no Ansible run (the home
is a temporary directory). The node-side helper it reuses is loaded from the role's
files, as the module loads it on the node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.adapters.node_code import HELPER, MODULE, load_node

LIMITS = {"disk_mb": 2000, "mailbox_mb": 1000, "upload_max_mb": 250, "database_max_mb": 1024,
          "message_max_mb": 50, "recipients_max": 60, "mail_per_hour": 60, "mail_per_month": 10000,
          "cron_min_interval_min": 30, "cpu_percent": 50, "memory_mb": 512, "vmem_mb": 1024, "iops": 500,
          "tasks_max": 50}
PARAMS = {"default_plan": "mega", "default_limits": LIMITS, "node_root": "/srv/hosting",
          "php_max_children": 5, "php_memory_limit": "256M", "io_device": ""}


@pytest.fixture(scope="module")
def module() -> Any:
    return load_node("hosting_account_module", MODULE)


@pytest.fixture(scope="module")
def helper() -> Any:
    return load_node("hosting_account_helper", HELPER)


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


# -- password hashes (the helper's SHA-512-crypt, by openssl: no crypt module on 3.13) -------
SHA512_CRYPT_RE = r"\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}"


def independent_crypt(secret: str, hashed: str) -> str | None:
    """libcrypt through Python's crypt module, where it still exists (up to 3.12), else None."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            crypt = importlib.import_module("crypt")
        except ImportError:
            return None
    return str(crypt.crypt(secret, hashed))


def test_the_hash_is_the_published_sha512_crypt_test_vector(helper: Any) -> None:
    # Drepper, "Unix crypt using SHA-256 and SHA-512", test vector 1 (default rounds)
    assert helper.sha512("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")


def test_a_new_hash_has_a_random_salt_and_verifies(helper: Any) -> None:
    import re

    secret = "Aa1" * 6
    hashed = helper.sha512(secret)
    assert re.fullmatch(SHA512_CRYPT_RE, hashed)
    assert helper.sha512(secret) != hashed  # a new salt each time
    assert helper.verifies(secret, hashed) is True
    assert helper.verifies(secret + "x", hashed) is False
    checked = independent_crypt(secret, hashed)
    assert checked in (None, hashed)


@pytest.mark.parametrize("foreign", ["", "{PLAIN}Aa1Aa1Aa1Aa1Aa1Aa1", "$1$abc$def",
                                     "$6$rounds=5000$saltstring$x", "$6$bad salt$x"])
def test_a_hash_of_another_scheme_does_not_verify(helper: Any, foreign: str) -> None:
    assert helper.verifies("Aa1" * 6, foreign) is False


def test_the_secret_goes_on_stdin_never_on_the_command_line(helper: Any, monkeypatch: Any) -> None:
    import subprocess
    import types

    seen: list[dict[str, Any]] = []

    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append({"argv": argv, **kw})
        return subprocess.CompletedProcess(argv, 0, "$6$saltstring$x\n", "")

    monkeypatch.setattr(helper, "subprocess", types.SimpleNamespace(run=run))
    helper.sha512("Secret-123456", "saltstring")
    assert seen[0]["argv"] == ["openssl", "passwd", "-6", "-salt", "saltstring", "-stdin"]
    assert seen[0]["input"] == "Secret-123456\n"
    with pytest.raises(helper.Refused):
        helper.sha512("two\nlines", None)


def test_ftp_and_mail_logins_get_hashes_their_servers_read(helper: Any) -> None:
    secret = "Aa1" * 6
    line = helper.ftp_line({"login": "examplesi", "uid": 1001, "gid": 1001, "home": "/srv/hosting/examplesi",
                            "password": secret}, None)
    ftp_hash = line.split(":")[1]  # pure-ftpd's passwd file: crypt(3) hash in field 2
    assert helper.verifies(secret, ftp_hash) and independent_crypt(secret, ftp_hash) in (None, ftp_hash)
    req = {"domains": ["example.si"], "mailboxes": [{"local": "info", "password": secret}]}
    lines, _ = helper.mail_lines(req, {})
    scheme, mail_hash = lines[0].split(":")[1].split("}", 1)  # Dovecot passwd-file: {SCHEME}hash
    assert scheme == "{SHA512-CRYPT" and helper.verifies(secret, mail_hash)
    again, _ = helper.mail_lines(req, {"info@example.si": lines[0]})
    assert again == lines  # an unchanged password keeps its hash (and salt): nothing to write


# -- the home, reached through directory descriptors (a customer may race it with links) ----
def _snapshot(top: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every path below ``top`` (and ``top``): mode, owner, group and a file's content."""
    import os

    seen = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = os.lstat(path)
        body = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        seen[str(path)] = (st.st_mode, st.st_uid, st.st_gid, body)
    return seen


@pytest.fixture
def node_root(tmp_path: Path) -> tuple[Path, Path]:
    """A node root with nothing in it yet, and an 'outside' directory a link may point to."""
    root, outside = tmp_path / "hosting", tmp_path / "etc-nginx-sites-enabled"
    root.mkdir(mode=0o711)
    outside.mkdir(mode=0o700)
    (outside / "default").write_text("server {}\n")
    return root, outside


def test_the_home_is_made_and_a_second_run_changes_nothing(module: Any, node_root: tuple[Path, Path]) -> None:
    import os
    import stat

    root, _ = node_root
    uid, gid = 4321, 4322
    assert module.ensure_home(str(root), "examplesi", uid, gid, 33, "<p>hi</p>\n", False) is True
    home = root / "examplesi"
    for path, mode, owner in ((home, 0o750, (uid, 33)), (home / "public_html", 0o755, (uid, gid)),
                              (home / "tmp", 0o700, (uid, gid))):
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode) and (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, *owner)
    index = home / "public_html" / "index.html"
    assert index.read_text() == "<p>hi</p>\n" and (index.stat().st_uid, index.stat().st_gid) == (uid, gid)
    before = _snapshot(root)
    assert module.ensure_home(str(root), "examplesi", uid, gid, 33, "<p>hi</p>\n", False) is False
    os.chmod(home / "tmp", 0o600)
    assert module.ensure_home(str(root), "examplesi", uid, gid, 33, "<p>hi</p>\n", True) is True  # check mode
    assert os.lstat(home / "tmp").st_mode & 0o777 == 0o600  # ... writes nothing
    assert module.ensure_home(str(root), "examplesi", uid, gid, 33, "<p>hi</p>\n", False) is True
    assert _snapshot(root) == before
    index.write_text("the customer's page\n")
    module.ensure_home(str(root), "examplesi", uid, gid, 33, "<p>hi</p>\n", False)
    assert index.read_text() == "the customer's page\n"  # never overwritten


@pytest.mark.parametrize("linked", ["public_html", "tmp", ""])
def test_a_symlinked_component_is_refused_and_nothing_outside_is_touched(
        module: Any, node_root: tuple[Path, Path], linked: str) -> None:
    import os

    root, outside = node_root
    home = root / "examplesi"
    if linked:
        module.ensure_home(str(root), "examplesi", 4321, 4322, 33, "x\n", False)
        os.rename(home / linked, home / (linked + ".real"))
        (home / "public_html.real" / "index.html").unlink(missing_ok=True)
        os.symlink(outside, home / linked)
    else:  # the home itself (only root could put it there, but the module does not rely on that)
        os.symlink(outside, home)
    before = _snapshot(outside)
    with pytest.raises(module.Refused, match="not a directory"):
        module.ensure_home(str(root), "examplesi", 4321, 4322, 33, "x\n", False)
    assert _snapshot(outside) == before


def test_a_customer_swapping_links_during_converges_changes_nothing_outside(
        module: Any, node_root: tuple[Path, Path]) -> None:
    """A process of the customer exchanges public_html and tmp with links to a root
    directory (renameat2 RENAME_EXCHANGE: the name is never missing) as fast as it can,
    giving them a wrong mode and removing index.html each time, while the home is
    converged again and again: each run converges or refuses; outside stays as it was."""
    import ctypes
    import os
    import threading
    import time

    libc = ctypes.CDLL(None, use_errno=True)

    def exchange(a: Path, b: Path) -> None:
        if libc.renameat2(-100, bytes(a), -100, bytes(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
            raise OSError(ctypes.get_errno(), "renameat2")

    root, outside = node_root
    module.ensure_home(str(root), "examplesi", 4321, 4322, 33, "x\n", False)
    home = root / "examplesi"
    for sub in ("public_html", "tmp"):
        os.symlink(outside, home / f".{sub}.link")
    before = _snapshot(outside)
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            for sub, wrong in (("public_html", 0o700), ("tmp", 0o755)):
                os.chmod(home / sub, wrong)
                (home / sub / "index.html").unlink(missing_ok=True)
                exchange(home / sub, home / f".{sub}.link")
                exchange(home / sub, home / f".{sub}.link")
                swaps[0] += 1
            stop.wait(0.0005)  # the directories, back in place, for a moment

    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes = {"converged": 0, "refused": 0}
    deadline = time.monotonic() + 30
    try:
        while swaps[0] < 300 and time.monotonic() < deadline:
            try:
                module.ensure_home(str(root), "examplesi", 4321, 4322, 33, "x\n", False)
                outcomes["converged"] += 1
            except module.Refused as exc:
                assert "not a directory" in str(exc)
                outcomes["refused"] += 1
    finally:
        stop.set()
        thread.join()
    assert swaps[0] >= 300 and outcomes["converged"] > 0, (swaps, outcomes)
    assert _snapshot(outside) == before


# -- the fence of the secrets a run sets (a stale run must not overwrite mailed ones) ---------
def test_secrets_set_by_a_newer_run_are_not_overwritten_by_a_stale_one(
        module: Any, helper: Any, tmp_path: Path, monkeypatch: Any) -> None:
    import types

    monkeypatch.setattr(module, "STATE_DIR", str(tmp_path))
    accounts = [module.normalize(account(), PARAMS, helper)]

    def converge(fence: int) -> Any:
        params = dict(PARAMS, password_fence=fence, set_passwords=True)
        return module.Converge(types.SimpleNamespace(params=params, check_mode=False), helper, accounts)

    converge(0).check_fence()  # no token: nothing checked ...
    converge(0).record_fence()
    assert not (tmp_path / "examplesi.fence").exists()  # ... nothing recorded
    converge(2).check_fence()
    converge(2).record_fence()
    assert (tmp_path / "examplesi.fence").read_text() == "2\n"
    with pytest.raises(module.Refused, match="set by a newer run"):
        converge(1).check_fence()
    converge(2).check_fence()  # the same run again (an Ansible retry) goes on
    converge(3).check_fence()
    converge(3).record_fence()
    assert (tmp_path / "examplesi.fence").read_text() == "3\n"
