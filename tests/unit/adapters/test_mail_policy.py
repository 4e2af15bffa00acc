"""The node's mail sending policy (roles/hosting_account's hosting-mail-policy) when it
fails: the message passes (DUNNO: mail is never stopped by a broken policy), and the
failure is counted in a file of its own, never silently. Loaded in this process as the
node runs it; its database is a SQLite file of the test."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.adapters.node_code import ROLES, load_file

POLICY = ROLES / "hosting_account" / "files" / "usr" / "local" / "sbin" / "hosting-mail-policy"
LIMITS = {"recipients_max": 60, "recipients_per_day": 2000, "mail_per_hour": 60, "mail_per_month": 10000}


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: Any) -> Any:
    mod = load_file("hosting_mail_policy", POLICY)
    states = tmp_path / "accounts"
    states.mkdir()
    (states / "examplesi.json").write_text(json.dumps(
        {"name": "examplesi", "domains": ["example.si"], "limits": LIMITS, "suspended": False}))
    monkeypatch.setattr(mod, "STATE_DIR", str(states))
    monkeypatch.setattr(mod, "DB", str(tmp_path / "policy.sqlite"))
    monkeypatch.setattr(mod, "FAILURES", str(tmp_path / "failures.json"))
    monkeypatch.setattr(mod, "DB_TIMEOUT_S", 0.1)
    monkeypatch.setattr(mod, "ACCOUNTS", mod.Accounts())
    return mod


@pytest.fixture
def locked(policy: Any) -> Iterator[None]:
    """The policy's database held by another writer (an exclusive lock)."""
    policy.db().close()
    holder = sqlite3.connect(policy.DB, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def rcpt(instance: str = "m1") -> dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": "RCPT", "sasl_username": "info@example.si",
            "recipient": "someone@outside.example", "instance": instance}


def failures(policy: Any) -> dict[str, Any]:
    return dict(json.loads(Path(policy.FAILURES).read_text()))


def test_a_healthy_policy_counts_no_failure(policy: Any) -> None:
    assert policy.answer(rcpt()) == "DUNNO"  # a first recipient: accepted
    assert not Path(policy.FAILURES).exists()


def test_a_locked_database_lets_the_mail_pass_and_is_counted(policy: Any, locked: None) -> None:
    assert policy.answer(rcpt("m1")) == "DUNNO"
    first = failures(policy)
    assert first["count"] == 1 and "locked" in first["last_error"] and first["last_at"]
    assert policy.answer(rcpt("m2")) == "DUNNO"
    assert failures(policy)["count"] == 2  # every failure, never silently


def test_a_broken_count_file_starts_counting_again(policy: Any, locked: None) -> None:
    Path(policy.FAILURES).write_text("{not json")
    assert policy.answer(rcpt()) == "DUNNO"
    assert failures(policy)["count"] == 1
