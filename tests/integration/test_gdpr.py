"""GDPR in full (issue 17, item 10): erasure removes the domain records' manager and payer
and the personal details in audit entries, keeping the accounting with its legal basis;
the export holds the domain records and the payment notifications without other people's
data; list reads are audited like single reads; data residency is checked at start-up.
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from provisioner.api.app import create_app
from provisioner.cli import app
from provisioner.cli.serve import started
from provisioner.config import load_settings
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.residency import parse_allowed
from provisioner.errors import ConfigurationError, InvalidInput
from provisioner.pipeline.usecases import gdpr, reads
from provisioner.pipeline.usecases.residency import check_residency
from provisioner.store.audit import ERASED, audit
from provisioner.store.db import session_factory, transaction
from provisioner.store.domains import DomainRecord
from provisioner.store.hosting import HostingNode, add_node
from provisioner.store.models import AuditEntry, BackupHost, Contact, Service
from tests.helpers import API_TOKEN, ClockWorld, Queue, customer, make_settings, stripe_notice
from tests.helpers import make_clock_world as make_world

E = date(2027, 3, 31)
MARKO = "Marko Kovač"  # the domain's manager, another person than the customer


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> ClockWorld:
    return make_world(db_url, tmp_path, smtp_sink, E - timedelta(days=45))


def _domain_customer(world: ClockWorld) -> tuple[int, int, str]:
    """Ana with a finished .si domain whose manager is Marko, a stored payment
    notification of hers and one paid by Marko: (customer, service, proforma number)."""
    sid = world.service("domain:novak.si:1y", E)
    sv = world.get(sid)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    with transaction(world.factory) as s:
        s.execute(update(Service).where(Service.id == sid).values(state="purged"))
        s.add(Contact(customer_id=sv.customer_id, role="manager", name=MARKO, company=None,
                      email="marko@example.si", address="Celovška 2", postal_code="1000",
                      city="Ljubljana", country="SI", phone="+386.41999888"))
        s.add(DomainRecord(service_id=sid, name="novak.si", tld="si", status="expired", registrant="H1",
                           contacts={"owner": "H1", "tech": "H2"}, nameservers=["ns1.provider.example"],
                           privacy=True, manager={"name": MARKO, "email": "marko@example.si"},
                           payer={"name": "Ana Novak", "email": "ana@example.si"},
                           transfer_auth=b"sealed-code", expires_on=E, created_at=now, updated_at=now))
        number = s.execute(select(AuditEntry.detail).where(AuditEntry.action == "order.created")
                           ).scalar_one()["proforma"]
        # personal details in the audit log: about the customer's service, and elsewhere
        audit(s, "cli:ops", "service.held", "service", sid, {"reason": "Ana Novak asked to wait",
                                                             "phone": "+386.41123456"})
        audit(s, "webhook:stripe", "webhook.rejected", "webhook", "192.0.2.7",
              {"detail": "payer marko@example.si: bad signature"})
        audit(s, "cli:ops", "note.added", "note", "1", {"text": f"{MARKO} phoned"})
        audit(s, "customer:ana@example.si", "customer.login", "portal", "x", {"ok": True})
        audit(s, "cli:ops", "service.held", "service", "999", {"reason": "Bojan Zupan's site"})
    ana = replace(stripe_notice("evt_ana", "pi_ana", number, "10.00"), payer="Ana Novak",
                  raw=b'{"billing_details": {"name": "Ana Novak"}}')
    world.ingest(ana)
    world.ingest(replace(stripe_notice("evt_marko", "pi_marko", number, "10.00"), payer=MARKO,
                         raw='{"billing_details": {"name": "Marko Kovač"}}'.encode()))
    return sv.customer_id, sid, number


def test_export_holds_the_domain_records_and_the_payment_notifications(world: ClockWorld) -> None:
    cid, sid, number = _domain_customer(world)
    data = gdpr.export_customer(world.factory, cid, "ops")
    [domain] = data["domains"]
    assert domain["name"] == "novak.si" and domain["service"] == sid
    assert domain["manager"]["name"] == MARKO and domain["payer"]["email"] == "ana@example.si"
    assert "transfer_auth" not in domain and "sealed-code" not in json.dumps(data, default=str)
    notes = {n["event_id"]: n for n in data["payment_notifications"]}
    assert set(notes) == {"evt_ana", "evt_marko"}
    assert notes["evt_ana"]["payer"] == "Ana Novak" and notes["evt_ana"]["proforma"] == number
    # someone else paid: their name is not part of Ana's export, nor any raw body
    assert MARKO not in json.dumps(data["payment_notifications"], ensure_ascii=False)
    assert notes["evt_marko"]["amount"] == "10.00" and "raw" not in notes["evt_marko"]


def test_erasure_removes_the_domain_manager_payer_and_personal_audit_details(world: ClockWorld) -> None:
    cid, sid, _number = _domain_customer(world)
    result = gdpr.erase_customer(world.factory, cid, "ops")
    assert result["erased"] and result["domains_erased"] == 1
    assert "ZDDV-1" in result["note"] and "Art. 17(3)(b)" in result["note"]
    assert "name, address and VAT id" in result["note"]
    with transaction(world.factory) as s:
        record = s.execute(select(DomainRecord)).scalar_one()
        assert (record.manager, record.payer, record.transfer_auth) == (None, None, None)
        assert (record.name, record.contacts["owner"], record.expires_on) == ("novak.si", "H1", E)
        entries = list(s.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars())
    text = json.dumps([[e.actor, e.detail] for e in entries], ensure_ascii=False)
    for person in ("Ana Novak", "ana@example.si", "+386.41123456", MARKO, "marko@example.si"):
        assert person not in text, person
    held = [e for e in entries if e.action == "service.held" and e.entity_id == str(sid)]
    assert held[0].detail == {"reason": ERASED, "phone": ERASED} and held[0].actor == "cli:ops"
    [login] = [e for e in entries if e.action == "customer.login"]
    assert login.actor == f"customer:{ERASED}"
    [other] = [e for e in entries if e.entity_id == "999"]  # another customer's entry stays
    assert other.detail == {"reason": "Bojan Zupan's site"}
    [erased] = [e for e in entries if e.action == "customer.erased"]
    assert erased.detail is not None and "ZDDV-1" in erased.detail["legal_basis"]
    assert erased.detail["audit_entries_erased"] >= 4


# -- list reads are audited like single reads ---------------------------------------------
def test_list_reads_are_audited_per_customer_shown(world: ClockWorld) -> None:
    first = world.service("hosting:mega:one.si:12m", E)
    second = world.service("hosting:mega:two.si:12m", E, who=customer("en", email="bo@example.si"))
    customers = {world.get(first).customer_id, world.get(second).customer_id}

    def reads_by(actor: str) -> list[AuditEntry]:
        with transaction(world.factory) as s:
            rows = list(s.execute(select(AuditEntry).where(AuditEntry.actor == actor,
                                                           AuditEntry.action == "customer.read")).scalars())
            s.expunge_all()
            return rows

    assert len(reads.services(world.factory, "cli:a")) == 2
    assert {int(e.entity_id or 0) for e in reads_by("cli:a")} == customers
    assert {(e.detail or {}).get("via") for e in reads_by("cli:a")} == {"services list"}
    assert len(reads.proformas(world.factory, "cli:b", state="paid")) == 2
    assert {int(e.entity_id or 0) for e in reads_by("cli:b")} == customers
    assert reads_by("cli:b")[0].detail == {"via": "proformas list (state=paid)"}
    reads.payments(world.factory, "cli:c", False)
    reads.invoices(world.factory, "cli:d")
    reads.jobs(world.factory, "cli:e", None, False)
    # nothing shown, nothing read: only rows that name a customer leave a trail
    assert reads_by("cli:c") == reads_by("cli:d") == []
    # the customer's export lists who read their data through a list
    export = gdpr.export_customer(world.factory, world.get(first).customer_id, "ops")
    assert {"cli:a", "cli:b"} <= {a["actor"] for a in export["access_log"]}


def test_the_cli_lists_are_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   smtp_sink: SmtpSink) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PROVISIONER_SMTP_PORT", str(smtp_sink.port))
    monkeypatch.setenv("PROVISIONER_LINE_KINDS", "")
    cli = CliRunner()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(customer()))
    cid = json.loads(cli.invoke(app, ["customer", "add", str(path), "--json"]).stdout)["id"]
    made = cli.invoke(app, ["order", "create", "--customer", str(cid), "--item", "hosting:mega:ex.si"])
    assert made.exit_code == 0, made.stderr
    for args in (["services", "list"], ["proforma", "list"], ["jobs"]):
        listed = cli.invoke(app, [*args, "--json"])
        assert listed.exit_code == 0, (args, listed.stderr)
    with transaction(session_factory(load_settings().effective_database_url)) as s:
        vias = set(s.execute(select(AuditEntry.detail["via"].as_string())
                             .where(AuditEntry.action == "customer.read")).scalars())
    assert {"services list", "proformas list"} <= vias


# -- data residency ---------------------------------------------------------------------
def test_allowed_countries_reads_eu_as_the_eea() -> None:
    allowed = parse_allowed("SI,EU")
    assert {"SI", "DE", "AT", "NO", "IS"} <= allowed and not {"US", "CH", "GB"} & allowed
    assert parse_allowed("si, ch") == {"SI", "CH"}
    for bad in ("", "SI,U.S.", "Slovenia"):
        with pytest.raises(InvalidInput):
            parse_allowed(bad)


def test_start_up_refuses_a_node_an_smtp_relay_or_a_backup_target_outside(
        db_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, db_url, 25)
    factory = session_factory(settings.effective_database_url)
    with transaction(factory) as s:
        add_node(s, "lj1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=1000, country="SI")
        add_node(s, "old1", "192.0.2.11", capacity_accounts=10, capacity_disk_mb=1000)  # no country
    check_residency(settings, factory)  # SI, and a node without a country counts as the default (SI)
    with transaction(factory) as s:
        add_node(s, "fra1", "192.0.2.12", capacity_accounts=10, capacity_disk_mb=1000, country="de")
        assert s.execute(select(HostingNode.country).where(HostingNode.name == "fra1")).scalar_one() == "DE"
    check_residency(settings, factory)  # Germany is in the EU
    with pytest.raises(ConfigurationError, match="node fra1 is in DE"):
        check_residency(settings.with_overrides(allowed_countries="SI"), factory)
    with transaction(factory) as s:
        add_node(s, "nyc1", "192.0.2.13", capacity_accounts=10, capacity_disk_mb=1000, country="US")
    with pytest.raises(ConfigurationError, match="node nyc1 is in US") as refused:
        check_residency(settings, factory)
    assert "lj1" not in str(refused.value)
    with transaction(factory) as s:
        s.execute(update(HostingNode).where(HostingNode.name == "nyc1").values(country="AT"))
    with pytest.raises(ConfigurationError, match="smtp_relay_country"):
        check_residency(settings.with_overrides(smtp_relay_country="US"), factory)
    with pytest.raises(ConfigurationError, match="backup target b2 is in CH"):
        check_residency(settings, factory, extra=[("backup target b2", "CH")])
    with transaction(factory) as s:  # a backup host (issue 16) in Switzerland
        s.add(BackupHost(name="zrh1", address="192.0.2.20", ssh_port=22, known_hosts="", root="/srv/restic",
                         throwaway=False, country="CH", created_at=datetime.now(UTC)))
    with pytest.raises(ConfigurationError, match="backup host zrh1 is in CH"):
        check_residency(settings, factory)
    check_residency(settings.with_overrides(allowed_countries="EU,CH"), factory)
    with pytest.raises(ConfigurationError, match="allowed_countries"):
        check_residency(settings.with_overrides(allowed_countries=""), factory)
    with pytest.raises(InvalidInput):
        with transaction(factory) as s:
            add_node(s, "bad1", "192.0.2.14", capacity_accounts=1, capacity_disk_mb=1, country="Slovenia")


def test_serve_worker_and_beat_start_only_inside_the_allowed_countries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    cli = CliRunner()
    added = cli.invoke(app, ["nodes", "add", "nyc1", "--address", "192.0.2.13", "--country", "US", "--json"])
    assert added.exit_code == 0 and json.loads(added.stdout)["country"] == "US"
    with pytest.raises(ConfigurationError, match="node nyc1 is in US"):
        started()
    for command in ("worker", "beat"):  # refused before Celery is exec'd
        refused = cli.invoke(app, [command])
        assert refused.exit_code == 1 and "node nyc1 is in US" in refused.stderr
    default = cli.invoke(app, ["nodes", "add", "lj1", "--address", "192.0.2.10", "--json"])
    assert json.loads(default.stdout)["country"] == "SI"  # the setting node_country_default
    monkeypatch.setenv("PROVISIONER_ALLOWED_COUNTRIES", "SI,EU,US")
    assert started().settings.allowed_countries == "SI,EU,US"
    monkeypatch.setenv("PROVISIONER_MAINTENANCE_TIMEZONE", "Europe/Atlantis")
    with pytest.raises(ConfigurationError, match="maintenance_timezone"):
        started()


@pytest.mark.anyio
async def test_the_ops_api_lists_are_audited(world: ClockWorld) -> None:
    sid = world.service("hosting:mega:api.si:12m", E)
    cid = world.get(sid).customer_id
    settings = world.app.settings.with_overrides(api_token=API_TOKEN)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    transport = httpx.ASGITransport(app=create_app(settings, enqueue=Queue()))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.get("/services")).status_code == 401  # no token, no list
        for path in ("/services", "/proformas?state=paid", "/payments", "/invoices", "/jobs"):
            got = await client.get(path, headers=auth)
            assert got.status_code == 200, (path, got.text)
        assert [p["customer"] for p in (await client.get("/proformas", headers=auth)).json()] == [cid]
    with transaction(world.factory) as s:
        rows = s.execute(select(AuditEntry.actor, AuditEntry.entity_id, AuditEntry.detail)
                         .where(AuditEntry.action == "customer.read")).all()
    vias = {(d or {}).get("via") for actor, entity, d in rows
            if actor.startswith("api:") and entity == str(cid)}
    assert {"services list", "proformas list (state=paid)", "proformas list"} <= vias
