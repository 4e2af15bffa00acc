"""The plans' mail limits and the usage report, on the session's throwaway node.

RULES.md, "Shared hosting limits": at most 60 recipients per message, delayed above
50; 60 messages an hour; 10,000 a month; no mass mailing to more than 2,000
recipients; over the disk quota the customer is warned (the usage report gives the
data). Enforced by roles/hosting_account's policy service (hosting-mail-policy) and
roles/hosting_node's Postfix (slow lane, policy settings); measured by
roles/hosting_node's hosting-usage, read through provisioner.adapters.hosting.usage.

Three accounts of this module's own (unique names) live on the node: ``sender`` (Mega)
for recipients, the slow lane, mass mailing and usage, ``counted`` (Mega with the
hourly limit lifted, so that a pre-seeded monthly count cannot trip it) for the
monthly limit, and ``hourly`` (Mega) for the 61st message in an hour on every way an
account's processes send mail: PHP's mail() (PHP-FPM), sendmail, SMTP to 127.0.0.1:25
as the account's user, and submission with a login. Postfix's own sendmail and postdrop
refuse the accounts (no way around the count). A policy that fails (its database locked)
lets mail pass, counts the failure, and the daily quota check alerts ops once. A message
just under 50 MB is accepted, one just over refused; an SMTP AUTH login is in the
node's login log.
Counters are pre-seeded straight into the policy's SQLite file; tests remove what they
seeded and put back what they changed.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import re
import shlex
import smtplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner.adapters.hosting import Target
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.adapters.hosting.usage import NodeUsage, read_usage
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.store.db import transaction, upgrade
from provisioner.store.hosting import add_node
from tests.helpers import MemoryMailer, make_settings, wire
from tests.servers import self_signed_tls_context, wait_for
from tests.unit.pipeline.fakes import Alerts

POLICY_DB = "/var/lib/hosting/mail-policy.sqlite"
POLICY_SOCKET = "/var/spool/postfix/private/hosting-policy"
MAIL_LOG = "/var/log/mail.log"
STATE_DIR = "/etc/hosting/accounts"
MIB = 1024 * 1024


@dataclass
class Account:
    spec: AccountSpec
    secret: Secrets

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def domain(self) -> str:
        return self.spec.domains[0]

    @property
    def address(self) -> str:
        return f"info@{self.domain}"


@dataclass
class Env:
    target: Target
    address: str
    ssh_key: Path
    host: Any  # testinfra host
    sender: Account
    counted: Account
    hourly: Account

    def submission(self, account: Account) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.address, 587, timeout=30)
        try:
            smtp.starttls(context=self_signed_tls_context())
            smtp.login(account.address, account.secret.mailboxes["info"])
        except BaseException:
            smtp.close()
            raise
        return smtp

    def inbox_with_subject(self, account: Account, subject: str) -> int:
        imap = imaplib.IMAP4_SSL(self.address, ssl_context=self_signed_tls_context(), timeout=20)
        try:
            imap.login(account.address, account.secret.mailboxes["info"])
            typ, _ = imap.select("INBOX", readonly=True)
            assert typ == "OK"
            typ, found = imap.search(None, "SUBJECT", f'"{subject}"')
            assert typ == "OK"
            return len(found[0].split())
        finally:
            imap.logout()

    def usage(self) -> NodeUsage:
        return read_usage(self.target, self.ssh_key)  # the target is a throwaway host

    def python(self, script: str, *args: str) -> str:
        """Run a Python script on the node as root; return its output."""
        return str(self.host.check_output("python3 -c %s " + " ".join(["%s"] * len(args)), script, *args))

    def policy_sql(self, sql: str, *params: Any) -> str:
        """One statement against the policy's SQLite file; prints rows or changes."""
        script = ("import json, sqlite3, sys\n"
                  "c = sqlite3.connect(sys.argv[1], timeout=10)\n"
                  "rows = c.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()\n"
                  "c.commit()\nprint(json.dumps(rows) if rows else c.total_changes)\n")
        return self.python(script, POLICY_DB, sql, json.dumps(params))

    def log_lines(self, needle: str) -> list[str]:
        out = self.host.run("grep -F -- %s %s", needle, MAIL_LOG).stdout
        return [line for line in out.splitlines() if "warning:" not in line]

    def queued_recipients(self, queue_id: str) -> list[str]:
        out = self.host.check_output("postqueue -j")
        for line in out.splitlines():
            entry = json.loads(line)
            if entry["queue_id"] == queue_id:
                return [r["address"] for r in entry["recipients"]]
        return []

    def postconf(self, name: str) -> str:
        return str(self.host.check_output("postconf -h %s", name)).strip()


@pytest.fixture(scope="module")
def env(node: Any, node_host: Any) -> Iterator[Env]:
    target = node.info.target()  # a throwaway host: its host key is not checked
    ssh_key = Path(node.info.ssh_key)
    accounts = HostingAccounts(ssh_key=ssh_key, provider_url="https://www.provider.example/")
    tag = uuid.uuid4().hex[:8]
    sender = AccountSpec(f"mls{tag}", (f"mls{tag}.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",))
    counted = AccountSpec(f"mlc{tag}", (f"mlc{tag}.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",),
                          limit_overrides={"mail_per_hour": 1_000_000})
    hourly = AccountSpec(f"mlh{tag}", (f"mlh{tag}.si",), CATALOG.hosting_plan("mega"), mailboxes=("info",))
    made = []
    for spec in (sender, counted, hourly):
        secret = Secrets.generate(spec.mailboxes)
        accounts.create(target, spec, secret).raise_for_status("e2e.mail_limits.create")
        made.append(Account(spec.validated(), secret))
    yield Env(target, node.info.address, ssh_key, node_host, made[0], made[1], made[2])
    for account in made:
        with contextlib.suppress(Exception):  # the node is thrown away anyway
            node_host.run("python3 -c %s %s %s",
                          "import sqlite3, sys\n"
                          "c = sqlite3.connect(sys.argv[1], timeout=10)\n"
                          "c.execute('DELETE FROM sent WHERE account=?', (sys.argv[2],))\n"
                          "c.execute('DELETE FROM rcpt WHERE account=?', (sys.argv[2],))\n"
                          "c.commit()\n", POLICY_DB, account.name)


# -- recipients per message -----------------------------------------------------------------
def send(env: Env, account: Account, rcpts: list[str], subject: str) -> str:
    """Submit one message to ``rcpts``; every recipient must be accepted; return its queue id."""
    smtp = env.submission(account)
    try:
        assert smtp.mail(account.address)[0] == 250
        assert [smtp.rcpt(r)[0] for r in rcpts] == [250] * len(rcpts)
        code, reply = smtp.data(f"From: {account.address}\r\nTo: {account.address}\r\n"
                                f"Subject: {subject}\r\n\r\nhello\r\n")
    finally:
        smtp.quit()
    assert code == 250, reply
    found = re.search(rb"queued as ([0-9A-F]+)", reply)
    assert found, reply
    return found.group(1).decode()


def test_a_message_to_55_recipients_is_accepted_but_delayed(env: Env) -> None:
    sender = env.sender
    batch = int(env.postconf("slow_destination_recipient_limit"))
    assert 1 < batch < 55
    assert env.postconf("slow_destination_rate_delay") not in ("", "0", "0s")
    subject = f"slow {uuid.uuid4().hex}"
    rcpts = [f"info+slow{i}@{sender.domain}" for i in range(55)]
    queue_id = send(env, sender, rcpts, subject)  # accepted ...
    try:
        # ... routed by the policy into the slow lane ...
        filtered = wait_for(lambda: [line for line in env.log_lines(f"{queue_id}: filter:")
                                       if f"FILTER slow:{sender.name}" in line], 20, "the FILTER action")
        assert len(filtered) == 1

        def sent_by_slow() -> list[str]:
            lines = env.log_lines(f"{queue_id}: to=")
            return [m.group(1) for line in lines if "postfix/slow" in line and "status=sent" in line
                    for m in [re.search(r"to=<([^>]+)>", line)] if m]

        # ... whose first delivery takes only a batch of its recipients ...
        wait_for(lambda: len(sent_by_slow()) >= batch, 30, "the first batch")
        # ... while the rest is held back in the queue.
        wait_for(lambda: len(env.queued_recipients(queue_id)) == 55 - batch, 10,
                   "the held-back recipients in the queue")
        held = set(env.queued_recipients(queue_id))
        delivered = set(sent_by_slow())
        assert len(delivered) == batch  # nothing more went out meanwhile
        assert held | delivered == set(rcpts) and not held & delivered
        # The batch really reaches the mailbox (re-injected, then delivered as usual).
        wait_for(lambda: env.inbox_with_subject(sender, subject) == batch, 30, "the batch in the inbox")
    finally:
        env.host.run("postsuper -d %s", queue_id)


def test_a_message_to_50_recipients_is_not_delayed(env: Env) -> None:
    sender = env.sender
    subject = f"fifty {uuid.uuid4().hex}"
    queue_id = send(env, sender, [f"info+n{i}@{sender.domain}" for i in range(50)], subject)
    wait_for(lambda: env.inbox_with_subject(sender, subject) == 50, 30, "all 50 copies")
    assert env.log_lines(f"{queue_id}: filter:") == []
    assert not [line for line in env.log_lines(f"{queue_id}: to=") if "postfix/slow" in line]


def test_a_message_to_61_recipients_is_refused_past_the_60th(env: Env) -> None:
    smtp = env.submission(env.sender)
    try:
        smtp.mail(env.sender.address)
        replies = [smtp.rcpt(f"info+many{i}@{env.sender.domain}") for i in range(61)]
    finally:
        smtp.rset()
        smtp.quit()
    assert [code for code, _ in replies[:60]] == [250] * 60
    code, text = replies[60]
    assert code == 452 and b"too many recipients" in text.lower(), (code, text)


# -- mass mailing and the monthly count ----------------------------------------------------------
def test_mass_mailing_past_2000_distinct_recipients_in_24_hours_is_refused(env: Env) -> None:
    sender = env.sender
    seeded = [f"seed{i}@mass.example" for i in range(2000)]
    env.python("import sqlite3, sys, time\n"
               "c = sqlite3.connect(sys.argv[1], timeout=10)\n"
               "now = time.time()\n"
               "c.executemany('INSERT OR REPLACE INTO rcpt (account, address, ts) VALUES (?, ?, ?)',\n"
               "              [(sys.argv[2], 'seed%d@mass.example' % i, now - 3600) for i in range(2000)])\n"
               "c.commit()\n", POLICY_DB, sender.name)
    try:
        distinct = json.loads(env.policy_sql("SELECT COUNT(*) FROM rcpt WHERE account=?", sender.name))
        assert distinct[0][0] >= 2000
        smtp = env.submission(sender)
        try:
            smtp.mail(sender.address)
            new_code, new_text = smtp.rcpt("someone-new@mass.example")
            known_code, _ = smtp.rcpt(seeded[7])  # already written to today: still allowed
        finally:
            smtp.rset()
            smtp.quit()
        assert 500 <= new_code < 600 and b"Mass mailing" in new_text, (new_code, new_text)
        assert known_code == 250
        # The window is 24 hours: once the seeded recipients are older, new ones pass again.
        env.policy_sql("UPDATE rcpt SET ts = ts - 86400 WHERE account=? AND address LIKE ?",
                       sender.name, "seed%@mass.example")
        smtp = env.submission(sender)
        try:
            smtp.mail(sender.address)
            later_code, _ = smtp.rcpt("someone-new@mass.example")
        finally:
            smtp.rset()
            smtp.quit()
        assert later_code == 250
    finally:
        env.policy_sql("DELETE FROM rcpt WHERE account=? AND address LIKE ?", sender.name, "%@mass.example")


def test_the_10001st_message_of_a_month_is_deferred(env: Env) -> None:
    counted = env.counted
    assert counted.spec.plan.mail_per_month == 10_000
    # 9,999 messages this calendar month (UTC), at its very first second.
    env.python("import calendar, sqlite3, sys, time\n"
               "t = time.gmtime()\n"
               "start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, 0))\n"
               "c = sqlite3.connect(sys.argv[1], timeout=10)\n"
               "c.executemany('INSERT INTO sent (account, ts, rcpts) VALUES (?, ?, 1)',\n"
               "              [(sys.argv[2], start)] * 9999)\n"
               "c.commit()\n", POLICY_DB, counted.name)
    user = counted.address
    smtp = env.submission(counted)
    try:
        refused = smtp.sendmail(user, [user], f"From: {user}\r\nSubject: m10000\r\n\r\nx\r\n")
        assert refused == {}  # the 10,000th passes
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            smtp.sendmail(user, [user], f"From: {user}\r\nSubject: m10001\r\n\r\nx\r\n")
    finally:
        with contextlib.suppress(smtplib.SMTPException):
            smtp.quit()
        env.policy_sql("DELETE FROM sent WHERE account=?", counted.name)
    assert 400 <= deferred.value.smtp_code < 500, deferred.value
    assert b"Monthly sending limit of 10000" in deferred.value.smtp_error
    wait_for(lambda: env.inbox_with_subject(counted, "m10000") == 1, 30, "the 10,000th message")
    assert env.inbox_with_subject(counted, "m10001") == 0


def test_mail_still_goes_out_when_the_policy_service_is_down(env: Env) -> None:
    sender = env.sender
    subject = f"no policy {uuid.uuid4().hex}"
    env.host.check_output("systemctl stop hosting-mail-policy.service")
    try:
        assert not env.host.service("hosting-mail-policy").is_running
        smtp = env.submission(sender)
        try:
            refused = smtp.sendmail(sender.address, [sender.address],
                                    f"From: {sender.address}\r\nSubject: {subject}\r\n\r\nx\r\n")
        finally:
            smtp.quit()
        assert refused == {}
        wait_for(lambda: env.inbox_with_subject(sender, subject) == 1, 30, "the message")
    finally:
        env.host.check_output("systemctl start hosting-mail-policy.service")
        wait_for(lambda: env.host.socket(f"unix://{POLICY_SOCKET}").is_listening, 10, "the policy socket")


LOCK_UNIT = "hosting-test-policy-lock.service"
LOCKED_FLAG = "/run/hosting-test-policy-locked"
HOLD_LOCK = ("import os, signal, sqlite3, sys, time\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "c.execute('BEGIN EXCLUSIVE')\n"
             "open(sys.argv[2], 'w').close()\n"
             "signal.signal(signal.SIGTERM, lambda *_: (os.unlink(sys.argv[2]), sys.exit(0)))\n"
             "while True:\n    time.sleep(1)\n")


def test_a_failing_policy_lets_mail_pass_reports_it_and_alerts_ops_once(
        env: Env, node: Any, tmp_path: Path) -> None:
    # The quota check as the beat runs it, against this node (registered as the throwaway
    # host it is): usage over SSH with the settings' key; ops alerts recorded.
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    upgrade(url)
    alerts = Alerts()
    app, _ = wire(make_settings(tmp_path, url, 25, node_ssh_key=str(env.ssh_key)), mailer=MemoryMailer(),
                  alert=alerts)
    with transaction(app.factory) as s:
        add_node(s, node.info.name, env.address, capacity_accounts=100, capacity_disk_mb=100_000,
                 throwaway=True)
    today = date(2026, 3, 1)
    baseline = app.check_quotas(today)["mail_policy_failures"][node.info.name]["count"]
    told = len(alerts.sent)  # failures from before this test (if any) were told once just now
    before = env.usage().mail_policy_failures
    assert before == baseline

    sender = env.sender
    subject = f"policy locked {uuid.uuid4().hex}"
    env.host.check_output("systemd-run --unit=%s python3 -c %s %s %s", LOCK_UNIT, HOLD_LOCK, POLICY_DB,
                          LOCKED_FLAG)
    try:
        wait_for(lambda: env.host.file(LOCKED_FLAG).exists, 30, "the policy's database locked")
        smtp = env.submission(sender)
        try:
            refused = smtp.sendmail(sender.address, [sender.address],
                                    f"From: {sender.address}\r\nSubject: {subject}\r\n\r\nx\r\n")
        finally:
            smtp.quit()
    finally:
        env.host.run("systemctl stop %s", LOCK_UNIT)
        env.host.run("systemctl reset-failed %s", LOCK_UNIT)
    assert refused == {}  # the policy failed open: the message passed ...
    wait_for(lambda: env.inbox_with_subject(sender, subject) == 1, 60, "the message")
    after = env.usage()  # ... and not silently: the node's report counts the failures
    assert after.mail_policy_failures is not None and after.mail_policy_failures >= before + 1
    assert "locked" in after.mail_policy_last_error
    first = app.check_quotas(today)
    assert first["mail_policy_failures"][node.info.name]["new"] == after.mail_policy_failures - before
    assert len(alerts.sent) == told + 1  # one alert
    assert node.info.name in alerts.sent[-1]["detail"] and "failed open" in alerts.sent[-1]["detail"]
    app.check_quotas(today)
    assert len(alerts.sent) == told + 1  # once


# -- usage ---------------------------------------------------------------------------------------
def test_usage_reports_the_accounts_plan_limits(env: Env) -> None:
    usage = env.usage()
    assert {env.sender.name, env.counted.name} <= set(usage)
    mine = usage[env.sender.name]
    plan = env.sender.spec.plan
    assert mine.plan == "mega"
    assert mine.limits["disk_mb"] == plan.disk_mb
    assert mine.limits["database_max_mb"] == plan.database_max_mb
    assert usage[env.counted.name].limits["mail_per_hour"] == 1_000_000  # its own state file
    assert mine.db_bytes is not None
    assert not mine.over_quota


def test_usage_grows_by_the_size_of_a_file_written_into_the_home(env: Env) -> None:
    name = env.sender.name
    probe = f"/srv/hosting/{name}/usage-probe.bin"
    before = env.usage()[name]
    env.host.check_output("head -c %s /dev/urandom > %s && chown %s: %s", str(5 * MIB), probe, name, probe)
    try:
        after = env.usage()[name]
    finally:
        env.host.check_output("rm -f %s", probe)
    grown = after.disk_bytes - before.disk_bytes
    assert 5 * MIB <= grown < 5 * MIB + 256 * 1024, grown
    assert env.usage()[name].disk_bytes == before.disk_bytes


def test_usage_counts_delivered_mail(env: Env) -> None:
    sender = env.sender
    subject = f"big {uuid.uuid4().hex}"
    before = env.usage()[sender.name].mail_bytes
    smtp = smtplib.SMTP(env.address, 25, timeout=30)
    try:
        smtp.sendmail("someone@outside.example", [sender.address],
                      f"From: someone@outside.example\r\nSubject: {subject}\r\n\r\n" + "y" * 300_000 + "\r\n")
    finally:
        smtp.quit()
    wait_for(lambda: env.inbox_with_subject(sender, subject) == 1, 30, "the message")
    assert env.usage()[sender.name].mail_bytes - before >= 300_000


@pytest.mark.parametrize(("limit", "flag"), [("disk_mb", "over_disk"), ("database_max_mb", "over_database")])
def test_over_quota_flips_when_the_accounts_limit_is_lowered(env: Env, limit: str, flag: str) -> None:
    name = env.sender.name
    # Some data in the account's database, so that a cap of 0 MB is exceeded.
    env.host.check_output("mysql %s -e %s", name, "CREATE TABLE IF NOT EXISTS usage_probe (b BLOB); "
                                                  "INSERT INTO usage_probe VALUES (REPEAT('x', 50000))")
    path = f"{STATE_DIR}/{name}.json"
    original = env.host.file(path).content_string
    before = env.usage()[name]
    assert not before.over_quota
    assert before.db_bytes
    lowered = json.loads(original)
    lowered["limits"][limit] = 0
    write = "import sys\nwith open(sys.argv[1], 'w') as f:\n    f.write(sys.argv[2])\n"
    env.python(write, path, json.dumps(lowered, indent=4) + "\n")
    try:
        during = env.usage()[name]
    finally:
        env.python(write, path, original)
    assert getattr(during, flag) is True
    assert during.over_quota is True
    other = {"over_disk", "over_database"} - {flag}
    assert getattr(during, other.pop()) is False
    assert during.limits[limit] == 0
    assert env.host.file(path).content_string == original
    after = env.usage()[name]
    assert not after.over_quota
    assert after.limits == before.limits


# -- the hourly limit on every way an account sends ------------------------------------------------
def as_user(name: str, command: str) -> str:
    """``command`` (a shell command line) run as the account's user ``name``."""
    return f"setpriv --reuid={name} --regid={name} --init-groups {command}"


SEND_BY_SMTP = ("import smtplib, sys\n"
                "s = smtplib.SMTP('127.0.0.1', 25, local_hostname='localhost', timeout=30)\n"
                "try:\n"
                "    s.sendmail(sys.argv[1], [sys.argv[1]], 'Subject: %s\\r\\n\\r\\nx\\r\\n' % sys.argv[2])\n"
                "    print('sent')\n"
                "except smtplib.SMTPResponseException as exc:\n"
                "    print('refused', exc.smtp_code, exc.smtp_error.decode())\n"
                "finally:\n"
                "    s.close()\n")
MAIL_PHP = ("<?php\n"
            "$ok = mail($_GET['to'], $_GET['subject'], \"x\\n\");\n"
            "echo $ok ? 'sent' : 'refused';\n")


def by_php(env: Env, account: Account, subject: str) -> tuple[bool, str]:
    reply = httpx.get(f"http://{env.address}/mail-probe.php",
                      params={"to": account.address, "subject": subject},
                      headers={"Host": account.domain}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.text.strip() == "sent", reply.text


def by_sendmail(env: Env, account: Account, subject: str) -> tuple[bool, str]:
    message = f"To: {account.address}\nSubject: {subject}\n\nx\n"
    sendmail = as_user(account.name, "/usr/sbin/sendmail -t -i")
    out = env.host.run(f"printf %s {shlex.quote(message)} | {sendmail}")
    return out.rc == 0, f"rc={out.rc} {out.stderr}"


def by_smtp_to_localhost(env: Env, account: Account, subject: str) -> tuple[bool, str]:
    args = " ".join(shlex.quote(a) for a in (SEND_BY_SMTP, account.address, subject))
    out = str(env.host.check_output(as_user(account.name, f"python3 -c {args}")))
    return out.strip() == "sent", out


def by_submission(env: Env, account: Account, subject: str) -> tuple[bool, str]:
    smtp = env.submission(account)
    try:
        smtp.sendmail(account.address, [account.address], f"Subject: {subject}\r\n\r\nx\r\n")
    except smtplib.SMTPDataError as exc:
        return False, f"{exc.smtp_code} {exc.smtp_error.decode()}"
    finally:
        with contextlib.suppress(smtplib.SMTPException):
            smtp.quit()
    return True, "sent"


PATHS = {"php-mail": by_php, "sendmail": by_sendmail, "smtp-localhost": by_smtp_to_localhost,
         "submission": by_submission}


@pytest.fixture(scope="module")
def mail_probe(env: Env) -> Iterator[None]:
    """A PHP page in the ``hourly`` account's site that sends with mail()."""
    account = env.hourly
    path = f"/srv/hosting/{account.name}/public_html/mail-probe.php"
    env.python("import sys\nwith open(sys.argv[1], 'w') as f:\n    f.write(sys.argv[2])\n", path, MAIL_PHP)
    env.host.check_output("chown %s: %s", account.name, path)
    yield
    env.host.run("rm -f %s", path)


def hour_count(env: Env, account: Account) -> int:
    rows = json.loads(env.policy_sql(
        "SELECT COUNT(*) FROM sent WHERE account=? AND ts > strftime('%s','now') - 3600", account.name))
    return int(rows[0][0])


@pytest.mark.parametrize("path", list(PATHS))
def test_the_61st_message_in_an_hour_is_refused_whichever_way_it_is_sent(
        env: Env, mail_probe: None, path: str) -> None:
    account, send_by = env.hourly, PATHS[path]
    assert account.spec.plan.mail_per_hour == 60
    env.policy_sql("DELETE FROM sent WHERE account=?", account.name)
    # 59 messages sent within the hour (a minute ago).
    env.python("import sqlite3, sys, time\n"
               "c = sqlite3.connect(sys.argv[1], timeout=10)\n"
               "c.executemany('INSERT INTO sent (account, ts, rcpts) VALUES (?, ?, 1)',\n"
               "              [(sys.argv[2], time.time() - 60)] * 59)\n"
               "c.commit()\n", POLICY_DB, account.name)
    try:
        subject = f"{path} {uuid.uuid4().hex}"
        ok, detail = send_by(env, account, f"{subject} 60th")
        assert ok, detail  # the 60th goes out ...
        assert hour_count(env, account) == 60  # ... counted for the account
        ok, detail = send_by(env, account, f"{subject} 61st")
        assert not ok, detail  # the 61st is refused ...
        assert "Hourly sending limit of 60" in detail or path == "php-mail", detail
        assert hour_count(env, account) == 60  # ... and not counted
        wait_for(lambda: env.inbox_with_subject(account, f"{subject} 60th") == 1, 30, "the 60th message")
        assert env.inbox_with_subject(account, f"{subject} 61st") == 0
    finally:
        env.policy_sql("DELETE FROM sent WHERE account=?", account.name)


@pytest.mark.parametrize("command", ["/usr/sbin/sendmail.postfix -i {rcpt}", "/usr/sbin/postdrop"],
                         ids=["postfix-sendmail", "postdrop"])
def test_postfixs_own_queue_refuses_the_accounts(env: Env, command: str) -> None:
    account = env.hourly
    submit = command.format(rcpt=account.address)
    out = env.host.run("printf 'Subject: around\\n\\nx\\n' | " + as_user(account.name, submit))
    assert out.rc != 0
    assert "not allowed to submit mail" in out.stderr, out.stderr
    # The node's system users still have Postfix's sendmail.
    root = env.host.run("printf 'Subject: root\\n\\nx\\n' | /usr/sbin/sendmail -i %s", account.address)
    assert root.rc == 0, root.stderr


# -- message size and the login log ----------------------------------------------------------------
def test_the_50_mb_message_limit_is_enforced(env: Env) -> None:
    limit = 50 * MIB
    assert int(env.postconf("message_size_limit")) == limit
    sender = env.sender

    def submit(size: int) -> tuple[int, bytes]:
        line = b"x" * 998 + b"\r\n"
        head = f"From: {sender.address}\r\nSubject: size {size}\r\n\r\n".encode()
        body = line * ((size - len(head)) // len(line))
        smtp = env.submission(sender)
        try:
            # No SIZE= at MAIL FROM: the server must measure the content itself.
            assert smtp.mail(sender.address)[0] == 250
            assert smtp.rcpt(sender.address)[0] == 250
            return smtp.data(head + body)
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code, exc.smtp_error
        finally:
            with contextlib.suppress(smtplib.SMTPException):
                smtp.quit()

    under_code, under_reply = submit(limit - 64 * 1024)
    over_code, over_reply = submit(limit + 4 * 1024)
    assert under_code == 250, under_reply
    assert over_code == 552 and b"too big" in over_reply, (over_code, over_reply)
    found = re.search(rb"queued as ([0-9A-F]+)", under_reply)
    assert found
    env.host.run("postsuper -d %s", found.group(1).decode())  # not needed in the mailbox


def test_an_smtp_auth_login_is_in_the_login_log(env: Env) -> None:
    sender = env.sender
    smtp = env.submission(sender)
    try:
        smtp.sendmail(sender.address, [sender.address], f"Subject: login {uuid.uuid4().hex}\r\n\r\nx\r\n")
    finally:
        smtp.quit()
    line = re.compile(r"postfix/submission/smtpd\[\d+\]: [0-9A-F]+: client=\S*\[10\.213\.0\.1\]"
                      rf".*sasl_username={re.escape(sender.address)}")
    wait_for(lambda: any(line.search(x) for x in env.host.file("/var/log/hosting/logins.log")
                         .content_string.splitlines()), 20, "the SMTP AUTH login in the login log")
