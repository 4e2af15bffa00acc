"""The ``migration.survey`` step in the pipeline (issue 13, item 3), with a recording fake
of the old provider (`ports.MigrationSource`; the real adapter against a real old host is
tests/e2e/test_migration_survey.py): the source arriving plans the survey after the
intake; a source within the caps is ``surveyed``; over the cap the migration stops, the
customer (in their language) and ops are mailed once, and ops can override with a
recorded reason (CLI, audited); a refused login is recorded with its credential and a new
source plans the survey again; the report holds no secret."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.adapters.migration_source import CredentialRefused
from provisioner.cli import app as cli_app
from provisioner.domain.migration_survey import (
    DatabaseMeasure,
    FilesMeasure,
    FolderMeasure,
    Limits,
    MailboxMeasure,
    Measures,
    Sample,
)
from provisioner.pipeline.capabilities.migration import sources
from provisioner.store.db import transaction
from provisioner.store.hosting import add_node
from provisioner.store.models import AuditEntry, Migration, Step
from tests.helpers import MemoryMailer, World, make_settings, make_world, settings_env
from tests.integration.test_migration_intake import FORM, SECRETS, _paid
from tests.unit.pipeline.fakes import FakeHosting

MIB = 1024 * 1024


def _measures(files_bytes: int) -> Measures:
    files = FilesMeasure("sftp", "/home/old/public_html", files_bytes, 10, 8, 1, 1,
                         [{"path": "escape", "target": "/etc", "outside": True}], [], [], [], files_bytes,
                         "8.1.2", Sample(MIB, 0.1, 0.001))
    db = DatabaseMeasure("ssh", "shop_db", "MySQL", "8.0.36", 5 * MIB, 3, {"InnoDB": 3}, ["utf8mb4"],
                         ["utf8mb4_0900_ai_ci"], {"utf8mb4_0900_ai_ci": "utf8mb4_unicode_520_ci"},
                         Sample(MIB, 0.1))
    box = MailboxMeasure(1, "info@shop.si", "imap.example.net",
                         [FolderMeasure("INBOX", "INBOX", 4, MIB, MIB // 2)], 4, MIB, MIB // 2, [],
                         Sample(MIB, 0.1, 0.01))
    return Measures(files, db, [box], [])


@dataclass
class FakeOldProvider:
    """Meets `ports.MigrationSource`: returns ``measures`` (or raises ``error``), records
    what it was given."""

    measures: Measures = field(default_factory=lambda: _measures(10 * MIB))
    error: Exception | None = None
    calls: list[tuple[dict[str, Any], Limits]] = field(default_factory=list)

    def measure(self, values: Any, *, allow_plain_ftp: bool, skip_cert_verify: bool,
                limits: Limits) -> Measures:
        self.calls.append((dict(values), limits))
        if self.error is not None:
            raise self.error
        return self.measures


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


@pytest.fixture
def old() -> FakeOldProvider:
    return FakeOldProvider()


@pytest.fixture
def world(db_url: str, tmp_path: Path, mailer: MemoryMailer, old: FakeOldProvider) -> World:
    settings = make_settings(tmp_path, db_url, 25, line_kinds="hosting,migration",
                             public_base_url="https://pages.provider.example/",
                             migration_cap_bytes=50 * MIB, ops_email="ops@provider.example")
    w = make_world(settings, hosting=FakeHosting(), mailer=mailer, old_provider=old)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    return w


def _run(world: World) -> None:
    """Run the queued survey only (the copy chain a fitting survey plans is
    test_migration_copy_steps.py's subject)."""
    world.runner.dispatch()
    for key in [k for k in world.queue.keys if k.endswith("/migration.survey")]:
        world.queue.keys.remove(key)
        world.runner.run_step(key)


def _row(world: World, sid: int) -> Migration:
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        s.expunge(row)
        return row


def test_the_source_arriving_plans_the_survey_after_the_intake_and_it_fits(
        world: World, old: FakeOldProvider, mailer: MemoryMailer) -> None:
    order_id, sid = _paid(world)
    assert "migration.survey" not in world.steps(order_id)  # no source yet: nothing to survey
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    step = world.steps(order_id)["migration.survey"]
    assert step.deps == [world.steps(order_id)["migration.intake"].key]
    _run(world)
    step = world.steps(order_id)["migration.survey"]
    assert step.state == "done" and step.result["state"] == "surveyed"
    # the adapter got the sealed source and the caps from the settings
    values, limits = old.calls[0]
    assert values["db_password"] == SECRETS[1]
    assert (limits.cap_bytes, limits.cap_seconds, limits.max_message_bytes) == (50 * MIB, 3600.0, 50 * MIB)
    row = _row(world, sid)
    assert row.state == "surveyed" and row.survey is not None and row.survey["fits"]
    assert row.survey["total_bytes"] == 10 * MIB + 5 * MIB + MIB
    mapped = "database: collation utf8mb4_0900_ai_ci is mapped to utf8mb4_unicode_520_ci"
    assert mapped in row.survey["warnings"]
    assert all(s not in json.dumps(row.survey) for s in SECRETS)
    assert not [m for m in mailer.sent if "free limits" in m["subject"] or "omejitve" in m["subject"]]
    # run again: observed, not measured twice
    with transaction(world.factory) as s:
        s.execute(Step.__table__.update().where(Step.key == step.key).values(state="queued"))
    world.runner.run_step(step.key)
    assert len(old.calls) == 1


def test_over_the_cap_the_migration_stops_and_customer_and_ops_are_mailed_once(
        world: World, old: FakeOldProvider, mailer: MemoryMailer, tmp_path: Path) -> None:
    old.measures = _measures(60 * MIB)
    order_id, sid = _paid(world, lang="sl")
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    _run(world)
    step = world.steps(order_id)["migration.survey"]
    assert step.state == "done" and step.result["state"] == "over_cap"
    row = _row(world, sid)
    assert row.state == "over_cap" and not row.survey["fits"]
    assert row.survey["blocking"][0].startswith("data: 66.0 MB is over the 50.0 MB cap (files 60.0 MB")
    customer = [m for m in mailer.sent if "presega brezplačne omejitve" in m["subject"]]
    ops = [m for m in mailer.sent if "stopped at the survey" in m["subject"]]
    assert len(customer) == 1 and len(ops) == 1
    assert customer[0]["to"] != "ops@provider.example" and ops[0]["to"] == "ops@provider.example"
    assert "66.0 MB" in customer[0]["text"] and "50.0 MB" in customer[0]["text"]
    assert row.survey["blocking"][0] in ops[0]["text"]
    assert f"provisioner migration override {sid}" in ops[0]["text"]
    assert all(s not in m["text"] for m in customer + ops for s in SECRETS)
    # a re-run sends nothing twice
    with transaction(world.factory) as s:
        s.execute(Step.__table__.update().where(Step.key == step.key).values(state="queued"))
    world.runner.run_step(step.key)
    assert len([m for m in mailer.sent if "omejitve" in m["subject"] or "survey" in m["subject"]]) == 2
    # ops go on with a recorded reason (CLI), audited; a second override has nothing to override
    env = settings_env(world.app.settings)
    runner = CliRunner()
    res = runner.invoke(cli_app, ["migration", "override", str(sid), "--reason", "ok"], env=env)
    assert res.exit_code == 2 and "5 to 500" in res.output
    res = runner.invoke(cli_app, ["migration", "override", str(sid), "--reason",
                                  "customer pays the second hour", "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["state"] == "surveyed"
    res = runner.invoke(cli_app, ["migration", "override", str(sid), "--reason", "once more please"], env=env)
    assert res.exit_code == 2 and "not over_cap" in res.output
    row = _row(world, sid)
    assert (row.override_reason, row.override_by[:4]) == ("customer pays the second hour", "cli:")
    with transaction(world.factory) as s:
        audit = s.execute(select(AuditEntry).where(AuditEntry.action == "migration.override")).scalar_one()
        assert audit.detail["reason"] == "customer pays the second hour"
        assert audit.detail["blocking"] == row.survey["blocking"]
    shown = runner.invoke(cli_app, ["migration", "show", str(sid), "--json"], env=env)
    data = json.loads(shown.output)
    assert data["override"]["reason"] == "customer pays the second hour" and data["survey"]["total_bytes"]


def test_a_refused_login_is_recorded_with_its_credential_and_a_new_source_surveys_again(
        world: World, old: FakeOldProvider) -> None:
    old.error = CredentialRefused("mailbox2", "imaps ana@shop.si@imap.example.net:993")
    order_id, sid = _paid(world)
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    _run(world)
    step = world.steps(order_id)["migration.survey"]
    assert step.state == "done" and step.result == {"changed": True, "state": "source_refused",
                                                    "refused": "mailbox2"}
    row = _row(world, sid)
    assert row.state == "source_refused" and row.survey["refused"] == "mailbox2"
    assert "refused the mailbox2 login" in row.survey["error"]
    # the customer corrects the password: the survey runs again for the new source
    old.error = None
    sources.record_source(world.factory, world.app.settings, sid, {**FORM, "mail2_password": "New-pass-99x"},
                          "cli:ops", datetime.now(UTC))
    assert world.steps(order_id)["migration.survey"].state == "pending"
    _run(world)
    assert world.steps(order_id)["migration.survey"].result["state"] == "surveyed"
    assert old.calls[-1][0]["mail2_password"] == "New-pass-99x"
    assert _row(world, sid).state == "surveyed"


def test_the_cli_survey_prints_the_verdict(world: World, old: FakeOldProvider,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, sid = _paid(world)
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    # the CLI builds its own wiring (the real adapter): hand it this test's fake
    monkeypatch.setattr("provisioner.bootstrap.OldProvider", lambda *a, **k: old)
    env = settings_env(world.app.settings)
    res = CliRunner().invoke(cli_app, ["migration", "survey", str(sid)], env=env)
    assert res.exit_code == 0, res.output
    assert "surveyed (fits the caps)" in res.output
    assert "not copied: files: symlink escape -> /etc (not followed)" in res.output
    assert all(s not in res.output for s in SECRETS)
