"""Backup hosts, each hosting node's restic repository, and the state of the backup jobs.

The repository password of a node is generated here (``secrets``, 256 bits), sealed with
the backup key (Fernet; ``backup_password_key`` or ``key_dir/backup-fernet.key``) and
opened only to be handed to that node's converge or to a restore from it, as an extra
variable (a 0600 file, never argv; the roles keep it behind ``no_log``). The database
alone never reveals it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner.config import Settings
from provisioner.domain.backups import alert_transition, repository_url, sftp_user_for
from provisioner.errors import ConfigurationError, InvalidInput
from provisioner.keyfiles import fernet_from
from provisioner.store.hosting import HostingNode
from provisioner.store.models import BackupCheck, BackupHost, BackupRepository

KEY_FILE = "backup-fernet.key"
_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_ROOT_RE = re.compile(r"/[A-Za-z0-9._/-]{1,199}")
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
              "ssh-rsa")
_KNOWN_HOSTS_LINE = re.compile(
    r"[A-Za-z0-9.:\[\],*-]{1,300} (?P<type>[a-z0-9-]{3,40}) [A-Za-z0-9+/=]{16,4096}")
_PUBLIC_KEY_RE = re.compile(r"ssh-ed25519 [A-Za-z0-9+/=]{16,200}( [A-Za-z0-9@._-]{1,100})?")
_COUNTRY_RE = re.compile(r"[A-Z]{2}")


def backup_fernet(settings: Settings) -> MultiFernet:
    return fernet_from(settings.backup_password_key, settings.effective_key_dir / KEY_FILE,
                       "backup_password_key")


def check_known_hosts(text: str) -> str:
    """The backup host's known_hosts lines (``HOST TYPE BASE64``), normalised; InvalidInput
    for anything else (nothing else may reach a node's known_hosts file)."""
    lines = [line.strip() for line in (text or "").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InvalidInput("the backup host's known_hosts holds no host key line")
    for line in lines:
        m = _KNOWN_HOSTS_LINE.fullmatch(line)
        if m is None or m.group("type") not in _KEY_TYPES:
            raise InvalidInput(f"not a known_hosts line (HOST KEYTYPE BASE64): {line[:80]!r}")
    return "\n".join(lines) + "\n"


def host_keys(known_hosts: str) -> set[tuple[str, str]]:
    """The (type, base64) key material of known_hosts lines, whatever host names they carry."""
    out = set()
    for line in known_hosts.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.add((parts[1], parts[2]))
    return out


def check_public_key(text: str) -> str:
    key = (text or "").strip()
    if not _PUBLIC_KEY_RE.fullmatch(key):
        raise InvalidInput(f"not an ssh-ed25519 public key: {key[:60]!r}")
    return key


@dataclass(frozen=True)
class Repository:
    """A node's repository, as plain values (detached from the session)."""

    id: int
    node: str
    host: str
    address: str
    port: int
    user: str
    url: str
    known_hosts: str
    public_key: str | None
    host_throwaway: bool

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "host": self.host, "address": self.address, "port": self.port,
                "user": self.user, "repository": self.url, "public_key": self.public_key}


def add_host(s: Session, name: str, address: str, known_hosts: str, *, port: int = 22,
             root: str = "/srv/restic", throwaway: bool = False, country: str | None = None,
             now: datetime) -> tuple[BackupHost, bool]:
    """Register a backup host (or update one of that name)."""
    if not _NAME_RE.fullmatch(name or ""):
        raise InvalidInput(f"backup host name {name!r} must match [a-z][a-z0-9-]{{0,62}}")
    repository_url("check", address)  # nodes reach it by SFTP at this address (no IPv6 literal)
    if not 1 <= port <= 65535:
        raise InvalidInput("bad SSH port")
    if not _ROOT_RE.fullmatch(root or "") or ".." in root.split("/"):
        raise InvalidInput(f"repository root {root!r} must be an absolute path")
    if country is not None and not _COUNTRY_RE.fullmatch(country.strip().upper()):
        raise InvalidInput(f"country {country!r} must be an ISO 3166 alpha-2 code (e.g. SI)")
    lines = check_known_hosts(known_hosts)
    row = s.execute(select(BackupHost).where(BackupHost.name == name)).scalar_one_or_none()
    created = row is None
    if row is None:
        row = BackupHost(name=name, created_at=now)
        s.add(row)
    row.address, row.ssh_port, row.known_hosts, row.root = address, port, lines, root
    row.throwaway = throwaway
    if country is not None:
        row.country = country.strip().upper()
    s.flush()
    return row, created


def add_repository(s: Session, fernet: MultiFernet, node_name: str, host_name: str, *,
                   now: datetime) -> tuple[Repository, bool]:
    """The node's repository on ``host_name``: created once, with a new sealed password.
    Registering it again on the same host changes nothing; on another host it is refused
    (moving a repository is a restore, not a setting)."""
    node = s.execute(select(HostingNode).where(HostingNode.name == node_name)).scalar_one_or_none()
    if node is None:
        raise InvalidInput(f"no node {node_name!r}")
    host = s.execute(select(BackupHost).where(BackupHost.name == host_name)).scalar_one_or_none()
    if host is None:
        raise InvalidInput(f"no backup host {host_name!r} (`provisioner backups host add`)")
    user = sftp_user_for(node.name)
    row = s.execute(select(BackupRepository).where(BackupRepository.node_id == node.id)
                    ).scalar_one_or_none()
    if row is not None:
        if row.host_id != host.id:
            raise InvalidInput(f"node {node_name} already backs up to another host")
        return _view(s, row), False
    password = secrets.token_urlsafe(32)
    row = BackupRepository(node_id=node.id, host_id=host.id, sftp_user=user, path=f"{host.root}/{node.name}",
                           sealed_password=fernet.encrypt(password.encode()), created_at=now)
    s.add(row)
    s.flush()
    return _view(s, row), True


def _view(s: Session, row: BackupRepository) -> Repository:
    node = s.get(HostingNode, row.node_id)
    host = s.get(BackupHost, row.host_id)
    assert node is not None and host is not None
    return Repository(row.id, node.name, host.name, host.address, host.ssh_port, row.sftp_user,
                      repository_url(row.sftp_user, host.address), host.known_hosts,
                      row.public_key, host.throwaway)


def repositories(s: Session, host_name: str | None = None) -> list[Repository]:
    q = select(BackupRepository).order_by(BackupRepository.id)
    if host_name is not None:
        q = q.join(BackupHost, BackupHost.id == BackupRepository.host_id).where(BackupHost.name == host_name)
    return [_view(s, r) for r in s.execute(q).scalars()]


def repository_for(s: Session, node_name: str) -> Repository | None:
    row = s.execute(select(BackupRepository).join(HostingNode, HostingNode.id == BackupRepository.node_id)
                    .where(HostingNode.name == node_name)).scalar_one_or_none()
    return None if row is None else _view(s, row)


def host_row(s: Session, name: str) -> BackupHost:
    host = s.execute(select(BackupHost).where(BackupHost.name == name)).scalar_one_or_none()
    if host is None:
        raise InvalidInput(f"no backup host {name!r}")
    return host


def hosts(s: Session) -> list[BackupHost]:
    return list(s.execute(select(BackupHost).order_by(BackupHost.name)).scalars())


def set_public_key(s: Session, repository_id: int, public_key: str) -> bool:
    """Record the node's SFTP public key (read from the node); True when it changed."""
    key = check_public_key(public_key)
    row = s.get(BackupRepository, repository_id)
    assert row is not None
    changed = row.public_key != key
    row.public_key = key
    return changed


def open_password(s: Session, fernet: MultiFernet, repository_id: int) -> str:
    """The repository's password, unsealed (for the node's converge or a restore only)."""
    row = s.get(BackupRepository, repository_id)
    assert row is not None
    try:
        return fernet.decrypt(row.sealed_password).decode()
    except InvalidToken:
        raise ConfigurationError("a backup repository password does not decrypt with "
                                 "backup_password_key (or key_dir/backup-fernet.key)") from None


def record_outcome(s: Session, repository_id: int, kind: str, ok: bool, detail: dict[str, Any],
                   now: datetime) -> bool:
    """Record a job's outcome; True when ops are to be alerted now (the first failure
    since the last success)."""
    row = s.execute(select(BackupCheck).where(BackupCheck.repository_id == repository_id,
                                              BackupCheck.kind == kind)).scalar_one_or_none()
    if row is None:
        row = BackupCheck(repository_id=repository_id, kind=kind, ok=True, alerted=False, last_at=now)
        s.add(row)
    state = alert_transition(ok, bool(row.alerted))
    if ok:
        row.last_ok_at = now
        row.failing_since = None
    elif row.failing_since is None:
        row.failing_since = now
    row.ok, row.alerted, row.last_at, row.detail = state.ok, state.alerted, now, detail
    s.flush()
    return state.alert


def last_ok_at(s: Session, repository_id: int, kind: str) -> datetime | None:
    return s.execute(select(BackupCheck.last_ok_at).where(
        BackupCheck.repository_id == repository_id, BackupCheck.kind == kind)).scalar_one_or_none()


def checks(s: Session) -> list[dict[str, Any]]:
    out = []
    rows = s.execute(select(BackupCheck, BackupRepository, HostingNode)
                     .join(BackupRepository, BackupRepository.id == BackupCheck.repository_id)
                     .join(HostingNode, HostingNode.id == BackupRepository.node_id)
                     .order_by(HostingNode.name, BackupCheck.kind))
    for check, _repo, node in rows:
        out.append({"node": node.name, "kind": check.kind, "ok": check.ok,
                    "last_at": check.last_at.isoformat(),
                    "last_ok_at": check.last_ok_at.isoformat() if check.last_ok_at else None,
                    "failing_since": check.failing_since.isoformat() if check.failing_since else None,
                    "detail": check.detail})
    return out


def read_known_hosts_file(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
