"""The migration part "database" (issue 13, items 4-6) between two real throwaway hosts:
the session's `old_provider` plays the customer's old host (its MariaDB 10.11 holds the
old database, reached through an SSH login of this module), the session's `node` is ours
(one hosting account receives the database). The copy runs through `NodeJobs.run_part`
as the pipeline runs it.

Honestly about the "MySQL 8" source: MariaDB 10.11 cannot create ``utf8mb4_0900_*``
tables, so the MySQL 8 dump is made at the old host by a forced command on this module's
SSH login (it sees only its own login): it runs the real mysqldump against the real
MariaDB tables and rewrites the output's header and DDL lines the way MySQL 8.0's
mysqldump writes them (``-- MySQL dump ... Distrib 8.0.36``, ``/*!50503 SET NAMES``,
``/*!80016 ...*/``, the GTID and ``SQL_LOG_BIN`` lines, ``COLLATE=utf8mb4_0900_ai_ci``
tables and ``utf8mb4_0900_as_cs`` columns); data lines pass untouched. The latin1 table
(UTF-8 bytes stored through a latin1 connection, as old PHP sites did, and a real cp1252
``šž``) and the emoji table are real MariaDB tables there. The same forced command
serves an HTML page instead of a dump ("html"), or the real dump after a pause ("slow",
to sample the process lists while the copy runs).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.adapters.migration_copy import NodeJobs, PartOutcome
from provisioner.adapters.migration_source import CredentialRefused
from provisioner.adapters.tls_targets.node import NodeAccess
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.domain.migration_survey import collation_map
from tests.e2e.nodes import infra_host

POSTS = 1500
FORCED = r"""#!/usr/bin/python3
# e2e test_migration_copy_database: this login's commands, its mysqldump per ~/.dump-mode
import os, subprocess, sys
command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
try:
    mode = open(os.path.expanduser("~/.dump-mode")).read().strip()
except FileNotFoundError:
    mode = ""
if not command.startswith("mysqldump ") or mode in ("", "real"):
    os.execv("/bin/sh", ["/bin/sh", "-c", command])
if mode == "html":
    sys.stdout.write("<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>"
                     "<body>phpMyAdmin is down</body></html>\n" + "x" * 2000 + "\n")
    sys.exit(0)
if mode == "file":  # a "dump" the test wrote
    sys.stdout.buffer.write(open(os.path.expanduser("~/.dump-file"), "rb").read())
    sys.exit(0)
if mode == "slow":  # the command line (and so the process list) as it runs, for 6 s more
    os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 6; " + command])
# mysql8: the real dump, its header and DDL written as MySQL 8.0's mysqldump writes them
proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE)
out = sys.stdout.buffer
first = True
for line in proc.stdout:
    if first:
        first = False
        if line.startswith(b"/*M!999999"):
            first = True
            continue
        out.write(b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n")
        continue
    if line.startswith(b"-- Server version"):
        out.write(b"-- Server version\t8.0.36\n")
        continue
    if line.startswith(b"/*!40101 SET NAMES utf8mb4 */;"):
        out.write(b"/*!50503 SET NAMES utf8mb4 */;\n/*!80016 SET @@SESSION.DEFAULT_TABLE_ENCRYPTION='N' */;\n"
                  b"SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;\nSET @@SESSION.SQL_LOG_BIN= 0;\n"
                  b"SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5';\n")
        continue
    if not line.startswith(b"INSERT INTO"):
        line = line.replace(b"utf8mb4_unicode_ci", b"utf8mb4_0900_ai_ci")
        line = line.replace(b"COLLATE utf8mb4_bin", b"COLLATE utf8mb4_0900_as_cs")
        line = line.replace(b"SET character_set_client = utf8 ", b"SET character_set_client = utf8mb4 ")
    out.write(line)
sys.exit(proc.wait())
"""

OLD_SCHEMA = (
    "CREATE TABLE m8_posts (id INT PRIMARY KEY, title VARCHAR(200), "
    "code VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin) ENGINE=InnoDB "
    "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci; "
    "CREATE TABLE legacy (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=MyISAM DEFAULT CHARSET=latin1; "
    "CREATE TABLE emoji (id INT AUTO_INCREMENT PRIMARY KEY, txt TEXT, note VARCHAR(100)) ENGINE=InnoDB "
    "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci; "
    "INSERT INTO m8_posts SELECT seq, CONCAT('naslov čšž ', seq), CONCAT('k', seq) FROM seq_1_to_1499; "
    "INSERT INTO m8_posts VALUES (1500, 'utf8mb4_0900_ai_ci; COLLATE=utf8mb4_0900_ai_ci '' \\\\ end', "
    "'Ključ🙂'); "
    "INSERT INTO legacy VALUES (2, 'šž Šipek'); "
    "INSERT INTO emoji (txt) VALUES ('Živjo 😀 🇸🇮 👩‍💻'), ('𝄞 music'), ('plain'); "
    "CREATE VIEW v_posts AS SELECT id, title FROM m8_posts WHERE id <= 10; "
    "CREATE TRIGGER emoji_note BEFORE INSERT ON emoji FOR EACH ROW SET NEW.note = CONCAT('len ', "
    "CHAR_LENGTH(NEW.txt));")
# the legacy site's way: UTF-8 bytes through a latin1 connection into a latin1 column
LEGACY_UTF8 = "INSERT INTO legacy VALUES (1, 'čšž in ščurki');"
HEX = ("SELECT 'm8_posts', id, HEX(title), HEX(code) FROM m8_posts UNION ALL "
       "SELECT 'legacy', id, HEX(v), '' FROM legacy UNION ALL "
       "SELECT 'emoji', id, HEX(txt), HEX(note) FROM emoji ORDER BY 1, 2")
EXPECTED_ROWS = {"m8_posts": POSTS, "legacy": 2, "emoji": 3}


@dataclass
class Setup:
    old_host: Any
    node_host: Any
    access: NodeAccess
    old_address: str
    login: str
    key_pem: str
    host_key: str
    old_db: str
    old_password: str
    account: str

    def job(self, job_id: str, *, mode: str = "copy", cap: int = 10**9, deadline: float = 300.0,
            **source: Any) -> dict[str, Any]:
        return {"job": job_id, "part": "database", "mode": mode,
                "account": {"user": self.account, "home": f"/srv/hosting/{self.account}",
                            "docroot": f"/srv/hosting/{self.account}/public_html",
                            "database": self.account, "mailbox": ""},
                "source": {"files_protocol": "sftp", "files_host": self.old_address, "files_port": 22,
                           "files_user": self.login, "files_key": self.key_pem, "files_path": ".",
                           "db_via": "ssh", "db_host": "localhost", "db_port": 3306, "db_name": self.old_db,
                           "db_user": self.old_db, "db_password": self.old_password, **source},
                "flags": {"allow_plain_ftp": False, "skip_cert_verify": False},
                "source_host_key": self.host_key, "cap_bytes": cap, "deadline_s": deadline,
                "collation_map": collation_map(["utf8mb4_0900_ai_ci", "utf8mb4_0900_as_cs"])}

    def dump_mode(self, mode: str) -> None:
        self.old_host.check_output("printf '%%s' %s > /home/%s/.dump-mode", mode, self.login)

    def run(self, dump: str, **job: Any) -> PartOutcome:
        self.dump_mode(dump)
        job_id = f"md{uuid.uuid4().hex[:8]}"
        try:
            return NodeJobs().run_part(self.access, self.job(job_id, **job))
        finally:
            NodeJobs().cleanup(self.access, job_id)

    def ours(self, sql: str) -> str:
        return str(self.node_host.check_output("mysql -N -B --default-character-set=utf8mb4 %s -e %s",
                                               self.account, sql))

    def old(self, sql: str) -> str:
        return str(self.old_host.check_output("mysql -N -B --default-character-set=utf8mb4 %s -e %s",
                                              self.old_db, sql))

    def counts(self) -> dict[str, int]:
        out = {}
        for table in self.ours("SELECT table_name FROM information_schema.tables WHERE "
                               "table_schema = DATABASE() AND table_type = 'BASE TABLE'").split():
            out[table] = int(self.ours(f"SELECT COUNT(*) FROM `{table}`").strip())  # noqa: S608 - ours
        return out


@pytest.fixture(scope="module")
def setup(old_provider: Any, node: Any, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    tag = uuid.uuid4().hex[:6]
    old_host = infra_host(old_provider, tmp_path_factory.mktemp("ssh-old"))
    accounts = HostingAccounts(ssh_key=Path(old_provider.ssh_key), provider_url="https://www.provider.example/")
    old_spec = AccountSpec(f"mo{tag}", (f"mo{tag}.si",), CATALOG.hosting_plan("giga5"))
    old_secret = Secrets.generate(old_spec.mailboxes)
    accounts.create(old_provider.target(), old_spec, old_secret).raise_for_status("e2e.migration_db.old")
    old_host.check_output("mysql --default-character-set=utf8mb4 %s -e %s", old_spec.name, OLD_SCHEMA)
    old_host.check_output("mysql --default-character-set=latin1 %s -e %s", old_spec.name, LEGACY_UTF8)
    # the SSH login, its commands through the forced command above
    key = Ed25519PrivateKey.generate()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    login, forced = f"md{tag}", f"/usr/local/bin/mdump-{tag}"
    old_host.check_output("printf '%%s' %s > %s && chmod 755 %s", FORCED, forced, forced)
    old_host.check_output("useradd -m -s /bin/bash %s", login)
    old_host.check_output("install -d -m 700 -o %s -g %s /home/%s/.ssh", login, login, login)
    old_host.check_output("printf '%%s\\n' %s > /home/%s/.ssh/authorized_keys",
                          f'command="{forced}" {public}', login)
    old_host.check_output("chown -R %s:%s /home/%s && chmod 600 /home/%s/.ssh/authorized_keys",
                          login, login, login, login)
    host_key = " ".join(str(old_host.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub")).split()[:2])
    # our account, with a table of its own already there (what a failed copy must leave alone)
    info = node.info
    spec = AccountSpec(f"md{tag}", (f"md{tag}.si",), CATALOG.hosting_plan("giga5"))
    HostingAccounts(ssh_key=Path(info.ssh_key), provider_url="https://www.provider.example/").create(
        info.target(), spec, Secrets.generate(spec.mailboxes)).raise_for_status("e2e.migration_db.ours")
    node_host = infra_host(info, tmp_path_factory.mktemp("ssh-ours"))
    node_host.check_output("mysql %s -e %s", spec.name, "CREATE TABLE prev_keep (id INT PRIMARY KEY); "
                           "INSERT INTO prev_keep VALUES (1), (2), (3);")
    access = NodeAccess(info.name, info.address, Path(info.ssh_key), throwaway=True)
    return Setup(old_host, node_host, access, old_provider.address, login, key_pem, host_key, old_spec.name,
                 old_secret.database, spec.name)


def _no_job_leftovers(setup: Setup) -> None:
    left = setup.node_host.check_output(
        "mysql -N -B -e %s",
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'mig\\_%' "
        "UNION ALL SELECT user FROM mysql.user WHERE user LIKE 'mig\\_%'")
    assert str(left).strip() == ""


def test_a_dump_that_is_not_sql_is_refused_and_the_database_left_as_it_was(setup: Setup) -> None:
    outcome = setup.run("html")
    assert outcome.state == "failed" and outcome.error is not None
    assert "not a mysqldump dump" in outcome.error and "DOCTYPE html" in outcome.error
    assert [(n["kind"], n["name"]) for n in outcome.named] == [("error", f"database {setup.old_db}")]
    assert setup.counts() == {"prev_keep": 3}
    _no_job_leftovers(setup)


@pytest.mark.parametrize(("dump", "failed_at"), [
    ("\\! touch /tmp/{tag}\nSELECT 1;\n", "statement 1 failed"),
    ("CREATE TABLE t (x TEXT);\nLOAD DATA LOCAL INFILE '/etc/shadow' INTO TABLE t;\n", "statement 2 failed"),
    ("CREATE TABLE t (x TEXT);\nSELECT 'x' INTO OUTFILE '/tmp/{tag}';\n", "statement 2 failed"),
    ("CREATE DATABASE {tag};\n", "statement 1 failed"),
    ("CREATE TABLE mysql.{tag} (x INT);\n", "statement 1 failed"),
    ("GRANT ALL ON *.* TO 'x'@'%' IDENTIFIED BY 'y';\n", "statement 1 failed"),
], ids=["client-shell-command", "load-data-local", "into-outfile", "create-database", "other-database",
        "grant"])
def test_a_hostile_dump_reaches_nothing_but_its_staging_database(setup: Setup, dump: str,
                                                                 failed_at: str) -> None:
    tag = f"pwn{uuid.uuid4().hex[:6]}"
    text = "-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n" + dump.format(tag=tag)
    setup.old_host.check_output("printf '%%s' %s > /home/%s/.dump-file", text + "-- Dump completed\n",
                                setup.login)
    outcome = setup.run("file")
    assert outcome.state == "failed" and outcome.error is not None and failed_at in outcome.error
    assert str(setup.node_host.check_output("ls /tmp /var/tmp /var/lib/mysql")).count(tag) == 0
    assert setup.counts() == {"prev_keep": 3}
    _no_job_leftovers(setup)


def test_a_wrong_database_password_names_the_database_credential(setup: Setup) -> None:
    with pytest.raises(CredentialRefused) as refused:
        setup.run("real", db_password="Not-the-db-password-9")
    assert refused.value.credential == "database"
    assert "Not-the-db-password-9" not in str(refused.value)
    assert setup.counts() == {"prev_keep": 3}
    _no_job_leftovers(setup)


def test_a_mysql8_dump_arrives_without_loss_and_a_rerun_duplicates_nothing(setup: Setup) -> None:
    outcome = setup.run("mysql8")
    assert outcome.state == "done", outcome
    assert outcome.counts == {t: {"source": n, "target": n} for t, n in EXPECTED_ROWS.items()}
    assert outcome.error is None and outcome.bytes > 0
    # the account's database is the old one now (its own earlier table replaced), row for row
    assert setup.counts() == EXPECTED_ROWS
    # byte for byte: every text column's bytes as the old server holds them
    assert setup.ours(HEX) == setup.old(HEX)
    legacy = setup.node_host.check_output("mysql -N -B --default-character-set=latin1 %s -e %s",
                                          setup.account, "SELECT v FROM legacy WHERE id = 1")
    assert str(legacy).strip() == "čšž in ščurki"  # the legacy site reads its text back as it wrote it
    assert setup.ours("SELECT txt FROM emoji WHERE id = 1").strip() == "Živjo 😀 🇸🇮 👩‍💻"
    assert "utf8mb4_0900_ai_ci; COLLATE=utf8mb4_0900_ai_ci ' \\\\ end" in setup.ours(
        "SELECT title FROM m8_posts WHERE id = 1500")
    # the collations: mapped explicitly, latin1 and general_ci kept
    tables = setup.ours("SELECT table_name, table_collation FROM information_schema.tables "
                        "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1")
    assert tables.split() == ["emoji", "utf8mb4_general_ci", "legacy", "latin1_swedish_ci",
                              "m8_posts", "utf8mb4_unicode_520_ci"]
    assert setup.ours("SELECT collation_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                      "AND table_name = 'm8_posts' AND column_name = 'code'").strip() == "utf8mb4_bin"
    # the view and the trigger, with the account's own database user as their definer
    assert setup.ours("SELECT COUNT(*) FROM v_posts").strip() == "10"
    definers = setup.ours("SELECT definer FROM information_schema.views WHERE table_schema = DATABASE() "
                          "UNION ALL SELECT definer FROM information_schema.triggers "
                          "WHERE trigger_schema = DATABASE()")
    assert definers.split() == [f"{setup.account}@localhost"] * 2
    setup.ours("INSERT INTO emoji (txt) VALUES ('🙂'); DELETE FROM emoji WHERE id = 4")
    _no_job_leftovers(setup)
    again = setup.run("mysql8")
    assert again.state == "done" and again.counts == outcome.counts
    assert setup.counts() == EXPECTED_ROWS and setup.ours(HEX) == setup.old(HEX)
    # verify: both sides' counts, no difference
    verified = setup.run("real", mode="verify")
    assert verified.counts["differences"] == [] and verified.counts["target"] == EXPECTED_ROWS
    _no_job_leftovers(setup)


def test_the_password_is_in_no_process_list_during_the_copy(setup: Setup) -> None:
    result: dict[str, PartOutcome] = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcome", setup.run("slow")))
    thread.start()
    seen_node: list[str] = []
    seen_old: list[str] = []
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        seen_node.append(str(setup.node_host.check_output("ps -eo args")))
        seen_old.append(str(setup.old_host.check_output("ps -eo args")))
        time.sleep(0.3)
    thread.join()
    assert result["outcome"].state == "done"
    # the samples were taken while the dump ran (not before or after it)
    assert any(f"{setup.login}@" in s and "ssh" in s for s in seen_node)
    assert any("mysqldump --defaults-extra-file=/dev/stdin" in s for s in seen_old)
    for sample in seen_node + seen_old:
        assert setup.old_password not in sample
    assert setup.counts() == EXPECTED_ROWS


def test_a_tiny_byte_cap_stops_the_copy_and_leaves_the_database_as_it_was(setup: Setup) -> None:
    before = setup.ours(HEX)
    outcome = setup.run("real", cap=3000)
    assert outcome.state == "cap_reached" and 3000 < outcome.bytes <= 3000 + 1024 * 1024
    assert setup.counts() == EXPECTED_ROWS and setup.ours(HEX) == before
    _no_job_leftovers(setup)
