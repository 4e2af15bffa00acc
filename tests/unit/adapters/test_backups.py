"""The restic backup adapter: parsing of the node script's JSON, validation before anything
runs (snapshot ids are hex; hostile ones never reach a node), and its error handling,
with a fake runner (no node)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.hosting.accounts import AccountResult, AccountSpec
from provisioner.adapters.hosting.ansible import RunResult, Target
from provisioner.adapters.hosting.backups import (
    AccountFootprint,
    ArchiveFile,
    BackupHostNode,
    BackupRecord,
    HostingBackups,
    PurgeManifest,
    RemovalManifest,
    RemovedPath,
    SourceRepository,
    validate_backup_id,
)
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.errors import ConfigurationError, InvalidInput, StepFailed, TransientError

SHA = "ab" * 32
SNAP = "4f3c2b1a" + "0" * 56
SNAP2 = "9e8d7c6b" + "1" * 56
NODE = Target("node1", "192.0.2.10")
REPO = "sftp:bk-node1@192.0.2.50:/repo"


def node_record(ident: str = SNAP, account: str = "shop", **over: Any) -> dict[str, Any]:
    """A record as hosting-backup prints it after `backup` (interface v1)."""
    data = {"id": ident, "short_id": ident[:8], "account": account, "service": "42",
            "created_at": "2024-03-05T03:15:00Z", "plan": "mega", "repository": REPO, "hostname": "node1",
            "tags": [f"account:{account}", "service:42"], "size": 4356, "added_bytes": 4000,
            "file_count": 11, "home": f"/srv/hosting/{account}", "mail": [f"/var/mail/vhosts/{account}.si"],
            "database": account,
            "parts": {"home": {"bytes": 179, "files": 2}, f"mail:{account}.si": {"bytes": 1928, "files": 8},
                      "database": {"bytes": 2249, "files": 1}},
            "warnings": [], "changed": True}
    data.update(over)
    return data


def listed_record(ident: str = SNAP, created: str = "2024-03-05T03:15:00Z") -> dict[str, Any]:
    """A record as `list` prints it (from restic snapshots --json: no sizes)."""
    return {**node_record(ident, created_at=created), "size": None, "added_bytes": None, "file_count": None,
            "parts": {}}


# -- dataclasses ---------------------------------------------------------------------------------
def test_a_node_record_becomes_a_backup_record() -> None:
    r = BackupRecord.from_dict(node_record())
    assert r.id == SNAP and r.short_id == SNAP[:8]
    assert r.created_at == datetime(2024, 3, 5, 3, 15, tzinfo=UTC)
    assert r.tags == ("account:shop", "service:42") and r.service == "42"
    assert r.repository == REPO and r.size == 4356
    assert {p.name: (p.bytes, p.files) for p in r.parts} == {
        "home": (179, 2), "mail:shop.si": (1928, 8), "database": (2249, 1)}


def test_a_listed_snapshot_has_no_sizes() -> None:
    r = BackupRecord.from_dict(listed_record())
    assert r.size is None and r.file_count is None and r.parts == ()


def test_a_backup_record_survives_json_storage() -> None:
    r = BackupRecord.from_dict(node_record())
    stored = json.loads(json.dumps(r.as_dict()))
    assert stored["created_at"] == "2024-03-05T03:15:00Z"
    assert BackupRecord.from_dict(stored) == r


def test_records_are_frozen() -> None:
    r = BackupRecord.from_dict(node_record())
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.id = "0" * 64  # type: ignore[misc]


@pytest.mark.parametrize("change", [
    {"id": "shop/20240305T031500Z"}, {"id": SNAP.upper()}, {"id": SNAP[:8]}, {"id": SNAP + "0"},
    {"short_id": "ffffffff"}, {"account": "../etc"}, {"account": "a;reboot"},
    {"created_at": "yesterday"}, {"service": "42; rm -rf /"}, {"size": "many"},
])
def test_a_malformed_record_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises((ValueError, InvalidInput)):
        BackupRecord.from_dict({**node_record(), **change})


def test_a_record_without_its_id_is_refused() -> None:
    data = node_record()
    del data["id"]
    with pytest.raises(ValueError):
        BackupRecord.from_dict(data)


def purge_answer(ids: list[str], **over: Any) -> dict[str, Any]:
    data = {"changed": True, "account": "shop", "service": "42",
            "removed": [{"kind": "backup", "id": i, "path": REPO, "size": 0, "sha256": None} for i in ids]
            + [{"kind": "archive", "id": None, "path": "/srv/backup/terminated/shop/shop.tar.gz", "size": 300,
                "sha256": SHA}],
            "removed_dirs": [], "snapshot_ids": ids, "bytes_freed": 5000, "bytes": 5300, "remaining": 0,
            "check": {"ok": True}}
    data.update(over)
    return data


def test_a_purge_manifest_holds_the_proof() -> None:
    m = PurgeManifest.from_dict(purge_answer([SNAP, SNAP2]), "node1")
    assert m.proven and not m.nothing_removed
    assert m.backup_ids == tuple(sorted([SNAP, SNAP2]))
    assert m.bytes_freed == 5000 and m.bytes == 5300  # freed in the repository + the archive on the node
    stored = json.loads(json.dumps(m.as_dict()))
    assert stored["node"] == "node1" and stored["check_ok"] is True and stored["remaining"] == 0
    assert stored["snapshot_ids"] == sorted([SNAP, SNAP2]) and stored["proven"] is True


def test_an_empty_purge_says_nothing_was_removed() -> None:
    m = PurgeManifest.from_dict({"account": "shop", "removed": [], "removed_dirs": [], "snapshot_ids": [],
                                 "bytes_freed": 0, "remaining": 0, "check": {"ok": True}}, "node1")
    assert m.nothing_removed and m.proven
    assert m.as_dict()["nothing_removed"] is True
    assert m.bytes == 0


def test_a_purge_manifest_with_a_bad_snapshot_id_is_refused() -> None:
    with pytest.raises(ValueError):
        PurgeManifest.from_dict(purge_answer(["../../etc/passwd"]), "node1")


def test_a_removal_manifest_holds_the_last_snapshot() -> None:
    last = BackupRecord.from_dict(node_record())
    m = RemovalManifest("shop", "node1", (RemovedPath("home", "/srv/hosting/shop", 179, 2),
                                          RemovedPath("database", "shop", 2249, 1)),
                        last, ArchiveFile("/srv/backup/terminated/shop/shop.tar.gz", 5, SHA))
    stored = json.loads(json.dumps(m.as_dict()))
    assert stored["bytes"] == 179 + 2249
    assert stored["last_backup"]["id"] == SNAP
    assert BackupRecord.from_dict(stored["last_backup"]) == last


def test_a_footprint_lists_the_live_data() -> None:
    gone = AccountFootprint("shop", False, None, (), None, 2, None, None)
    assert gone.live == ()
    there = AccountFootprint("shop", True, "/srv/hosting/shop", ("/srv/mail/shop.si",), "shop", 0, None, None)
    assert there.live == ("/srv/hosting/shop", "/srv/mail/shop.si", "database:shop", "state file")


def test_a_footprint_whose_repository_was_unreadable_has_no_count() -> None:
    f = AccountFootprint.from_dict({"account": "shop", "state_file": True, "backups": None,
                                    "repository_error": "backup host unreachable"})
    assert f.backups is None and f.repository_error == "backup host unreachable"


@pytest.mark.parametrize("backup_id", [SNAP, SNAP[:8], "0123abcd"])
def test_a_good_snapshot_id_passes(backup_id: str) -> None:
    assert validate_backup_id("shop", backup_id) == backup_id


def test_the_source_repository_never_shows_its_password() -> None:
    src = SourceRepository("node1", REPO, "s3cret-pw")
    assert "s3cret-pw" not in repr(src) and "s3cret-pw" not in str(src)


# -- the adapter with a fake runner -----------------------------------------------------------------
def ok_run(changed: int = 0) -> RunResult:
    stats = {"node1": {"ok": 3, "changed": changed, "failures": 0, "unreachable": 0}}
    return RunResult("successful", 0, stats)


def failed_run(rc: int = 2) -> RunResult:
    stats = {"node1": {"ok": 1, "failures": 1, "unreachable": 0}}
    return RunResult("failed", rc, stats, {"node1": f"rc={rc}"})


class FakeRunner:
    """Answers each playbook run with the next prepared (RunResult, JSON) pair."""

    def __init__(self, *answers: tuple[RunResult, dict[str, Any] | None]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, playbook: str, hosts: list[Target], extravars: dict[str, Any], **kw: Any) -> RunResult:
        self.calls.append((playbook, dict(extravars)))
        run, data = self.answers.pop(0)
        if data is not None:
            result_var = next(k for k in extravars if k.endswith("_result_file"))
            Path(extravars[result_var]).write_text(json.dumps(data))
        return run


HOSTILE_IDS = ["../../etc/passwd", "DEADBEEF", "abc", "$(reboot)", "a" * 65, "deadbeef\n", "-rf",
               "deadbeef --repo=/", "deadbeef;id", "", "0x1234abcd", "shop/20240305T031500Z", "dead beef"]


@pytest.mark.parametrize("backup_id", HOSTILE_IDS)
def test_a_hostile_snapshot_id_is_refused_before_anything_runs(backup_id: str) -> None:
    runner = FakeRunner()
    with pytest.raises(InvalidInput):
        HostingBackups(runner=runner).restore(NODE, "shop", backup_id)
    assert runner.calls == []


@pytest.mark.parametrize("account", ["a;reboot", "../etc", "Root", "a" * 33, "$(id)", ""])
def test_a_hostile_account_is_refused_before_anything_runs(account: str) -> None:
    runner = FakeRunner()
    with pytest.raises(InvalidInput):
        HostingBackups(runner=runner).list(NODE, account)
    with pytest.raises(InvalidInput):
        HostingBackups(runner=runner).restore(NODE, account, SNAP)
    assert runner.calls == []


@pytest.mark.parametrize("subset", ["10%; rm -rf /", "0%", "101%", "3/2", "1/0", "all", "--no-lock"])
def test_a_bad_check_subset_is_refused_before_anything_runs(subset: str) -> None:
    runner = FakeRunner()
    with pytest.raises(InvalidInput):
        HostingBackups(runner=runner).check(NODE, subset)
    assert runner.calls == []


def test_backup_runs_the_backup_playbook_with_the_service_tag() -> None:
    runner = FakeRunner((ok_run(1), node_record()))
    record = HostingBackups(runner=runner).backup(NODE, "shop", service=42)
    assert record.id == SNAP
    playbook, ev = runner.calls[0]
    assert playbook == "hosting_account_backup"
    assert ev["hosting_backup_action"] == "backup" and ev["hosting_backup_account"] == "shop"
    assert ev["hosting_backup_service"] == "42"
    assert not Path(ev["hosting_backup_result_file"]).exists()  # the private directory is gone


def test_list_returns_the_snapshots_oldest_first() -> None:
    answer = {"account": "shop", "backups": [listed_record(SNAP2, "2024-03-06T03:15:00Z"),
                                             listed_record(SNAP, "2024-03-05T03:15:00Z")]}
    records = HostingBackups(runner=FakeRunner((ok_run(), answer))).list(NODE, "shop")
    assert [r.id for r in records] == [SNAP, SNAP2]


def test_a_node_listing_a_bad_snapshot_id_fails_the_step() -> None:
    answer = {"account": "shop", "backups": [listed_record("x" * 64)]}
    with pytest.raises(StepFailed, match="not valid"):
        HostingBackups(runner=FakeRunner((ok_run(), answer))).list(NODE, "shop")


def test_a_refusal_of_the_node_is_invalid_input() -> None:
    refusal = {"failed": True, "refused": True, "error": "refused",
               "msg": "account shop is still on this node"}
    runner = FakeRunner((failed_run(2), refusal))
    with pytest.raises(InvalidInput, match="still on this node"):
        HostingBackups(runner=runner).purge(NODE, "shop")
    assert runner.calls[0][0] == "hosting_account_purge_backups"


def test_an_unreachable_node_is_a_transient_error() -> None:
    stats = {"node1": {"ok": 0, "failures": 0, "unreachable": 1}}
    dark = RunResult("failed", 4, stats, {"node1": "no route"})
    with pytest.raises(TransientError):
        HostingBackups(runner=FakeRunner((dark, None))).list(NODE, "shop")


@pytest.mark.parametrize("kind", ["unreachable", "locked"])
def test_an_unreachable_backup_host_or_a_locked_repository_is_transient(kind: str) -> None:
    answer = {"changed": False, "failed": True, "error": kind,
              "msg": "ssh: connect to host 10.0.0.5: timeout"}
    with pytest.raises(TransientError, match=kind):
        HostingBackups(runner=FakeRunner((failed_run(1), answer))).backup(NODE, "shop")


def test_a_node_without_a_repository_is_a_configuration_error() -> None:
    answer = {"changed": False, "failed": True, "error": "not_configured", "msg": "no repository"}
    with pytest.raises(ConfigurationError, match="backups enroll node1"):
        HostingBackups(runner=FakeRunner((failed_run(1), answer))).backup(NODE, "shop")


def test_any_other_failure_is_step_failed() -> None:
    answer = {"failed": True, "error": "failed", "msg": "restic backup: disk full"}
    with pytest.raises(StepFailed, match="disk full"):
        HostingBackups(runner=FakeRunner((failed_run(1), answer))).backup(NODE, "shop")


def test_a_run_without_a_result_is_step_failed() -> None:
    with pytest.raises(StepFailed, match="no result"):
        HostingBackups(runner=FakeRunner((ok_run(), None))).backup(NODE, "shop")


def test_restore_passes_the_snapshot_id_to_the_restore_playbook() -> None:
    answer = {"changed": True, "account": "shop", "id": SNAP,
              "restored": ["/srv/hosting/shop", "database:shop"], "verified_files": 4}
    runner = FakeRunner((ok_run(1), answer))
    result = HostingBackups(runner=runner).restore(NODE, "shop", SNAP)
    assert result.verified_files == 4 and result.restored == ("/srv/hosting/shop", "database:shop")
    assert runner.calls[0][0] == "hosting_account_restore"
    assert runner.calls[0][1]["hosting_backup_id"] == SNAP
    assert "hosting_backup_source_password" not in runner.calls[0][1]


def test_a_restore_from_another_nodes_repository_hands_its_url_and_password_as_variables() -> None:
    answer = {"changed": True, "account": "shop", "id": SNAP, "restored": ["/srv/hosting/shop"],
              "verified_files": 2}
    runner = FakeRunner((ok_run(1), answer))
    node2 = Target("node2", "192.0.2.11")
    result = HostingBackups(runner=runner).restore(node2, "shop", SNAP, SourceRepository("node1", REPO, "pw"))
    ev = runner.calls[0][1]
    assert ev["hosting_backup_source_repository"] == REPO and ev["hosting_backup_source_password"] == "pw"
    assert result.node == "node2" and result.source_node == "node1"


def test_purge_passes_the_service_and_returns_the_proof() -> None:
    runner = FakeRunner((ok_run(1), purge_answer([SNAP])))
    m = HostingBackups(runner=runner).purge(NODE, "shop", service=42)
    assert runner.calls[0][1]["hosting_backup_service"] == "42"
    assert m.proven and m.backup_ids == (SNAP,)


@pytest.mark.parametrize("over", [{"remaining": 1}, {"check": {"ok": False}}, {"remaining": None}])
def test_a_purge_the_node_did_not_prove_fails_the_step(over: dict[str, Any]) -> None:
    with pytest.raises(StepFailed, match="did not prove"):
        HostingBackups(runner=FakeRunner((ok_run(1), purge_answer([SNAP], **over)))).purge(NODE, "shop")


def test_forget_reports_the_snapshots_removed() -> None:
    answer = {"changed": True, "account": "shop", "keep": 7, "kept": [SNAP2], "pruned": True,
              "removed": [{"kind": "backup", "id": SNAP, "path": REPO, "size": 0, "sha256": None}]}
    r = HostingBackups(runner=FakeRunner((ok_run(1), answer))).forget(NODE, "shop")
    assert r.keep == 7 and r.removed == (SNAP,) and r.kept == (SNAP2,) and r.pruned


def test_a_failed_check_is_a_result_not_an_error() -> None:
    answer = {"changed": False, "failed": True, "error": "failed", "msg": "pack 1f2e damaged"}
    runner = FakeRunner((failed_run(1), answer))
    r = HostingBackups(runner=runner).check(NODE, "5%")
    assert not r.ok and "damaged" in r.msg
    assert runner.calls[0][1]["hosting_backup_check_subset"] == "5%"
    assert "hosting_backup_account" not in runner.calls[0][1]


def test_a_drill_reports_its_mismatches() -> None:
    answer = {"changed": False, "ok": False, "account": "shop", "id": SNAP, "files": 10, "bytes": 99,
              "mismatches": ["/srv/hosting/shop/index.html"]}
    r = HostingBackups(runner=FakeRunner((failed_run(1), answer))).drill(NODE, "shop")
    assert not r.ok and r.mismatches == ("/srv/hosting/shop/index.html",) and r.backup_id == SNAP


def test_a_nightly_run_with_the_backup_host_down_is_a_transient_result() -> None:
    answer = {"changed": False, "failed": True, "error": "unreachable", "msg": "ssh: no route",
              "accounts": {"shop": {"failed": "unreachable"}}, "failed_accounts": ["shop"]}
    r = HostingBackups(runner=FakeRunner((failed_run(1), answer))).nightly(NODE)
    assert not r.ok and r.transient and r.error == "unreachable"


def test_a_good_nightly_run_lists_the_snapshots_and_the_skipped() -> None:
    answer = {"changed": True, "accounts": {"shop": {"backup": SNAP}, "big": {"skipped": "excluded"}},
              "failed": [], "prune": {"ok": True}, "error": None}
    r = HostingBackups(runner=FakeRunner((ok_run(1), answer))).nightly(NODE)
    assert r.ok and not r.transient and r.snapshots == {"shop": SNAP}


def test_the_backup_host_gets_each_nodes_user_and_keys() -> None:
    answer = {"host_key": "ssh-ed25519 AAAA",
              "accounts": {"node1": {"user": "bk-node1", "repository": "/repo"}}}
    runner = FakeRunner((ok_run(1), answer))
    host = Target("backup1", "192.0.2.50")
    data = HostingBackups(runner=runner).configure_backup_host(
        host, [BackupHostNode("node1", "bk-node1", ("ssh-ed25519 AAAAC3 a@node1",))])
    playbook, ev = runner.calls[0]
    assert playbook == "backup_host" and data["accounts"]["node1"]["user"] == "bk-node1"
    assert ev["backup_host_nodes"] == [{"name": "node1", "user": "bk-node1",
                                        "authorized_keys": ["ssh-ed25519 AAAAC3 a@node1"]}]


# -- stage 1 ----------------------------------------------------------------------------------------
def status(live: bool, archive: bool = False) -> dict[str, Any]:
    return {"account": "shop", "changed": False, "state_file": live,
            "home": "/srv/hosting/shop" if live else None,
            "mail": ["/var/mail/vhosts/shop.si"] if live else [],
            "database": "shop" if live else None, "backups": 1, "excluded": None,
            "archive": {"path": "/srv/backup/terminated/shop/shop.tar.gz", "size": 9, "sha256": SHA}
            if archive else None}


class FakeAccounts:
    def __init__(self) -> None:
        self.terminated: list[str] = []

    def terminate(self, node: Target, spec: AccountSpec) -> AccountResult:
        self.terminated.append(spec.name)
        return AccountResult("terminate", spec.name, node.name, ok_run(5))


SPEC = AccountSpec("shop", ("shop.si",), CATALOG.hosting_plan("mega"))


def test_stage_1_snapshots_then_terminates_then_checks() -> None:
    runner = FakeRunner((ok_run(), status(True)), (ok_run(1), node_record()),
                        (ok_run(), status(False, archive=True)))
    accounts = FakeAccounts()
    m = HostingBackups(runner=runner).remove_account(NODE, SPEC, accounts, service=42)  # type: ignore[arg-type]
    assert [ev["hosting_backup_action"] for _, ev in runner.calls] == ["status", "backup", "status"]
    assert runner.calls[0][1]["hosting_backup_domains"] == ["shop.si"]
    assert runner.calls[1][1]["hosting_backup_service"] == "42"
    assert accounts.terminated == ["shop"]
    assert m.last_backup.id == SNAP
    assert {(p.kind, p.path, p.bytes) for p in m.removed} == {
        ("home", "/srv/hosting/shop", 179), ("mail", "/var/mail/vhosts/shop.si", 1928),
        ("database", "shop", 2249)}
    assert m.archive == ArchiveFile("/srv/backup/terminated/shop/shop.tar.gz", 9, SHA)


def test_stage_1_fails_when_live_data_are_left() -> None:
    runner = FakeRunner((ok_run(), status(True)), (ok_run(1), node_record()), (ok_run(), status(True)))
    with pytest.raises(StepFailed, match="still on node1"):
        HostingBackups(runner=runner).remove_account(NODE, SPEC, FakeAccounts())  # type: ignore[arg-type]


def test_stage_1_again_after_the_account_is_gone_uses_its_newest_snapshot() -> None:
    runner = FakeRunner((ok_run(), status(False)),
                        (ok_run(), {"account": "shop", "backups": [
                            listed_record(SNAP2, "2024-03-06T03:15:00Z"),
                            listed_record(SNAP, "2024-03-01T03:15:00Z")]}),
                        (ok_run(), status(False, archive=True)))
    m = HostingBackups(runner=runner).remove_account(NODE, SPEC, FakeAccounts())  # type: ignore[arg-type]
    assert [ev["hosting_backup_action"] for _, ev in runner.calls] == ["status", "list", "status"]
    assert m.last_backup.id == SNAP2


def test_stage_1_without_any_snapshot_of_a_gone_account_fails() -> None:
    runner = FakeRunner((ok_run(), status(False)), (ok_run(), {"account": "shop", "backups": []}))
    accounts = FakeAccounts()
    with pytest.raises(StepFailed, match="no backup"):
        HostingBackups(runner=runner).remove_account(NODE, SPEC, accounts)  # type: ignore[arg-type]
    assert accounts.terminated == []


# -- the node timer's last run ----------------------------------------------------------------------
def test_the_node_timers_last_run_is_read_from_its_file() -> None:
    last = {"changed": True, "ok": True, "accounts": {"shop": {"backup": SNAP}}, "failed": [],
            "prune": {"ok": True, "ran": True}, "error": None, "finished_at": "2026-01-15T22:31:00Z"}
    read: list[tuple[str, str]] = []

    def reader(node: Target, path: str) -> str | None:
        read.append((node.name, path))
        return json.dumps(last)

    r = HostingBackups(runner=FakeRunner(), reader=reader).last_nightly(NODE)
    assert r is not None and r.ok and r.snapshots == {"shop": SNAP}
    assert r.finished_at == datetime(2026, 1, 15, 22, 31, tzinfo=UTC)
    assert read == [("node1", "/var/lib/hosting-backup/last-nightly.json")]


@pytest.mark.parametrize("answer", [None, "", "not json", "[1, 2]", '{"accounts": 3}'])
def test_no_readable_last_run_means_none(answer: str | None) -> None:
    assert HostingBackups(runner=FakeRunner(), reader=lambda n, p: answer).last_nightly(NODE) is None


def test_an_unreachable_node_has_no_last_run_to_show() -> None:
    def dark(node: Target, path: str) -> str | None:
        raise TransientError("no route")

    assert HostingBackups(runner=FakeRunner(), reader=dark).last_nightly(NODE) is None
