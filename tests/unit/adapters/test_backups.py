"""The backup adapter's dataclasses and its error handling, with a fake runner (no node)."""

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
    BackupRecord,
    HostingBackups,
    PurgeManifest,
    RemovalManifest,
    RemovedPath,
    validate_backup_id,
)
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.errors import InvalidInput, StepFailed, TransientError

SHA = "ab" * 32
NODE = Target("node1", "192.0.2.10")


def node_record(stamp: str = "20240305T031500Z", account: str = "shop") -> dict[str, Any]:
    """A record as hosting-backup prints it."""
    base = f"/srv/backup/accounts/{account}/{stamp}"
    return {"id": f"{account}/{stamp}", "account": account, "created_at": "2024-03-05T03:15:00Z",
            "plan": "mega", "path": f"{base}/archive.tar.gz", "manifest_path": f"{base}/manifest.json",
            "size": 2491, "sha256": SHA, "file_count": 11, "home": f"/srv/hosting/{account}",
            "mail": [f"/srv/mail/{account}.si"], "database": account,
            "parts": {"home": {"bytes": 179, "files": 2}, f"mail:{account}.si": {"bytes": 1928, "files": 8},
                      "database": {"bytes": 2249, "files": 1}},
            "warnings": [], "changed": True}


# -- dataclasses ---------------------------------------------------------------------------------
def test_a_node_record_becomes_a_backup_record() -> None:
    r = BackupRecord.from_dict(node_record())
    assert r.id == "shop/20240305T031500Z"
    assert r.created_at == datetime(2024, 3, 5, 3, 15, tzinfo=UTC)
    assert r.mail == ("/srv/mail/shop.si",)
    assert {p.name: (p.bytes, p.files) for p in r.parts} == {
        "home": (179, 2), "mail:shop.si": (1928, 8), "database": (2249, 1)}


def test_a_backup_record_survives_json_storage() -> None:
    r = BackupRecord.from_dict(node_record())
    stored = json.loads(json.dumps(r.as_dict()))
    assert stored["created_at"] == "2024-03-05T03:15:00Z"
    assert BackupRecord.from_dict(stored) == r


def test_records_are_frozen() -> None:
    r = BackupRecord.from_dict(node_record())
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.sha256 = "0" * 64  # type: ignore[misc]


@pytest.mark.parametrize("change", [
    {"sha256": "not-a-sum"}, {"id": "other/20240305T031500Z"}, {"id": "shop/../../etc"},
    {"created_at": "yesterday"}, {"size": None},
])
def test_a_malformed_record_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises((ValueError, InvalidInput)):
        BackupRecord.from_dict({**node_record(), **change})


def test_a_record_without_its_id_is_refused() -> None:
    data = node_record()
    del data["id"]
    with pytest.raises(ValueError):
        BackupRecord.from_dict(data)


def test_a_purge_manifest_sums_up_what_was_removed() -> None:
    data = {"account": "shop", "changed": True, "removed_dirs": ["/srv/backup/accounts/shop"], "removed": [
        {"kind": "backup", "id": "shop/20240305T031500Z", "path": "/x/archive.tar.gz", "size": 100,
         "sha256": SHA},
        {"kind": "manifest", "id": "shop/20240305T031500Z", "path": "/x/manifest.json", "size": 10,
         "sha256": SHA},
        {"kind": "backup", "id": "shop/20240306T031500Z", "path": "/y/archive.tar.gz", "size": 200,
         "sha256": SHA},
        {"kind": "archive", "id": None, "path": "/srv/backup/terminated/shop/shop.tar.gz", "size": 300,
         "sha256": SHA}]}
    m = PurgeManifest.from_dict(data, "node1")
    assert not m.nothing_removed
    assert m.bytes == 610
    assert m.backup_ids == ("shop/20240305T031500Z", "shop/20240306T031500Z")
    stored = json.loads(json.dumps(m.as_dict()))
    assert stored["node"] == "node1" and stored["bytes"] == 610
    assert [f["kind"] for f in stored["removed"]] == ["backup", "manifest", "backup", "archive"]


def test_an_empty_purge_says_nothing_was_removed() -> None:
    m = PurgeManifest.from_dict({"account": "shop", "removed": [], "removed_dirs": []}, "node1")
    assert m.nothing_removed
    assert m.as_dict()["nothing_removed"] is True
    assert m.bytes == 0


def test_a_removal_manifest_holds_the_last_backup() -> None:
    last = BackupRecord.from_dict(node_record())
    m = RemovalManifest("shop", "node1", (RemovedPath("home", "/srv/hosting/shop", 179, 2),
                                          RemovedPath("database", "shop", 2249, 1)),
                        last, ArchiveFile("/srv/backup/terminated/shop/shop.tar.gz", 5, SHA))
    stored = json.loads(json.dumps(m.as_dict()))
    assert stored["bytes"] == 179 + 2249
    assert stored["last_backup"]["sha256"] == SHA
    assert stored["archive"]["path"].endswith("/shop.tar.gz")
    assert BackupRecord.from_dict(stored["last_backup"]) == last


def test_a_footprint_lists_the_live_data() -> None:
    gone = AccountFootprint("shop", False, None, (), None, 2, None, None)
    assert gone.live == ()
    there = AccountFootprint("shop", True, "/srv/hosting/shop", ("/srv/mail/shop.si",), "shop", 0, None, None)
    assert there.live == ("/srv/hosting/shop", "/srv/mail/shop.si", "database:shop", "state file")


@pytest.mark.parametrize("backup_id", ["shop/20240305T031500Z"])
def test_a_good_backup_id_passes(backup_id: str) -> None:
    assert validate_backup_id("shop", backup_id) == backup_id


@pytest.mark.parametrize("backup_id", ["other/20240305T031500Z", "shop/2024", "shop",
                                       "shop/20240305T031500Z\n", "shop/../x", ""])
def test_a_bad_backup_id_is_refused(backup_id: str) -> None:
    with pytest.raises(InvalidInput):
        validate_backup_id("shop", backup_id)


# -- the adapter with a fake runner -----------------------------------------------------------------
def ok_run(changed: int = 0) -> RunResult:
    stats = {"node1": {"ok": 3, "changed": changed, "failures": 0, "unreachable": 0}}
    return RunResult("successful", 0, stats)


class FakeRunner:
    """Answers each playbook run with the next prepared (RunResult, JSON) pair."""

    def __init__(self, *answers: tuple[RunResult, dict[str, Any] | None]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, playbook: str, hosts: list[Target], extravars: dict[str, Any], **kw: Any) -> RunResult:
        self.calls.append((playbook, dict(extravars)))
        run, data = self.answers.pop(0)
        if data is not None:
            Path(extravars["hosting_backup_result_file"]).write_text(json.dumps(data))
        return run


def test_backup_runs_the_backup_playbook_and_returns_the_record() -> None:
    runner = FakeRunner((ok_run(1), node_record()))
    record = HostingBackups(runner=runner).backup(NODE, "shop")
    assert record.sha256 == SHA
    playbook, ev = runner.calls[0]
    assert playbook == "hosting_account_backup"
    assert ev["hosting_backup_action"] == "backup" and ev["hosting_backup_account"] == "shop"
    assert not Path(ev["hosting_backup_result_file"]).exists()  # the private directory is gone


def test_a_refusal_of_the_node_is_invalid_input() -> None:
    failed = RunResult("failed", 2, {"node1": {"ok": 1, "failures": 1, "unreachable": 0}}, {"node1": "rc=2"})
    refusal = {"failed": True, "refused": True, "msg": "account shop is still on this node"}
    runner = FakeRunner((failed, refusal))
    with pytest.raises(InvalidInput, match="still on this node"):
        HostingBackups(runner=runner).purge(NODE, "shop")
    assert runner.calls[0][0] == "hosting_account_purge_backups"


def test_an_unreachable_node_is_a_transient_error() -> None:
    stats = {"node1": {"ok": 0, "failures": 0, "unreachable": 1}}
    dark = RunResult("failed", 4, stats, {"node1": "no route"})
    with pytest.raises(TransientError):
        HostingBackups(runner=FakeRunner((dark, None))).list(NODE, "shop")


def test_any_other_failure_is_step_failed() -> None:
    failed = RunResult("failed", 2, {"node1": {"ok": 1, "failures": 1, "unreachable": 0}}, {"node1": "tar"})
    with pytest.raises(StepFailed, match="tar failed"):
        HostingBackups(runner=FakeRunner((failed, {"failed": True, "msg": "tar failed: disk full"}))).backup(
            NODE, "shop")


def test_a_run_without_a_result_is_step_failed() -> None:
    with pytest.raises(StepFailed, match="no result"):
        HostingBackups(runner=FakeRunner((ok_run(), None))).backup(NODE, "shop")


def test_restore_passes_the_backup_id_to_the_restore_playbook() -> None:
    answer = {"changed": True, "account": "shop", "id": "shop/20240305T031500Z",
              "restored": ["/srv/hosting/shop", "database:shop"], "verified_files": 4}
    runner = FakeRunner((ok_run(1), answer))
    result = HostingBackups(runner=runner).restore(NODE, "shop", "shop/20240305T031500Z")
    assert result.verified_files == 4 and result.restored == ("/srv/hosting/shop", "database:shop")
    assert runner.calls[0][0] == "hosting_account_restore"
    assert runner.calls[0][1]["hosting_backup_id"] == "shop/20240305T031500Z"


def status(live: bool, archive: bool = False) -> dict[str, Any]:
    return {"account": "shop", "changed": False, "state_file": live,
            "home": "/srv/hosting/shop" if live else None, "mail": ["/srv/mail/shop.si"] if live else [],
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


def test_stage_1_backs_up_then_terminates_then_checks() -> None:
    runner = FakeRunner((ok_run(), status(True)), (ok_run(1), node_record()),
                        (ok_run(), status(False, archive=True)))
    accounts = FakeAccounts()
    m = HostingBackups(runner=runner).remove_account(NODE, SPEC, accounts)  # type: ignore[arg-type]
    assert [ev["hosting_backup_action"] for _, ev in runner.calls] == ["status", "backup", "status"]
    assert runner.calls[0][1]["hosting_backup_domains"] == ["shop.si"]
    assert accounts.terminated == ["shop"]
    assert m.last_backup.id == "shop/20240305T031500Z"
    assert {(p.kind, p.path, p.bytes) for p in m.removed} == {
        ("home", "/srv/hosting/shop", 179), ("mail", "/srv/mail/shop.si", 1928), ("database", "shop", 2249)}
    assert m.archive == ArchiveFile("/srv/backup/terminated/shop/shop.tar.gz", 9, SHA)


def test_stage_1_fails_when_live_data_are_left() -> None:
    runner = FakeRunner((ok_run(), status(True)), (ok_run(1), node_record()), (ok_run(), status(True)))
    with pytest.raises(StepFailed, match="still on node1"):
        HostingBackups(runner=runner).remove_account(NODE, SPEC, FakeAccounts())  # type: ignore[arg-type]


def test_stage_1_again_after_the_account_is_gone_uses_its_newest_backup() -> None:
    runner = FakeRunner((ok_run(), status(False)),
                        (ok_run(), {"account": "shop", "backups": [node_record("20240301T031500Z"),
                                                                    node_record("20240305T031500Z")]}),
                        (ok_run(), status(False, archive=True)))
    m = HostingBackups(runner=runner).remove_account(NODE, SPEC, FakeAccounts())  # type: ignore[arg-type]
    assert [ev["hosting_backup_action"] for _, ev in runner.calls] == ["status", "list", "status"]
    assert m.last_backup.id == "shop/20240305T031500Z"


def test_stage_1_without_any_backup_of_a_gone_account_fails() -> None:
    runner = FakeRunner((ok_run(), status(False)), (ok_run(), {"account": "shop", "backups": []}))
    accounts = FakeAccounts()
    with pytest.raises(StepFailed, match="no backup"):
        HostingBackups(runner=runner).remove_account(NODE, SPEC, accounts)  # type: ignore[arg-type]
    assert accounts.terminated == []
