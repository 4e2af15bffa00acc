"""Ordering a free migration and taking in the old provider's access (issue 13, items 1-2):
the line is refused without its hosting line, paying plans ``migration.intake`` after
``hosting.account``, the customer gets a one-time link, the source is sealed with the key
outside the database (no plaintext in the database's bytes), a link is used once, ops give
the same through the CLI, and a wipe (also of abandoned sources) is audited."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from provisioner.cli import app as cli_app
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.migration import sources
from provisioner.pipeline.capabilities.migration.intake import SourceInvalid
from provisioner.pipeline.onetime import LinkUnusable
from provisioner.store.db import transaction
from provisioner.store.hosting import add_node
from provisioner.store.models import (
    AuditEntry,
    Migration,
    MigrationLink,
    Proforma,
    ProformaLine,
    Service,
    Step,
)
from tests.helpers import MemoryMailer, World, customer, make_settings, make_world, settings_env
from tests.unit.pipeline.fakes import FakeHosting

SECRETS = ("old-Ftp-pass-7Qx9", "db-Pass-Zk42-old", "imap-pw-Mb1-old", "imap-pw-Mb2-old")
FORM = {
    "files_protocol": "sftp",
    "files_host": "old.example.net",
    "files_port": "2222",
    "files_user": "olduser",
    "files_password": SECRETS[0],
    "files_path": "public_html",
    "db_via": "ssh",
    "db_host": "localhost",
    "db_name": "shop_db",
    "db_user": "shop",
    "db_password": SECRETS[1],
    "mail1_host": "imap.example.net",
    "mail1_user": "info@shop.si",
    "mail1_password": SECRETS[2],
    "mail2_host": "imap.example.net",
    "mail2_port": "993",
    "mail2_user": "ana@shop.si",
    "mail2_password": SECRETS[3],
}


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


@pytest.fixture
def world(db_url: str, tmp_path: Path, mailer: MemoryMailer) -> World:
    settings = make_settings(
        tmp_path,
        db_url,
        25,
        line_kinds="hosting,migration",
        public_base_url="https://pages.provider.example/",
    )
    w = make_world(settings, hosting=FakeHosting(), mailer=mailer)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    return w


def _paid(world: World, domain: str = "shop.si", *, lang: str = "sl", brand: str = "fcb") -> tuple[int, int]:
    order = world.order([f"hosting:giga5:{domain}", f"migration:{domain}"], who=customer(lang), brand=brand)
    p = order["proforma"]
    with transaction(world.factory) as s:  # the migration line is free
        lines = s.execute(
            select(ProformaLine.description, ProformaLine.gross)
            .join(Proforma)
            .where(Proforma.number == p["number"])
        ).all()
    assert [g for d, g in lines if d.startswith("Migration")] == [Decimal("0.00")], lines
    assert world.pay(p["number"], p["gross"], f"txn-{domain}").settled
    world.runner.dispatch(order["order"])
    for _ in range(20):
        if not world.queue.keys:
            break
        world.drain()
    with transaction(world.factory) as s:
        sid = s.execute(
            select(Service.id).where(Service.kind == "migration", Service.name == domain)
        ).scalar_one()
    return int(order["order"]), sid


def _token(mailer: MemoryMailer) -> str:
    mails = [m for m in mailer.sent if "/migration/" in m["text"]]
    assert len(mails) == 1, [m["subject"] for m in mailer.sent]
    match = re.search(r"https://pages\.provider\.example/migration/([A-Za-z0-9_-]{40,})", mails[0]["text"])
    assert match, mails[0]["text"]
    return match.group(1)


@pytest.mark.parametrize(
    "items",
    [
        ["migration:shop.si"],
        ["hosting:giga5:other.si", "migration:shop.si"],
        ["domain:shop.si:1y", "migration:shop.si"],
    ],
)
def test_a_migration_without_a_new_hosting_line_for_its_site_is_refused(
    world: World, items: list[str]
) -> None:
    with pytest.raises(InvalidInput, match="needs a new hosting line for shop.si"):
        world.order(items)


def test_paying_plans_the_intake_after_the_account_and_mails_a_one_time_link(
    world: World, mailer: MemoryMailer
) -> None:
    order_id, sid = _paid(world, lang="sl")
    steps = world.steps(order_id)
    intake = steps["migration.intake"]
    assert intake.state == "done"
    assert steps["hosting.account"].key in intake.deps
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        service = s.get(Service, sid)
        assert service is not None
        # ordered and recorded; the withdrawal price stored with it; no term, no clock
        assert (row.state, row.charge_gross, row.domain, row.migration_used_at) == (
            "awaiting_source",
            Decimal("49.00"),
            "shop.si",
            None,
        )
        assert (service.state, service.expires_on, service.clock_on) == ("active", None, None)
    mail = next(m for m in mailer.sent if "/migration/" in m["text"])
    assert mail["subject"].startswith("FCB: vaša brezplačna selitev na shop.si")
    assert "podpora@fcb.si" in mail["text"]
    _token(mailer)
    # running the step again issues no second link and no second mail
    with transaction(world.factory) as s:
        s.execute(text("UPDATE steps SET state='queued' WHERE kind='migration.intake'"))
    assert world.runner.run_step(intake.key).status == "done"
    assert len([m for m in mailer.sent if "/migration/" in m["text"]]) == 1
    with transaction(world.factory) as s:
        assert len(s.execute(select(MigrationLink)).scalars().all()) == 1


def test_the_form_seals_the_source_once_and_no_plaintext_reaches_the_database(
    world: World, mailer: MemoryMailer, db_url: str, tmp_path: Path
) -> None:
    _, sid = _paid(world, lang="en", brand="iserver")
    token = _token(mailer)
    assert next(m for m in mailer.sent if "/migration/" in m["text"])["subject"].startswith(
        "iSERVER: your free"
    )
    now = datetime.now(UTC)
    settings = world.app.settings
    # a bad field: nothing stored, the link still works
    with pytest.raises(SourceInvalid) as bad:
        sources.submit_intake(world.factory, settings, token, {**FORM, "files_port": "70000"}, now)
    assert bad.value.errors == {"files_port": "port"}
    assert all(s not in str(bad.value) for s in SECRETS)
    summary = sources.submit_intake(world.factory, settings, token, FORM, now)
    assert summary["files"] == {
        "protocol": "sftp",
        "host": "old.example.net",
        "port": 2222,
        "user": "olduser",
        "path": "public_html",
        "auth": "password",
    }
    assert [b["user"] for b in summary["mailboxes"]] == ["info@shop.si", "ana@shop.si"]
    with pytest.raises(LinkUnusable) as used:
        sources.submit_intake(world.factory, settings, token, FORM, now)
    assert used.value.reason == "used"
    # the steps that use it open it with the key from key_dir
    opened = sources.open_source(world.factory, settings, sid)
    assert opened.values["db_password"] == SECRETS[1] and opened.values["files_port"] == 2222
    assert (settings.effective_key_dir / sources.KEY_FILE).is_file()
    _no_plaintext(world, db_url)
    shown = sources.show(world.factory, sid, now)
    assert shown["state"] == "source_received" and shown["sealed"] and shown["link"]["state"] == "used"
    assert all(s not in json.dumps(shown) for s in SECRETS)


def _no_plaintext(world: World, db_url: str) -> None:
    if db_url.startswith("sqlite"):
        db = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
        for secret in SECRETS:
            assert secret.encode() not in raw
        assert b"old.example.net" in raw  # the summary is there: the check reads the right file
        return
    rows: list[str] = []
    with transaction(world.factory) as s:
        tables = list(
            s.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
        )
        for table in tables:
            query = f'SELECT x::text FROM "{table}" x'  # noqa: S608 - names from pg_tables
            rows += [str(r) for r in s.execute(text(query)).scalars()]
    dump = "\n".join(rows)
    assert "old.example.net" in dump  # the summary is there: the check reads the right rows
    for secret in SECRETS:
        assert secret not in dump


def test_ops_give_the_source_from_a_file_and_see_its_state(
    world: World, mailer: MemoryMailer, tmp_path: Path
) -> None:
    _, sid = _paid(world)
    env = settings_env(world.app.settings)
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"files": {"protocol": "ftp", "host": "old.example.net", "user": "u", "password": SECRETS[0]}}
        )
    )
    res = runner.invoke(cli_app, ["migration", "source", str(sid), str(bad)], env=env)
    assert res.exit_code == 2, res.output
    assert "plain" in res.output and SECRETS[0] not in res.output
    good = tmp_path / "source.json"
    good.write_text(
        json.dumps(
            {
                "files": {"protocol": "ftp", "host": "203.0.113.7", "user": "u", "password": SECRETS[0]},
                "mailboxes": [{"host": "imap.example.net", "user": "info@shop.si", "password": SECRETS[2]}],
                "allow_plain_ftp": True,
                "skip_cert_verify": True,
            }
        )
    )
    res = runner.invoke(cli_app, ["migration", "source", str(sid), str(good), "--remove", "--json"], env=env)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["files"]["port"] == 21 and data["flags"] == {
        "allow_plain_ftp": True,
        "skip_cert_verify": True,
    }
    assert len(data["warnings"]) == 2
    assert not good.exists()
    res = runner.invoke(cli_app, ["migration", "show", str(sid), "--json"], env=env)
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["state"] == "source_received" and shown["source_by"].startswith("cli:")
    assert shown["link"]["state"] == "open"  # ops gave it; the customer's link is still there
    assert all(s not in res.output for s in SECRETS)
    res = runner.invoke(cli_app, ["migration", "show", "999999"], env=env)
    assert res.exit_code == 2


def test_a_wipe_blanks_the_source_and_is_audited(world: World, mailer: MemoryMailer) -> None:
    _, sid = _paid(world)
    token = _token(mailer)
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    assert sources.wipe_source(
        world.factory, sid, reason="done", actor="system:pipeline", now=datetime.now(UTC)
    )
    assert not sources.wipe_source(
        world.factory, sid, reason="done", actor="system:pipeline", now=datetime.now(UTC)
    )
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        assert (row.state, row.sealed, row.wipe_reason) == ("wiped", b"-", "done")
        audits = (
            s.execute(select(AuditEntry).where(AuditEntry.action == "migration.source_wiped")).scalars().all()
        )
        assert [(a.actor, a.entity_id, a.detail) for a in audits] == [
            ("system:pipeline", str(sid), {"reason": "done", "had_source": True})
        ]
    with pytest.raises(InvalidInput, match="no source"):
        sources.open_source(world.factory, world.app.settings, sid)
    with pytest.raises(LinkUnusable):  # the intake link is gone with it
        sources.submit_intake(world.factory, world.app.settings, token, FORM, datetime.now(UTC))
    with pytest.raises(InvalidInput, match="has ended"):
        sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))


def test_sources_abandoned_for_the_set_days_are_wiped_by_the_beat(world: World, mailer: MemoryMailer) -> None:
    _, old = _paid(world, "old-shop.si")
    _, fresh = _paid(world, "new-shop.si")
    now = datetime.now(UTC)
    days = world.app.settings.migration_abandon_days
    for sid in (old, fresh):
        sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", now)
    with transaction(world.factory) as s:
        s.execute(
            text("UPDATE migrations SET updated_at = :t WHERE service_id = :s"),
            {"t": now - timedelta(days=days, minutes=1), "s": old},
        )
    assert sources.wipe_abandoned(world.factory, now, days) == 1
    assert sources.wipe_abandoned(world.factory, now, days) == 0
    states: dict[int, Any] = {}
    with transaction(world.factory) as s:
        for sid in (old, fresh):
            states[sid] = s.execute(
                select(Migration.state, Migration.wipe_reason).where(Migration.service_id == sid)
            ).one()
        steps = s.execute(select(Step.kind)).scalars().all()
    assert tuple(states[old]) == ("wiped", "abandoned") and tuple(states[fresh]) == ("source_received", None)
    assert "migration.intake" in steps


def test_the_beat_wipes_abandoned_sources_daily(
    world: World, mailer: MemoryMailer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, sid = _paid(world)
    settings = world.app.settings
    now = datetime.now(UTC)
    sources.record_source(world.factory, settings, sid, FORM, "cli:ops", now)
    with transaction(world.factory) as s:
        s.execute(
            text("UPDATE migrations SET updated_at = :t WHERE service_id = :s"),
            {"t": now - timedelta(days=settings.migration_abandon_days + 1), "s": sid},
        )
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", settings.effective_database_url)
    from provisioner import tasks  # imported here: its Celery app reads the environment above

    tasks.provisioner.cache_clear()
    tasks._settings.cache_clear()
    try:
        entry = tasks.make_celery(settings).conf.beat_schedule["wipe_migrations"]
        assert entry["task"] == "provisioner.wipe_migrations" == tasks.wipe_migrations.name
        assert entry["schedule"].hour == {0} and len(entry["schedule"].minute) == 1  # daily
        assert tasks.wipe_migrations()["wiped"] == 1
        assert tasks.wipe_migrations()["skipped"]  # once a day, however many beats send it
    finally:
        tasks.provisioner.cache_clear()
        tasks._settings.cache_clear()
    with transaction(world.factory) as s:
        assert s.execute(select(Migration.sealed).where(Migration.service_id == sid)).scalar_one() == b"-"
