"""The controller's Fernet keys: from a setting, or from a key file in the data directory.

One loader for every sealed thing (TLS private keys, domain transfer codes). A setting
may hold several keys, comma-separated: the first encrypts, all decrypt (rotation).
Without a setting, the key lives in a 0600 file that the first process to need it
creates: written to a temporary file in the same directory, then hard-linked into place,
so a concurrent creator never reads a partial file, and whichever link lands first is
the key every process uses.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

from provisioner.errors import ConfigurationError


def fernet_from(keys: str, key_file: Path, setting: str) -> MultiFernet:
    """The keys of the setting named ``setting`` (its value ``keys``) or, when it is empty,
    the one in ``key_file`` (created if missing). ConfigurationError for a malformed key."""
    raw = keys.strip()
    where = f"the setting {setting}"
    if not raw:
        raw = load_or_create_key(key_file)
        where = f"the key file {key_file} (used when {setting} is empty)"
    parts = [k.strip() for k in raw.split(",") if k.strip()]
    if not parts:
        raise ConfigurationError(f"{where} holds no Fernet key")
    try:
        return MultiFernet([Fernet(k.encode()) for k in parts])
    except ValueError as exc:  # wrong length, or not base64 (binascii.Error is a ValueError)
        raise ConfigurationError(f"{where} is not a Fernet key: {exc}") from None


def load_or_create_key(path: Path) -> str:
    """The text of the key file ``path``; when there is none, a new Fernet key put there
    atomically (mode 0600). Concurrent callers, threads or processes, get the same key."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)  # 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another creator was first: use theirs
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot create the key file {path}: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    """Make the new name durable: a key lost in a crash would make every sealed value unreadable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
