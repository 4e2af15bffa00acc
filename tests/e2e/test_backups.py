"""Backups that survive the node: restic repositories on a separate backup host.

Throwaway hosts of this module's own, booted at once: node A (restores onto it and most
tests), a backup host (roles/backup_host, booted from the base image) and node C, which is
destroyed after its nightly backup. Driven through the
playbooks (roles/hosting_backup, backup_host.yml, hosting_node_backup.yml) and the node
script over testinfra; compared with manifests (sha256 per file, the database's rows).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import smtplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.adapters.hosting import Target
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from tests.e2e.nodes import BACKUP_SCRIPT as SCRIPT
from tests.e2e.nodes import Enrolment, backup_key, infra_host, own_hosts, playbook, point_at
from tests.servers import wait_for

# The module's hosts (a backup host, a second node) are set up in the first test's
# fixtures: on a loaded machine that alone can take minutes.
pytestmark = pytest.mark.timeout(1500)

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "roles/hosting_node/defaults/main.yml").read_text())
RETENTION: dict[str, int] = DEFAULTS["hosting_node_backup_retention"]
RESTIC_ROOT = "/srv/restic"

HOSTILE_NAMES = ["a;reboot", "../etc", "Root", "a" * 33, "$(id)", "-rf", "a/b"]


@dataclass
class NodeEnv:
    """One hosting node enrolled with the backup host."""

    name: str  # its name on the backup host
    info: Any
    host: Any  # testinfra
    password: str = field(repr=False)
    public_key: str = ""

    @property
    def target(self) -> Target:
        return self.info.target()

    @property
    def accounts(self) -> HostingAccounts:
        return HostingAccounts(ssh_key=Path(self.info.ssh_key))

    def sh(self, command: str, *args: Any) -> str:
        return str(self.host.check_output(command, *args))

    def script(self, *args: str) -> tuple[int, dict[str, Any]]:
        r = self.host.run(" ".join([SCRIPT, *(shlex.quote(a) for a in args)]))
        return r.rc, json.loads(r.stdout)

    def ok(self, *args: str) -> dict[str, Any]:
        rc, data = self.script(*args)
        assert rc == 0, data
        return data

    def new_account(self, plan: str = "mega", name: str | None = None) -> AccountSpec:
        name = name or f"bk{uuid.uuid4().hex[:10]}"
        spec = AccountSpec(name, (f"{name}.si",), CATALOG.hosting_plan(plan), mailboxes=("info",))
        created = self.accounts.create(self.target, spec, Secrets.generate(spec.mailboxes))
        created.raise_for_status("e2e.create")
        return spec.validated()

    def put(self, spec: AccountSpec, relpath: str, size: int) -> None:
        """A file of random bytes in the account's home, owned by the account."""
        path = f"/srv/hosting/{spec.name}/{relpath}"
        self.sh("install -d -o %s -g %s %s", spec.name, spec.name, os.path.dirname(path))
        self.sh("head -c %s /dev/urandom > %s && chown %s: %s", str(size), path, spec.name, path)

    def deliver(self, spec: AccountSpec, subject: str) -> None:
        to = f"info@{spec.domains[0]}"
        smtp = smtplib.SMTP(self.info.address, 25, timeout=20)
        try:
            smtp.sendmail("sender@outside.example", [to],
                          f"From: sender@outside.example\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n")
        finally:
            smtp.quit()
        maildir = f"/srv/mail/{spec.domains[0]}/info/Maildir"
        wait_for(lambda: self.host.run("grep -rq -- %s %s", subject, maildir).rc == 0, 30,
                 "the delivered message in the maildir")

    def sql(self, database: str, statement: str) -> str:
        return self.sh("mysql --batch --skip-column-names --database %s -e %s", database, statement)

    def hashes(self, path: str) -> dict[str, str]:
        """sha256 of every regular file below path, by relative path."""
        out = self.sh("cd %s && find . -type f -print0 | sort -z | xargs -0 -r sha256sum", path)
        return {line[66:]: line[:64] for line in out.splitlines() if line}

    def manifest(self, spec: AccountSpec) -> dict[str, Any]:
        """Everything of the account a restore must bring back, byte for byte."""
        owners = self.sh("cd %s && find . -printf '%%P %%u:%%g %%m\\n' | sort", f"/srv/hosting/{spec.name}")
        return {"home": self.hashes(f"/srv/hosting/{spec.name}"), "owners": owners,
                "mail": self.hashes(f"/srv/mail/{spec.domains[0]}"),
                "rows": self.sql(spec.name, "SELECT id, item, HEX(blob_col) FROM orders ORDER BY id"),
                "tables": self.sql(spec.name, "SHOW TABLES")}

    def snapshots(self, account: str) -> list[dict[str, Any]]:
        return list(self.ok("list", account)["backups"])


@dataclass
class World:
    hosts: Any
    backup: Any  # the backup host's HostInfo
    bh: Any  # testinfra to the backup host
    a: NodeEnv
    c: NodeEnv
    host_key: str = ""

    def nodes_var(self, extra: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        extra = extra or {}
        return [{"name": n.name, "authorized_keys": [n.public_key, *extra.get(n.name, [])]}
                for n in (self.a, self.c)]

    def repository(self, node: NodeEnv) -> str:
        return f"sftp:rn-{node.name}@{self.backup.address}:/repo"

    def converge_backup_host(self, extra: dict[str, list[str]] | None = None) -> dict[str, Any]:
        return playbook("backup_host.yml", self.backup, {"backup_host_nodes": self.nodes_var(extra)})

    def enrol(self, node: NodeEnv) -> dict[str, Any]:
        return point_at(Enrolment(node.name, node.info, self.backup, self.host_key, node.password))


@pytest.fixture(scope="module")
def world(hosts: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # Nodes of this module's own: C is destroyed, A restores C's account with C's
    # repository and runs nightly runs over all its accounts, and the backup host is
    # converged with A's key on C's account for a while; the session's node and backup
    # host (tests/e2e/conftest.py) are for modules that only need "a node enrolled with a
    # backup host". The three hosts boot at once, A and C converge in one Ansible run.
    pid = os.getpid()
    with own_hosts(hosts, "e2e.backups", nodes=[f"t-na-{pid}", f"t-nc-{pid}"], bare=[f"t-bk-{pid}"]) as own:
        (a_info, c_info), (backup,) = own.nodes, own.bare
        bh = infra_host(backup, tmp_path_factory.mktemp("ssh-bk"))
        a = NodeEnv("na", a_info, infra_host(a_info, tmp_path_factory.mktemp("ssh-a")),
                    secrets.token_urlsafe(32))
        c = NodeEnv("nc", c_info, infra_host(c_info, tmp_path_factory.mktemp("ssh-c")),
                    secrets.token_urlsafe(32))
        for n in (a, c):
            n.public_key = backup_key(n.host)
        w = World(hosts, backup, bh, a, c)
        w.host_key = w.converge_backup_host()["host_key"]
        for n in (a, c):
            w.enrol(n)
        yield w


def make_live(n: NodeEnv, plan: str = "giga5") -> AccountSpec:
    """An account with files (text, binary, nested), a delivered message and a table."""
    spec = n.new_account(plan)
    n.put(spec, "public_html/index.php", 200)
    n.put(spec, "public_html/deep/er/data.bin", 300_000)
    n.put(spec, "notes.txt", 50)
    n.sql(spec.name, "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(40), blob_col BLOB) "
                     "ENGINE=InnoDB")
    n.sql(spec.name, "INSERT INTO orders VALUES (1, 'apple', RANDOM_BYTES(200)), (2, 'pear', NULL), "
                     "(3, 'šumnik', RANDOM_BYTES(32))")
    n.deliver(spec, f"before-backup-{uuid.uuid4().hex}")
    return spec


# -- the node dies; the account comes back on another node from the backup host alone -----------
def test_the_nightly_backup_lands_on_the_backup_host_and_the_account_comes_back_on_a_fresh_node(
        world: World) -> None:
    c, a = world.c, world.a
    spec = make_live(c)
    before = c.manifest(spec)
    start = c.host.run("systemctl start hosting-backup.service")
    nightly = json.loads(c.sh("cat /var/lib/hosting-backup/last-nightly.json"))
    assert start.rc == 0, nightly
    snap_id = nightly["accounts"][spec.name]["backup"]
    # it landed on the backup host, in C's repository, encrypted: no file name in clear there
    on_bk = world.bh.check_output("ls %s/rn-nc/repo/snapshots", RESTIC_ROOT).split()
    assert snap_id in on_bk
    assert world.bh.run("grep -rqa %s %s/rn-nc/repo", "public_html", RESTIC_ROOT).rc == 1
    assert c.password not in json.dumps(nightly)
    # the node is destroyed: nothing of it is left but the repository on the backup host
    world.hosts.down(c.info.name)
    a.new_account("giga5", name=spec.name)
    world.converge_backup_host(extra={"nc": [a.public_key]})  # A may read C's repository now
    try:
        result = playbook("hosting_account_restore.yml", a.info, {
            "hosting_backup_account": spec.name, "hosting_backup_id": snap_id,
            "hosting_backup_source_repository": world.repository(c),
            "hosting_backup_source_password": c.password})
    finally:
        world.converge_backup_host()  # and no longer
    assert result["id"] == snap_id and result["verified_files"] > 3
    assert sorted(result["restored"]) == sorted([f"/srv/hosting/{spec.name}", f"/srv/mail/{spec.domains[0]}",
                                                 f"database:{spec.name}"])
    after = a.manifest(spec)
    assert after == before
    # owners (by name: the account's uid differs on this node) and modes came back too
    assert f"public_html/deep/er/data.bin {spec.name}:{spec.name} 644" in after["owners"]
    left = a.sh("ls %s/restore-%s 2>/dev/null || echo gone", "/etc/hosting/backup/sources", spec.name)
    assert left.strip() == "gone"  # the other repository's password is not kept


# -- isolation between nodes -----------------------------------------------------------------------
def sftp(n: NodeEnv, user: str, address: str, commands: str) -> Any:
    return n.host.run(
        "printf %s | sftp -b - -i /etc/hosting/backup/id_ed25519 -o BatchMode=yes -o IdentitiesOnly=yes "
        "-o UserKnownHostsFile=/etc/hosting/backup/known_hosts %s@%s", commands, user, address)


def test_a_nodes_credentials_cannot_list_read_or_delete_another_nodes_repository(world: World) -> None:
    a, addr = world.a, world.backup.address
    other = world.bh.check_output("find %s/rn-nc/repo -type f | sort | sha256sum", RESTIC_ROOT)
    for commands in ("ls /repo\n", "get /repo/config /tmp/stolen\n", "rm /repo/config\n"):
        r = sftp(a, "rn-nc", addr, commands)
        assert r.rc != 0 and "Permission denied" in r.stderr, r.stderr
    # in its own account it is locked into its chroot: only its repository is there
    own = sftp(a, "rn-na", addr, "ls -a /\ncd ..\nls -a\n")
    assert own.rc == 0
    listed = {os.path.basename(w.rstrip("/")) for line in own.stdout.splitlines()
              if not line.startswith("sftp>") for w in line.split()}
    assert listed <= {".", "..", "repo", ""} and "rn-nc" not in own.stdout, own.stdout
    assert sftp(a, "rn-na", addr, "ls /srv/restic/rn-nc\n").rc != 0
    # no shell either
    shell = a.host.run("ssh -i /etc/hosting/backup/id_ed25519 -o BatchMode=yes -o IdentitiesOnly=yes "
                       "-o UserKnownHostsFile=/etc/hosting/backup/known_hosts rn-na@%s id", addr)
    assert "uid=" not in shell.stdout
    # restic with A's key against C's repository fails; C's repository is untouched
    ssh_cmd = ("ssh -i /etc/hosting/backup/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes "
               f"-o UserKnownHostsFile=/etc/hosting/backup/known_hosts -l rn-nc {addr} -s sftp")
    r = a.host.run("RESTIC_PASSWORD_FILE=/etc/hosting/backup/password restic --no-cache -r %s "
                   "-o sftp.command=%s snapshots", world.repository(world.c), ssh_cmd)
    assert r.rc != 0
    assert world.bh.check_output("find %s/rn-nc/repo -type f | sort | sha256sum", RESTIC_ROOT) == other


# -- retention ------------------------------------------------------------------------------------
def test_retention_per_plan_over_a_simulated_month_of_nightly_runs(world: World) -> None:
    a = world.a
    spec = a.new_account("mega")
    keep = RETENTION["mega"]
    for day in range(1, 31):
        a.put(spec, f"day{day}.txt", 64)  # something changes every night
        a.ok("backup", spec.name, "--service", "7001", "--time", f"2026-01-{day:02d}T03:15:00Z")
    a.ok("backup", spec.name, "--time", "2026-01-30T12:00:00Z")  # a second one on the last day
    assert len(a.snapshots(spec.name)) == 31
    result = a.ok("forget", spec.name)
    assert result["keep"] == keep and result["pruned"] is True
    left = a.snapshots(spec.name)
    assert len(left) == keep
    assert [s["created_at"] for s in left] == (
        [f"2026-01-{d:02d}T03:15:00Z" for d in range(31 - keep, 30)] + ["2026-01-30T12:00:00Z"])
    assert all(s["service"] == "7001" for s in left)  # recorded: later runs tag it too
    assert len(result["removed"]) == 31 - keep
    assert a.ok("forget", spec.name)["changed"] is False  # nothing more to forget


# -- stage 2 --------------------------------------------------------------------------------------
def test_stage_2_purge_removes_every_snapshot_of_the_service_and_leaves_the_others(world: World) -> None:
    a = world.a
    gone, kept = a.new_account("mega"), a.new_account("mega")
    for spec, service in ((gone, "8001"), (kept, "8002")):
        a.put(spec, "big.bin", 2_000_000)  # its own data, so the prune frees bytes
        a.ok("backup", spec.name, "--service", service)
        a.put(spec, "more.bin", 100_000)
        a.ok("backup", spec.name)
    kept_before = a.snapshots(kept.name)
    kept_files = a.hashes(f"/srv/hosting/{kept.name}")
    refused = a.script("purge", kept.name)  # still on the node: stage 1 comes first
    assert refused[0] == 2 and refused[1]["error"] == "refused"
    gone_ids = [s["id"] for s in a.snapshots(gone.name)]
    a.accounts.terminate(a.target, gone).raise_for_status("e2e.terminate")
    purge = playbook("hosting_account_purge_backups.yml", a.info,
                     {"hosting_backup_account": gone.name, "hosting_backup_service": "8001"})
    assert sorted(purge["snapshot_ids"]) == sorted(gone_ids)
    assert purge["remaining"] == 0 and purge["check"] == {"ok": True}
    assert purge["bytes_freed"] > 1_000_000
    assert a.snapshots(gone.name) == []
    assert f"/var/lib/hosting-backup/dump/{gone.name}" in purge["removed_dirs"]
    assert a.ok("check", "--read-data-subset", "100%")["ok"] is True
    again = a.ok("purge", gone.name, "--service", "8001")
    assert again["changed"] is False and again["snapshot_ids"] == []
    # the other account's snapshots are intact and restorable
    assert a.snapshots(kept.name) == kept_before
    a.sh("rm -rf %s/*", f"/srv/hosting/{kept.name}")
    restored = a.ok("restore", kept.name, kept_before[-1]["id"])
    assert restored["verified_files"] >= 2
    assert a.hashes(f"/srv/hosting/{kept.name}") == kept_files


# -- the backup host is unreachable during the nightly run ----------------------------------------
def test_an_unreachable_backup_host_fails_the_nightly_run_loudly_and_a_retry_succeeds(world: World) -> None:
    a = world.a
    spec = a.new_account("mega")
    a.put(spec, "precious.bin", 50_000)
    first = a.ok("backup", spec.name)["id"]
    files = a.hashes(f"/srv/hosting/{spec.name}")
    assert a.sh("systemctl show -p Restart --value hosting-backup.service").strip() == "on-failure"
    a.sh("ip route add unreachable %s/32", world.backup.address)
    try:
        start = a.host.run("systemctl start hosting-backup.service")
        a.host.run("systemctl stop hosting-backup.service")  # no automatic retry inside the test
        nightly = json.loads(a.sh("cat /var/lib/hosting-backup/last-nightly.json"))
        assert start.rc != 0
        assert nightly["ok"] is False and nightly["error"] == "unreachable"
        assert spec.name in nightly["failed"] and "unreachable" in nightly["accounts"][spec.name]["failed"]
        run = playbook("hosting_account_backup.yml", a.info,
                       {"hosting_backup_action": "nightly", "hosting_backup_account": ""}, check=False)
        assert not run["_run"].ok and run["error"] == "unreachable" and spec.name in run["failed"]
    finally:
        a.sh("ip route del unreachable %s/32", world.backup.address)
    # nothing on the node was lost, no half-written dump was left lying around
    assert a.hashes(f"/srv/hosting/{spec.name}") == files
    assert a.sh("find /var/lib/hosting-backup/dump -name '*.new'").strip() == ""
    assert a.sh("stat -c %%a:%%U %s", f"/var/lib/hosting-backup/dump/{spec.name}").strip() == "700:root"
    # the retry succeeds
    a.host.run("systemctl reset-failed hosting-backup.service")
    assert a.host.run("systemctl start hosting-backup.service").rc == 0
    nightly = json.loads(a.sh("cat /var/lib/hosting-backup/last-nightly.json"))
    assert nightly["ok"] is True and nightly["error"] is None and nightly["failed"] == []
    newest = a.snapshots(spec.name)[-1]  # the same day's older one is forgotten (keep-daily)
    assert newest["id"] == nightly["accounts"][spec.name]["backup"] != first


# -- free backups, verification, bad input --------------------------------------------------------
def test_an_account_without_free_backups_is_skipped_by_the_nightly_run(world: World) -> None:
    a = world.a
    spec = a.new_account("mega")
    assert a.ok("exclude", spec.name)["changed"] is True
    nightly = a.ok("nightly")
    assert "marker file" in nightly["accounts"][spec.name]["skipped"]
    assert a.snapshots(spec.name) == []
    assert a.ok("include", spec.name)["excluded"] is False


def test_the_restore_drill_and_the_weekly_check_pass(world: World) -> None:
    a = world.a
    spec = a.new_account("mega")
    a.put(spec, "drill.bin", 10_000)
    a.ok("backup", spec.name)
    drill = a.ok("drill", spec.name)
    assert drill["ok"] is True and drill["files"] >= 1 and drill["mismatches"] == []
    assert a.ok("check")["read_data_subset"] == "5%"
    assert a.sh("systemctl is-enabled hosting-backup-check.timer").strip() == "enabled"


def test_a_snapshot_is_dumped_as_a_tar_only_for_its_own_account(world: World) -> None:
    a = world.a
    spec, other = a.new_account("mega"), a.new_account("mega")
    a.put(spec, "mine.bin", 5_000)
    snap = a.ok("backup", spec.name)["id"]
    a.ok("backup", other.name)
    listing = a.sh("%s dump %s latest | tar -tf -", SCRIPT, spec.name)
    assert f"srv/hosting/{spec.name}/mine.bin" in listing
    assert f"var/lib/hosting-backup/dump/{spec.name}/{spec.name}.sql" in listing
    assert other.name not in listing
    refused = a.host.run("%s dump %s %s", SCRIPT, other.name, snap)  # not the other's snapshot
    assert refused.rc == 2 and refused.stdout == ""
    assert json.loads(refused.stderr)["error"] == "refused"


@pytest.mark.parametrize("bad", HOSTILE_NAMES)
def test_a_hostile_account_name_is_refused(world: World, bad: str) -> None:
    rc, data = world.a.script("backup", bad)
    assert rc == 2 and data["error"] == "refused"


def test_the_password_file_is_private_and_never_printed(world: World) -> None:
    a = world.a
    assert a.sh("stat -c %%a:%%U %s", "/etc/hosting/backup/password").strip() == "600:root"
    status = a.ok("status", "nosuchacct")
    assert status["backups"] == 0 and "repository_error" not in status
    assert a.password not in json.dumps(status)


def test_an_unchanged_database_is_not_dumped_again_and_a_changed_one_is(world: World) -> None:
    a = world.a
    spec = make_live(a)
    fingerprint = f"/var/lib/hosting-backup/dump/{spec.name}/{spec.name}.fingerprint"

    def backed_up_with_a_kept_fingerprint() -> bool:  # kept once the last commit is seconds old
        a.ok("backup", spec.name)
        return a.host.run("test -f %s", fingerprint).rc == 0

    wait_for(backed_up_with_a_kept_fingerprint, 60, "a dump with a trusted fingerprint")
    inode = a.sh("stat -c %%i %s", fingerprint)
    a.ok("backup", spec.name)
    assert a.sh("stat -c %%i %s", fingerprint) == inode  # unchanged: not dumped again
    a.sql(spec.name, "UPDATE orders SET item = 'kiwi' WHERE id = 2")
    snap = a.ok("backup", spec.name)["id"]
    a.sql(spec.name, "UPDATE orders SET item = 'plum' WHERE id = 2")
    a.ok("restore", spec.name, snap)
    assert a.sql(spec.name, "SELECT item FROM orders WHERE id = 2").strip() == "kiwi"
