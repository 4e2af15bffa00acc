"""The backup download on a throwaway node and a backup host (issue 17 item 9): a hosting
account with a backup service made through the pipeline on the session's node, enrolled
with the session's backup host (restic over SFTP); the clock shuts it down, the day
after the customer gets the link; the page's POST fetches the snapshot from the node
over SSH (``hosting-backup dump``), and the archive it streams holds the account's files,
its mail and its database dump byte for byte as they are on the node, each listed with
its SHA-256 in ``MANIFEST.json``."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import secrets
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from provisioner.adapters.hosting.accounts import AccountSpec
from provisioner.api.app import create_app
from provisioner.devstack.net import free_port
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.pipeline.capabilities import lifecycle as clock
from provisioner.pipeline.capabilities.placement import MAILBOXES
from provisioner.store.db import transaction, upgrade
from provisioner.store.hosting import HostingAccount, add_node
from provisioner.store.models import Service
from provisioner.timeutil import now_at
from tests.browser import served
from tests.e2e.nodes import Enrolment
from tests.e2e.test_backups import NodeEnv
from tests.helpers import MemoryMailer, World, customer, make_settings, wire

E = date(2027, 5, 31)
DOMAIN = "bdl-shop.example"


@dataclass
class Env:
    world: World
    node: NodeEnv
    account: str
    hosting_id: int
    base: str

    @property
    def mailer(self) -> MemoryMailer:
        mailer = self.world.app.adapters.mailer
        assert isinstance(mailer, MemoryMailer)
        return mailer

    def day(self, day: date) -> None:
        self.world.at(day)
        clock.run_day(self.world.factory, self.world.runner, day)


@pytest.fixture(scope="module")
def env(node: Any, node_host: Any, enrolled_node: Enrolment, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    # the session's node, enrolled with the session's backup host (tests/e2e/conftest.py)
    work = tmp_path_factory.mktemp("backup-download")
    n = NodeEnv(enrolled_node.name, node.info, node_host, enrolled_node.password)
    # the product, wired by its composition root, reaching the node with its key
    url = f"sqlite:///{work / 'bd.sqlite'}"
    upgrade(url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(work, url, 1, line_kinds="hosting,backup", public_base_url=base,
                             node_ssh_key=str(node.info.ssh_key),
                             backup_download_dir=str(work / "downloads"))
    app, queue = wire(settings, now=now_at(E - timedelta(days=40)), mailer=MemoryMailer())
    world = World(app, queue)
    with transaction(app.factory) as s:
        add_node(s, node.info.name, node.info.address, capacity_accounts=100,
                 capacity_disk_mb=1_000_000, throwaway=True)
    order = world.order([f"hosting:mega:{DOMAIN}:12m", f"backup:{DOMAIN}:12m"], who=customer("sl"))
    p = order["proforma"]
    assert world.pay(p["number"], Decimal(p["gross"]), "bd-first").settled
    world.run_queued()
    with transaction(world.factory) as s:
        services = s.execute(select(Service).where(Service.order_id == order["order"])).scalars().all()
        assert {sv.state for sv in services} == {"active"}, [(sv.kind, sv.detail) for sv in services]
        for sv in services:
            sv.expires_on = E
            sv.clock_on = E - timedelta(days=35)
        hosting_id = next(sv.id for sv in services if sv.kind == "hosting")
        account = s.execute(select(HostingAccount.username).where(
            HostingAccount.service_id == hosting_id)).scalar_one()
    api = create_app(settings, enqueue=queue)
    api.state.api = dataclasses.replace(api.state.api, provisioner=app)
    with served(api, port):
        yield Env(world, n, account, hosting_id, base)


def _node_files(n: NodeEnv, account: str) -> dict[str, str]:
    """sha256 of every regular file of the account on the node: home and mail."""
    out = {}
    for root in (f"/srv/hosting/{account}", f"/srv/mail/{DOMAIN}"):
        for rel, digest in n.hashes(root).items():
            out[f"{root.lstrip('/')}/{rel.removeprefix('./')}"] = digest
    return out


def test_the_downloaded_archive_holds_the_accounts_files_byte_for_byte(env: Env) -> None:
    n, account = env.node, env.account
    home = f"/srv/hosting/{account}"
    n.sh("install -d -o %s -g %s %s/public_html/deep", account, account, home)
    n.sh("head -c 3000000 /dev/urandom > %s/public_html/deep/data.bin", home)
    n.sh("printf '<?php echo 1;' > %s/public_html/index.php", home)
    n.sh("chown -R %s: %s/public_html", account, home)
    n.sql(account, "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(40)) ENGINE=InnoDB")
    n.sql(account, "INSERT INTO orders VALUES (1, 'apple'), (2, 'pear')")
    spec = AccountSpec(account, (DOMAIN,), DEFAULT_CATALOG.hosting_plan("mega"), mailboxes=MAILBOXES)
    n.deliver(spec, f"before-shutdown-{secrets.token_hex(6)}")
    for day in (E - timedelta(days=30), E + timedelta(days=1)):
        env.day(day)  # the renewal proforma; then the shutdown (the disabled page)
    assert not any("/backup/" in m["text"] for m in env.mailer.sent)
    env.day(E + timedelta(days=2))  # the retention starts: a snapshot, the link
    [mail] = [m for m in env.mailer.sent if f"{env.base}/backup/" in m["text"]]
    assert "prenesite varnostno kopijo" in mail["subject"]
    match = re.search(re.escape(env.base) + r"/backup/[A-Za-z0-9_-]{40,}", mail["text"])
    assert match
    link = match.group(0)
    on_node = _node_files(n, account)
    assert f"srv/hosting/{account}/public_html/deep/data.bin" in on_node

    assert httpx.get(link, timeout=30).status_code == 200
    r = httpx.post(link, timeout=600)
    assert r.status_code == 200, r.text[:500]
    got: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                got[m.name] = hashlib.sha256(f.read()).hexdigest() if m.name != "MANIFEST.json" else ""
                if m.name == "MANIFEST.json":
                    manifest = json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
                if m.name.endswith(f"/{account}.sql"):
                    dump = tar.extractfile(m).read().decode()  # type: ignore[union-attr]
    for path, digest in on_node.items():
        assert got.get(path) == digest, path  # byte for byte as on the node
    assert "CREATE TABLE `orders`" in dump and "'apple'" in dump  # the database, as dumped
    listed = {f["path"].lstrip("/"): f["sha256"] for f in manifest["files"] if f["type"] == "file"}
    assert {p: listed[p] for p in on_node} == on_node
    assert manifest["account"] == account and manifest["domain"] == DOMAIN
    assert httpx.post(link, timeout=30).status_code == 410  # used up
    assert not any(Path(str(env.world.app.settings.backup_download_dir)).iterdir())  # removed

