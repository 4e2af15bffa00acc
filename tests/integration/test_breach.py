"""Personal-data breaches (issue 17, item 10; RULES "Breach: supervisory authority notified
within 72 hours"): opened with its deadline, ops reminded through the outbox once per
reminder interval until it is closed. The reminders go to the SMTP sink. SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.adapters.mail import Mailer
from provisioner.cli import app
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.policy import ISERVER
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases import breach
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import AuditEntry
from tests.helpers import make_settings

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def test_an_open_breach_reminds_ops_once_per_interval_until_closed(
        db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, db_url, smtp_sink.port)
    factory = session_factory(settings.effective_database_url)
    opened = breach.open_breach(factory, "laptop with a customer export stolen", "cli:ops", "iserver",
                                now=T0)
    assert opened["deadline_at"] == (T0 + timedelta(hours=ISERVER.breach_notification_hours)).isoformat()
    assert opened["deadline_at"] == "2026-05-07T09:00:00+00:00" and opened["state"] == "open"
    mailer = Mailer(settings)

    def beat(at: datetime) -> int:
        return breach.remind_ops(factory, mailer, settings.mail_from, settings.ops_email, 6.0,
                                 now=lambda: at)

    # the beat runs hourly; a reminder goes out at most every 6 hours
    sent = [beat(T0 + timedelta(hours=h)) for h in range(0, 13)]
    assert sent == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    mails = smtp_sink.messages()
    assert len(mails) == 3 and {m["To"] for m in mails} == {settings.ops_email}
    assert "Data breach" in str(mails[0]["Subject"]) and "2026-05-07T09:00" in str(mails[0]["Subject"])
    # overdue: the reminder says so
    assert beat(T0 + timedelta(hours=73)) == 1
    body = smtp_sink.messages()[-1].get_body()
    assert body is not None and "PASSED" in body.get_content()
    [listed] = breach.list_breaches(factory, open_only=True, now=T0 + timedelta(hours=73))
    assert listed["state"] == "overdue" and listed["reminders"] == 4
    closed = breach.close_breach(factory, opened["id"], T0 + timedelta(hours=70), "cli:ops",
                                 now=T0 + timedelta(hours=74))
    assert closed["state"] == "closed" and closed["notified_at"] == (T0 + timedelta(hours=70)).isoformat()
    assert beat(T0 + timedelta(hours=90)) == 0  # closed: no more reminders
    assert len(smtp_sink.messages()) == 4
    assert breach.list_breaches(factory, open_only=True) == []
    with transaction(factory) as s:
        actions = list(s.execute(select(AuditEntry.action).where(AuditEntry.entity == "breach")
                                 .order_by(AuditEntry.id)).scalars())
        closing = s.execute(select(AuditEntry.detail)
                            .where(AuditEntry.action == "breach.closed")).scalar_one()
    assert actions == ["breach.opened", "breach.closed"] and closing["late"] is False
    with pytest.raises(InvalidInput, match="was closed"):
        breach.close_breach(factory, opened["id"], T0, "cli:ops", now=T0 + timedelta(hours=75))


def test_a_reminder_that_could_not_be_sent_is_due_again(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, db_url, 25)
    factory = session_factory(settings.effective_database_url)
    breach.open_breach(factory, "misdirected invoice mail", "cli:ops", "fcb", now=T0)
    calls: list[str] = []

    def failing(key: str, data: dict[str, object]) -> None:
        calls.append(key)
        raise OSError("SMTP down")

    assert breach.remind_open_breaches(factory, failing, 6.0, T0) == 0
    assert breach.remind_open_breaches(factory, lambda k, d: calls.append(k), 6.0,
                                       T0 + timedelta(hours=1)) == 1
    assert calls == ["breach:1/reminder#1", "breach:1/reminder#1"]


def test_the_breach_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    cli = CliRunner()
    opened = cli.invoke(app, ["breach", "open", "--summary", "backup disk lost", "--json"])
    assert opened.exit_code == 0, opened.stderr
    data = json.loads(opened.stdout)
    assert data["brand"] == "fcb" and data["state"] == "open"
    listed = json.loads(cli.invoke(app, ["breach", "list", "--open", "--json"]).stdout)
    assert [b["id"] for b in listed] == [data["id"]]
    naive = cli.invoke(app, ["breach", "close", str(data["id"]), "--notified-at", "2026-05-04T10:00"])
    assert naive.exit_code == 2 and "time zone" in naive.stderr
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert cli.invoke(app, ["breach", "close", str(data["id"]), "--notified-at", future]).exit_code == 2
    now = datetime.now(UTC).isoformat()
    closed = cli.invoke(app, ["breach", "close", str(data["id"]), "--notified-at", now, "--json"])
    assert closed.exit_code == 0 and json.loads(closed.stdout)["state"] == "closed"
    assert json.loads(cli.invoke(app, ["breach", "list", "--open", "--json"]).stdout) == []
    assert cli.invoke(app, ["breach", "open", "--summary", "  "]).exit_code == 2
