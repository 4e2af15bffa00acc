"""The node's mail sending policy (roles/hosting_account's hosting-mail-policy): when it
fails, the message passes (DUNNO: mail is never stopped by a broken policy), and the
failure is counted in a file of its own, never silently; mail without a login from a
process of the node counts for the account of the process's user (the owner of the
client socket in the kernel's TCP table). Loaded in this process as the node runs it;
its database is a SQLite file of the test."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import sqlite3
import sys
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


# -- which account sends: a login, or the owner of a local client socket ---------------------
NOBODY = pwd.getpwnam("nobody")
TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
              "inode\n")


def tcp_line(local: tuple[str, int], remote: tuple[str, int], uid: int) -> str:
    """One line of /proc/net/tcp as the kernel writes it (address in host byte order)."""
    def hexed(end: tuple[str, int]) -> str:
        number = int.from_bytes(socket.inet_aton(end[0]), sys.byteorder)
        return f"{number:08X}:{end[1]:04X}"
    return (f"   0: {hexed(local)} {hexed(remote)} 01 00000000:00000000 00:00000000 00000000 "
            f"{uid:5d} 0 4242 1\n")


@pytest.fixture
def local_policy(policy: Any, tmp_path: Path, monkeypatch: Any) -> Any:
    """The policy with an account named like the system user "nobody" (whose processes
    connect from 127.0.0.1:40025), and a table of sockets of this test."""
    (Path(policy.STATE_DIR) / "nobody.json").write_text(json.dumps(
        {"name": NOBODY.pw_name, "domains": ["nobody.si"], "limits": LIMITS, "suspended": False}))
    table = tmp_path / "tcp"
    table.write_text(TCP_HEADER
                     + tcp_line(("127.0.0.1", 25), ("127.0.0.1", 40025), 0)  # the server's end
                     + tcp_line(("127.0.0.1", 40025), ("127.0.0.1", 25), NOBODY.pw_uid)
                     + tcp_line(("10.213.0.5", 40026), ("10.213.0.5", 25), 0))  # root's own mail
    monkeypatch.setattr(policy, "PROC_NET_TCP", str(table))
    return policy


def end_of_message(client: tuple[str, int], instance: str, **extra: str) -> dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "sasl_username": "",
            "client_address": client[0], "client_port": str(client[1]), "server_address": "127.0.0.1",
            "server_port": "25", "recipient_count": "1", "instance": instance, **extra}


def sent(policy: Any, account: str | None = None) -> int:
    """Messages counted (for ``account``, or for anyone)."""
    with contextlib.closing(policy.db()) as conn:
        if account is None:
            return int(conn.execute("SELECT COUNT(*) FROM sent").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM sent WHERE account=?", (account,)).fetchone()[0])


def test_mail_from_a_local_process_counts_for_the_account_of_its_user(local_policy: Any) -> None:
    answers = [local_policy.answer(end_of_message(("127.0.0.1", 40025), f"m{i}")) for i in range(61)]
    assert answers[:60] == ["DUNNO"] * 60
    assert answers[60].startswith("DEFER_IF_PERMIT 4.7.1 Hourly sending limit of 60"), answers[60]
    assert sent(local_policy, "nobody") == 60
    assert not Path(local_policy.FAILURES).exists()


def test_a_local_account_past_its_recipient_limit_is_refused_at_rcpt(local_policy: Any) -> None:
    base = end_of_message(("127.0.0.1", 40025), "r1", protocol_state="RCPT")
    answers = [local_policy.answer(dict(base, recipient=f"x{i}@outside.example")) for i in range(61)]
    assert answers[:60] == ["DUNNO"] * 60 and answers[60].startswith("REJECT 5.5.3")


@pytest.mark.parametrize("client", [("10.9.8.7", 40025), ("127.0.0.1", 40099)], ids=["remote", "no-socket"])
def test_mail_of_no_local_account_is_neither_counted_nor_limited(local_policy: Any,
                                                                   client: tuple[str, int]) -> None:
    assert [local_policy.answer(end_of_message(client, f"m{i}")) for i in range(61)] == ["DUNNO"] * 61
    assert sent(local_policy) == 0


def test_mail_of_the_nodes_root_is_not_counted(local_policy: Any) -> None:
    attrs = end_of_message(("10.213.0.5", 40026), "m1", server_address="10.213.0.5")
    assert local_policy.answer(attrs) == "DUNNO"
    assert sent(local_policy, "nobody") == 0


def test_a_login_counts_for_its_domain_even_from_a_local_socket(local_policy: Any) -> None:
    attrs = end_of_message(("127.0.0.1", 40025), "m1", sasl_username="info@example.si")
    assert local_policy.answer(attrs) == "DUNNO"
    assert sent(local_policy, "examplesi") == 1 and sent(local_policy, "nobody") == 0


def test_the_owner_of_a_real_connection_is_read_from_the_kernels_table(policy: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            host, port = client.getsockname()
            attrs = {"client_address": host, "client_port": str(port),
                     "server_address": server.getsockname()[0], "server_port": str(server.getsockname()[1])}
            assert policy.local_uid(attrs) == os.getuid()
            # The server's end of the same connection is not a client.
            assert policy.local_uid(dict(attrs, client_port=str(server.getsockname()[1]))) is None
