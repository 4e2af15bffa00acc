"""The controller's path through real hosts: a SQLite database, two throwaway hosting
nodes and a throwaway backup host, driven only through ``provisioner backups ...`` (the
CLI, the composition root, the real adapter and playbooks): the backup host registered
with its host key, both nodes enrolled (password sealed here, 0600 on the node), the
nightly run, the service's snapshots listed, and the account restored onto the OTHER node
from the first node's repository: site and database byte for byte the same. The other
node's key reads the first node's repository for the restore only.

The node side itself (isolation between nodes, retention over a month, stage 2, the
backup host down) is tests/e2e/test_backups.py's.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.cli import app
from provisioner.config import load_settings
from provisioner.devstack.hosts.node import converge
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.store.db import transaction, upgrade
from provisioner.store.hosting import HostingAccount, HostingNode, add_node
from provisioner.store.models import BackupRepository, Service
from provisioner.timeutil import now_at, utcnow
from tests.e2e.nodes import infra_host, own_hosts
from tests.helpers import ClockWorld, make_world


@dataclass
class Env:
    a: Any  # node "na" (HostInfo), the account's home node
    b: Any  # node "nb", the restore target
    ha: Any  # testinfra
    hb: Any
    bh: Any  # testinfra to the backup host
    bk_address: str
    world: ClockWorld
    db_file: Path


def cli(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def env(hosts: Any, node: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("controller")
    saved = {k: v for k, v in os.environ.items() if k.startswith("PROVISIONER_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({"PROVISIONER_DATA_DIR": str(tmp / "data"), "PROVISIONER_LINE_KINDS": "",
                       "PROVISIONER_NODE_SSH_KEY": str(node.info.ssh_key)})
    bk_name, b_name = f"t-bkc-{os.getpid()}", f"t-nbc-{os.getpid()}"
    try:
        # hosts of this module's own, booted at once: the controller converges the backup
        # host from its database and authorises node B's key on A's repository there
        with own_hosts(hosts, "e2e.backups_controller", nodes=[b_name], bare=[bk_name]) as own:
            (b_info,), (backup,) = own.nodes, own.bare
            settings = load_settings()
            upgrade(settings.effective_database_url)
            world = make_world(settings, now=now_at(date(2026, 6, 1)))
            cw = ClockWorld(world.app, world.queue, date(2026, 6, 1), None)
            with transaction(cw.factory) as s:
                add_node(s, "na", node.info.address, capacity_accounts=10, capacity_disk_mb=100_000,
                         throwaway=True)
                add_node(s, "nb", b_info.address, capacity_accounts=10, capacity_disk_mb=100_000,
                         throwaway=True)
            bh = infra_host(backup, tmp_path_factory.mktemp("ssh-bk"))
            key = bh.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub").split()
            known = tmp / "known_hosts"
            known.write_text(f"{backup.address} {key[0]} {key[1]}\n")
            cli("backups", "host", "add", "bk", "--address", backup.address, "--known-hosts", str(known),
                "--throwaway")
            yield Env(node.info, b_info, infra_host(node.info, tmp_path_factory.mktemp("ssh-a")),
                      infra_host(b_info, tmp_path_factory.mktemp("ssh-b")), bh, backup.address, cw,
                      settings.sqlite_path)
    finally:
        for k in [k for k in os.environ if k.startswith("PROVISIONER_")]:
            del os.environ[k]
        os.environ.update(saved)


def hashes(host: Any, path: str) -> dict[str, str]:
    out = host.check_output("cd %s && find . -type f -print0 | sort -z | xargs -0 -r sha256sum", path)
    return {line[66:]: line[:64] for line in out.splitlines() if line}


def account_on(env: Env, info: Any, spec: AccountSpec) -> None:
    HostingAccounts(ssh_key=Path(info.ssh_key)).create(info.target(), spec, Secrets.generate(spec.mailboxes)
                                                       ).raise_for_status("e2e.create")


def test_enrol_back_up_list_and_restore_onto_another_node_through_the_cli(env: Env) -> None:
    # both nodes enrolled: each gets its own repository and a password sealed here
    for node in ("na", "nb"):
        out = cli("backups", "enroll", node, "--host", "bk")
        assert out["repository"] == f"sftp:rn-{node}@{env.bk_address}:/repo"
    mode = env.ha.check_output("stat -c %s /etc/hosting/backup/password", "%a")
    assert mode.strip() == "600"
    password_a = env.ha.check_output("cat /etc/hosting/backup/password").strip()
    raw = b"".join(p.read_bytes() for p in env.db_file.parent.glob(env.db_file.name + "*"))
    assert len(password_a) >= 40 and password_a.encode() not in raw
    with transaction(env.world.factory) as s:
        assert s.execute(select(BackupRepository)).scalars().all()

    # an account of a service, with files and a table, on node A
    name = f"bc{uuid.uuid4().hex[:8]}"
    spec = AccountSpec(name, (f"{name}.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",)).validated()
    sid = env.world.service(f"hosting:mega:{name}.si:12m", date(2027, 6, 1))
    with transaction(env.world.factory) as s:
        na = s.execute(select(HostingNode).where(HostingNode.name == "na")).scalar_one()
        now = utcnow()
        s.add(HostingAccount(service_id=sid, node_id=na.id, username=name, domain=f"{name}.si", plan="mega",
                             disk_mb=1000, state="active", created_at=now, updated_at=now))
        assert s.get(Service, sid) is not None
    account_on(env, env.a, spec)
    home = f"/srv/hosting/{name}"
    env.ha.check_output("install -d -o %s -g %s %s/public_html/deep", name, name, home)
    env.ha.check_output("head -c 200000 /dev/urandom > %s/public_html/deep/data.bin", home)
    env.ha.check_output("printf '<?php echo 1;' > %s/public_html/index.php && chown -R %s: %s/public_html",
                        home, name, home)
    env.ha.check_output("mysql --database %s -e %s", name,
                        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); "
                        "INSERT INTO t VALUES (1,'šumnik'),(2,'b')")
    before = hashes(env.ha, f"{home}/public_html")
    rows = env.ha.check_output("mysql --batch --skip-column-names --database %s -e %s", name,
                               "SELECT id, v FROM t ORDER BY id")

    # the nightly run (forced: outside the window) lands a snapshot of the account
    nightly = cli("backups", "nightly", "--force")
    assert nightly["failed"] == [] and set(nightly["ran"]) == {"na", "nb"}
    listed = cli("backups", "list", str(sid))
    assert len(listed) >= 1 and all(len(r["id"]) == 64 for r in listed)
    snap = listed[-1]

    # onto node B, where the account exists (empty) too
    account_on(env, env.b, spec)
    hostile = CliRunner().invoke(app, ["backups", "restore", str(sid), "--to", "nb", "--snapshot", "../../x"])
    assert hostile.exit_code == 2 and "snapshot id" in hostile.stderr
    restored = cli("backups", "restore", str(sid), "--to", "nb", "--snapshot", snap["short_id"])
    assert (restored["node"], restored["source_node"], restored["backup_id"]) == ("nb", "na", snap["id"])
    assert hashes(env.hb, f"{home}/public_html") == before
    assert env.hb.check_output("mysql --batch --skip-column-names --database %s -e %s", name,
                               "SELECT id, v FROM t ORDER BY id") == rows
    # B's key read A's repository for the restore only
    b_key = env.hb.check_output("cat /etc/hosting/backup/id_ed25519.pub").split()[1]
    assert b_key not in env.bh.check_output("cat /etc/ssh/backup-keys/rn-na")
    assert password_a not in json.dumps(restored)


def test_a_plain_converge_keeps_what_the_enrolment_set_on_the_node(env: Env) -> None:
    """The nightly schedule and the retention per plan come from the controller at
    enrolment; ops re-running hosting_node.yml (or a fleet rollout) without them must
    neither change the node nor put the role's defaults back."""
    cli("backups", "enroll", "nb", "--host", "bk")  # safe to run again
    timer = "systemctl show -P TimersCalendar hosting-backup.timer"
    scheduled = env.hb.check_output(timer)
    assert "23:30:00 Europe/Ljubljana" in scheduled, scheduled
    script = env.hb.check_output("sha256sum /usr/local/sbin/hosting-backup")

    result = converge(env.b)

    assert result.ok, result.errors
    assert result.changes.get(env.b.name, []) == [], result.changes
    assert env.hb.check_output(timer) == scheduled
    assert env.hb.check_output("sha256sum /usr/local/sbin/hosting-backup") == script
