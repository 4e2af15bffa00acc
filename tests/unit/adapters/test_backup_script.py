"""The node's backup script (roles/hosting_node, hosting-backup.j2) as the node runs it:
how it calls restic (the password only as a file path, the SSH command built from a
checked URL), what it refuses before anything runs, how it reads restic's answers.
The script against real restic and a real backup host: tests/e2e/test_backups.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.adapters.node_code import BACKUP, load_node_template

SCRIPT = load_node_template("hosting_backup_script_unit", BACKUP)
URL = "sftp:rn-node1@10.213.0.3:/repo"


@pytest.fixture
def password(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text("s3cret-pass")
    path.chmod(0o600)
    return path


@pytest.fixture
def locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SCRIPT, "LOCK_DIR", str(tmp_path / "locks"))


def test_restic_gets_the_password_as_a_file_path_never_in_argv(password: Path) -> None:
    repo = SCRIPT.Repo(URL, str(password))
    argv = repo.argv("snapshots", "--json")
    assert "s3cret-pass" not in " ".join(argv)
    assert argv[:3] == ["restic", "--repo", URL]
    assert repo.env()["RESTIC_PASSWORD_FILE"] == str(password)
    assert "RESTIC_PASSWORD" not in repo.env()
    command = next(a for a in argv if a.startswith("sftp.command="))
    assert command.endswith("-l rn-node1 10.213.0.3 -s sftp")
    assert "StrictHostKeyChecking=yes" in command and "BatchMode=yes" in command


def test_a_password_file_others_can_read_is_refused(password: Path) -> None:
    password.chmod(0o644)
    with pytest.raises(SCRIPT.Failed) as err:
        SCRIPT.Repo(URL, str(password))
    assert err.value.kind == "not_configured"


@pytest.mark.parametrize("url", [
    "sftp:rn-a@host:/repo -o ProxyCommand=touch /tmp/x", "sftp:rn-a@host;reboot:/repo",
    "sftp:-oProxyCommand=x@host:/repo", "s3:s3.amazonaws.com/bucket", "sftp:rn-a@host:repo",
    "sftp:rn-a@host:/re po", "rest:http://host:8000/",
])
def test_a_hostile_repository_url_is_refused(password: Path, url: str) -> None:
    with pytest.raises(SCRIPT.Refused):
        SCRIPT.Repo(url, str(password))


@pytest.mark.parametrize("args", [
    ["restore", "acct", "abc;rm -rf /"],
    ["restore", "acct", "deadbeef", "--repository", URL],  # without its password file
    ["restore", "acct", "deadbeef", "--repository", URL, "--password-file", "/etc/shadow"],
    ["restore", "acct", "deadbeef", "--repository", "sftp:x@h:/r;id", "--password-file", "/x"],
    ["backup", "acct", "--service", "42; reboot"],
    ["backup", "acct", "--time", "yesterday"],
    ["backup", "acct", "--service", "1", "--service", "2"],
    ["backup", "acct", "--bogus", "1"],
    ["purge", "acct", "--service", "x"],
    ["service", "acct", "-1"],
    ["check", "--read-data-subset", "all; reboot"],
    ["status", "acct", "../../etc"],
    ["list", "Root"],
    ["nightly", "extra"],
    ["dump", "acct", "latest;id"],
    ["dump", "acct"],
    [],
])
def test_bad_arguments_are_refused_before_anything_runs(locks: None, args: list[str]) -> None:
    with pytest.raises(SCRIPT.Refused):
        SCRIPT.dispatch(args)


def test_a_refusal_prints_json_and_exits_2(locks: None, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "umask", lambda mask: 0o022)
    assert SCRIPT.main(["hosting-backup", "restore", "acct", "nothex!"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] is True and out["refused"] is True and out["error"] == "refused"


@pytest.mark.parametrize(("stderr", "kind"), [
    ("Fatal: unable to open repository: ssh: connect to host 10.0.0.3 port 22: No route", "unreachable"),
    ("subprocess ssh: ssh: connect to host 10.213.0.3 port 22: Connection refused", "unreachable"),
    ("Fatal: unable to create lock in backend: repository is already locked exclusively by PID 7", "locked"),
    ("Fatal: wrong password or no key found", "failed"),
])
def test_restic_failures_are_told_apart(password: Path, stderr: str, kind: str) -> None:
    assert SCRIPT.Repo(URL, str(password)).failure("backup", 1, stderr).kind == kind


@pytest.mark.parametrize(("restic", "iso"), [
    ("2026-01-05T03:15:00Z", "2026-01-05T03:15:00Z"),
    ("2026-01-05T03:15:00.123456789Z", "2026-01-05T03:15:00Z"),
    ("2026-01-05T04:15:00.5+01:00", "2026-01-05T03:15:00Z"),
    ("2026-01-04T22:15:00-05:00", "2026-01-05T03:15:00Z"),
])
def test_restic_times_become_utc(restic: str, iso: str) -> None:
    assert SCRIPT.iso_of(restic) == iso


class FakeRepo:
    url = URL

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[str, ...]] = []

    def json(self, *args: str) -> Any:
        self.calls.append(args)
        return self.answer


def test_retention_forgets_by_the_account_tag_with_the_plans_days() -> None:
    repo = FakeRepo([{"keep": [{"id": "k1"}, {"id": "k2"}], "remove": [{"id": "r1"}]}])
    kept, removed = SCRIPT.forget(repo, "acct", SCRIPT.keep_for({"plan": "giga15"}))
    assert (kept, removed) == (["k1", "k2"], ["r1"])
    assert repo.calls == [("forget", "--tag", "account:acct", "--group-by", "", "--keep-daily", "30")]
    assert SCRIPT.keep_for({"plan": "unknown"}) == SCRIPT.DEFAULT_KEEP


def test_a_snapshot_record_names_what_it_holds() -> None:
    snap = {"id": "a" * 64, "short_id": "aaaaaaaa", "time": "2026-01-05T03:15:00.1Z", "hostname": "node1",
            "tags": ["account:acct", "service:42", "plan:giga5", "uid:1001", "gid:1001"],
            "paths": ["/srv/hosting/acct", "/srv/mail/acct.si", "/var/lib/hosting-backup/dump/acct/acct.sql"]}
    record = SCRIPT.record(FakeRepo(None), snap)
    assert record["account"] == "acct" and record["service"] == "42" and record["plan"] == "giga5"
    assert record["home"] == "/srv/hosting/acct" and record["mail"] == ["/srv/mail/acct.si"]
    assert record["database"] == "acct" and record["created_at"] == "2026-01-05T03:15:00Z"
    assert record["repository"] == URL


# -- skipping the dump of an unchanged database (the decision; the real thing: tests/e2e) -----------
NOW = 1_800_000_000


def fingerprint(**change: Any) -> dict[str, Any]:
    fp: dict[str, Any] = {"version": SCRIPT.DUMP_VERSION, "now": NOW, "started": NOW - 86_400, "schema": "s1",
                          "server": "10.11.6-MariaDB-0+deb12u1-log",
                          "tables": [["orders", "BASE TABLE", "InnoDB", str(NOW - 3600), str(NOW - 60)],
                                     ["v_orders", "VIEW", "-", "-", "-"]]}
    fp.update(change)
    return fp


STAT = [12, 3456, 789]


def kept(**change: Any) -> dict[str, Any]:
    return dict(fingerprint(**change), dump=STAT)


def test_an_unchanged_database_with_its_kept_dump_is_not_dumped_again() -> None:
    assert SCRIPT.dump_needed(kept(), fingerprint(now=NOW + 3600), STAT) is False
    assert SCRIPT.dump_needed(kept(), fingerprint(started=NOW - 86_399), STAT) is False  # uptime jitter


@pytest.mark.parametrize(("old", "new", "stat"), [
    (None, fingerprint(), STAT),  # no fingerprint kept (first run, or the last one was not trusted)
    (kept(), fingerprint(), None),  # the dump file is gone
    (kept(), fingerprint(), [12, 3456, 790]),  # the dump file was touched
    (kept(), fingerprint(started=NOW - 600), STAT),  # the server restarted since
    (kept(), fingerprint(schema="s2"), STAT),  # DDL: a column, an index, a view, a routine, a trigger
    (kept(version=0), fingerprint(), STAT),  # the dump's options changed
    (kept(), fingerprint(server="10.11.7-MariaDB-0+deb12u1-log"), STAT),  # the server was upgraded
    (kept(server="8.0.36"), fingerprint(server="8.0.36"), STAT),  # MySQL 8 caches UPDATE_TIME for a day
    (kept(), fingerprint(tables=[["orders", "BASE TABLE", "InnoDB", str(NOW - 3600), str(NOW - 1)]]), STAT),
    (kept(), fingerprint(tables=[["orders", "BASE TABLE", "InnoDB", str(NOW - 3600), str(NOW - 30)],
                                 ["v_orders", "VIEW", "-", "-", "-"]]), STAT),  # a commit since
    (kept(), fingerprint(tables=[["orders", "BASE TABLE", "InnoDB", str(NOW - 3600), "-"],
                                 ["v_orders", "VIEW", "-", "-", "-"]]), STAT),  # time lost: evicted
    (kept(), fingerprint(tables=fingerprint()["tables"] + [["t2", "BASE TABLE", "InnoDB", "1", "1"]]), STAT),
])
def test_any_sign_of_a_change_means_a_new_dump(old: Any, new: dict[str, Any], stat: Any) -> None:
    assert SCRIPT.dump_needed(old, new, stat) is True


@pytest.mark.parametrize(("table", "trusted"), [
    (["t", "BASE TABLE", "InnoDB", str(NOW - 10), str(NOW - 2)], True),
    (["t", "BASE TABLE", "Aria", str(NOW - 10), str(NOW - 10)], False),  # may write its files late
    (["t", "BASE TABLE", "MyISAM", str(NOW - 10), str(NOW - 10)], False),
    (["t", "BASE TABLE", "InnoDB", str(NOW - 10), str(NOW - 1)], False),  # same second: may hide a commit
    (["t", "BASE TABLE", "InnoDB", str(NOW), str(NOW - 10)], False),  # just altered
    (["t", "BASE TABLE", "InnoDB", str(NOW - 10), "-"], False),  # not changed since start, or evicted
    (["t", "BASE TABLE", "MEMORY", str(NOW - 10), str(NOW - 10)], False),  # engines we cannot vouch for
    (["t", "BASE TABLE", "FEDERATED", str(NOW - 10), str(NOW - 10)], False),
    (["s", "SEQUENCE", "InnoDB", str(NOW - 10), str(NOW - 10)], False),
    (["t", "SYSTEM VERSIONED", "InnoDB", str(NOW - 10), str(NOW - 10)], False),
])
def test_a_fingerprint_is_trusted_only_with_times_the_engine_keeps(table: list[str], trusted: bool) -> None:
    fp = fingerprint(tables=[table])
    assert SCRIPT.fingerprint_trusted(fp) is trusted
    assert SCRIPT.dump_needed(dict(fp, dump=STAT), fp, STAT) is not trusted
