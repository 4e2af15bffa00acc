"""The backup targets in the store on SQLite and PostgreSQL: migration 0011 down and up
again, the repository password stored only sealed, one repository per node and SFTP
user, and the job outcomes that alert ops once per failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import inspect, text

from provisioner.errors import ConfigurationError, InvalidInput
from provisioner.store import backups as store
from provisioner.store.db import alembic_config, session_factory, transaction, upgrade
from provisioner.store.hosting import add_node

KNOWN_HOSTS = "192.0.2.50 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk2bV5b0e3v1Xq7l0v5gYj4dQm2p8Jw9t0c1r2s3t4u\n"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TABLES = {"backup_hosts", "backup_repositories", "backup_checks"}


def test_migration_0011_goes_down_and_up_again(db_url: str) -> None:
    factory = session_factory(db_url)
    engine = factory.kw["bind"]
    assert TABLES <= set(inspect(engine).get_table_names())
    command.downgrade(alembic_config(db_url), "0010")
    assert not TABLES & set(inspect(engine).get_table_names())
    upgrade(db_url)
    assert TABLES <= set(inspect(engine).get_table_names())


def test_the_password_is_stored_sealed_only(db_url: str) -> None:
    fernet = MultiFernet([Fernet(Fernet.generate_key())])
    factory = session_factory(db_url)
    with transaction(factory) as s:
        add_node(s, "node1", "192.0.2.10", capacity_accounts=5, capacity_disk_mb=1000)
        store.add_host(s, "backup1", "192.0.2.50", KNOWN_HOSTS, now=NOW)
        repo, created = store.add_repository(s, fernet, "node1", "backup1", now=NOW)
    with transaction(factory) as s:
        password = store.open_password(s, fernet, repo.id)
        stored = s.execute(text("SELECT sealed_password, sftp_user FROM backup_repositories")).one()
        again, created_again = store.add_repository(s, fernet, "node1", "backup1", now=NOW)
    assert created and not created_again and again == repo
    assert repo.url == "sftp:rn-node1@192.0.2.50:/repo" and stored[1] == "rn-node1"
    assert len(password) >= 40 and password.encode() not in bytes(stored[0])
    with transaction(factory) as s, pytest.raises(ConfigurationError, match="does not decrypt"):
        store.open_password(s, MultiFernet([Fernet(Fernet.generate_key())]), repo.id)


@pytest.mark.parametrize(("node", "host"), [("ghost", "backup1"), ("node1", "ghost")])
def test_a_repository_needs_a_known_node_and_host(db_url: str, node: str, host: str) -> None:
    factory = session_factory(db_url)
    with transaction(factory) as s:
        add_node(s, "node1", "192.0.2.10", capacity_accounts=5, capacity_disk_mb=1000)
        store.add_host(s, "backup1", "192.0.2.50", KNOWN_HOSTS, now=NOW)
    with transaction(factory) as s, pytest.raises(InvalidInput, match="no "):
        store.add_repository(s, MultiFernet([Fernet(Fernet.generate_key())]), node, host, now=NOW)


def test_a_failing_job_alerts_once_per_failure(db_url: str) -> None:
    factory = session_factory(db_url)
    fernet = MultiFernet([Fernet(Fernet.generate_key())])
    with transaction(factory) as s:
        add_node(s, "node1", "192.0.2.10", capacity_accounts=5, capacity_disk_mb=1000)
        store.add_host(s, "backup1", "192.0.2.50", KNOWN_HOSTS, now=NOW)
        repo, _ = store.add_repository(s, fernet, "node1", "backup1", now=NOW)
    outcomes = [False, False, True, False, False]
    alerts = []
    for i, ok in enumerate(outcomes):
        with transaction(factory) as s:
            at = NOW + timedelta(days=7 * i)
            alerts.append(store.record_outcome(s, repo.id, "check", ok, {"i": i}, at))
    assert alerts == [True, False, False, True, False]
    with transaction(factory) as s:
        (row,) = store.checks(s)
        assert store.last_ok_at(s, repo.id, "check") == NOW + timedelta(days=14)
    assert row["ok"] is False and row["failing_since"] == (NOW + timedelta(days=21)).isoformat()
