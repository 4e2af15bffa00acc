"""One Fernet key loader (provisioner.keyfiles) for the TLS keys and the transfer codes."""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from provisioner import keyfiles
from provisioner.config import Settings
from provisioner.errors import ConfigurationError
from provisioner.keyfiles import fernet_from, load_or_create_key
from provisioner.store.tls import fernet_for


def _create_after(barrier: Any, path: Path) -> str:
    barrier.wait()
    return load_or_create_key(path)


def test_concurrent_threads_get_one_key_and_no_error(tmp_path: Path) -> None:
    for round_ in range(20):
        path = tmp_path / f"r{round_}" / "auth.key"  # the directory is missing too
        barrier = threading.Barrier(8)
        with ThreadPoolExecutor(8) as pool:
            keys = list(pool.map(_create_after, [barrier] * 8, [path] * 8))
        assert len(set(keys)) == 1 and keys[0] == path.read_text()
        Fernet(keys[0].encode())  # a whole key, never an empty or partial file


def test_concurrent_processes_get_one_key_and_no_error(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = tmp_path / "tls-fernet.key"
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ProcessPoolExecutor(4, mp_context=ctx) as pool:
            keys = list(pool.map(_create_after, [barrier] * 4, [path] * 4, timeout=120))
    assert len(set(keys)) == 1 and keys[0] == path.read_text()


def test_the_loser_of_the_race_takes_the_winners_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process links its key in between our look and our link: we use theirs."""
    path = tmp_path / "auth.key"
    theirs = Fernet.generate_key().decode()
    real_link = os.link

    def link_after_them(src: str, dst: Path) -> None:
        Path(dst).write_text(theirs)
        real_link(src, dst)  # FileExistsError, which the loader expects

    monkeypatch.setattr(keyfiles.os, "link", link_after_them)
    assert load_or_create_key(path) == theirs
    assert [p.name for p in tmp_path.iterdir()] == ["auth.key"]  # no temporary file left


def test_a_new_key_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "k" / "auth.key"
    load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["auth.key"]


TRUNCATED_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()[:-2]  # fixed: same ids everywhere


@pytest.mark.parametrize("bad", ["not-a-key", "c2hvcnQ=", TRUNCATED_KEY, ",", "a,b"])
def test_a_malformed_key_in_the_setting_is_a_configuration_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError, match="setting domain_auth_key"):
        fernet_from(bad, tmp_path / "unused.key", "domain_auth_key")
    assert not (tmp_path / "unused.key").exists()


@pytest.mark.parametrize("bad", ["", "\n", "not-a-key\n"])
def test_a_malformed_key_file_is_a_configuration_error(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "tls-fernet.key"
    path.write_text(bad)  # e.g. the empty file the old loader could leave behind
    with pytest.raises(ConfigurationError, match="key file"):
        fernet_from("", path, "tls_key_encryption_key")
    assert path.read_text() == bad  # never replaced: something may be sealed with it


def test_the_first_of_several_keys_encrypts_and_all_decrypt(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed_before = Fernet(old.encode()).encrypt(b"x")
    both = fernet_from(f"{new}, {old}", tmp_path / "unused.key", "tls_key_encryption_key")
    assert both.decrypt(sealed_before) == b"x"
    assert Fernet(new.encode()).decrypt(both.encrypt(b"y")) == b"y"


def test_both_callers_use_the_loader(tmp_path: Path) -> None:
    from provisioner.pipeline.capabilities.domains import _fernet

    settings = Settings().with_overrides(data_dir=tmp_path)
    sealed = fernet_for(settings).encrypt(b"tls")
    assert fernet_from("", tmp_path / "keys" / "tls-fernet.key", "x").decrypt(sealed) == b"tls"
    sealed = _fernet(settings).encrypt(b"code")
    assert fernet_from("", tmp_path / "keys" / "domain-auth.key", "x").decrypt(sealed) == b"code"
    with pytest.raises(ConfigurationError, match="domain_auth_key"):
        _fernet(settings.with_overrides(domain_auth_key="nope"))
