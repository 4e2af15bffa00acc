"""The controller's Fernet keys: from a setting, or from a key file in the key directory.

One loader for every sealed thing (TLS private keys, domain transfer codes). A setting
may hold several keys, comma-separated: the first encrypts, all decrypt (rotation).
Without a setting, the key lives in a 0600 file in ``key_dir`` (0700; by default
``data_dir/keys``, a directory apart from the database, so that the database's backups
need not carry the keys that open it) that the first process to need it creates:
written to a temporary file in the same directory, then hard-linked into place, so a
concurrent creator never reads a partial file, and whichever link lands first is the
key every process uses. A key file at its old place (beside the database) is moved
into the key directory the same way the first time it is needed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

from provisioner.errors import ConfigurationError


def fernet_from(keys: str, key_file: Path, setting: str, *, legacy: Path | None = None) -> MultiFernet:
    """The keys of the setting named ``setting`` (its value ``keys``) or, when it is empty,
    the one in ``key_file`` (moved there from ``legacy`` if that exists, else created).
    ConfigurationError for a malformed key."""
    raw = keys.strip()
    where = f"the setting {setting}"
    if not raw:
        raw = load_or_create_key(key_file, legacy=legacy)
        where = f"the key file {key_file} (used when {setting} is empty)"
    parts = [k.strip() for k in raw.split(",") if k.strip()]
    if not parts:
        raise ConfigurationError(f"{where} holds no Fernet key")
    try:
        return MultiFernet([Fernet(k.encode()) for k in parts])
    except ValueError as exc:  # wrong length, or not base64 (binascii.Error is a ValueError)
        raise ConfigurationError(f"{where} is not a Fernet key: {exc}") from None


def load_or_create_key(path: Path, *, legacy: Path | None = None) -> str:
    """The text of the key file ``path``; when there is none, the key of the file
    ``legacy`` (its old place) or else a new Fernet key, put there atomically (mode 0600,
    the directory 0700); a moved key's old file is removed once the new one holds it.
    Concurrent callers, threads or processes, get the same key."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    old: bytes | None = None
    if legacy is not None:
        try:
            old = legacy.read_bytes()
        except FileNotFoundError:
            pass  # never there, or a concurrent caller has moved it: it is at `path` then
        except OSError as exc:
            raise ConfigurationError(f"cannot read the key file {legacy}: {exc}") from exc
    try:
        make_private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)  # 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key() if old is None else old)
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another creator was first: use theirs
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)
        key = path.read_text().strip()
        if legacy is not None and old is not None and key == old.decode().strip():
            with contextlib.suppress(FileNotFoundError):  # a concurrent mover was first
                legacy.unlink()
        return key
    except OSError as exc:
        raise ConfigurationError(f"cannot create the key file {path}: {exc}") from exc


def make_private_dir(path: Path) -> Path:
    """``path`` as a directory; the parts of it that are missing are created 0700 (the
    data directory, the key directory). Parts that exist keep their mode."""
    missing = []
    for part in (path, *path.parents):
        if part.is_dir():
            break
        missing.append(part)
    for part in reversed(missing):
        try:
            part.mkdir(mode=0o700)
        except FileExistsError:
            if not part.is_dir():
                raise
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the new name durable: a key lost in a crash would make every sealed value unreadable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
