"""Per-account backups on a hosting node and the two stages of deletion after expiry.

The node side is ``/usr/local/sbin/hosting-backup`` (roles/hosting_node): one tar.gz
per backup (home, maildirs, a ``mysqldump --single-transaction`` dump) with a manifest
of sha256 sums, retention per plan, a nightly timer. This adapter runs it through the
playbooks ``hosting_account_backup.yml``, ``hosting_account_restore.yml`` and
``hosting_account_purge_backups.yml`` (roles/hosting_backup), which write the script's
JSON to a 0600 file in a private temporary directory on the controller.

Stage 1 (:meth:`HostingBackups.remove_account`): a last backup, then the account's
``terminate``, then a check that its home, maildirs and database are gone. Stage 2
(:meth:`HostingBackups.purge`): every backup and the terminate archive removed. Each
stage returns what it removed; *when* a stage is due is the pipeline's decision.

Errors: ``InvalidInput`` for a bad account name or backup id (checked before anything
runs) or a request the node refuses; ``TransientError`` when the node is unreachable
or too slow; ``StepFailed`` for every other failure.
"""

from __future__ import annotations

import builtins
import json
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts
from provisioner.adapters.hosting.ansible import RunResult, Target, run_playbook
from provisioner.domain.names import normalize_domain, validate_account_name
from provisioner.errors import InvalidInput, StepFailed, TransientError

STAMP_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

Runner = Callable[..., RunResult]


def validate_backup_id(account: str, backup_id: str) -> str:
    """``<account>/YYYYMMDDTHHMMSSZ`` of that very account, or InvalidInput."""
    validate_account_name(account)  # the node checks the same again
    if not isinstance(backup_id, str) or "/" not in backup_id:
        raise InvalidInput(f"backup id {backup_id!r} must be {account}/YYYYMMDDTHHMMSSZ")
    owner, stamp = backup_id.split("/", 1)
    if owner != account or not STAMP_RE.fullmatch(stamp):
        raise InvalidInput(f"backup id {backup_id!r} must be {account}/YYYYMMDDTHHMMSSZ")
    return backup_id


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime(ISO_FORMAT)


def _parse_iso(value: str) -> datetime:
    return datetime.strptime(value, ISO_FORMAT).replace(tzinfo=UTC)


# -- what the node reports --------------------------------------------------------------------
@dataclass(frozen=True)
class BackupPart:
    """One source inside a backup: ``home``, ``mail:<domain>`` or ``database``."""

    name: str
    bytes: int
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "files": self.files}


@dataclass(frozen=True)
class BackupRecord:
    """One backup: its id, where its archive is, the archive's size and sha256, and what
    it holds (home path, maildir paths, database name; bytes and files per part)."""

    id: str
    account: str
    created_at: datetime
    plan: str | None
    path: str
    manifest_path: str
    size: int
    sha256: str
    file_count: int
    home: str | None
    mail: tuple[str, ...]
    database: str | None
    parts: tuple[BackupPart, ...] = ()
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackupRecord:
        """From the node's JSON (or :meth:`as_dict`); ValueError if it is not one."""
        try:
            raw_parts = data.get("parts") or {}
            if isinstance(raw_parts, Mapping):  # the node's form: {name: {bytes, files}}
                parts = tuple(BackupPart(str(k), int(v["bytes"]), int(v["files"]))
                              for k, v in sorted(raw_parts.items()))
            else:
                parts = tuple(BackupPart(str(p["name"]), int(p["bytes"]), int(p["files"]))
                              for p in raw_parts)
            record = cls(
                id=str(data["id"]), account=str(data["account"]),
                created_at=_parse_iso(str(data["created_at"])),
                plan=None if data.get("plan") is None else str(data["plan"]),
                path=str(data["path"]), manifest_path=str(data["manifest_path"]),
                size=int(data["size"]), sha256=str(data["sha256"]),
                file_count=int(data["file_count"]),
                home=None if data.get("home") is None else str(data["home"]),
                mail=tuple(str(m) for m in data.get("mail") or ()),
                database=None if data.get("database") is None else str(data["database"]),
                parts=parts, warnings=tuple(str(w) for w in data.get("warnings") or ()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a backup record: {exc!r}") from exc
        validate_backup_id(record.account, record.id)
        if not re.fullmatch(r"[0-9a-f]{64}", record.sha256):
            raise ValueError(f"not a sha256: {record.sha256!r}")
        return record

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "account": self.account, "created_at": _iso(self.created_at),
                "plan": self.plan, "path": self.path, "manifest_path": self.manifest_path,
                "size": self.size, "sha256": self.sha256, "file_count": self.file_count,
                "home": self.home, "mail": list(self.mail), "database": self.database,
                "parts": [p.as_dict() for p in self.parts], "warnings": list(self.warnings)}


@dataclass(frozen=True)
class RemovedFile:
    """A file stage 2 (or retention) removed: ``kind`` is backup (an archive), manifest,
    archive (terminate's) or other; ``backup_id`` when it belonged to a backup."""

    kind: str
    path: str
    size: int
    sha256: str | None
    backup_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemovedFile:
        return cls(kind=str(data["kind"]), path=str(data["path"]), size=int(data["size"]),
                   sha256=None if data.get("sha256") is None else str(data["sha256"]),
                   backup_id=None if data.get("id", data.get("backup_id")) is None
                   else str(data.get("id", data.get("backup_id"))))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "size": self.size, "sha256": self.sha256,
                "backup_id": self.backup_id}


@dataclass(frozen=True)
class PurgeManifest:
    """Stage 2: everything removed from the node's backup and archive areas."""

    account: str
    node: str
    removed: tuple[RemovedFile, ...]
    removed_dirs: tuple[str, ...] = ()

    @property
    def nothing_removed(self) -> bool:
        return not self.removed and not self.removed_dirs

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.removed)

    @property
    def backup_ids(self) -> tuple[str, ...]:
        return tuple(sorted({f.backup_id for f in self.removed if f.backup_id}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], node: str = "") -> PurgeManifest:
        try:
            return cls(account=str(data["account"]), node=str(data.get("node") or node),
                       removed=tuple(RemovedFile.from_dict(f) for f in data.get("removed") or ()),
                       removed_dirs=tuple(str(d) for d in data.get("removed_dirs") or ()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a purge manifest: {exc!r}") from exc

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "node": self.node,
                "removed": [f.as_dict() for f in self.removed],
                "removed_dirs": list(self.removed_dirs), "backup_ids": list(self.backup_ids),
                "bytes": self.bytes, "nothing_removed": self.nothing_removed}


@dataclass(frozen=True)
class RemovedPath:
    """Stage 1: one live thing of the account that is gone: home, mail or database."""

    kind: str
    path: str
    bytes: int
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "bytes": self.bytes, "files": self.files}


@dataclass(frozen=True)
class ArchiveFile:
    """The archive terminate left in the node's archive area."""

    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class RemovalManifest:
    """Stage 1: what was removed from the live node (sizes from the last backup) and that
    last backup's record; ``archive`` is terminate's archive (stage 2 removes it)."""

    account: str
    node: str
    removed: tuple[RemovedPath, ...]
    last_backup: BackupRecord
    archive: ArchiveFile | None = None

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "node": self.node,
                "removed": [p.as_dict() for p in self.removed], "bytes": self.bytes,
                "last_backup": self.last_backup.as_dict(),
                "archive": None if self.archive is None else self.archive.as_dict()}


@dataclass(frozen=True)
class RestoreResult:
    account: str
    backup_id: str
    restored: tuple[str, ...]  # paths, and "database:<name>"
    verified_files: int  # files whose sha256 the node checked against the manifest

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "backup_id": self.backup_id, "restored": list(self.restored),
                "verified_files": self.verified_files}


@dataclass(frozen=True)
class AccountFootprint:
    """What of an account is on a node (``hosting-backup status``)."""

    account: str
    state_file: bool
    home: str | None
    mail: tuple[str, ...]
    database: str | None
    backups: int
    excluded: str | None  # why it gets no free backups, or None
    archive: ArchiveFile | None

    @property
    def live(self) -> tuple[str, ...]:
        """The live data still there (empty once stage 1 is done)."""
        out = [p for p in (self.home, *self.mail) if p]
        if self.database:
            out.append(f"database:{self.database}")
        if self.state_file:
            out.append("state file")
        return tuple(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccountFootprint:
        archive = data.get("archive")
        return cls(account=str(data["account"]), state_file=bool(data["state_file"]),
                   home=data.get("home"), mail=tuple(data.get("mail") or ()),
                   database=data.get("database"), backups=int(data.get("backups") or 0),
                   excluded=data.get("excluded"),
                   archive=None if not archive else ArchiveFile(str(archive["path"]), int(archive["size"]),
                                                                str(archive["sha256"])))


# -- the adapter ------------------------------------------------------------------------------
class HostingBackups:
    """The backup adapter: one ansible-runner run per operation."""

    def __init__(self, *, ssh_key: Path | None = None, known_hosts: Path | None = None,
                 timeout_s: float = 1800, runner: Runner = run_playbook) -> None:
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts  # host keys are checked unless the node is throwaway
        self.timeout_s = timeout_s
        self._run = runner

    def _go(self, playbook: str, node: Target, extravars: dict[str, Any], step_key: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="prov-backup-") as private:  # 0700
            result_file = Path(private) / "result.json"
            extravars = {**extravars, "hosting_backup_result_file": str(result_file)}
            run = self._run(playbook, [node], extravars, timeout_s=self.timeout_s, ssh_key=self.ssh_key,
                            known_hosts=self.known_hosts)
            data: dict[str, Any] | None = None
            if result_file.is_file():
                try:
                    loaded = json.loads(result_file.read_text())
                except ValueError:
                    loaded = None
                data = loaded if isinstance(loaded, dict) else None
        if any(s.get("unreachable") for s in run.stats.values()) or run.status == "timeout":
            raise TransientError(f"{step_key}: node {node.name} unreachable or slow: {run.errors}")
        if data is not None and data.get("refused"):
            raise InvalidInput(f"{step_key}: {data.get('msg', 'refused by the node')}")
        if not run.ok:
            detail = (data or {}).get("msg") or "; ".join(f"{h}: {e}" for h, e in run.errors.items())
            raise StepFailed(step_key, f"{run.status} rc={run.rc}: {detail}",
                             {"stats": run.stats, "status": run.status})
        if data is None:
            raise StepFailed(step_key, f"node {node.name} returned no result")
        return data

    def _op(self, node: Target, account: str, action: str, **more: Any) -> dict[str, Any]:
        validate_account_name(account)
        playbook = {"restore": "hosting_account_restore",
                    "purge": "hosting_account_purge_backups"}.get(action, "hosting_account_backup")
        ev: dict[str, Any] = {"hosting_backup_action": action, "hosting_backup_account": account}
        ev.update(more)
        return self._go(playbook, node, ev, f"backups.{action}")

    @staticmethod
    def _record(data: Mapping[str, Any], step_key: str) -> BackupRecord:
        try:
            return BackupRecord.from_dict(data)
        except (ValueError, InvalidInput) as exc:
            raise StepFailed(step_key, f"the node's backup record is not valid: {exc}") from exc

    def backup(self, node: Target, account: str) -> BackupRecord:
        """Take one backup now (whatever the account's free-backup policy says)."""
        return self._record(self._op(node, account, "backup"), "backups.backup")

    def list(self, node: Target, account: str) -> builtins.list[BackupRecord]:
        """The account's backups on the node, oldest first."""
        data = self._op(node, account, "list")
        return [self._record(r, "backups.list") for r in data.get("backups") or []]

    def restore(self, node: Target, account: str, backup_id: str) -> RestoreResult:
        """Replace the account's home and maildirs by the backup's, re-import its database."""
        validate_backup_id(account, backup_id)
        data = self._op(node, account, "restore", hosting_backup_id=backup_id)
        return RestoreResult(account, str(data.get("id", backup_id)),
                             tuple(str(r) for r in data.get("restored") or ()),
                             int(data.get("verified_files") or 0))

    def prune(self, node: Target, account: str) -> tuple[str, ...]:
        """Apply the plan's retention now; the ids of the backups removed."""
        data = self._op(node, account, "prune")
        return tuple(sorted({str(r["id"]) for r in data.get("removed") or [] if r.get("kind") == "backup"}))

    def status(self, node: Target, account: str, domains: Sequence[str] = ()) -> AccountFootprint:
        """What of the account is on the node (also the maildirs of ``domains``)."""
        checked = [normalize_domain(d) for d in domains]
        data = self._op(node, account, "status", hosting_backup_domains=checked)
        try:
            return AccountFootprint.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StepFailed("backups.status", f"the node's answer is not valid: {exc}") from exc

    def set_free_backups(self, node: Target, account: str, enabled: bool) -> bool:
        """Free (nightly) backups on or off for the account (RULES: none while over limits).
        True when this changed anything."""
        data = self._op(node, account, "include" if enabled else "exclude")
        return bool(data.get("changed"))

    def purge(self, node: Target, account: str) -> PurgeManifest:
        """Stage 2: remove every backup and the terminate archive of a removed account.
        Refused (InvalidInput) while the account is still on the node; a second purge
        returns a manifest with ``nothing_removed``."""
        data = self._op(node, account, "purge")
        try:
            return PurgeManifest.from_dict(data, node.name)
        except ValueError as exc:
            raise StepFailed("backups.purge", str(exc)) from exc

    def remove_account(self, node: Target, spec: AccountSpec, accounts: HostingAccounts) -> RemovalManifest:
        """Stage 1: a last backup, then ``accounts.terminate``, then check that the home,
        maildirs and database are gone. Safe to run again: when the account is gone already,
        its newest backup is the last one."""
        spec = spec.validated()
        before = self.status(node, spec.name, spec.domains)
        if before.live:
            last = self.backup(node, spec.name)
        else:
            existing = self.list(node, spec.name)
            if not existing:
                raise StepFailed("backups.remove_account",
                                 f"account {spec.name} is not on {node.name} and has no backup there")
            last = existing[-1]
        accounts.terminate(node, spec).raise_for_status("backups.remove_account")
        after = self.status(node, spec.name, spec.domains)
        if after.live:
            raise StepFailed("backups.remove_account",
                             f"still on {node.name} after terminate: {', '.join(after.live)}",
                             {"left": list(after.live)})
        sizes = {p.name: p for p in last.parts}
        removed: builtins.list[RemovedPath] = []
        if last.home:
            part = sizes.get("home", BackupPart("home", 0, 0))
            removed.append(RemovedPath("home", last.home, part.bytes, part.files))
        for path in last.mail:
            part = sizes.get(f"mail:{Path(path).name}", BackupPart(path, 0, 0))
            removed.append(RemovedPath("mail", path, part.bytes, part.files))
        if last.database:
            part = sizes.get("database", BackupPart("database", 0, 0))
            removed.append(RemovedPath("database", last.database, part.bytes, part.files))
        return RemovalManifest(spec.name, node.name, tuple(removed), last, after.archive)


__all__ = [
    "AccountFootprint", "ArchiveFile", "BackupPart", "BackupRecord", "HostingBackups", "PurgeManifest",
    "RemovalManifest", "RemovedFile", "RemovedPath", "RestoreResult",
    "validate_backup_id",
]
