"""Per-account backups in each node's restic repository on a separate backup host, and the
two stages of deletion after expiry.

The node side is ``/usr/local/sbin/hosting-backup`` (roles/hosting_node): restic over SFTP
to the node's own chrooted account on the backup host (roles/backup_host); one snapshot
per account and run (home, maildirs, a ``mysqldump --single-transaction`` dump), tagged
``account:<name>`` and ``service:<id>``. This adapter runs it through the playbooks
``hosting_account_backup.yml`` (backup, list, forget, status, key, init, check, drill,
nightly, ...), ``hosting_account_restore.yml`` and ``hosting_account_purge_backups.yml``
(roles/hosting_backup), which write the script's JSON to a 0600 file in a private
temporary directory on the controller; the node converge (``hosting_node.yml``) and the
backup host's (``backup_host.yml``) run from here too (README, "Backups").

Stage 1 (:meth:`HostingBackups.remove_account`): a last snapshot, then the account's
``terminate``, then a check that its home, maildirs and database are gone. Stage 2
(:meth:`HostingBackups.purge`): every snapshot tagged with the account (and service)
forgotten and the repository pruned, with the proof: no snapshot with the tag remains,
``restic check`` passed, the ids and the bytes the prune freed. *When* a stage is due is
the pipeline's decision.

Errors: ``InvalidInput`` for a bad account name or snapshot id (checked before anything
runs) or a request the node refuses; ``TransientError`` when the node or the backup host
is unreachable, too slow, or the repository is locked by another run; ``StepFailed`` for
every other failure. Secrets (a repository password for a restore from another node's
repository) travel only as extra variables (a 0600 file; the roles keep them ``no_log``).
"""

from __future__ import annotations

import builtins
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts
from provisioner.adapters.hosting.ansible import RunResult, Target, run_playbook
from provisioner.adapters.ssh import node_client, paramiko_module
from provisioner.domain.backups import validate_check_subset, validate_snapshot_id
from provisioner.domain.names import normalize_domain, validate_account_name
from provisioner.errors import ConfigurationError, InvalidInput, StepFailed, TransientError

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
FULL_ID_RE = re.compile(r"[0-9a-f]{64}")
SERVICE_RE = re.compile(r"[0-9]{1,18}")
# the script's error kinds (its JSON's "error") that a retry may cure
TRANSIENT_KINDS = frozenset({"unreachable", "locked"})

Runner = Callable[..., RunResult]
DUMP_COMMAND = "/usr/local/sbin/hosting-backup dump"  # tar on stdout, error JSON on stderr
LAST_NIGHTLY = "/var/lib/hosting-backup/last-nightly.json"  # the node timer's last run (0600)


def validate_backup_id(account: str, backup_id: str) -> str:
    """A restic snapshot id for ``account``'s restore (8..64 lower-case hex), or InvalidInput."""
    validate_account_name(account)  # the node checks the same again
    return validate_snapshot_id(backup_id)


def _service(value: int | str | None) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not SERVICE_RE.fullmatch(text):
        raise InvalidInput(f"service id {value!r} must be 1-18 digits")
    return text


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime(ISO_FORMAT)


def _parse_iso(value: str) -> datetime:
    return datetime.strptime(value, ISO_FORMAT).replace(tzinfo=UTC)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


# -- what the node reports --------------------------------------------------------------------
@dataclass(frozen=True)
class BackupPart:
    """One source inside a snapshot: ``home``, ``mail:<domain>`` or ``database``."""

    name: str
    bytes: int
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "files": self.files}


@dataclass(frozen=True)
class BackupRecord:
    """One snapshot of an account: its restic id, time, tags and, when it was just taken,
    its size and what it holds (home path, maildir paths, database; per part). Snapshots
    read by ``list`` carry no sizes (restic's snapshot list has none): those are None."""

    id: str
    account: str
    created_at: datetime
    plan: str | None
    repository: str
    size: int | None
    file_count: int | None
    home: str | None
    mail: tuple[str, ...]
    database: str | None
    short_id: str = ""
    service: str | None = None
    hostname: str | None = None
    tags: tuple[str, ...] = ()
    added_bytes: int | None = None
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
                repository=str(data.get("repository") or ""),
                size=_int_or_none(data.get("size")), file_count=_int_or_none(data.get("file_count")),
                home=None if data.get("home") is None else str(data["home"]),
                mail=tuple(str(m) for m in data.get("mail") or ()),
                database=None if data.get("database") is None else str(data["database"]),
                short_id=str(data.get("short_id") or str(data["id"])[:8]),
                service=None if data.get("service") is None else str(data["service"]),
                hostname=None if data.get("hostname") is None else str(data["hostname"]),
                tags=tuple(str(t) for t in data.get("tags") or ()),
                added_bytes=_int_or_none(data.get("added_bytes")),
                parts=parts, warnings=tuple(str(w) for w in data.get("warnings") or ()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a backup record: {exc!r}") from exc
        validate_account_name(record.account)
        if not FULL_ID_RE.fullmatch(record.id):
            raise ValueError(f"not a restic snapshot id: {record.id!r}")
        if not record.id.startswith(record.short_id):
            raise ValueError(f"short id {record.short_id!r} is not a prefix of {record.id!r}")
        if record.service is not None and not SERVICE_RE.fullmatch(record.service):
            raise ValueError(f"not a service id: {record.service!r}")
        return record

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "short_id": self.short_id, "account": self.account,
                "service": self.service, "created_at": _iso(self.created_at), "plan": self.plan,
                "repository": self.repository, "hostname": self.hostname, "tags": list(self.tags),
                "size": self.size, "added_bytes": self.added_bytes, "file_count": self.file_count,
                "home": self.home, "mail": list(self.mail), "database": self.database,
                "parts": [p.as_dict() for p in self.parts], "warnings": list(self.warnings)}


@dataclass(frozen=True)
class RemovedFile:
    """What stage 2 (or retention) removed: ``kind`` is backup (a snapshot; ``path`` is
    the repository), archive (terminate's, on the node) or other; ``backup_id`` when it
    was a snapshot."""

    kind: str
    path: str
    size: int
    sha256: str | None
    backup_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemovedFile:
        ident = data.get("id", data.get("backup_id"))
        return cls(kind=str(data["kind"]), path=str(data["path"]), size=int(data.get("size") or 0),
                   sha256=None if data.get("sha256") is None else str(data["sha256"]),
                   backup_id=None if ident is None else str(ident))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "size": self.size, "sha256": self.sha256,
                "backup_id": self.backup_id}


@dataclass(frozen=True)
class PurgeManifest:
    """Stage 2: every snapshot of the account forgotten and pruned from the node's
    repository, terminate's archive removed from the node, and the proof: ``remaining``
    snapshots with the account's (or service's) tag (0) and ``check_ok`` (``restic
    check`` after the prune). ``bytes_freed`` is what the prune gave back."""

    account: str
    node: str
    removed: tuple[RemovedFile, ...]
    removed_dirs: tuple[str, ...] = ()
    snapshot_ids: tuple[str, ...] = ()
    bytes_freed: int = 0
    remaining: int | None = None
    check_ok: bool | None = None
    service: str | None = None

    @property
    def nothing_removed(self) -> bool:
        return not self.removed and not self.removed_dirs and not self.snapshot_ids

    @property
    def bytes(self) -> int:
        """The prune's freed bytes plus the node-side files removed."""
        return self.bytes_freed + sum(f.size for f in self.removed if f.kind != "backup")

    @property
    def backup_ids(self) -> tuple[str, ...]:
        ids = {f.backup_id for f in self.removed if f.backup_id} | set(self.snapshot_ids)
        return tuple(sorted(ids))

    @property
    def proven(self) -> bool:
        """No snapshot of the account is left and the repository checks out."""
        return self.remaining == 0 and self.check_ok is True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], node: str = "") -> PurgeManifest:
        try:
            check = data.get("check")
            check_ok = data.get("check_ok")
            if isinstance(check, Mapping):
                check_ok = check.get("ok")
            ids = tuple(str(i) for i in data.get("snapshot_ids") or ())
            manifest = cls(account=str(data["account"]), node=str(data.get("node") or node),
                           removed=tuple(RemovedFile.from_dict(f) for f in data.get("removed") or ()),
                           removed_dirs=tuple(str(d) for d in data.get("removed_dirs") or ()),
                           snapshot_ids=ids, bytes_freed=int(data.get("bytes_freed") or 0),
                           remaining=_int_or_none(data.get("remaining")),
                           check_ok=None if check_ok is None else bool(check_ok),
                           service=None if data.get("service") is None else str(data["service"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a purge manifest: {exc!r}") from exc
        bad = [i for i in manifest.backup_ids if not FULL_ID_RE.fullmatch(i)]
        if bad:
            raise ValueError(f"not restic snapshot ids: {bad!r}")
        return manifest

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "node": self.node, "service": self.service,
                "removed": [f.as_dict() for f in self.removed],
                "removed_dirs": list(self.removed_dirs), "backup_ids": list(self.backup_ids),
                "snapshot_ids": list(self.backup_ids), "bytes_freed": self.bytes_freed,
                "bytes": self.bytes, "remaining": self.remaining, "check_ok": self.check_ok,
                "proven": self.proven, "nothing_removed": self.nothing_removed}


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
    """Stage 1: what was removed from the live node (sizes from the last snapshot) and that
    last snapshot's record; ``archive`` is terminate's archive (stage 2 removes it)."""

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
    verified_files: int  # files the node compared with the snapshot's file list
    node: str = ""  # where it was restored
    source_node: str = ""  # whose repository it came from

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "backup_id": self.backup_id, "restored": list(self.restored),
                "verified_files": self.verified_files, "node": self.node,
                "source_node": self.source_node or self.node}


@dataclass(frozen=True)
class ForgetResult:
    """Retention applied to one account: ``keep`` daily snapshots kept, the rest forgotten."""

    account: str
    keep: int
    kept: tuple[str, ...]
    removed: tuple[str, ...]
    pruned: bool

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "keep": self.keep, "kept": list(self.kept),
                "removed": list(self.removed), "pruned": self.pruned}


@dataclass(frozen=True)
class CheckResult:
    """``restic check [--read-data-subset]`` of a node's repository."""

    ok: bool
    repository: str
    subset: str | None
    msg: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "repository": self.repository, "read_data_subset": self.subset,
                "msg": self.msg}


@dataclass(frozen=True)
class DrillResult:
    """A restore drill: an account's newest snapshot restored to a scratch directory and
    compared with the snapshot's own file list."""

    ok: bool
    account: str | None
    backup_id: str | None
    files: int
    bytes: int
    mismatches: tuple[str, ...]
    msg: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "account": self.account, "backup_id": self.backup_id, "files": self.files,
                "bytes": self.bytes, "mismatches": list(self.mismatches), "msg": self.msg}


@dataclass(frozen=True)
class NightlyResult:
    """One node's nightly run: a snapshot per account (or why not), retention, and the
    run's error kind (``unreachable``: the backup host could not be reached)."""

    node: str
    accounts: Mapping[str, Mapping[str, Any]]
    failed: tuple[str, ...]
    prune_ok: bool
    error: str | None
    msg: str = ""
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.prune_ok and self.error is None

    @property
    def transient(self) -> bool:
        return self.error in TRANSIENT_KINDS

    @property
    def snapshots(self) -> dict[str, str]:
        return {a: str(v["backup"]) for a, v in self.accounts.items() if v.get("backup")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], node: str) -> NightlyResult:
        accounts = data.get("accounts") or {}
        if not isinstance(accounts, Mapping):
            raise ValueError("accounts is not a mapping")
        prune = data.get("prune") or {}
        failed = data.get("failed")  # the accounts that failed; an error answer says `true`
        error = None if data.get("error") in (None, "") else str(data["error"])
        if failed is True and error is None:
            error = "failed"
        if not isinstance(failed, list):
            failed = [a for a, v in accounts.items() if isinstance(v, Mapping) and v.get("failed")]
        return cls(node, {str(k): dict(v) for k, v in accounts.items()},
                   tuple(str(a) for a in failed),
                   bool(prune.get("ok", True)) if isinstance(prune, Mapping) else bool(prune),
                   error, str(data.get("msg") or ""),
                   _parse_iso(str(data["finished_at"])) if data.get("finished_at") else None)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "ok": self.ok, "accounts": {k: dict(v) for k, v in self.accounts.items()},
                "failed": list(self.failed), "prune_ok": self.prune_ok, "error": self.error,
                "msg": self.msg, "finished_at": None if self.finished_at is None else _iso(self.finished_at)}


@dataclass(frozen=True)
class AccountFootprint:
    """What of an account is on a node (``hosting-backup status``); ``backups`` is None
    when the repository could not be read (``repository_error`` says why)."""

    account: str
    state_file: bool
    home: str | None
    mail: tuple[str, ...]
    database: str | None
    backups: int | None
    excluded: str | None  # why it gets no free backups, or None
    archive: ArchiveFile | None
    repository_error: str | None = None

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
                   database=data.get("database"), backups=_int_or_none(data.get("backups")),
                   excluded=data.get("excluded"),
                   archive=None if not archive else ArchiveFile(str(archive["path"]), int(archive["size"]),
                                                                str(archive["sha256"])),
                   repository_error=data.get("repository_error"))


@dataclass(frozen=True)
class SourceRepository:
    """Another node's repository to restore from (a restore onto another node). The
    password is never shown (not in ``repr``)."""

    node: str
    url: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BackupHostNode:
    """One node's SFTP account on a backup host: its user and the keys allowed in."""

    name: str
    user: str
    authorized_keys: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "user": self.user, "authorized_keys": list(self.authorized_keys)}


# -- the adapter ------------------------------------------------------------------------------
class HostingBackups:
    """The backup adapter: one ansible-runner run per operation."""

    def __init__(self, *, ssh_key: Path | None = None, known_hosts: Path | None = None,
                 timeout_s: float = 1800, runner: Runner = run_playbook,
                 reader: Callable[[Target, str], str | None] | None = None) -> None:
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts  # host keys are checked unless the node is throwaway
        self.timeout_s = timeout_s
        self._run = runner
        self._read = reader or self._read_over_ssh  # a node's file of ours (tests hand in a fake)

    def _go(self, playbook: str, node: Target, extravars: dict[str, Any], step_key: str, *,
            result_var: str = "hosting_backup_result_file", tolerate_failure: bool = False
            ) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="prov-backup-") as private:  # 0700
            result_file = Path(private) / "result.json"
            extravars = {**extravars, result_var: str(result_file)}
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
        if tolerate_failure and data is not None:
            return data  # the caller reads the failure from the JSON
        if data is not None and data.get("error") in TRANSIENT_KINDS:
            raise TransientError(f"{step_key} on {node.name}: {data['error']}: {data.get('msg', '')}")
        if data is not None and data.get("error") == "not_configured":
            raise ConfigurationError(f"{step_key}: node {node.name} has no backup repository configured "
                                     f"(`provisioner backups enroll {node.name}`): {data.get('msg', '')}")
        if not run.ok:
            detail = (data or {}).get("msg") or "; ".join(f"{h}: {e}" for h, e in run.errors.items())
            raise StepFailed(step_key, f"{run.status} rc={run.rc}: {detail}",
                             {"stats": run.stats, "status": run.status})
        if data is None:
            raise StepFailed(step_key, f"node {node.name} returned no result")
        return data

    def _op(self, node: Target, account: str | None, action: str, *, tolerate_failure: bool = False,
            **more: Any) -> dict[str, Any]:
        ev: dict[str, Any] = {"hosting_backup_action": action}
        if account is not None:
            validate_account_name(account)
            ev["hosting_backup_account"] = account
        playbook = {"restore": "hosting_account_restore",
                    "purge": "hosting_account_purge_backups"}.get(action, "hosting_account_backup")
        ev.update(more)
        return self._go(playbook, node, ev, f"backups.{action}", tolerate_failure=tolerate_failure)

    @staticmethod
    def _record(data: Mapping[str, Any], step_key: str) -> BackupRecord:
        try:
            return BackupRecord.from_dict(data)
        except (ValueError, InvalidInput) as exc:
            raise StepFailed(step_key, f"the node's backup record is not valid: {exc}") from exc

    # -- one account ----------------------------------------------------------------------
    def backup(self, node: Target, account: str, service: int | str | None = None) -> BackupRecord:
        """Take one snapshot now (whatever the account's free-backup policy says), tagged
        with the service when given."""
        more: dict[str, Any] = {} if service is None else {"hosting_backup_service": _service(service)}
        return self._record(self._op(node, account, "backup", **more), "backups.backup")

    def list(self, node: Target, account: str) -> builtins.list[BackupRecord]:
        """The account's snapshots in the node's repository, oldest first."""
        data = self._op(node, account, "list")
        records = [self._record(r, "backups.list") for r in data.get("backups") or []]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def restore(self, node: Target, account: str, backup_id: str,
                source: SourceRepository | None = None) -> RestoreResult:
        """Replace the account's home and maildirs by the snapshot's and re-import its
        database. The account must exist on ``node``. With ``source``, the snapshot is read
        from that (other) node's repository: a restore onto another node."""
        validate_backup_id(account, backup_id)
        more: dict[str, Any] = {"hosting_backup_id": backup_id}
        if source is not None:
            more.update(hosting_backup_source_repository=source.url,
                        hosting_backup_source_password=source.password)
        data = self._op(node, account, "restore", **more)
        return RestoreResult(account, str(data.get("id", backup_id)),
                             tuple(str(r) for r in data.get("restored") or ()),
                             int(data.get("verified_files") or 0), node.name,
                             source.node if source is not None else node.name)

    def forget(self, node: Target, account: str) -> ForgetResult:
        """Apply the plan's retention now (``restic forget --keep-daily N --prune``)."""
        data = self._op(node, account, "forget")
        removed = tuple(sorted({str(r["id"]) for r in data.get("removed") or []
                                if r.get("kind") == "backup" and r.get("id")}))
        return ForgetResult(account, int(data.get("keep") or 0),
                            tuple(str(i) for i in data.get("kept") or ()), removed,
                            bool(data.get("pruned")))

    def prune(self, node: Target, account: str) -> tuple[str, ...]:
        """The ids of the snapshots the plan's retention removed now."""
        return self.forget(node, account).removed

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

    def purge(self, node: Target, account: str, service: int | str | None = None) -> PurgeManifest:
        """Stage 2: forget every snapshot of a removed account (its tag, and the service's
        when given), prune, check, and remove terminate's archive. Refused (InvalidInput)
        while the account is still on the node; a second purge returns a manifest with
        ``nothing_removed``. StepFailed unless the node proves it (none left, check ok)."""
        more: dict[str, Any] = {} if service is None else {"hosting_backup_service": _service(service)}
        data = self._op(node, account, "purge", **more)
        try:
            manifest = PurgeManifest.from_dict(data, node.name)
        except ValueError as exc:
            raise StepFailed("backups.purge", str(exc)) from exc
        if not manifest.proven:
            raise StepFailed("backups.purge", f"{node.name} did not prove the purge of {account}: "
                                              f"remaining={manifest.remaining} check_ok={manifest.check_ok}",
                             {"manifest": manifest.as_dict()})
        return manifest

    # -- the node's repository ----------------------------------------------------------------
    def public_key(self, node: Target) -> str:
        """The node's own SFTP key (generated on the node): its public half."""
        data = self._op(node, None, "key")
        key = str(data.get("public_key") or "").strip()
        if not key.startswith("ssh-ed25519 "):
            raise StepFailed("backups.key", f"node {node.name} returned no ssh-ed25519 public key")
        return key

    def init(self, node: Target) -> bool:
        """Create the node's repository unless it exists; True when created now."""
        return bool(self._op(node, None, "init").get("created"))

    def check(self, node: Target, subset: str | None = None) -> CheckResult:
        """``restic check`` (with ``--read-data-subset``): a failure is a result, not an error."""
        more: dict[str, Any] = ({} if subset is None
                                else {"hosting_backup_check_subset": validate_check_subset(subset)})
        data = self._op(node, None, "check", tolerate_failure=True, **more)
        ok = bool(data.get("ok")) and not data.get("failed")
        return CheckResult(ok, str(data.get("repository") or ""), subset,
                           "" if ok else str(data.get("msg") or data.get("error") or "check failed"))

    def drill(self, node: Target, account: str | None = None) -> DrillResult:
        """Restore a random (or that) account's newest snapshot into a scratch directory and
        compare it with the snapshot's file list: a failure is a result, not an error."""
        data = self._op(node, account, "drill", tolerate_failure=True)
        ident = data.get("id")
        ok = bool(data.get("ok")) and not data.get("failed")
        return DrillResult(ok, data.get("account"), None if ident is None else str(ident),
                           int(data.get("files") or 0), int(data.get("bytes") or 0),
                           tuple(str(m) for m in data.get("mismatches") or ()),
                           "" if ok else str(data.get("msg") or data.get("error") or "drill failed"))

    def nightly(self, node: Target) -> NightlyResult:
        """The node's nightly run (a snapshot of every account with free backups, then the
        plans' retention). A failed run is a result (``ok``, ``transient``), not an error."""
        data = self._op(node, None, "nightly", tolerate_failure=True)
        try:
            return NightlyResult.from_dict(data, node.name)
        except (TypeError, ValueError, AttributeError) as exc:
            raise StepFailed("backups.nightly", f"the node's answer is not valid: {exc}") from exc

    def last_nightly(self, node: Target) -> NightlyResult | None:
        """The node's own last nightly run (its timer's JSON, ``LAST_NIGHTLY``), or None
        when there is none or it cannot be read (then the caller runs one)."""
        try:
            text = self._read(node, LAST_NIGHTLY)
        except (TransientError, ConfigurationError, StepFailed):
            return None
        if not text:
            return None
        try:
            data = json.loads(text)
            return NightlyResult.from_dict(data, node.name) if isinstance(data, dict) else None
        except (TypeError, ValueError, AttributeError, KeyError):
            return None

    def _read_over_ssh(self, node: Target, path: str) -> str | None:
        """A root-owned file of the node (a fixed path of ours), or None when it is not there."""
        where = f"node {node.name} ({node.address})"
        paramiko = paramiko_module()
        with node_client(node.address, where=where, port=node.port, user=node.user, key_path=self.ssh_key,
                         timeout_s=30.0, throwaway=node.throwaway, known_hosts=self.known_hosts) as client:
            try:
                _, stdout, _ = client.exec_command(f"cat {path}", timeout=60)  # noqa: S601 - fixed path
                data = stdout.read(1 << 20).decode(errors="replace")
                status = stdout.channel.recv_exit_status()
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransientError(f"{where}: cannot read {path}: {exc}") from exc
        return data if status == 0 else None

    def configure_node(self, node: Target, extravars: Mapping[str, Any]) -> bool:
        """Point the node at its repository (``hosting_node_backup.yml``: the backup part of
        roles/hosting_node with the repository URL, the password (0600; ``no_log``), the
        backup host's known_hosts, retention and the nightly timer), then ``restic init``.
        True when the repository was created now."""
        data = self._go("hosting_node_backup", node, dict(extravars), "backups.configure_node")
        return bool(data.get("created"))

    def configure_backup_host(self, host: Target, nodes: Sequence[BackupHostNode],
                              root: str = "/srv/restic") -> dict[str, Any]:
        """Converge the backup host (``backup_host.yml``): one chrooted SFTP account per
        node with that node's keys (all nodes every time: the list is the whole truth).
        Returns the role's JSON (``host_key``, ``accounts``: node -> user, repository)."""
        ev = {"backup_host_nodes": [n.as_dict() for n in nodes], "backup_host_root": root,
              "backup_host_address": host.address}
        return self._go("backup_host", host, ev, "backups.backup_host", result_var="backup_host_result_file")

    # -- stage 1 --------------------------------------------------------------------------------
    def remove_account(self, node: Target, spec: AccountSpec, accounts: HostingAccounts,
                       service: int | str | None = None) -> RemovalManifest:
        """Stage 1: a last snapshot, then ``accounts.terminate``, then check that the home,
        maildirs and database are gone. Safe to run again: when the account is gone already,
        its newest snapshot is the last one."""
        spec = spec.validated()
        before = self.status(node, spec.name, spec.domains)
        if before.live:
            last = self.backup(node, spec.name, service)
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

    # -- the customer's download of a snapshot (issue 17 item 9, H9) --------------------------
    def fetch_archive(self, node: Target, account: str, snapshot: str, dest: Path, *,
                      chunk: int = 1 << 20) -> int:
        """Stream snapshot ``snapshot`` of ``account`` as a tar (the node's
        ``hosting-backup dump ACCOUNT SNAPSHOT``: ``restic dump --archive tar``, refused
        unless the snapshot carries the account's tag) into ``dest``, a new 0600 file in a
        private directory of the caller; the bytes written. Runs over SSH (paramiko) with
        the adapter's key and known_hosts: the argv is two validated words, never the
        customer's input. Nothing is held in memory but one chunk."""
        validate_account_name(account)
        snap = snapshot if snapshot == "latest" else validate_snapshot_id(snapshot)
        where = f"node {node.name} ({node.address})"
        command = f"{DUMP_COMMAND} {account} {snap}"
        paramiko = paramiko_module()
        written = 0
        with node_client(node.address, where=where, port=node.port, user=node.user,
                         key_path=self.ssh_key, timeout_s=30.0, throwaway=node.throwaway,
                         known_hosts=self.known_hosts) as client:
            try:
                _, stdout, stderr = client.exec_command(command, timeout=self.timeout_s)  # noqa: S601
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while data := stdout.read(chunk):
                        out.write(data)
                        written += len(data)
                err = stderr.read(64 * 1024).decode(errors="replace")
                status = stdout.channel.recv_exit_status()
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransientError(f"{where}: the download of {account}'s backup failed: {exc}") from exc
        if status != 0:
            data_err: dict[str, Any] = {}
            try:
                loaded = json.loads(err.strip().splitlines()[-1]) if err.strip() else {}
                data_err = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                data_err = {}
            msg = str(data_err.get("msg") or err.strip()[-400:] or f"exit {status}")
            if data_err.get("error") in TRANSIENT_KINDS:
                raise TransientError(f"backups.dump on {node.name}: {data_err['error']}: {msg}")
            if status == 2 or data_err.get("refused"):
                raise InvalidInput(f"backups.dump on {node.name}: {msg}")
            raise StepFailed("backups.dump", f"{where}: exit {status}: {msg}")
        return written


__all__ = [
    "AccountFootprint", "ArchiveFile", "BackupHostNode", "BackupPart", "BackupRecord", "CheckResult",
    "DrillResult", "ForgetResult", "HostingBackups", "NightlyResult", "PurgeManifest", "RemovalManifest",
    "RemovedFile", "RemovedPath", "RestoreResult", "SourceRepository", "validate_backup_id",
]
