"""What the controller keeps on disk is private: the data directory (0700), the SQLite
database with its WAL files (0600), and the Fernet key files in a directory of their own
(``key_dir``, 0700), apart from the database so that its backups do not carry the keys."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from provisioner.config import Settings
from provisioner.pipeline.capabilities.domains import _fernet as transfer_code_fernet
from provisioner.store.db import session_factory, transaction, upgrade
from provisioner.store.tls import fernet_for
from provisioner.tasks import make_celery


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what a service gets by default: group and others may read
    yield
    os.umask(old)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings().with_overrides(data_dir=tmp_path / "srv" / "provisioner")


def test_a_new_sqlite_database_and_its_directory_are_private(settings: Settings) -> None:
    upgrade(settings.effective_database_url)
    with transaction(session_factory(settings.effective_database_url)) as s:
        s.connection().exec_driver_sql("SELECT 1")
    assert mode(settings.data_dir) == 0o700
    assert mode(settings.sqlite_path) == 0o600
    wal_files = [settings.sqlite_path.with_name(settings.sqlite_path.name + suffix)
                 for suffix in ("-wal", "-shm")]
    assert all(p.exists() for p in wal_files)
    assert [mode(p) for p in wal_files] == [0o600, 0o600]


def test_the_broker_folder_does_not_create_the_data_dir_open(settings: Settings) -> None:
    make_celery(settings)
    assert (settings.data_dir / "broker").is_dir()
    assert mode(settings.data_dir) == 0o700


def test_key_files_live_in_a_private_key_dir_apart_from_the_database(settings: Settings) -> None:
    tls, codes = fernet_for(settings), transfer_code_fernet(settings)
    keys = settings.data_dir / "keys"
    assert settings.effective_key_dir == keys
    assert mode(keys) == 0o700
    assert sorted(p.name for p in keys.iterdir()) == ["domain-auth.key", "tls-fernet.key"]
    assert all(mode(p) == 0o600 for p in keys.iterdir())
    assert Fernet((keys / "tls-fernet.key").read_bytes()).decrypt(tls.encrypt(b"t")) == b"t"
    assert Fernet((keys / "domain-auth.key").read_bytes()).decrypt(codes.encrypt(b"c")) == b"c"
    assert not list(settings.data_dir.glob("*.key"))  # none beside the database


def test_the_key_dir_is_a_setting_of_its_own(settings: Settings, tmp_path: Path) -> None:
    elsewhere = settings.with_overrides(key_dir=str(tmp_path / "secrets" / "provisioner"))
    fernet_for(elsewhere)
    transfer_code_fernet(elsewhere)
    assert mode(tmp_path / "secrets" / "provisioner") == 0o700
    assert (tmp_path / "secrets" / "provisioner" / "tls-fernet.key").is_file()
    assert not (settings.data_dir / "keys").exists()


@pytest.mark.parametrize(("legacy", "new", "load"), [
    ("tls-fernet.key", "tls-fernet.key", fernet_for),
    ("registry/auth.key", "domain-auth.key", transfer_code_fernet),
])
def test_a_key_file_from_before_moves_to_the_key_dir_and_still_decrypts(
        settings: Settings, legacy: str, new: str, load: object) -> None:
    old_key = Fernet.generate_key()
    sealed = Fernet(old_key).encrypt(b"sealed before the move")
    old_path = settings.data_dir / legacy
    old_path.parent.mkdir(parents=True)
    old_path.write_bytes(old_key)
    assert load(settings).decrypt(sealed) == b"sealed before the move"  # type: ignore[operator]
    assert (settings.effective_key_dir / new).read_bytes().strip() == old_key
    assert mode(settings.effective_key_dir / new) == 0o600
    assert not old_path.exists()  # no copy left beside the database
    assert load(settings).decrypt(sealed) == b"sealed before the move"  # type: ignore[operator]
