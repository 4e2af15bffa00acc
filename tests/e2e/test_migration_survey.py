"""The migration survey against a real "old provider" (issue 13, item 3): a converged
hosting node of this module's own plays the customer's old host. Its sshd (SFTP, and the
database reached through SSH), MariaDB, pure-ftpd (FTPS) and Dovecot (IMAPS) hold what
this module puts there: an account with a database and two mailboxes (messages appended
over IMAP, one in a folder with a non-ASCII name, one over the shrunken message limit),
and an SSH login whose site tree holds a dotfile, a symlink out of the tree, a name with
a newline and shell characters, and a FIFO. The survey (`migration.survey`'s work, with
the real `OldProvider`) must count exactly that; a wrong password names its credential;
a source over the (shrunken) cap is refused with its sizes, mailed, and nothing is
copied (the old tree is unchanged, no account exists on our side)."""

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
from provisioner.adapters.migration_source import CredentialRefused
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.domain.migration_survey import encode_imap_utf7
from provisioner.pipeline.capabilities.migration import sources, survey
from provisioner.pipeline.outbox import KEY_FILE, Outbox
from provisioner.store.db import transaction, upgrade
from provisioner.store.hosting import add_node
from provisioner.store.models import AuditEntry, Migration
from tests.e2e.nodes import infra_host
from tests.helpers import MemoryMailer, World, make_settings, make_world
from tests.integration.test_migration_intake import _paid
from tests.servers import self_signed_tls_context
from tests.unit.pipeline.fakes import FakeHosting

MESSAGE_LIMIT = 100_000  # the shrunken per-message limit (RULES: 50 MB)
FOLDER = "Računi 2024"
BIG = ("img/logo.bin", 300_000)  # written on the node (random bytes of this size)
SITE_FILES = {  # relative path -> content, in public_html of the old SSH login
    "index.php": b"<?php echo '<title>Stara trgovina</title>'; ?>\n",
    ".htaccess": b"RewriteEngine On\n",
    "bad\nname;$(id)": b"hostile\n",
}


@dataclass
class Old:
    address: str
    host: Any
    spec: AccountSpec
    secret: Secrets
    key_pem: str
    sizes: dict[str, list[int]]  # mailbox -> the size of each message appended

    @property
    def domain(self) -> str:
        return self.spec.domains[0]

    def form(self, **over: str) -> dict[str, object]:
        form: dict[str, object] = {
            "files_protocol": "sftp", "files_host": self.address, "files_user": "oldsite",
            "files_key": self.key_pem, "files_path": "public_html",
            "db_via": "ssh", "db_name": self.spec.name, "db_user": self.spec.name,
            "db_password": self.secret.database,
            "mail1_host": self.address, "mail1_user": f"info@{self.domain}",
            "mail1_password": self.secret.mailboxes["info"],
            "mail2_host": self.address, "mail2_user": f"ana@{self.domain}",
            "mail2_password": self.secret.mailboxes["ana"],
            "skip_cert_verify": "1",  # the node's self-signed IMAPS certificate
        }
        form.update(over)
        return form

    def tree(self) -> str:
        """The old tree's listing with sizes and modification times (read-only check)."""
        return str(self.host.check_output(
            "find /home/oldsite/public_html -printf '%%P %%y %%s %%T@\\n' | sort"))


def _message(subject: str, body: bytes) -> bytes:
    return (f"From: Ana <ana@example.org>\r\nTo: info@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n").encode() + body + b"\r\n"


def _append(address: str, user: str, password: str, messages: list[tuple[str, bytes]]) -> list[int]:
    imap = imaplib.IMAP4_SSL(address, ssl_context=self_signed_tls_context(), timeout=20)
    sizes = []
    try:
        imap.login(user, password)
        for folder, raw in messages:
            if folder != "INBOX":
                imap.create(f'"{encode_imap_utf7(folder)}"')
            typ, _ = imap.append(f'"{encode_imap_utf7(folder)}"', None, None, raw)
            assert typ == "OK"
            sizes.append(len(raw))
    finally:
        imap.logout()
    return sizes


FILL = r"""
import json, os, sys
root = "/home/oldsite/public_html"
files = json.loads(sys.argv[1])
for rel, hexdata in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(bytes.fromhex(hexdata))
os.makedirs(os.path.join(root, "img"), exist_ok=True)
with open(os.path.join(root, sys.argv[2]), "wb") as fh:
    fh.write(os.urandom(int(sys.argv[3])))
os.symlink("/etc", os.path.join(root, "escape"))
os.mkfifo(os.path.join(root, "pipe"))
"""


@pytest.fixture(scope="module")
def old(old_provider: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Old]:
    info = old_provider
    host = infra_host(info, tmp_path_factory.mktemp("ssh"))
    tag = uuid.uuid4().hex[:6]
    spec = AccountSpec(f"ms{tag}", (f"ms{tag}.si",), CATALOG.hosting_plan("giga5"),
                       mailboxes=("info", "ana"))
    secret = Secrets.generate(spec.mailboxes)
    accounts = HostingAccounts(ssh_key=Path(info.ssh_key), provider_url="https://www.provider.example/")
    accounts.create(info.target(), spec, secret).raise_for_status("e2e.migration_survey.create")
    # the old host's SSH login (our accounts have no shell): a key, a site tree
    key = Ed25519PrivateKey.generate()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    host.run("userdel -r oldsite")
    host.check_output("useradd -m -s /bin/bash oldsite")
    host.check_output("install -d -m 700 -o oldsite -g oldsite /home/oldsite/.ssh")
    host.check_output("printf '%%s\\n' %s > /home/oldsite/.ssh/authorized_keys", public)
    small = json.dumps({k: v.hex() for k, v in SITE_FILES.items()})
    host.check_output("python3 -c %s %s %s %s", FILL, small, BIG[0], str(BIG[1]))
    host.check_output("chown -R oldsite:oldsite /home/oldsite")
    host.check_output("chmod 600 /home/oldsite/.ssh/authorized_keys")
    # the database: two tables of known engines and collations
    db = spec.name
    host.check_output(
        "mysql %s -e %s", db,
        "CREATE TABLE posts (id INT PRIMARY KEY, title VARCHAR(200)) ENGINE=InnoDB "
        "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci; "
        "CREATE TABLE legacy (v VARCHAR(50)) ENGINE=MyISAM DEFAULT CHARSET=latin1; "
        "INSERT INTO posts SELECT seq, CONCAT('naslov čšž ', seq) FROM seq_1_to_2000; "
        "INSERT INTO legacy VALUES ('čšž');")
    info_box = _append(info.address, f"info@{spec.domains[0]}", secret.mailboxes["info"], [
        ("INBOX", _message("Pozdrav", b"Hello")),
        ("INBOX", _message("Velik prilog", b"x" * (MESSAGE_LIMIT + 5_000))),
        ("INBOX", _message("Tretje", b"three")),
        (FOLDER, _message("Račun 1", b"one")),
        (FOLDER, _message("Račun 2", b"two")),
    ])
    ana_box = _append(info.address, f"ana@{spec.domains[0]}", secret.mailboxes["ana"], [
        ("INBOX", _message("Za Ano", b"a")),
        ("INBOX", _message("Še eno", b"b" * 1000)),
    ])
    yield Old(info.address, host, spec.validated(), secret, key_pem, {"info": info_box, "ana": ana_box})


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


def _world(tmp_path: Path, mailer: MemoryMailer, **over: object) -> World:
    url = f"sqlite:///{tmp_path / 'provisioner.sqlite'}"
    upgrade(url)
    settings = make_settings(tmp_path, url, 25, line_kinds="hosting,migration",
                             public_base_url="https://pages.provider.example/",
                             migration_max_message_bytes=MESSAGE_LIMIT, migration_sample_bytes=200_000,
                             **over)
    w = make_world(settings, hosting=FakeHosting(), mailer=mailer)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    return w


def _survey(world: World, sid: int) -> survey.SurveyOutcome:
    settings = world.app.settings
    box = Outbox(world.factory, world.app.adapters.mailer, settings.mail_from,
                 key_file=settings.effective_key_dir / KEY_FILE)
    assert world.app.adapters.old_provider is not None  # the real one, from the composition root
    return survey.survey(world.factory, settings, world.app.adapters.old_provider, sid, actor="cli:test",
                         now=datetime.now(UTC), box=box)


def test_the_survey_counts_what_the_old_provider_holds(old: Old, tmp_path: Path,
                                                       mailer: MemoryMailer) -> None:
    world = _world(tmp_path, mailer)
    _, sid = _paid(world, old.domain)
    sources.record_source(world.factory, world.app.settings, sid, old.form(), "cli:test", datetime.now(UTC))
    before = old.tree()
    outcome = _survey(world, sid)
    report = outcome.report
    assert outcome.state == "surveyed" and report["fits"], report["blocking"]
    # files: every regular file's bytes, dotfiles included; the symlink and the FIFO named, not followed
    files = report["files"]
    assert files["bytes"] == sum(len(v) for v in SITE_FILES.values()) + BIG[1]
    assert (files["files"], files["dirs"], files["dotfiles"]) == (4, 1, 1)
    assert files["inodes"] == 4 + 1 + 1 + 1  # files, img/, the symlink, the FIFO
    assert files["symlinks"] == [{"path": "escape", "target": "/etc", "outside": True}]
    assert files["specials"] == ["pipe"]
    assert files["hostile"] == ["bad\\nname;$(id)"]
    assert files["largest"] == BIG[1] and files["root"] == "/home/oldsite/public_html"
    assert files["php_version"] and files["php_version"].startswith("8.")
    host_keys = str(old.host.check_output("cat /etc/ssh/ssh_host_*_key.pub")).splitlines()
    assert files["host_key"] in {" ".join(line.split()[:2]) for line in host_keys}  # what the copy pins
    assert "files: symlink escape -> /etc (not followed)" in report["excluded"]
    # the database, through SSH
    db = report["database"]
    assert (db["server"], db["tables"], db["engines"]) == ("MariaDB", 2, {"InnoDB": 1, "MyISAM": 1})
    assert db["version"].startswith("10.") and db["bytes"] > 0
    assert {"utf8mb4", "latin1"} <= set(db["charsets"])
    assert {"utf8mb4_unicode_ci", "latin1_swedish_ci"} <= set(db["collations"])
    assert db["collation_map"] == {}
    assert db["sample"]["bytes"] > 0
    # both mailboxes: folders decoded, counts and bytes as appended, the big message named
    info, ana = report["mailboxes"]
    folders = {f["name"]: (f["messages"], f["bytes"]) for f in info["folders"]}
    assert folders["INBOX"] == (3, sum(old.sizes["info"][:3]))
    assert folders[FOLDER] == (2, sum(old.sizes["info"][3:]))
    assert next(f["raw"] for f in info["folders"] if f["name"] == FOLDER) == encode_imap_utf7(FOLDER)
    assert (info["messages"], info["bytes"]) == (5, sum(old.sizes["info"]))
    assert [(m["folder"], m["subject"], m["bytes"]) for m in info["over_limit"]] == [
        ("INBOX", "Velik prilog", old.sizes["info"][1])]
    assert any("Velik prilog" in e and "over our" in e for e in report["excluded"])
    assert (ana["messages"], ana["bytes"], ana["over_limit"]) == (2, sum(old.sizes["ana"]), [])
    assert report["total_bytes"] == files["bytes"] + db["bytes"] + info["bytes"] + ana["bytes"]
    assert [p["name"] for p in report["parts"]] == ["files", "database", "mailbox1", "mailbox2"]
    assert report["projected_seconds"] >= sum(p["seconds"] for p in report["parts"]) > 0
    # recorded on the migration, no secret anywhere; read-only at the old provider
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        assert row.state == "surveyed" and row.survey is not None and row.migration_used_at is None
        stored = json.dumps(row.survey)
        audits = json.dumps([a.detail for a in s.execute(select(AuditEntry)).scalars()])
    for secret in (old.secret.database, *old.secret.mailboxes.values(), old.key_pem.splitlines()[1]):
        assert secret not in stored and secret not in audits
    assert old.tree() == before
    assert mailer.sent and not any("free limits" in m["subject"] for m in mailer.sent)


@pytest.mark.parametrize(("over", "credential"), [
    ({"db_password": "Not-the-db-password-1"}, "database"),
    ({"mail2_password": "Not-the-imap-password-2"}, "mailbox2"),
])
def test_a_wrong_password_names_its_credential_before_anything_is_copied(
        old: Old, tmp_path: Path, mailer: MemoryMailer, over: dict[str, str], credential: str) -> None:
    world = _world(tmp_path, mailer)
    _, sid = _paid(world, old.domain)
    sources.record_source(world.factory, world.app.settings, sid, old.form(**over), "cli:test",
                          datetime.now(UTC))
    with pytest.raises(CredentialRefused) as refused:
        _survey(world, sid)
    assert refused.value.credential == credential
    assert f"refused the {credential} login" in str(refused.value)
    assert all(v not in str(refused.value) for v in over.values())
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        assert (row.state, row.survey["refused"]) == ("source_refused", credential)


def test_a_wrong_key_names_the_files_credential(old: Old, tmp_path: Path, mailer: MemoryMailer) -> None:
    world = _world(tmp_path, mailer)
    _, sid = _paid(world, old.domain)
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()
    sources.record_source(world.factory, world.app.settings, sid, old.form(files_key=other), "cli:test",
                          datetime.now(UTC))
    with pytest.raises(CredentialRefused) as refused:
        _survey(world, sid)
    assert refused.value.credential == "files"


def test_a_source_over_the_cap_is_refused_with_its_sizes_and_nothing_copied(
        old: Old, tmp_path: Path, mailer: MemoryMailer) -> None:
    world = _world(tmp_path, mailer, migration_cap_bytes=200_000)
    _, sid = _paid(world, old.domain, lang="sl")
    sources.record_source(world.factory, world.app.settings, sid, old.form(), "cli:test", datetime.now(UTC))
    before = old.tree()
    outcome = _survey(world, sid)
    report = outcome.report
    assert outcome.state == "over_cap" and not report["fits"]
    assert report["blocking"][0].startswith("data: ") and "over the 195.3 kB cap" in report["blocking"][0]
    assert f"files {report['files']['bytes'] / 1024:.1f} kB" in report["blocking"][0]
    customer_mail = [m for m in mailer.sent if "presega brezplačne omejitve" in m["subject"]]
    ops_mail = [m for m in mailer.sent if "stopped at the survey" in m["subject"]]
    assert len(customer_mail) == 1 and len(ops_mail) == 1
    assert "195.3 kB" in customer_mail[0]["text"] and report["blocking"][0] in ops_mail[0]["text"]
    # nothing copied: the old tree is as it was, the migration was not used
    assert old.tree() == before
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        assert row.state == "over_cap" and row.migration_used_at is None
    # ops go on anyway, with a recorded reason
    result = survey.override(world.factory, sid, "customer agreed to pay the extra hour", actor="cli:ops",
                             now=datetime.now(UTC))
    assert result["state"] == "surveyed"
    with transaction(world.factory) as s:
        audit = s.execute(select(AuditEntry).where(AuditEntry.action == "migration.override")).scalar_one()
        assert audit.actor == "cli:ops" and audit.detail["reason"] == "customer agreed to pay the extra hour"


def test_files_over_ftps_are_counted_as_the_server_holds_them(old: Old, tmp_path: Path,
                                                               mailer: MemoryMailer) -> None:
    world = _world(tmp_path, mailer)
    _, sid = _paid(world, old.domain)
    form = {"files_protocol": "ftps", "files_host": old.address, "files_user": old.spec.name,
            "files_password": old.secret.account, "skip_cert_verify": "1"}
    sources.record_source(world.factory, world.app.settings, sid, form, "cli:test", datetime.now(UTC))
    home = str(old.host.check_output("getent passwd %s | cut -d: -f6", old.spec.name)).strip()
    sizes = [int(x) for x in str(old.host.check_output("find %s -type f -printf '%%s\\n'", home)).split()]
    outcome = _survey(world, sid)
    files = outcome.report["files"]
    assert files["protocol"] == "ftps" and files["php_version"] is None
    assert (files["files"], files["bytes"]) == (len(sizes), sum(sizes))
    assert "files: the FTPS certificate was not verified" in outcome.report["warnings"]
