"""The migration's cut-over against our real DNS server (Knot, issue 13 item 7), on SQLite
and PostgreSQL: where our zone serves the domain, the survey lowers the TTL of its A/AAAA/MX;
after a verify without differences a final delta sync runs (files and mail, not the
database) and then the site's A (the domain, www, mail.<domain>) and MX point at our node,
the old AAAA is gone, and the old values are kept in the report for a rollback. The
copier is the journal tests' fake (tests/integration/test_migration_copy_steps.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from sqlalchemy import select

from provisioner.adapters.dns import DnsServer
from provisioner.domain.dns_records import HostedZone, hosting_zone_records
from provisioner.pipeline.capabilities.migration import sources
from provisioner.store.db import transaction
from provisioner.store.hosting import add_node
from provisioner.store.models import Migration
from tests.helpers import MemoryMailer, World, make_settings, make_world
from tests.integration.test_migration_copy_steps import Clock, FakeCopier
from tests.integration.test_migration_intake import FORM, _paid
from tests.integration.test_migration_survey_step import FakeOldProvider, _measures
from tests.unit.pipeline.fakes import FakeHosting

OLD_V4, OLD_V6, NODE = "198.51.100.7", "2001:db8::7", "192.0.2.10"


def _ttl(server: DnsServer, name: str, rtype: str) -> int:
    q = dns.message.make_query(name, rtype)
    resp = dns.query.udp(q, server.server, port=server.port, timeout=5)
    want = dns.rdatatype.from_text(rtype)
    return next(r.ttl for r in resp.answer if r.rdtype == want)


@pytest.fixture
def domain(dns_server: DnsServer) -> str:
    """The customer's domain, its zone on our server still pointing at the old provider."""
    name = f"cut{uuid.uuid4().hex[:8]}.si"
    dns_server.ensure_zone(name, hosting_zone_records(HostedZone(
        name, ("ns1.provider.example",), "hostmaster@provider.example", (OLD_V4,), (OLD_V6,),
        mail_host="mx.old.example")))
    return name


def test_the_ttl_is_lowered_at_survey_and_the_cutover_switches_to_our_node_keeping_the_old_values(
        db_url: str, tmp_path: Path, dns_server: DnsServer, domain: str) -> None:
    clock = Clock()
    copier = FakeCopier(clock)
    mailer = MemoryMailer()
    settings = make_settings(tmp_path, db_url, 25, line_kinds="hosting,migration",
                             public_base_url="https://pages.provider.example/",
                             migration_cap_bytes=50 * 1024 * 1024, migration_cutover_ttl=120)
    world: World = make_world(settings, now=clock, hosting=FakeHosting(), mailer=mailer,
                              old_provider=FakeOldProvider(_measures(1024)), migration_copier=copier,
                              dns=dns_server)
    with transaction(world.factory) as s:
        add_node(s, "n1", NODE, capacity_accounts=10, capacity_disk_mb=100_000)
    order_id, sid = _paid(world, domain, lang="en")
    assert _ttl(dns_server, domain, "A") == 3600
    sources.record_source(world.factory, settings, sid, FORM, "cli:ops", datetime.now(UTC))
    world.runner.dispatch()
    survey = world.steps(order_id)["migration.survey"].key
    world.queue.keys.remove(survey)
    world.runner.run_step(survey)
    # surveyed: the TTL is short now, the values are still the old provider's
    for name, rtype in ((domain, "A"), (domain, "AAAA"), (domain, "MX"), (f"www.{domain}", "A")):
        assert _ttl(dns_server, name, rtype) == 120
    assert dns_server.lookup(domain, "A") == {OLD_V4}
    for _ in range(20):
        world.runner.dispatch()
        world.drain(retry=True)
    assert world.steps(order_id)["migration.wipe"].state == "done"
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        cut = dict(row.cutover or {})
    assert cut["state"] == "cut_over", cut
    assert cut["ttl_lowered"]["values"][f"{domain} A"] == [OLD_V4]
    # the old values, for a rollback
    assert cut["old"][f"{domain} A"] == [OLD_V4] and cut["old"][f"{domain} AAAA"] == [OLD_V6]
    assert cut["old"][f"{domain} MX"] == ["10 mx.old.example."]
    # the final delta sync: files and both mailboxes again, the database not
    delta = [j["part"] for j in copier.jobs if j["mode"] == "copy"][4:]
    assert delta == ["files", "mailbox1", "mailbox2"] and set(cut["delta"]) == set(delta)
    # switched: our node serves the site and the mail; no old address is left
    for name in (domain, f"www.{domain}", f"mail.{domain}"):
        assert dns_server.lookup(name, "A") == {NODE}
        assert dns_server.lookup(name, "AAAA") == set()
    assert dns_server.lookup(domain, "MX") == {f"10 mail.{domain}."}
    assert f"{domain} AAAA" in cut["removed"]
    # the verify fetched the old site at the domain's address as our zone had it
    assert [a for a, _ in copier.fetched] == [NODE, OLD_V4]
    mails = [m for m in mailer.sent if "now points to your new hosting" in m["subject"]]
    assert len(mails) == 1 and OLD_V4 in mails[0]["text"] and NODE in mails[0]["text"]
