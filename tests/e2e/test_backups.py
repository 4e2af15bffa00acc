"""Per-account backups and the two stages of deletion, on a throwaway hosting node:
roles/hosting_node's hosting-backup script and timer, the playbooks of roles/hosting_backup
and provisioner.adapters.hosting.backups, checked with testinfra.

Every test makes accounts of its own (unique names), so the tests share one node (the
session's ``node``; ``PROVISIONER_E2E_REUSE_NODE=NAME`` uses a running, converged host
instead, kept afterwards).
"""

from __future__ import annotations

import json
import os
import shlex
import smtplib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.adapters.hosting import Target, run_playbook
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.adapters.hosting.backups import HostingBackups, RemovalManifest
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.errors import InvalidInput
from tests.e2e.nodes import infra_host, reused_node
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "roles/hosting_node/defaults/main.yml").read_text())
RETENTION: dict[str, int] = DEFAULTS["hosting_node_backup_retention"]
SCRIPT = "/usr/local/sbin/hosting-backup"
BACKUP_ROOT = "/srv/backup"
ARCHIVE_ROOT = "/srv/backup/terminated"

HOSTILE_NAMES = ["a;reboot", "../etc", "Root", "a" * 33, "a b", "abc\n", "", "-rf", "a/b", "$(id)",
                 "1abc", "é"]


@dataclass
class Env:
    node: Target
    address: str
    host: Any  # testinfra
    accounts: HostingAccounts
    backups: HostingBackups

    def new_account(self, plan: str = "mega") -> AccountSpec:
        name = f"bk{uuid.uuid4().hex[:10]}"
        spec = AccountSpec(name, (f"{name}.si",), CATALOG.hosting_plan(plan), mailboxes=("info",))
        self.accounts.create(self.node, spec, Secrets.generate(spec.mailboxes)).raise_for_status("e2e.create")
        return spec.validated()

    def sh(self, command: str, *args: Any) -> str:
        return str(self.host.check_output(command, *args))

    def script(self, *args: str) -> tuple[int, dict[str, Any]]:
        r = self.host.run(" ".join([SCRIPT, *(shlex.quote(a) for a in args)]))
        return r.rc, json.loads(r.stdout)

    def sql(self, database: str, statement: str) -> str:
        return self.sh("mysql --batch --skip-column-names --database %s -e %s", database, statement)

    def databases(self) -> list[str]:
        return self.sh("mysql --batch --skip-column-names -e 'SHOW DATABASES'").split()

    def hashes(self, path: str) -> dict[str, str]:
        """sha256 of every regular file below path, by relative path."""
        out = self.sh("cd %s && find . -type f -print0 | sort -z | xargs -0 -r sha256sum", path)
        return {line[66:]: line[:64] for line in out.splitlines() if line}

    def put(self, spec: AccountSpec, relpath: str, data: str) -> None:
        """A file in the account's home, owned by the account (as its uploads are)."""
        path = f"/srv/hosting/{spec.name}/{relpath}"
        self.sh("install -d -o %s -g %s %s", spec.name, spec.name, os.path.dirname(path))
        self.sh("printf %s %s > %s && chown %s: %s", "%s", data, path, spec.name, path)

    def deliver(self, spec: AccountSpec, subject: str) -> None:
        to = f"info@{spec.domains[0]}"
        smtp = smtplib.SMTP(self.address, 25, timeout=20)
        try:
            smtp.sendmail("sender@outside.example", [to],
                          f"From: sender@outside.example\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n")
        finally:
            smtp.quit()
        maildir = f"/srv/mail/{spec.domains[0]}/info/Maildir"
        wait_for(lambda: self.host.run("grep -rq -- %s %s", subject, maildir).rc == 0, 30,
                   "the delivered message in the maildir")

    def backup_dirs(self, account: str) -> list[str]:
        out = self.sh("find %s -mindepth 1 -maxdepth 1 -type d -printf '%%f\\n' 2>/dev/null || true",
                      f"{BACKUP_ROOT}/accounts/{account}")
        return sorted(out.split())


@pytest.fixture(scope="module")
def env(hosts: Any, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Env:
    info = reused_node(hosts) or request.getfixturevalue("node").info
    host = infra_host(info, tmp_path_factory.mktemp("ssh"))
    key = Path(info.ssh_key)
    # info.target() is a throwaway host: its host key is not checked
    return Env(info.target(), info.address, host, HostingAccounts(ssh_key=key), HostingBackups(ssh_key=key))


@pytest.fixture(scope="module")
def live(env: Env) -> AccountSpec:
    """An account with files, a maildir with a message and a table with rows."""
    spec = env.new_account("giga5")
    env.put(spec, "public_html/index.php", "<?php echo 'hello';")
    env.put(spec, "public_html/deep/er/data.bin", "placeholder")
    data = f"/srv/hosting/{spec.name}/public_html/deep/er/data.bin"
    env.sh("head -c 100000 /dev/urandom > %s", data)  # binary content
    env.put(spec, "notes.txt", "keep me")
    env.sql(spec.name, "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(40)) ENGINE=InnoDB")
    env.sql(spec.name, "INSERT INTO orders VALUES (1, 'apple'), (2, 'pear'), (3, 'plum')")
    env.deliver(spec, f"before-backup-{uuid.uuid4().hex}")
    return spec


# -- backup, list, restore ----------------------------------------------------------------------
def test_a_backup_record_matches_its_archive_and_manifest_on_the_node(env: Env, live: AccountSpec) -> None:
    record = env.backups.backup(env.node, live.name)
    assert record.id.startswith(f"{live.name}/")
    assert record.account == live.name and record.plan == "giga5"
    assert env.sh("sha256sum %s", record.path).split()[0] == record.sha256
    assert int(env.sh("stat -c %%s %s", record.path)) == record.size
    manifest = json.loads(env.sh("cat %s", record.manifest_path))
    assert manifest["sha256"] == record.sha256
    listed = {f["path"] for f in manifest["files"]}
    assert f"srv/hosting/{live.name}/public_html/deep/er/data.bin" in listed
    assert "database.sql" in listed
    assert any(p.startswith(f"srv/mail/{live.domains[0]}/info/Maildir/") for p in listed)
    assert record.home == f"/srv/hosting/{live.name}"
    assert record.mail == (f"/srv/mail/{live.domains[0]}",)
    assert record.database == live.name
    assert {p.name for p in record.parts} == {"home", f"mail:{live.domains[0]}", "database"}
    assert env.sh("stat -c %%a:%%U %s", os.path.dirname(record.path)).strip() == "700:root"
    assert record.id in [r.id for r in env.backups.list(env.node, live.name)]


def test_restore_brings_back_every_file_byte_for_byte_the_mail_and_the_database(
        env: Env, live: AccountSpec) -> None:
    home, mail = f"/srv/hosting/{live.name}", f"/srv/mail/{live.domains[0]}"
    home_before, mail_before = env.hashes(home), env.hashes(mail)
    assert "./public_html/deep/er/data.bin" in home_before
    record = env.backups.backup(env.node, live.name)

    env.put(live, "notes.txt", "changed")
    env.sh("rm -rf %s/public_html/deep", home)
    env.put(live, "public_html/added-later.txt", "not in the backup")
    env.sh("rm -rf %s/info/Maildir/new %s/info/Maildir/cur", mail, mail)
    env.sql(live.name, "DROP TABLE orders")
    env.sql(live.name, "CREATE TABLE later (i INT)")
    assert env.hashes(home) != home_before

    result = env.backups.restore(env.node, live.name, record.id)
    assert result.backup_id == record.id
    assert result.verified_files == record.file_count - 1  # all but the database dump
    assert env.hashes(home) == home_before
    assert env.hashes(mail) == mail_before
    assert env.sql(live.name, "SELECT id, item FROM orders ORDER BY id").split("\n") == [
        "1\tapple", "2\tpear", "3\tplum"]
    assert env.sql(live.name, "SHOW TABLES").split() == ["orders"]
    data = env.host.file(f"{home}/public_html/deep/er/data.bin")
    assert (data.user, data.group) == (live.name, live.name)
    assert env.host.file(home).user == live.name
    assert env.host.file(f"{mail}/info/Maildir").user == "vmail"
    assert env.host.run("ls -d %s/.restore-* %s/.restore-*", "/srv/hosting", "/srv/mail").rc != 0


def test_restore_of_an_unknown_backup_is_refused(env: Env, live: AccountSpec) -> None:
    with pytest.raises(InvalidInput, match="no backup"):
        env.backups.restore(env.node, live.name, f"{live.name}/20000101T000000Z")


# -- retention ------------------------------------------------------------------------------------
@pytest.mark.parametrize("plan", ["mega", "giga5"])
def test_retention_keeps_the_newest_backup_of_each_of_the_plans_last_n_days(env: Env, plan: str) -> None:
    spec = env.new_account(plan)
    keep = RETENTION[plan]
    days = [f"2024-03-{d:02d}" for d in range(1, keep + 4)]  # keep + 3 days with a backup each
    for day in days:
        rc, out = env.script("backup", spec.name, "--at", f"{day}T03:15:00Z")
        assert rc == 0, out
    rc, out = env.script("backup", spec.name, "--at", f"{days[-1]}T01:00:00Z")  # two on the last day
    assert rc == 0, out
    assert len(env.backups.list(env.node, spec.name)) == keep + 4

    removed = env.backups.prune(env.node, spec.name)

    left = [r.id for r in env.backups.list(env.node, spec.name)]
    wanted = [f"{spec.name}/{day.replace('-', '')}T031500Z" for day in days[-keep:]]
    assert left == wanted
    assert len(left) == keep
    assert set(removed) == ({f"{spec.name}/{d.replace('-', '')}T031500Z" for d in days[:3]}
                            | {f"{spec.name}/{days[-1].replace('-', '')}T010000Z"})
    assert env.backup_dirs(spec.name) == sorted(r.split("/")[1] for r in wanted)
    assert env.backups.prune(env.node, spec.name) == ()


# -- free backups and the nightly timer -------------------------------------------------------------
def test_the_nightly_run_skips_accounts_without_free_backups(env: Env) -> None:
    excluded, normal = env.new_account("mega"), env.new_account("mega")
    assert env.backups.set_free_backups(env.node, excluded.name, False) is True
    assert env.backups.set_free_backups(env.node, excluded.name, False) is False
    assert env.host.file(f"/etc/hosting/backup-exclude/{excluded.name}").exists
    assert env.backups.status(env.node, excluded.name).excluded

    env.sh("systemctl start hosting-backup.service")  # what the timer starts; waits (oneshot)
    assert env.backups.list(env.node, excluded.name) == []
    first = env.backups.list(env.node, normal.name)
    assert len(first) == 1

    # Back to free backups; and the other one marked in its state file ("backups": false).
    assert env.backups.set_free_backups(env.node, excluded.name, True) is True
    state = f"/etc/hosting/accounts/{normal.name}.json"
    env.sh("python3 -c %s %s", "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['backups']=False; "
           "json.dump(d, open(p, 'w'))", state)
    env.sh("systemctl start hosting-backup.service")
    assert len(env.backups.list(env.node, excluded.name)) == 1
    assert [r.id for r in env.backups.list(env.node, normal.name)] == [r.id for r in first]
    assert env.host.service("hosting-backup.timer").is_enabled


# -- stage 1 and stage 2 -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def removed(env: Env) -> tuple[AccountSpec, RemovalManifest, list[str]]:
    """Stage 1 done on an account with files, mail and a database (and one older backup)."""
    spec = env.new_account("mega")
    env.put(spec, "public_html/index.html", "<h1>shop</h1>")
    env.sql(spec.name, "CREATE TABLE t (i INT)")
    env.deliver(spec, f"before-removal-{uuid.uuid4().hex}")
    older = env.backups.backup(env.node, spec.name)
    manifest = env.backups.remove_account(env.node, spec, env.accounts)
    ids = [older.id, manifest.last_backup.id]
    return spec, manifest, ids


def test_stage_1_leaves_no_home_maildir_or_database_on_the_node(
        env: Env, removed: tuple[AccountSpec, RemovalManifest, list[str]]) -> None:
    spec, manifest, _ = removed
    assert not env.host.file(f"/srv/hosting/{spec.name}").exists
    assert not env.host.file(f"/srv/mail/{spec.domains[0]}").exists
    assert spec.name not in env.databases()
    assert not env.host.user(spec.name).exists
    assert {(p.kind, p.path) for p in manifest.removed} == {
        ("home", f"/srv/hosting/{spec.name}"), ("mail", f"/srv/mail/{spec.domains[0]}"),
        ("database", spec.name)}
    assert all(p.bytes > 0 and p.files > 0 for p in manifest.removed)


def test_stage_1_leaves_a_last_backup_whose_checksum_is_in_the_manifest(
        env: Env, removed: tuple[AccountSpec, RemovalManifest, list[str]]) -> None:
    spec, manifest, ids = removed
    last = manifest.last_backup
    assert env.sh("sha256sum %s", last.path).split()[0] == last.sha256
    assert [r.id for r in env.backups.list(env.node, spec.name)] == ids
    listing = env.sh("tar -tzf %s", last.path)
    assert f"srv/hosting/{spec.name}/public_html/index.html" in listing
    assert "database.sql" in listing
    assert manifest.archive is not None
    assert manifest.archive.path == f"{ARCHIVE_ROOT}/{spec.name}/{spec.name}.tar.gz"
    assert env.sh("sha256sum %s", manifest.archive.path).split()[0] == manifest.archive.sha256
    assert json.loads(json.dumps(manifest.as_dict()))["last_backup"]["sha256"] == last.sha256


def test_stage_2_purges_every_backup_and_the_archive_and_a_second_purge_removes_nothing(
        env: Env, removed: tuple[AccountSpec, RemovalManifest, list[str]]) -> None:
    spec, stage1, ids = removed
    before = {r.id: r for r in env.backups.list(env.node, spec.name)}

    purged = env.backups.purge(env.node, spec.name)

    assert not purged.nothing_removed
    assert set(purged.backup_ids) == set(ids)
    archives = {f.backup_id: f for f in purged.removed if f.kind == "backup"}
    assert {i: f.sha256 for i, f in archives.items()} == {i: r.sha256 for i, r in before.items()}
    assert {i: f.size for i, f in archives.items()} == {i: r.size for i, r in before.items()}
    assert stage1.archive is not None
    terminated = [f for f in purged.removed if f.kind == "archive"]
    assert [(f.path, f.sha256, f.size) for f in terminated] == [
        (stage1.archive.path, stage1.archive.sha256, stage1.archive.size)]
    left = env.sh("find %s %s -name %s", BACKUP_ROOT, ARCHIVE_ROOT, f"*{spec.name}*")
    assert left == ""
    assert env.backups.list(env.node, spec.name) == []

    again = env.backups.purge(env.node, spec.name)
    assert again.nothing_removed
    assert again.as_dict()["removed"] == []


def test_purge_is_refused_while_the_account_is_on_the_node(env: Env, live: AccountSpec) -> None:
    count = len(env.backups.list(env.node, live.name))
    assert count >= 1
    with pytest.raises(InvalidInput, match="stage 1"):
        env.backups.purge(env.node, live.name)
    assert len(env.backups.list(env.node, live.name)) == count


# -- hostile input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_script_refuses_hostile_account_names(env: Env, name: str) -> None:
    before = env.sh("ls -A %s/accounts", BACKUP_ROOT)
    for op in ("backup", "list", "purge", "prune", "status", "exclude"):
        rc, out = env.script(op, name)
        assert rc == 2, (op, out)
        assert out["refused"] is True
    assert env.sh("ls -A %s/accounts", BACKUP_ROOT) == before


@pytest.mark.parametrize("backup_id", ["other/20240101T000000Z", "{a}/../../etc", "{a}/2024", "{a}/x;id",
                                       "{a}/20240101T000000Z\n", "{a}"])
def test_the_script_refuses_bad_backup_ids(env: Env, live: AccountSpec, backup_id: str) -> None:
    rc, out = env.script("restore", live.name, backup_id.format(a=live.name))
    assert rc == 2 and out["refused"] is True, out


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "ab\x00c"])
def test_the_adapter_refuses_hostile_account_names_before_anything_runs(name: str) -> None:
    calls: list[Any] = []

    def runner(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("nothing may run for a hostile name")

    backups = HostingBackups(runner=runner)
    node = Target("n", "192.0.2.1")
    for call in (lambda: backups.backup(node, name), lambda: backups.list(node, name),
                 lambda: backups.purge(node, name), lambda: backups.prune(node, name),
                 lambda: backups.restore(node, name, f"{name}/20240101T000000Z"),
                 lambda: backups.set_free_backups(node, name, False)):
        with pytest.raises(InvalidInput):
            call()
    assert calls == []


def test_the_playbook_refuses_a_hostile_name_given_by_hand(env: Env) -> None:
    result = run_playbook("hosting_account_backup", [env.node],
                          {"hosting_backup_account": "a;touch /tmp/owned"},
                          ssh_key=env.backups.ssh_key, timeout_s=120)
    assert not result.ok
    assert "hosting_backup_account must match" in " ".join(result.errors.values())
    assert not env.host.file("/tmp/owned").exists
