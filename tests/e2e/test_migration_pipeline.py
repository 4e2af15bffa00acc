"""The whole free migration through the pipeline (issue 13, must-hold 1): the session's
`old_provider` plays the customer's old host, the session's `node` is ours.

On the old host this module makes its own hosting account (a PHP site whose page has a
title, a database with a utf8mb4 and a latin1 table, two mailboxes with messages, one in
a folder with a non-ASCII name) and its own SSH login holding the same site tree. Then a
hosting order with a migration line is paid and the journal runs with the product's own
wiring (the real hosting adapter creates the account on our node, the real old-provider
adapter surveys, the real copier runs the part programs on our node): intake -> survey
-> copy -> verify -> cut-over -> wipe. Files, database and both mailboxes must arrive and
verify; the site must answer from our node with the old title; the report must list
every count; afterwards the credentials are gone (the database row, the database file,
the node's job paths).
"""

from __future__ import annotations

import imaplib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.adapters.migration_copy.site import fetch_page
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.domain.migration_survey import encode_imap_utf7
from provisioner.pipeline.capabilities.migration import sources
from provisioner.store.db import dispose_all, transaction, upgrade
from provisioner.store.hosting import HostingAccount, add_node
from provisioner.store.models import Migration
from tests.e2e.nodes import infra_host
from tests.helpers import MemoryMailer, World, make_settings, make_world
from tests.integration.test_migration_intake import _paid
from tests.servers import self_signed_tls_context

TITLE = "Stara trgovina čšž"
FOLDER = "Računi 2024"
SITE = {
    "index.php": f"<?php echo '<html><head><title>{TITLE}</title></head><body>ok</body></html>'; ?>\n",
    ".htaccess": "RewriteEngine On\n",
    "css/site.css": "body { color: #333 }\n",
}
FILL = r"""
import json, os, sys
root = sys.argv[1]
for rel, text in json.loads(sys.argv[2]).items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
"""


def _message(subject: str, body: bytes) -> bytes:
    return (f"From: Ana <ana@example.org>\r\nTo: info@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n").encode() + body + b"\r\n"


def _imap(address: str, user: str, password: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(address, ssl_context=self_signed_tls_context(), timeout=20)
    imap.login(user, password)
    return imap


def _append(address: str, user: str, password: str, messages: list[tuple[str, bytes]]) -> None:
    imap = _imap(address, user, password)
    try:
        for folder, raw in messages:
            if folder != "INBOX":
                imap.create(f'"{encode_imap_utf7(folder)}"')
            typ, _ = imap.append(f'"{encode_imap_utf7(folder)}"', None, None, raw)
            assert typ == "OK"
    finally:
        imap.logout()


@dataclass
class Old:
    address: str
    host: Any
    spec: AccountSpec
    secret: Secrets
    login: str
    key_pem: str

    @property
    def domain(self) -> str:
        return self.spec.domains[0]

    def form(self) -> dict[str, object]:
        return {
            "files_protocol": "sftp", "files_host": self.address, "files_user": self.login,
            "files_key": self.key_pem, "files_path": "public_html",
            "db_via": "ssh", "db_name": self.spec.name, "db_user": self.spec.name,
            "db_password": self.secret.database,
            "mail1_host": self.address, "mail1_user": f"info@{self.domain}",
            "mail1_password": self.secret.mailboxes["info"],
            "mail2_host": self.address, "mail2_user": f"ana@{self.domain}",
            "mail2_password": self.secret.mailboxes["ana"],
            "skip_cert_verify": "1",  # the old host's self-signed IMAPS certificate
        }

    def secrets(self) -> list[str]:
        return [self.secret.database, *self.secret.mailboxes.values(),
                *(line for line in self.key_pem.splitlines() if len(line) > 20)]


@pytest.fixture(scope="module")
def old(old_provider: Any, tmp_path_factory: pytest.TempPathFactory) -> Old:
    info = old_provider
    host = infra_host(info, tmp_path_factory.mktemp("ssh-old"))
    tag = uuid.uuid4().hex[:6]
    spec = AccountSpec(f"mp{tag}", (f"mp{tag}.si",), CATALOG.hosting_plan("giga5"), mailboxes=("info", "ana"))
    secret = Secrets.generate(spec.mailboxes)
    HostingAccounts(ssh_key=Path(info.ssh_key), provider_url="https://www.old.example/").create(
        info.target(), spec, secret).raise_for_status("e2e.migration_pipeline.old")
    # the site as the old host serves it (its account's docroot) and as its SSH login holds it
    docroot = str(host.check_output("getent passwd %s | cut -d: -f6", spec.name)).strip() + "/public_html"
    host.check_output("python3 -c %s %s %s", FILL, docroot, json.dumps(SITE))
    host.check_output("chown -R %s: %s", spec.name, docroot)
    key = Ed25519PrivateKey.generate()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    login = f"op{tag}"
    host.check_output("useradd -m -s /bin/bash %s", login)
    host.check_output("install -d -m 700 -o %s -g %s /home/%s/.ssh", login, login, login)
    host.check_output("printf '%%s\\n' %s > /home/%s/.ssh/authorized_keys", public, login)
    host.check_output("python3 -c %s %s %s", FILL, f"/home/{login}/public_html", json.dumps(SITE))
    host.check_output("chown -R %s:%s /home/%s && chmod 600 /home/%s/.ssh/authorized_keys",
                      login, login, login, login)
    host.check_output(
        "mysql %s -e %s", spec.name,
        "CREATE TABLE posts (id INT PRIMARY KEY, title VARCHAR(200)) ENGINE=InnoDB "
        "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci; "
        "CREATE TABLE legacy (v VARCHAR(50)) ENGINE=InnoDB DEFAULT CHARSET=latin1; "
        "INSERT INTO posts SELECT seq, CONCAT('naslov čšž ', seq) FROM seq_1_to_500; "
        "INSERT INTO legacy VALUES ('čšž');")
    _append(info.address, f"info@{spec.domains[0]}", secret.mailboxes["info"], [
        ("INBOX", _message("Pozdrav", b"Hello")),
        ("INBOX", _message("Tretje", b"three")),
        (FOLDER, _message("Račun 1", b"one")),
    ])
    _append(info.address, f"ana@{spec.domains[0]}", secret.mailboxes["ana"], [
        ("INBOX", _message("Za Ano", b"a")),
    ])
    return Old(info.address, host, spec.validated(), secret, login, key_pem)


@dataclass
class Migrated:
    world: World
    db_file: Path
    order_id: int
    sid: int
    row: Migration
    account: str
    mailer: MemoryMailer


@pytest.fixture(scope="module")
def migrated(old: Old, node: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    work = tmp_path_factory.mktemp("migpipe")
    db_file = work / "p.sqlite"
    url = f"sqlite:///{db_file}"
    upgrade(url)
    settings = make_settings(work, url, 25, line_kinds="hosting,migration",
                             public_base_url="https://pages.provider.example/",
                             node_ssh_key=str(node.info.ssh_key), migration_sample_bytes=100_000,
                             ops_email="ops@provider.example")
    mailer = MemoryMailer()
    world = make_world(settings, mailer=mailer)  # the product's own adapters: hosting, survey, copy
    with transaction(world.factory) as s:
        add_node(s, node.info.name, node.info.address, capacity_accounts=50, capacity_disk_mb=500_000,
                 throwaway=True)
    order_id, sid = _paid(world, old.domain, lang="sl")
    sources.record_source(world.factory, settings, sid, old.form(), "cli:test", datetime.now(UTC))
    for _ in range(40):
        world.runner.dispatch()
        world.drain(retry=True)
        if world.steps(order_id).get("migration.wipe") is not None \
                and world.steps(order_id)["migration.wipe"].state == "done":
            break
    bad = {k: (st.state, st.last_error) for k, st in world.steps(order_id).items() if st.state != "done"}
    assert not bad, bad
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        account = s.execute(select(HostingAccount.username)
                            .where(HostingAccount.service_id == row.hosting_service_id)).scalar_one()
        s.expunge(row)
    yield Migrated(world, db_file, order_id, sid, row, account, mailer)
    dispose_all()


def test_every_part_arrives_and_verifies(migrated: Migrated) -> None:
    row = migrated.row
    assert row.copy is not None and row.copy["state"] == "copied", row.copy
    assert {p: o["state"] for p, o in row.copy["copy"].items()} == {
        "files": "done", "database": "done", "mailbox1": "done", "mailbox2": "done"}
    report = row.reconciliation
    assert report is not None and report["verified"] is True, report["differences"]
    assert report["differences"] == []
    assert set(report["parts"]) == {"files", "database", "mailbox1", "mailbox2"}
    assert all(p["verified"] and p["source"] and p["target"] for p in report["parts"].values())


def test_the_site_answers_from_our_node_with_the_old_title(migrated: Migrated, old: Old, node: Any) -> None:
    site = migrated.row.reconciliation["site"]
    assert site["same"] is True and site["ours"]["status"] == 200 and site["ours"]["title"] == TITLE
    page = fetch_page(node.info.address, old.domain)  # and again, now
    assert (page.status, page.title) == (200, TITLE)


def test_the_data_is_there_on_our_node(migrated: Migrated, node_host: Any, old: Old) -> None:
    db = migrated.account
    rows = str(node_host.check_output(
        "mysql -N %s -e %s", db, "SELECT COUNT(*), MAX(title) FROM posts; SELECT HEX(v) FROM legacy"))
    assert rows.split("\n")[0].split("\t")[0] == "500"
    assert "naslov čšž 99" in rows  # the utf8mb4 text read back as written
    assert str(node_host.check_output("mysql -N %s -e %s", db,
                                      "SELECT CONVERT(v USING utf8mb4) FROM legacy")).strip() == "čšž"
    home = str(node_host.check_output("getent passwd %s | cut -d: -f6", db)).strip()
    assert TITLE in str(node_host.check_output("cat %s/public_html/index.php", home))
    assert str(node_host.check_output("stat -c %%U %s/public_html/css/site.css", home)).strip() == db


def _subjects(node_host: Any, mailbox: str, folder: str) -> list[str]:
    out = str(node_host.check_output("doveadm fetch -u %s hdr.subject mailbox %s", mailbox, folder))
    return sorted(line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.startswith("hdr.subject:"))


def test_the_second_mailbox_lands_under_its_old_address(migrated: Migrated, old: Old, node_host: Any) -> None:
    """Both source mailboxes go to info@ (the account's one mailbox): the second one under a
    top-level folder named after its old address ('.' is Dovecot's separator: '_'), so the
    two INBOXes stay apart; the report says where it went."""
    ours, top = f"info@{old.domain}", f"ana@{old.domain}".replace(".", "_")
    assert _subjects(node_host, ours, "INBOX") == ["Pozdrav", "Tretje"]
    assert _subjects(node_host, ours, FOLDER) == ["Račun 1"]
    assert _subjects(node_host, ours, f"{top}.INBOX") == ["Za Ano"]
    assert f"{top}.INBOX" in migrated.row.reconciliation["parts"]["mailbox2"]["target"]
    mails = [m for m in migrated.mailer.sent if "je končana in preverjena" in m["subject"]]
    assert f"under the folder '{top}'" in mails[0]["text"]


def test_the_report_lists_every_count_and_is_mailed_once(migrated: Migrated) -> None:
    parts = migrated.row.reconciliation["parts"]
    for name in ("mailbox1", "mailbox2"):
        assert parts[name]["copy"]["items"] >= 1
    mails = [m for m in migrated.mailer.sent if "je končana in preverjena" in m["subject"]]
    assert len(mails) == 1
    for name in ("files", "database", "mailbox1", "mailbox2"):
        assert f"{name}: " in mails[0]["text"]
    cut = migrated.row.cutover
    assert cut is not None and cut["state"] == "dns_elsewhere"  # no DNS of ours here: what to set


def test_the_credentials_are_gone_afterwards(migrated: Migrated, old: Old, node_host: Any) -> None:
    row = migrated.row
    assert row.state == "wiped" and row.sealed == sources.WIPED_MARK
    job = f"m{migrated.sid}"
    for path in (f"/run/hosting-migrate/{job}", f"/var/lib/hosting/migrate/{job}"):
        assert not node_host.file(path).exists
    assert f"/run/hosting-migrate/{job}" in row.copy["removed"]  # audited as removed
    dispose_all()
    raw = migrated.db_file.read_bytes()
    for secret in old.secrets():
        assert secret.encode() not in raw
        assert all(secret not in m["text"] for m in migrated.mailer.sent)
