"""Shared-hosting accounts on a throwaway node: real HTTP, FTPS, SMTP, IMAP and MariaDB
clients, plus testinfra, against roles/hosting_account run through the product's adapter.

Two accounts live on one converged node for the whole module: ``site`` (Giga 5,
example.si, the customer's view) and ``other`` (Mega, other-shop.si: the plan limits
and isolation). Tests that change an account put it back before they end.
"""

from __future__ import annotations

import base64
import contextlib
import ftplib
import hashlib
import imaplib
import io
import json
import os
import smtplib
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner.adapters.hosting import RunResult, Target, run_playbook
from provisioner.adapters.hosting.accounts import (
    AccountResult,
    AccountSpec,
    CronEntry,
    HostingAccounts,
    Secrets,
)
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.domain.policy import FCB, ISERVER
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.placement import brand_page
from tests.e2e.nodes import infra_host, own_node
from tests.servers import self_signed_tls_context, wait_for

NODE_NAME = "t-acct"


@dataclass
class Account:
    spec: AccountSpec
    secret: Secrets
    created: AccountResult

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def domain(self) -> str:
        return self.spec.domains[0]

    def mailbox(self, local: str = "info") -> tuple[str, str]:
        return f"{local}@{self.domain}", self.secret.mailboxes[local]


@dataclass
class Env:
    node: Target
    address: str
    host: Any  # testinfra host
    accounts: HostingAccounts
    site: Account
    other: Account

    def http(self, domain: str, path: str = "/", **kw: Any) -> httpx.Response:
        return httpx.get(f"http://{self.address}{path}", headers={"Host": domain}, timeout=20, **kw)

    def ftps(self, account: Account, password: str | None = None) -> ftplib.FTP_TLS:
        ftp = ftplib.FTP_TLS(self.address, timeout=20, context=self_signed_tls_context())  # noqa: S321
        try:
            ftp.login(account.name, password or account.secret.account)
            ftp.prot_p()
        except BaseException:
            ftp.close()
            raise
        return ftp

    def imap(self, account: Account, local: str = "info") -> imaplib.IMAP4_SSL:
        user, password = account.mailbox(local)
        imap = imaplib.IMAP4_SSL(self.address, ssl_context=self_signed_tls_context(), timeout=20)
        try:
            imap.login(user, password)
        except BaseException:
            imap.shutdown()
            raise
        return imap

    def submission(self, account: Account, local: str = "info") -> smtplib.SMTP:
        user, password = account.mailbox(local)
        smtp = smtplib.SMTP(self.address, 587, timeout=20)
        try:
            smtp.starttls(context=self_signed_tls_context())
            smtp.login(user, password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def as_account(self, account: Account, argv: list[str]) -> Any:
        """Run argv as the account's user, inside its slice and sandbox (like its cron jobs)."""
        return self.host.run("printf %s %s | /usr/local/sbin/hosting-account exec %s",
                             "%s", json.dumps(argv), account.name)

    def mysql(self, account: Account, sql: str, password: str | None = None) -> Any:
        return self.host.run("MYSQL_PWD=%s mysql --batch --skip-column-names -u %s %s -e %s",
                             password or account.secret.database, account.name, account.name, sql)


def inbox_count(env: Env, account: Account, local: str = "info") -> int:
    imap = env.imap(account, local)
    try:
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        return int(data[0] or b"0")
    finally:
        imap.logout()


@pytest.fixture(scope="module")
def acct_node(hosts: Any) -> Iterator[Any]:
    """A converged hosting node of this module's own (no other test module shares it).

    ``PROVISIONER_E2E_REUSE_NODE=NAME`` runs against an already running, converged
    throwaway host instead (kept afterwards): quicker while working on the role.
    """
    with own_node(hosts, NODE_NAME, "e2e.acct_node") as info:
        yield info


@pytest.fixture(scope="module")
def env(acct_node: Any, tmp_path_factory: pytest.TempPathFactory) -> Env:
    host = infra_host(acct_node, tmp_path_factory.mktemp("ssh"))
    node = acct_node.target()  # a throwaway host: its host key is not checked
    accounts = HostingAccounts(ssh_key=Path(acct_node.ssh_key), provider_url="https://www.provider.example/")
    site_spec = AccountSpec("examplesi", ("example.si", "example-shop.si"), CATALOG.hosting_plan("giga5"),
                            mailboxes=("info", "tiny"), mailbox_quota_mb={"tiny": 1},
                            cron=(CronEntry("date >> cron.log", minute="0,30"),))
    other_spec = AccountSpec("othershopsi", ("other-shop.si",), CATALOG.hosting_plan("mega"),
                             mailboxes=("info",), limit_overrides={"database_max_mb": 1})
    made = []
    for spec in (site_spec, other_spec):
        secret = Secrets.generate(spec.mailboxes)
        result = accounts.create(node, spec, secret)
        result.raise_for_status("e2e.create")
        if os.environ.get("PROVISIONER_E2E_REUSE_NODE"):  # the account may be there from before
            accounts.reset_password(node, spec, secret).raise_for_status("e2e.reset")
        made.append(Account(spec.validated(), secret, result))
    return Env(node, acct_node.address, host, accounts, made[0], made[1])


# -- after payment: the customer's view ---------------------------------------------------
def test_http_with_the_site_host_header_answers_from_the_docroot(env: Env) -> None:
    marker = uuid.uuid4().hex
    ftp = env.ftps(env.site)
    ftp.storbinary("STOR public_html/marker.txt", io.BytesIO(marker.encode()))
    ftp.quit()
    for domain in ("example.si", "www.example.si", "example-shop.si"):
        r = env.http(domain, "/marker.txt")
        assert r.status_code == 200, domain
        assert r.text == marker
    # Another account's host name does not serve this file.
    assert env.http("other-shop.si", "/marker.txt").status_code == 404


def test_php_runs_as_the_accounts_user(env: Env) -> None:
    ftp = env.ftps(env.site)
    ftp.storbinary("STOR public_html/whoami.php",
                   io.BytesIO(b"<?php echo posix_getpwuid(posix_geteuid())['name'];"))
    ftp.quit()
    r = env.http("example.si", "/whoami.php")
    assert r.status_code == 200
    assert r.text == "examplesi"


def test_ftps_login_works_and_lands_in_the_home(env: Env) -> None:
    ftp = env.ftps(env.site)
    try:
        assert ftp.pwd() == "/"
        names = ftp.nlst()
        assert "public_html" in names
        ftp.cwd("..")  # chrooted: there is nothing above the home
        assert ftp.pwd() == "/"
        ftp.storbinary("STOR ftp-owned.txt", io.BytesIO(b"x"))
    finally:
        ftp.quit()
    f = env.host.file("/srv/hosting/examplesi/ftp-owned.txt")
    assert f.user == "examplesi"


def test_an_ftp_login_with_a_wrong_password_is_refused(env: Env) -> None:
    with pytest.raises(ftplib.error_perm):
        env.ftps(env.site, password="wrong-password-123")


def test_mail_sent_over_smtp_arrives_and_is_readable_over_imap(env: Env) -> None:
    subject = f"hello {uuid.uuid4().hex}"
    user, _ = env.site.mailbox()
    smtp = smtplib.SMTP(env.address, 25, timeout=20)
    smtp.sendmail("sender@outside.example", [user],
                  f"From: sender@outside.example\r\nTo: {user}\r\nSubject: {subject}\r\n\r\nbody\r\n")
    smtp.quit()

    def arrived() -> bool:
        imap = env.imap(env.site)
        try:
            imap.select("INBOX", readonly=True)
            typ, found = imap.search(None, "SUBJECT", f'"{subject}"')
            return typ == "OK" and bool(found[0].split())
        finally:
            imap.logout()

    wait_for(arrived, 30, "the message in the IMAP inbox")


def test_submission_with_the_mailbox_login_sends_mail(env: Env) -> None:
    user, _ = env.site.mailbox()
    before = inbox_count(env, env.site)
    smtp = env.submission(env.site)
    smtp.sendmail(user, [user], f"From: {user}\r\nTo: {user}\r\nSubject: self\r\n\r\nhi\r\n")
    smtp.quit()
    wait_for(lambda: inbox_count(env, env.site) > before, 30, "the submitted message")


def test_the_database_accepts_the_given_credentials(env: Env) -> None:
    ok = env.mysql(env.site, "CREATE TABLE IF NOT EXISTS t (v INT); INSERT INTO t VALUES (42); "
                             "SELECT SUM(v) FROM t;")
    assert ok.rc == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1].strip() != ""
    bad = env.mysql(env.site, "SELECT 1", password="not-the-password-1")
    assert bad.rc != 0
    # The account's user sees its own database only.
    other_db = env.mysql(env.site, "SELECT COUNT(*) FROM othershopsi.t")
    assert other_db.rc != 0


def test_create_again_changes_nothing(env: Env) -> None:
    again = env.accounts.create(env.node, env.site.spec, Secrets.generate(env.site.spec.mailboxes))
    assert again.ok, again.run.errors
    assert again.changed == 0
    # The old passwords still work (create never resets an existing login).
    env.ftps(env.site).quit()
    assert inbox_count(env, env.site) >= 0


# -- every plan limit ----------------------------------------------------------------------
def _raw_post(address: str, host: str, path: str, length: int, send: int) -> int:
    """POST with a declared length; send up to ``send`` bytes; return the HTTP status."""
    with socket.create_connection((address, 80), timeout=30) as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode())
        chunk = b"\0" * (1 << 20)
        sent = 0
        with contextlib.suppress(OSError):
            while sent < send:
                s.sendall(chunk[: min(len(chunk), send - sent)])
                sent += min(len(chunk), send - sent)
        data = b""
        with contextlib.suppress(OSError):
            while not data.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in data:
                more = s.recv(4096)
                if not more:
                    break
                data += more
    return int(data.split(b" ", 2)[1])


def test_an_upload_over_the_plans_limit_is_refused(env: Env) -> None:
    limit_mb = env.other.spec.plan.upload_max_mb
    assert limit_mb == 250  # Mega
    ftp = env.ftps(env.other)
    ftp.storbinary("STOR public_html/up.php",
                   io.BytesIO(b"<?php echo ini_get('upload_max_filesize'), ' ', count($_FILES);"))
    ftp.quit()
    # PHP of the account carries the plan's limit ...
    assert env.http("other-shop.si", "/up.php").text.startswith("250M ")
    # ... a small upload goes through ...
    r = httpx.post(f"http://{env.address}/up.php", headers={"Host": "other-shop.si"},
                   files={"f": ("a.bin", b"\0" * 100_000)}, timeout=30)
    assert r.status_code == 200 and r.text == "250M 1"
    # ... one over the limit is refused, both when declared and when really sent.
    over = (limit_mb + 2) * 1024 * 1024
    assert _raw_post(env.address, "other-shop.si", "/up.php", over, 0) == 413
    assert _raw_post(env.address, "other-shop.si", "/up.php", over, over) == 413
    # The Giga 5 site takes the same upload size (its limit is 1,000 MB).
    assert env.http("example.si", "/whoami.php").status_code == 200
    assert _raw_post(env.address, "example.si", "/nothing.php", over, 0) != 413


def test_a_full_mailbox_refuses_delivery(env: Env) -> None:
    user, _ = env.site.mailbox("tiny")  # 1 MB quota for this test's mailbox
    body = "x" * (700 * 1024)
    accepted = 0
    refused: smtplib.SMTPRecipientsRefused | None = None
    for i in range(3):
        smtp = smtplib.SMTP(env.address, 25, timeout=20)
        try:
            smtp.sendmail("sender@outside.example", [user],
                          f"From: sender@outside.example\r\nTo: {user}\r\nSubject: big {i}\r\n\r\n{body}\r\n")
            accepted += 1

            def delivered(n: int = accepted) -> bool:
                return inbox_count(env, env.site, "tiny") >= n

            wait_for(delivered, 30, "delivery")
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc
            break
        finally:
            with contextlib.suppress(smtplib.SMTPException):
                smtp.quit()
    assert refused is not None, f"{accepted} messages of 700 KB went into a 1 MB mailbox"
    code, message = refused.recipients[user]
    assert code == 552, message
    assert accepted >= 1


def test_the_plans_mailbox_quota_is_configured(env: Env) -> None:
    out = env.host.check_output("doveadm user -f quota_rule %s", "info@example.si")
    assert out.strip() == f"*:storage={env.site.spec.plan.mailbox_mb}M"
    out = env.host.check_output("doveadm user -f quota_rule %s", "info@other-shop.si")
    assert out.strip() == "*:storage=1000M"


def test_a_61st_recipient_is_refused(env: Env) -> None:
    smtp = env.submission(env.site)
    try:
        smtp.mail(env.site.mailbox()[0])
        codes = [smtp.rcpt(f"info+{i}@example.si")[0] for i in range(61)]
    finally:
        smtp.rset()
        smtp.quit()
    assert codes[:60] == [250] * 60
    assert codes[60] >= 400


def test_the_61st_message_in_an_hour_is_deferred(env: Env) -> None:
    user, _ = env.other.mailbox()
    smtp = env.submission(env.other)
    sent = 0
    deferred: smtplib.SMTPDataError | None = None
    try:
        for i in range(61):
            try:
                smtp.sendmail(user, [user], f"From: {user}\r\nTo: {user}\r\nSubject: n{i}\r\n\r\nx\r\n")
                sent += 1
            except smtplib.SMTPDataError as exc:
                deferred = exc
                break
    finally:
        with contextlib.suppress(smtplib.SMTPException):
            smtp.quit()
    assert sent == 60
    assert deferred is not None and 400 <= deferred.smtp_code < 500, deferred
    assert b"Hourly" in deferred.smtp_error


def test_a_cron_entry_every_5_minutes_is_rejected(env: Env) -> None:
    every5 = CronEntry("date", minute="*/5")
    spec = AccountSpec(env.site.name, env.site.spec.domains, env.site.spec.plan,
                       mailboxes=env.site.spec.mailboxes, cron=(every5,))
    with pytest.raises(InvalidInput, match="every 5 minutes"):
        env.accounts.create(env.node, spec)
    # The role refuses it too when the Python side is bypassed (a playbook run by hand).
    ev = env.site.spec.extravars("create", None, "https://www.provider.example/")
    ev["hosting_account_cron"] = [every5.as_dict()]
    before = env.host.file("/etc/cron.d/hosting-examplesi").content_string
    result = run_playbook("hosting_account_create", [env.node], ev, ssh_key=env.accounts.ssh_key)
    assert not result.ok
    assert "every 5 minutes" in " ".join(result.errors.values())
    assert env.host.file("/etc/cron.d/hosting-examplesi").content_string == before
    assert "0,30 * * * * root" in before


def test_a_process_eating_cpu_is_held_to_the_plan(env: Env) -> None:
    quota = env.other.spec.plan.cpu_percent / 100  # Mega: half a core
    assert quota < 1
    script = ("import os,time\nt=time.monotonic()\nwhile time.monotonic()-t<2: pass\n"
              "c=os.times()\nprint((c.user+c.system)/(time.monotonic()-t))")
    out = env.as_account(env.other, ["python3", "-c", script])
    assert out.rc == 0, out.stderr
    share = float(out.stdout.strip())
    assert share <= quota + 0.1, f"a busy loop got {share:.2f} of a CPU; the plan allows {quota}"


def test_a_process_eating_memory_is_held_to_the_plan(env: Env) -> None:
    plan = env.other.spec.plan
    # Physical memory: touching more than MemoryMax gets the process killed.
    grab = f"b = b'x' * ({plan.memory_mb + 150} * 1024 * 1024); print('survived', len(b))"
    out = env.as_account(env.other, ["python3", "-c", grab])
    assert out.rc != 0 and "survived" not in out.stdout
    # Virtual memory: reserving more than LimitAS fails at once.
    reserve = (f"import mmap\ntry:\n  m = mmap.mmap(-1, {plan.vmem_mb + 200} * 1024 * 1024)\n"
               "  print('mapped')\nexcept OSError as e:\n  print('refused', e.errno)")
    out = env.as_account(env.other, ["python3", "-c", reserve])
    assert "refused" in out.stdout, out.stdout + out.stderr
    # Within the plan, the same work succeeds.
    ok = env.as_account(env.other, ["python3", "-c", "b = b'x' * (64 * 1024 * 1024); print('ok')"])
    assert ok.rc == 0 and "ok" in ok.stdout


def test_tasks_are_held_to_the_plan(env: Env) -> None:
    limit = env.other.spec.plan.tasks_max
    script = ("import subprocess\nps=[]\ntry:\n"
              f"  for i in range({limit + 20}): ps.append(subprocess.Popen(['sleep','5']))\n"
              "except OSError as e:\n  print('refused at', len(ps))\n"
              "for p in ps: p.kill()\n")
    out = env.as_account(env.other, ["python3", "-c", script])
    assert "refused at" in out.stdout, out.stdout + out.stderr
    assert int(out.stdout.split()[-1]) < limit


def test_one_account_cannot_read_anothers_files(env: Env) -> None:
    target = "/srv/hosting/examplesi/public_html/whoami.php"
    assert env.host.file(target).exists
    out = env.as_account(env.other, ["cat", target])
    assert out.rc != 0
    listing = env.as_account(env.other, ["ls", "/srv/hosting"])
    assert "examplesi" not in listing.stdout
    # Nor through PHP (its own service sees only its own home) ...
    ftp = env.ftps(env.other)
    ftp.storbinary("STOR public_html/peek.php",
                   io.BytesIO(f"<?php var_dump(@file_get_contents('{target}'));".encode()))
    ftp.quit()
    assert env.http("other-shop.si", "/peek.php").text.strip() == "bool(false)"
    # ... nor as its plain Linux user.
    direct = env.host.run("runuser -u othershopsi -- cat %s", target)
    assert direct.rc != 0


def test_a_database_over_its_cap_loses_write_privileges_and_gets_them_back(env: Env) -> None:
    other = env.other  # database cap lowered to 1 MB for this account
    assert env.mysql(other, "CREATE TABLE IF NOT EXISTS big (b LONGBLOB)").rc == 0
    fill = "INSERT INTO big VALUES (REPEAT('x', 1000000));" * 3
    assert env.mysql(other, fill).rc == 0
    env.host.check_output("echo {} | /usr/local/sbin/hosting-account dbcap")
    denied = env.mysql(other, "INSERT INTO big VALUES ('y')")
    assert denied.rc != 0 and "denied" in denied.stderr.lower()
    assert env.mysql(other, "SELECT COUNT(*) FROM big").rc == 0  # reads still work
    assert env.mysql(other, "TRUNCATE TABLE big").rc == 0
    env.host.check_output("echo {} | /usr/local/sbin/hosting-account dbcap")
    assert env.mysql(other, "INSERT INTO big VALUES ('y')").rc == 0


# -- suspend and unsuspend -----------------------------------------------------------------
def _tree_digest(env: Env, path: str) -> str:
    out = env.host.check_output("cd %s && find . -type f -print0 | sort -z | xargs -0 sha256sum", path)
    return hashlib.sha256(out.encode()).hexdigest()


def test_suspend_shows_the_disabled_page_blocks_logins_and_unsuspend_restores(env: Env) -> None:
    site = env.site
    before_home = _tree_digest(env, "/srv/hosting/examplesi")
    before_mail = _tree_digest(env, "/srv/mail/example.si")
    before_page = env.http("example.si", "/marker.txt")
    try:
        assert env.accounts.suspend(env.node, site.spec).ok
        for domain in ("example.si", "www.example.si", "example-shop.si", "www.example-shop.si"):
            r = env.http(domain, "/marker.txt")
            assert r.status_code == 503, domain
            assert 'href="https://www.provider.example/"' in r.text
        with pytest.raises(ftplib.error_perm):
            env.ftps(site)
        with pytest.raises(imaplib.IMAP4.error):
            env.imap(site)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            env.submission(site)
        assert env.accounts.suspend(env.node, site.spec).changed == 0  # idempotent
        # Nothing was touched while suspended.
        assert _tree_digest(env, "/srv/hosting/examplesi") == before_home
    finally:
        assert env.accounts.unsuspend(env.node, site.spec).ok
    after = env.http("example.si", "/marker.txt")
    assert (after.status_code, after.text) == (before_page.status_code, before_page.text)
    env.ftps(site).quit()
    env.imap(site).logout()
    env.submission(site).quit()
    assert _tree_digest(env, "/srv/hosting/examplesi") == before_home
    assert _tree_digest(env, "/srv/mail/example.si") == before_mail
    assert env.accounts.unsuspend(env.node, site.spec).changed == 0


def test_each_suspended_account_shows_its_own_brands_page(env: Env) -> None:
    """One node, two brands (issue 17 item 1): each suspended account's page names its
    customer's company, links to its site and gives its support address."""
    specs = {"example.si": (replace(env.site.spec, page=brand_page(FCB)), FCB),
             "other-shop.si": (replace(env.other.spec, page=brand_page(ISERVER)), ISERVER)}
    try:
        for spec, _ in specs.values():
            assert env.accounts.suspend(env.node, spec).ok
        for domain, (_, brand) in specs.items():
            r = env.http(domain, "/")
            assert r.status_code == 503, domain
            assert f'href="{brand.website_url}"' in r.text and f">{brand.display_name}</a>" in r.text
            assert f"mailto:{brand.support_email}" in r.text
            other = ISERVER if brand is FCB else FCB
            assert other.website_url not in r.text and other.support_email not in r.text
        spec, _ = specs["example.si"]
        assert env.accounts.suspend(env.node, spec).changed == 0  # idempotent
    finally:
        for spec, _ in specs.values():
            assert env.accounts.unsuspend(env.node, spec).ok
    for domain in specs:  # the sites answer again, not the page
        r = env.http(domain, "/")
        assert r.status_code != 503 and FCB.website_url not in r.text and ISERVER.website_url not in r.text


# -- idempotence and hostile names ----------------------------------------------------------
# The names in these queries are test literals that passed validate_account_name.
SCHEMAS_SQL = "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name='{}'"
USERS_SQL = "SELECT COUNT(*) FROM mysql.user WHERE User='{}'"


def _counts(env: Env, name: str, domain: str) -> dict[str, int]:
    def n(cmd: str, *args: str) -> int:
        return int(env.host.check_output(cmd, *args).strip() or 0)

    return {
        "users": n("getent passwd | grep -c ^%s: || true", name),
        "vhosts": n("ls /etc/nginx/sites-enabled | grep -c hosting-%s || true", name),
        "php": n("ls /etc/php/8.2/fpm/hosting | grep -c ^%s || true", name),
        "ftp": n("grep -c ^%s: /etc/pure-ftpd/pureftpd.passwd || true", name),
        "mail_logins": n("grep -c @%s: /etc/dovecot/users || true", domain),
        "mail_domains": n("grep -c '^%s OK' /etc/postfix/virtual_mailbox_domains || true", domain),
        "dbs": n("mysql -N -e %s", SCHEMAS_SQL.format(name)),
        "db_users": n("mysql -N -e %s", USERS_SQL.format(name)),
    }


# Each fault stops a create part-way, after some parts are written: MariaDB down fails the
# database part (user, files, PHP and the site are done); pure-pw missing fails the FTP
# part after the login file was written but before its database was rebuilt.
FAULTS = {
    "database-down": ("systemctl stop mariadb", "systemctl start mariadb"),
    "ftp-db-tool-missing": ("mv /usr/bin/pure-pw /usr/bin/pure-pw.off",
                            "mv /usr/bin/pure-pw.off /usr/bin/pure-pw"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_create_after_a_crash_creates_nothing_twice(env: Env, fault: str) -> None:
    name = "crash" + fault.split("-")[0]
    spec = AccountSpec(name, (f"{name}.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",))
    secret = Secrets.generate(spec.mailboxes)
    break_it, repair = FAULTS[fault]
    env.host.check_output(break_it)
    try:
        crashed = env.accounts.create(env.node, spec, secret)
    finally:
        env.host.check_output(repair)
    assert not crashed.ok  # the run failed part-way
    assert env.host.user(name).exists  # ... after it had written some parts
    done = env.accounts.create(env.node, spec, secret)
    assert done.ok, done.run.errors
    assert _counts(env, name, f"{name}.si") == {
        "users": 1, "vhosts": 1, "php": 1, "ftp": 1, "mail_logins": 1, "mail_domains": 1, "dbs": 1,
        "db_users": 1}
    assert env.http(f"{name}.si").status_code == 200
    # The FTP login works (with pure-pw missing, its line was written before the crash and
    # only its database was stale: the re-run rebuilt it).
    env.ftps(Account(spec, secret, crashed)).quit()
    assert env.accounts.create(env.node, spec).changed == 0


def _recorder(calls: list[Any]) -> Callable[..., RunResult]:
    def run(*args: Any, **kwargs: Any) -> RunResult:
        calls.append(args)
        raise AssertionError("nothing may run for hostile input")

    return run


HOSTILE = ["../etc", "a;rm -rf /", "ex\u0430mple", "a" * 300, "root", "x/../../etc", "$(reboot)", ""]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_account_names_are_refused_before_anything_runs(env: Env, bad: str) -> None:
    calls: list[Any] = []
    fake = HostingAccounts(runner=_recorder(calls))
    spec = AccountSpec(bad, ("example.si",), CATALOG.hosting_plan("mega"))
    with pytest.raises(InvalidInput):
        fake.create(env.node, spec)
    assert calls == []


@pytest.mark.parametrize("bad", ["../etc", "a;rm -rf /.si", "ex\u0430mple.si", ("a" * 300) + ".si",
                                 "example.si\nroot", "exa mple.si"])
def test_hostile_domains_are_refused_before_anything_runs(env: Env, bad: str) -> None:
    calls: list[Any] = []
    fake = HostingAccounts(runner=_recorder(calls))
    spec = AccountSpec("okname", (bad,), CATALOG.hosting_plan("mega"))
    with pytest.raises(InvalidInput):
        fake.create(env.node, spec)
    assert calls == []


@pytest.mark.parametrize("name,domain", [("../etc", "ok.si"), ("a;rm -rf /", "ok.si"),
                                         ("okname", "../../etc"), ("okname", "a;touch /tmp/pwned;.si"),
                                         ("okname", "ex\u0430mple.si")])
def test_the_role_refuses_hostile_input_when_run_by_hand(env: Env, name: str, domain: str) -> None:
    ev = {"hosting_account_name": name, "hosting_account_domains": [domain],
          "hosting_account_password": "Aa1" * 6, "hosting_account_db_password": "Bb2" * 6}
    result = run_playbook("hosting_account_create", [env.node], ev, ssh_key=env.accounts.ssh_key)
    assert not result.ok
    assert "Refused" in " ".join(result.errors.values())
    assert not env.host.file("/tmp/pwned").exists
    assert env.host.run("ls /etc/nginx/sites-available | grep -c etc").stdout.strip() == "0"


# -- secrets, plan changes, terminate --------------------------------------------------------
def test_no_password_reaches_the_nodes_logs_or_process_list(env: Env) -> None:
    secrets_ = [env.site.secret.account, env.site.secret.database, *env.site.secret.mailboxes.values()]
    logs = env.host.run("journalctl --no-pager -o cat; cat /var/log/syslog /var/log/mail.log "
                        "/var/log/auth.log 2>/dev/null; true").stdout
    assert len(logs) > 1000  # the logs are there and were read
    for secret in secrets_:
        assert secret not in logs
    # A create run in the background: its command line carries no password.
    import threading

    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for proc in Path("/proc").iterdir():
                try:
                    seen.append((proc / "cmdline").read_bytes().decode(errors="replace"))
                except OSError:
                    continue
            stop.wait(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        again = env.accounts.create(env.node, env.site.spec, env.site.secret)
    finally:
        stop.set()
        watcher.join()
    assert again.ok
    assert any("ansible-playbook" in c for c in seen)
    for secret in secrets_:
        assert not any(secret in c for c in seen)


def test_change_plan_moves_the_limits_and_keeps_the_data(env: Env) -> None:
    other = env.other
    bigger = AccountSpec(other.name, other.spec.domains, CATALOG.hosting_plan("giga10"),
                         mailboxes=other.spec.mailboxes, limit_overrides=other.spec.limit_overrides)
    before = _tree_digest(env, "/srv/hosting/othershopsi")
    try:
        assert env.accounts.change_plan(env.node, bigger).ok
        assert env.http("other-shop.si", "/up.php").text.startswith("1000M ")
        slice_conf = env.host.file("/etc/systemd/system/hosting-othershopsi.slice.d/20-limits.conf")
        assert "CPUQuota=150%" in slice_conf.content_string
        assert "MemoryMax=1536M" in slice_conf.content_string
        assert env.host.check_output("doveadm user -f quota_rule %s", "info@other-shop.si").strip() == \
            "*:storage=10000M"
    finally:
        assert env.accounts.change_plan(env.node, other.spec).ok
    assert env.http("other-shop.si", "/up.php").text.startswith("250M ")
    assert _tree_digest(env, "/srv/hosting/othershopsi") == before


def test_terminate_archives_the_account_and_removes_it(env: Env) -> None:
    spec = AccountSpec("gonesi", ("gone.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",))
    secret = Secrets.generate(spec.mailboxes)
    assert env.accounts.create(env.node, spec, secret).ok
    ftp = env.ftps(Account(spec, secret, None))  # type: ignore[arg-type]
    ftp.storbinary("STOR public_html/keep.txt", io.BytesIO(b"keep me"))
    ftp.quit()
    assert env.http("gone.si", "/keep.txt").text == "keep me"
    done = env.accounts.terminate(env.node, spec)
    assert done.ok, done.run.errors
    archive = "/srv/backup/terminated/gonesi/gonesi.tar.gz"
    listing = env.host.check_output("tar -tzf %s", archive)
    assert "srv/hosting/gonesi/public_html/keep.txt" in listing
    assert "database.sql" in listing
    assert not env.host.user("gonesi").exists
    assert not env.host.file("/srv/hosting/gonesi").exists
    assert not env.host.file("/etc/nginx/sites-enabled/hosting-gonesi.conf").exists
    assert env.http("gone.si", "/keep.txt").status_code != 200
    with pytest.raises(ftplib.error_perm):
        env.ftps(Account(spec, secret, None))  # type: ignore[arg-type]
    assert env.accounts.terminate(env.node, spec).changed == 0


# -- a customer racing the converge with symbolic links ----------------------------------------
# Runs as the account's own user (as its PHP or cron could). It gives public_html (or, every
# other round, tmp) a wrong mode and removes index.html, so that a converge has something to
# write, and watches the home with inotify: the moment root changes that directory's owner or
# mode (IN_ATTRIB), it exchanges the name for a symbolic link to a directory outside the home
# (renameat2 RENAME_EXCHANGE: the name is never missing), and back 50 ms later.
SWAPPER = r"""
import ctypes, os, select, signal, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE, IN_ATTRIB = -100, 2, 0x4

def exchange(a, b):
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2 " + a)

def drain(fd):
    while select.select([fd], [], [], 0)[0]:
        os.read(fd, 65536)

home, targets = sys.argv[1], sys.argv[2:]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
watch = libc.inotify_init()
libc.inotify_add_watch(watch, home.encode(), IN_ATTRIB)
rounds = 0

def arm():
    sub = ("public_html", "tmp")[rounds % 2]
    path, link = home + "/" + sub, home + "/." + sub + ".link"
    os.chmod(path, 0o700 if sub == "public_html" else 0o755)
    if os.path.lexists(home + "/public_html/index.html"):
        os.unlink(home + "/public_html/index.html")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(targets[rounds % len(targets)], link)
    drain(watch)
    return sub, path, link

sub, path, link = arm()
while not stop:
    if not select.select([watch], [], [], 0.2)[0]:
        continue
    data, names, i = os.read(watch, 65536), [], 0
    while i < len(data):
        size = struct.unpack_from("iIII", data, i)[3]
        names.append(data[i + 16:i + 16 + size].rstrip(b"\0").decode())
        i += 16 + size
    if sub not in names:
        continue
    exchange(path, link)
    select.select([], [], [], 0.05)
    exchange(path, link)
    rounds += 1
    sub, path, link = arm()
for name in (".public_html.link", ".tmp.link"):
    if os.path.lexists(home + "/" + name):
        os.unlink(home + "/" + name)
print("rounds", rounds)
"""

#: Directories outside the racing account's home whose every entry (mode, owner, content)
#: must stay as it was: root's configuration (nginx includes sites-enabled/*, the account
#: states are 0700) and another account's home.
GUARDED = ["/etc/nginx", "/etc/hosting", "/srv/hosting/examplesi", "/var/www"]
SNAPSHOT = r"""
import hashlib, json, os, sys
out = {}
def entry(path):
    st = os.lstat(path)
    body = ""
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as fh:
            body = hashlib.sha256(fh.read()).hexdigest()
    out[path] = [oct(st.st_mode), st.st_uid, st.st_gid, body]
for top in sys.argv[1:]:
    for dirpath, dirs, files in os.walk(top):
        entry(dirpath)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            entry(os.path.join(dirpath, name))
for name in os.listdir("/etc"):
    st = os.lstat("/etc/" + name)
    out["/etc/" + name] = out.get("/etc/" + name) or [oct(st.st_mode), st.st_uid, st.st_gid, ""]
print(json.dumps(out, sort_keys=True))
"""


def _guarded_state(env: Env, account: str) -> dict[str, Any]:
    state = json.loads(env.host.check_output("python3 -c %s %s", SNAPSHOT, " ".join(GUARDED)))
    # Files of the account's user outside its home (there are none: mail is vmail's).
    owned = env.host.check_output("find / -xdev -user %s -not -path %s -not -path %s -print", account,
                                  f"/srv/hosting/{account}", f"/srv/hosting/{account}/*")
    return {"entries": state, "owned_outside_home": sorted(owned.split())}


def test_a_customer_swapping_links_in_the_home_cannot_make_a_converge_touch_anything_outside(
        env: Env) -> None:
    spec = AccountSpec("racersi", ("racer.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",))
    other_plan = AccountSpec(spec.name, spec.domains, CATALOG.hosting_plan("giga5"), mailboxes=("info",))
    secret = Secrets.generate(spec.mailboxes)
    assert env.accounts.create(env.node, spec, secret).ok
    home = f"/srv/hosting/{spec.name}"
    script = base64.b64encode(SWAPPER.encode()).decode()
    env.host.check_output("echo %s | base64 -d > %s/.swapper.py && chmod 0644 %s/.swapper.py",
                          script, home, home)
    before = _guarded_state(env, spec.name)
    assert before["owned_outside_home"] == []
    env.host.check_output(
        "systemd-run --unit=hosting-race-swapper --uid=%s --property=KillSignal=SIGTERM "
        "python3 %s/.swapper.py %s /etc/nginx/sites-enabled /var/www /etc/hosting/accounts "
        "/srv/hosting/examplesi/tmp", spec.name, home, home)
    outcomes: list[str] = []
    try:
        for i in range(30):
            if i % 5 == 4:
                run = env.accounts.reset_password(env.node, spec, secret).run
            else:
                run = env.accounts.change_plan(env.node, other_plan if i % 2 == 0 else spec).run
            message = " ".join(run.errors.values())
            # A converge that met a link refuses clearly; any other outcome is a converge.
            assert run.ok or ("Refused" in message and "not a directory" in message), message
            outcomes.append("ok" if run.ok else "refused")
    finally:
        env.host.run("systemctl stop hosting-race-swapper.service")
        log = env.host.run("journalctl -u hosting-race-swapper.service -o cat --no-pager").stdout
        env.host.run("systemctl reset-failed hosting-race-swapper.service")
    rounds = [int(line.split()[1]) for line in log.splitlines() if line.startswith("rounds ")]
    assert rounds and rounds[0] >= 10, log  # the swapper did race (most converges announced themselves)
    assert "ok" in outcomes, outcomes
    # The swapper stopped with its directories back in place; the account converges again.
    final = env.accounts.change_plan(env.node, spec)
    assert final.ok, final.run.errors
    after = _guarded_state(env, spec.name)
    changed = {p: (before["entries"].get(p), after["entries"].get(p))
               for p in set(before["entries"]) | set(after["entries"])
               if before["entries"].get(p) != after["entries"].get(p)}
    assert changed == {}, changed
    assert after["owned_outside_home"] == []
    assert env.http("racer.si").status_code == 200


# -- the cron rule itself (pure; no node needed) ----------------------------------------------
@pytest.mark.parametrize("entry,gap", [
    (CronEntry("x", minute="0"), 60),
    (CronEntry("x", minute="0,30"), 30),
    (CronEntry("x", minute="*/30"), 30),
    (CronEntry("x", minute="15", hour="*/2"), 120),
    (CronEntry("x", minute="0", hour="3"), 1440),
    (CronEntry("x", minute="*/5"), 5),
    (CronEntry("x", minute="*/45"), 15),  # 0 and 45: 45 -> 60 is 15 minutes
    (CronEntry("x", minute="0,10"), 10),
    (CronEntry("x", minute="50", hour="*"), 60),
    (CronEntry("x", minute="59", hour="0,1"), 60),
])
def test_cron_gap_is_the_shortest_time_between_two_runs(entry: CronEntry, gap: int) -> None:
    from provisioner.adapters.hosting.accounts import cron_min_gap_minutes

    assert cron_min_gap_minutes(entry) == gap


@pytest.mark.parametrize("entry", [
    CronEntry("x", minute="*/5"), CronEntry("x", minute="*"), CronEntry("x", minute="*/45"),
    CronEntry("x\n* * * * * root reboot", minute="0"), CronEntry("x", minute="0;reboot"),
    CronEntry("x", minute="61"), CronEntry("", minute="0"), CronEntry("x", minute="0", hour="1-0"),
])
def test_bad_cron_entries_are_refused(entry: CronEntry) -> None:
    from provisioner.adapters.hosting.accounts import validate_cron

    with pytest.raises(InvalidInput):
        validate_cron([entry], 30)
