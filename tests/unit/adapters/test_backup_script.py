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


# -- one restic run per backup: the full snapshot id from restic's cache ------------------------------
FULL = "3f2a9c1d" + "b" * 56


class ResticBackup:
    """A repository whose ``restic backup --json`` prints restic 0.14's summary (short id only)."""

    url = URL

    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.listed = listed
        self.calls: list[tuple[str, ...]] = []

    def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[str, str, int]:
        self.calls.append(args)
        summary = {"message_type": "summary", "snapshot_id": FULL[:8], "data_added": 10,
                   "total_bytes_processed": 5, "total_files_processed": 1}
        return '{"message_type":"status"}\n' + json.dumps(summary) + "\n", "", 0

    def json(self, *args: str) -> Any:
        self.calls.append(args)
        return self.listed


@pytest.fixture
def account_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An account ``acct`` with a home and no database; restic's cache below tmp_path/cache."""
    home = tmp_path / "hosting" / "acct"
    home.mkdir(parents=True)
    (home / "index.html").write_text("hi")
    monkeypatch.setattr(SCRIPT, "HOSTING_ROOT", str(tmp_path / "hosting"))
    monkeypatch.setattr(SCRIPT, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(SCRIPT, "SERVICES", str(tmp_path / "services"))
    monkeypatch.setattr(SCRIPT, "CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(SCRIPT, "db_fingerprint", lambda account: None)
    return tmp_path / "cache"


def cache_snapshots(cache: Path, repo_id: str, *ids: str) -> None:
    for i in ids:  # restic 0.14's cache layout
        (cache / repo_id / "snapshots" / i[:2]).mkdir(parents=True, exist_ok=True)
        (cache / repo_id / "snapshots" / i[:2] / i).write_bytes(b"encrypted")


def test_a_backup_takes_the_full_snapshot_id_from_restics_cache_in_one_restic_run(
        account_home: Path) -> None:
    cache_snapshots(account_home, "c" * 64, "3f2a0000" + "0" * 56, FULL)
    repo = ResticBackup([])
    when = SCRIPT.parse_time("2026-01-05T03:15:00Z")
    out = SCRIPT.op_backup("acct", "42", when, repo=repo)
    assert [c[0] for c in repo.calls] == ["backup"]
    assert repo.calls[0][1:5] == ("--compression", "off", "--pack-size", "64")  # the role's defaults
    assert out["id"] == FULL and out["short_id"] == FULL[:8]
    assert out["parts"]["home"] == {"bytes": 2, "files": 1}  # counted beside restic
    assert out["created_at"] == "2026-01-05T03:15:00Z" and out["service"] == "42"
    assert out["home"] == str(account_home.parent / "hosting" / "acct") and out["added_bytes"] == 10


@pytest.mark.parametrize("cached", [(), (FULL, FULL[:8] + "e" * 56)])
def test_without_one_cached_match_a_backup_asks_restic_for_the_snapshot(account_home: Path,
                                                                       cached: tuple[str, ...]) -> None:
    for n, snap_id in enumerate(cached):  # none, or the short id twice (two repositories' caches)
        cache_snapshots(account_home, str(n) * 64, snap_id)
    listed = {"id": FULL, "short_id": FULL[:8], "time": "2026-01-05T03:15:00.5Z", "hostname": "n",
              "tags": ["account:acct"], "paths": [str(account_home.parent / "hosting" / "acct")]}
    repo = ResticBackup([listed])
    out = SCRIPT.op_backup("acct", repo=repo)
    assert [c[0] for c in repo.calls] == ["backup", "snapshots"]
    assert out["id"] == FULL and out["created_at"] == "2026-01-05T03:15:00Z"


# -- the nightly run calls restic forget only where the retention removes something ------------------
def nights(*days: int, hour: str = "03:15:00.25") -> list[str]:
    return [f"2026-01-{d:02d}T{hour}Z" for d in days]


@pytest.mark.parametrize(("times", "keep", "due"), [
    ([], 7, False),
    (nights(*range(1, 8)), 7, False),  # one a night, exactly as many as kept
    (nights(*range(1, 9)), 7, True),  # the eighth night: the first goes
    (nights(1, 2) + ["2026-01-02T12:00:00Z"], 7, True),  # two on one day: the older goes
    (nights(1, 2), 1, True),
    (nights(5), 1, False),
    (["2026-01-01T04:15:00+01:00"], 7, True),  # not UTC: restic decides
    (["yesterday"], 7, True),
])
def test_retention_is_due_exactly_when_keep_daily_removes_a_snapshot(times: list[str], keep: int,
                                                                      due: bool) -> None:
    assert SCRIPT.forget_due(times, keep) is due


class NightlyRepo:
    """The repository as the nightly run sees it: one listing, forget and prune recorded."""

    url = URL

    def __init__(self, listed: list[dict[str, Any]] | None) -> None:
        self.listed = listed
        self.calls: list[tuple[str, ...]] = []

    def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[str, str, int]:
        self.calls.append(args)
        return "", "", 0

    def snapshots(self, *tags: str) -> list[dict[str, Any]]:
        self.calls.append(("snapshots", *tags))
        if self.listed is None:
            raise SCRIPT.Failed("failed", "restic snapshots failed")
        return self.listed

    def json(self, *args: str) -> Any:
        self.calls.append(args)
        return [{"keep": [], "remove": [{"id": "old"}]}]


@pytest.mark.parametrize("listing_works", [True, False])
def test_the_nightly_run_forgets_only_where_the_retention_removes_a_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing_works: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for name in ("fresh", "full"):  # mega plans: keep 7 days
        (state / f"{name}.json").write_text(json.dumps({"plan": "mega", "domains": []}))
    listed = [{"id": f"f{d}", "time": f"2026-01-0{d}T03:15:00.5Z", "tags": ["account:full"]}
              for d in range(1, 8)]
    listed.append({"id": "y", "time": "2026-01-07T03:15:00.5Z", "tags": ["account:fresh"]})
    repo = NightlyRepo(listed if listing_works else None)
    for name, value in (("STATE_DIR", state), ("WORK", tmp_path / "work"), ("LOCK_DIR", tmp_path / "locks"),
                        ("EXCLUDE_DIR", tmp_path / "exclude"), ("LEGACY_ROOT", tmp_path / "legacy")):
        monkeypatch.setattr(SCRIPT, name, str(value))
    monkeypatch.setattr(SCRIPT, "Repo", lambda: repo)
    monkeypatch.setattr(SCRIPT, "op_backup", lambda account, repo=None: {
        "id": "new-" + account, "created_at": "2026-01-08T03:15:00Z"})
    out = SCRIPT.op_nightly()
    forgotten = [c[2] for c in repo.calls if c[0] == "forget"]
    # "full" has 8 days now: the oldest goes; "fresh" has 2 of 7: restic is not even asked
    assert forgotten == (["account:full"] if listing_works else ["account:fresh", "account:full"])
    assert out["ok"] is True and out["accounts"]["full"]["backup"] == "new-full"
    assert ("prune",) in repo.calls
