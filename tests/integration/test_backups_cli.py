"""``provisioner backups``: the commands against a real SQLite database and the wiring of
the product, with the node side replaced by the recording `FakeBackups`. `--json` prints
JSON only; bad input (a hostile snapshot id, a bad host key) exits 2 before any node is
asked; no progress bar without a terminal; the repository password never shows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.cli import app
from provisioner.cli import backups as cli_backups
from provisioner.config import load_settings
from provisioner.store.db import transaction, upgrade
from provisioner.store.hosting import HostingAccount, HostingNode, add_node
from provisioner.store.models import Service
from tests.helpers import MemoryMailer, World, make_world
from tests.unit.pipeline.fakes import Alerts, FakeBackups, FakeHosting

KNOWN_HOSTS = "192.0.2.50 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk2bV5b0e3v1Xq7l0v5gYj4dQm2p8Jw9t0c1r2s3t4u\n"


@pytest.fixture
def fake() -> FakeBackups:
    return FakeBackups()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeBackups) -> World:
    for key in [k for k in os.environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PROVISIONER_LINE_KINDS", "hosting")
    settings = load_settings()
    upgrade(settings.effective_database_url)
    w = make_world(settings, hosting=FakeHosting(), backups=fake, mailer=MemoryMailer(), alert=Alerts())
    monkeypatch.setattr(cli_backups, "wired", lambda *a, **k: w.app)  # the CLI's wiring, with the fake node
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
        add_node(s, "n2", "192.0.2.11", capacity_accounts=10, capacity_disk_mb=100_000)
    return w


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result.stdout if code == 0 else result.stderr


def as_json(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def host_file(tmp_path: Path, text: str = KNOWN_HOSTS) -> str:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return str(path)


def enrolled(world: World, fake: FakeBackups, tmp_path: Path) -> tuple[int, str, str]:
    """backup1 registered, n1 and n2 enrolled, a hosting service with its account."""
    as_json("backups", "host", "add", "backup1", "--address", "192.0.2.50",
            "--known-hosts", host_file(tmp_path))
    for node in ("n1", "n2"):
        as_json("backups", "enroll", node, "--host", "backup1")
    order = world.order(["hosting:mega:shop.si"])
    p = order["proforma"]
    world.pay(p["number"], p["gross"], "txn-1")
    world.runner.dispatch(order["order"])
    for _ in range(20):
        if not world.queue.keys:
            break
        world.drain()
    with transaction(world.factory) as s:
        sid = s.execute(select(Service.id).where(Service.order_id == order["order"])).scalar_one()
        account = s.execute(select(HostingAccount).where(HostingAccount.service_id == sid)).scalar_one()
        node = s.get(HostingNode, account.node_id).name  # type: ignore[union-attr]
        name = account.username
    fake.accounts.setdefault(node, set()).add(name)
    return sid, name, node


def test_host_add_enroll_and_status(world: World, fake: FakeBackups, tmp_path: Path) -> None:
    host = as_json("backups", "host", "add", "backup1", "--address", "192.0.2.50",
                   "--known-hosts", host_file(tmp_path), "--country", "si")
    assert host == {"name": "backup1", "address": "192.0.2.50", "port": 22, "root": "/srv/restic",
                    "country": "SI", "created": True}
    enrolled_n1 = as_json("backups", "enroll", "n1", "--host", "backup1")
    assert enrolled_n1["repository"] == "sftp:rn-n1@192.0.2.50:/repo" and enrolled_n1["initialised"]
    password = fake.node_converges[0][1]["hosting_node_backup_password"]
    status = run("backups", "status", "--json")
    data = json.loads(status)
    assert [r["node"] for r in data["repositories"]] == ["n1"] and password not in status


@pytest.mark.parametrize("text", ["", "garbage", "192.0.2.50 ssh-ed25519 AAAA$(reboot)AAAAAAAAAAAAA"])
def test_a_bad_known_hosts_file_exits_2(world: World, tmp_path: Path, text: str) -> None:
    err = run("backups", "host", "add", "backup1", "--address", "192.0.2.50", "--known-hosts",
              host_file(tmp_path, text), code=2)
    assert "known_hosts" in err


def test_list_prints_the_snapshots_without_progress_bars_off_a_terminal(
        world: World, fake: FakeBackups, tmp_path: Path) -> None:
    sid, name, node = enrolled(world, fake, tmp_path)
    snaps = [fake.snapshot(node, name, sid) for _ in range(2)]
    listed = as_json("backups", "list", str(sid))
    assert [r["id"] for r in listed] == [r.id for r in snaps]
    assert listed[0]["tags"] == [f"account:{name}", f"service:{sid}"]
    text = run("backups", "list", str(sid))
    assert snaps[0].short_id in text and "\x1b[" not in text


def test_restore_the_newest_or_a_chosen_snapshot(world: World, fake: FakeBackups, tmp_path: Path) -> None:
    sid, name, node = enrolled(world, fake, tmp_path)
    older, newer = fake.snapshot(node, name, sid), fake.snapshot(node, name, sid)
    assert as_json("backups", "restore", str(sid))["backup_id"] == newer.id
    chosen = as_json("backups", "restore", str(sid), "--snapshot", older.short_id)
    assert chosen["backup_id"] == older.id and chosen["node"] == node


@pytest.mark.parametrize("snapshot", ["../../etc/passwd", "DEADBEEF", "dead;beef", "abc", "-rf"])
def test_a_hostile_snapshot_id_exits_2_before_any_node_is_asked(
        world: World, fake: FakeBackups, tmp_path: Path, snapshot: str) -> None:
    sid, _name, _node = enrolled(world, fake, tmp_path)
    before = len(fake.calls)
    err = run("backups", "restore", str(sid), "--snapshot", snapshot, code=2)
    assert "snapshot id" in err and len(fake.calls) == before


def test_restore_to_another_node_needs_the_account_there(
        world: World, fake: FakeBackups, tmp_path: Path) -> None:
    sid, name, node = enrolled(world, fake, tmp_path)
    snap = fake.snapshot(node, name, sid)
    other = "n2" if node == "n1" else "n1"
    assert "does not exist on" in run("backups", "restore", str(sid), "--to", other, code=2)
    fake.accounts.setdefault(other, set()).add(name)
    done = as_json("backups", "restore", str(sid), "--to", other)
    assert done["node"] == other and done["source_node"] == node and done["backup_id"] == snap.id
    assert "ghost" in run("backups", "restore", str(sid), "--to", "ghost", code=2)


def test_a_failed_nightly_or_check_exits_1_with_the_report(
        world: World, fake: FakeBackups, tmp_path: Path) -> None:
    enrolled(world, fake, tmp_path)
    fake.nightly_error["n1"] = "unreachable"
    report = as_json("backups", "nightly", "--force", code=1)
    assert report["failed"] == ["n1"]
    fake.check_ok["n2"] = False
    assert as_json("backups", "check", "--subset", "1/10", code=1)["failed"] == ["n2"]
    assert ("check", "n2", "1/10") in fake.calls
    assert "subset" in run("backups", "check", "--subset", "10%; rm -rf /", code=2)
