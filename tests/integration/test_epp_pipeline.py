"""Issue 6 Must-hold, through the pipeline: paid order -> domain steps -> the sandbox
registry (a real TLS EPP server on 127.0.0.1, in a thread), on SQLite and PostgreSQL.

* a free .si name ends at the sandbox with our name servers, the right contacts and an
  expiry one period out;
* a taken name: the line is failed once (no retry loop), ops alerted, the order flagged
  for refund, the customer told;
* the connection dropped after the create command was sent: the step completes exactly once;
* transfer with a wrong auth code: a clear error; with the right one the domain is ours
  and its expiry is extended;
* hostile names: clear errors before any EPP traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisioner.adapters.payments import PaymentNotice
from provisioner.adapters.registry import EppClient, ObjectNotFound
from provisioner.adapters.registry.profiles import RegistryContact
from provisioner.devstack.registry import Sandbox, run_sandbox
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.lifecycle import add_period
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities import domains
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import ingest
from provisioner.store.db import transaction
from provisioner.store.domains import DomainRecord
from provisioner.store.models import Service, Step
from provisioner.timeutil import utcnow
from tests.helpers import World, customer, make_settings, wire

CUSTOMER = customer()
OUR_NS = ["ns1.provider.example", "ns2.provider.example"]


@dataclass
class EppWorld(World):
    sandbox: Sandbox | None = None
    sink: SmtpSink | None = None
    client: EppClient | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def drain(self, limit: int = 100, *, retry: bool = True) -> list[str]:
        """Run queued steps; a step the runner retries goes back on the queue (the backoff
        is the runner's business, not this test's)."""
        return super().drain(limit, retry=retry)

    def order(self, items: Iterable[str], *, who: dict[str, str] | None = None, brand: str = "fcb",
              discount: str | None = None, before_payment: Any = None) -> dict[str, Any]:
        factory = self.runner.factory
        customer = ops.add_customer(factory, who or CUSTOMER, "test")
        result = ops.create_order(factory, customer["id"], list(items), discount, brand, "test")
        if before_payment is not None:
            before_payment(result)
        number, gross = result["proforma"]["number"], result["proforma"]["gross"]
        notice = PaymentNotice(
            provider="stripe", event_id=f"evt_{number}", kind="payment", txn_id=f"pi_{number}",
            amount=Decimal(gross), currency="EUR", proforma=number, reference=None,
            payer="Ana Novak", occurred_at=datetime.now(UTC), raw=b"{}",
        )
        outcome = ingest(factory, notice, "test", self.app.planner)
        assert outcome.settled
        self.runner.dispatch(outcome.order_id)
        self.drain()
        return ops.show_order(factory, str(result["order"]), "test")

    def steps(self, order_id: int) -> dict[str, Step]:
        with transaction(self.runner.factory) as s:
            rows = s.execute(select(Step).where(Step.order_id == order_id)).scalars().all()
            return {r.kind: r for r in rows}

    def commands(self, key: str) -> int:
        assert self.sandbox is not None and self.sandbox.server.trace is not None
        return sum(1 for m in self.sandbox.server.trace if f"<{key}".encode() in m)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with run_sandbox(tmp_path / "registry") as sb:
        sb.server.trace = []
        yield sb


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink, sandbox: Sandbox) -> Iterator[EppWorld]:
    settings = make_settings(tmp_path, db_url, smtp_sink.port, step_max_attempts=3, line_kinds="domain",
                             **sandbox.settings_overrides())
    client = EppClient(sandbox.config())
    alerts: list[dict[str, Any]] = []
    app, queue = wire(settings, registry=client, alert=lambda **kw: alerts.append(kw))
    w = EppWorld(app, queue, sandbox, smtp_sink, client, alerts)
    yield w
    client.close()


@pytest.fixture
def other(sandbox: Sandbox) -> Iterator[EppClient]:
    """A competing registrar at the same registry."""
    with EppClient(sandbox.other_config()) as client:
        client.create_contact(RegistryContact("OTHER1", "Bojan Drugi", "bojan@example.net",
                                              "Trg 1", "Maribor", "2000", "SI", "+386.2123456"),
                              "si", "other-contact")
        yield client


def _service(order: dict[str, Any]) -> dict[str, Any]:
    (service,) = [s for s in order["services"] if s["kind"] == "domain"]
    return service


def test_free_si_name_is_registered_with_our_nameservers_contacts_and_expiry(world: EppWorld) -> None:
    order = world.order(["domain:novak.si:2y"])
    assert order["status"] == "completed", world.steps(order["id"])
    service = _service(order)
    assert service["state"] == "active"
    info = world.client.info_domain("novak.si")
    assert info.sponsor == world.sandbox.login
    assert list(info.nameservers) == OUR_NS
    assert info.expires == add_period(utcnow().date(), 24)
    assert str(service["expires_on"]) == str(info.expires)  # the registry's date, kept
    owner = world.client.info_contact(info.registrant or "")
    assert (owner.name, owner.email, owner.country) == ("Ana Novak", "ana@example.si", "SI")
    assert owner.privacy is True  # a person: WHOIS privacy by default
    assert set(info.contacts) == {"admin", "tech"}
    with transaction(world.runner.factory) as s:
        record = s.execute(select(DomainRecord)).scalar_one()
        assert record.status == "registered" and record.roid == info.roid
        assert record.manager and record.payer  # kept by us, never sent to the registry
        assert record.transfer_auth is None
    steps = world.steps(order["id"])
    assert {k: s.attempts for k, s in steps.items() if k.startswith("domain.")} == {
        "domain.register": 1, "domain.nameservers": 1}


def test_taken_name_fails_once_flags_refund_and_tells_the_customer(world: EppWorld,
                                                                   other: EppClient) -> None:
    other.create_domain("zaseden.si", 1, "OTHER1", {"tech": "OTHER1"})
    assert world.sandbox.server.trace is not None
    world.sandbox.server.trace.clear()
    order = world.order(["domain:zaseden.si:1y"])
    steps = world.steps(order["id"])
    register = steps["domain.register"]
    assert register.state == "failed" and register.attempts == 1  # no retry loop
    assert "already registered" in (register.last_error or "")
    assert order["refund_flag"] is True
    assert _service(order)["state"] == "failed"
    assert [a["step_key"] for a in world.alerts] == [register.key]
    assert world.commands("domain:create") == 0
    subjects = [str(m["Subject"]) for m in world.sink.messages()]
    assert any("zaseden.si" in s and "nismo mogli registrirati" in s for s in subjects), subjects
    assert other.info_domain("zaseden.si").sponsor == "otherreg"


def test_connection_dropped_after_create_completes_exactly_once(world: EppWorld) -> None:
    # the registry executes the create, then the connection dies before the answer; the
    # first look afterwards fails too, so the runner retries the step
    world.sandbox.faults.set(drop_after={"domain:create": 1})
    order = world.order(["domain:izgubljen.si:1y"])
    assert order["status"] == "completed", world.steps(order["id"])
    assert world.commands("domain:create") == 1
    info = world.client.info_domain("izgubljen.si")
    assert info.sponsor == world.sandbox.login and info.expires == add_period(utcnow().date(), 12)
    assert world.steps(order["id"])["domain.register"].attempts == 1


def test_lost_answer_and_failed_lookup_retry_without_a_second_create(world: EppWorld) -> None:
    world.sandbox.faults.set(drop_after={"domain:create": 1}, drop_before={"domain:info": 2})
    order = world.order(["domain:dvakrat.si:1y"])
    assert order["status"] == "completed", world.steps(order["id"])
    register = world.steps(order["id"])["domain.register"]
    assert register.attempts == 2  # retried by the runner ...
    assert world.commands("domain:create") == 1  # ... which observed first and created nothing


def _transfer_order(world: EppWorld, name: str, code: str) -> dict[str, Any]:
    def give_code(result: dict[str, Any]) -> None:
        order = ops.show_order(world.runner.factory, str(result["order"]), "test")
        domains.set_transfer_code(world.runner.factory, world.runner.settings,
                                  _service(order)["id"], code)

    return world.order([f"domain:{name}:1y:transfer"], before_payment=give_code)


def test_transfer_with_wrong_code_is_a_clear_error(world: EppWorld, other: EppClient) -> None:
    other.create_domain("selitev.si", 1, "OTHER1", {"tech": "OTHER1"})
    order = _transfer_order(world, "selitev.si", "not-the-code")
    step = world.steps(order["id"])["domain.transfer"]
    assert step.state == "failed" and step.attempts == 1
    assert "transfer (auth) code is wrong" in (step.last_error or "")
    assert order["refund_flag"] is True
    assert other.info_domain("selitev.si").sponsor == "otherreg"
    assert any("selitev.si" in str(m["Subject"]) for m in world.sink.messages())
    with transaction(world.runner.factory) as s:
        assert s.execute(select(DomainRecord.transfer_auth)).scalar_one() is None  # forgotten


def test_transfer_with_right_code_makes_it_ours_and_extends_expiry(world: EppWorld,
                                                                   other: EppClient) -> None:
    other.create_host("ns.other.example")
    other.create_domain("selitev.si", 1, "OTHER1", {"tech": "OTHER1"}, ["ns.other.example"])
    before = other.info_domain("selitev.si")
    assert before.auth_info  # .si: the registry made the code; the losing registrar reads it
    order = _transfer_order(world, "selitev.si", before.auth_info)
    assert order["status"] == "completed", world.steps(order["id"])
    after = world.client.info_domain("selitev.si")
    assert after.sponsor == world.sandbox.login
    assert before.expires is not None and after.expires == add_period(before.expires, 12)
    assert list(after.nameservers) == OUR_NS
    assert str(_service(order)["expires_on"]) == str(after.expires)
    message = other.poll_request()
    assert message is not None and message.data.get("name") == "selitev.si"
    other.poll_ack(message.id)
    with transaction(world.runner.factory) as s:
        assert s.execute(select(DomainRecord.transfer_auth)).scalar_one() is None


def test_idn_name_is_registered_in_punycode(world: EppWorld) -> None:
    order = world.order(["domain:žabica.si:1y"])
    assert order["status"] == "completed", world.steps(order["id"])
    punycode = "žabica".encode("idna").decode() + ".si"
    assert world.client.info_domain(punycode).sponsor == world.sandbox.login


@pytest.mark.parametrize(
    "name",
    ["paypal-\u0440ay.si",  # Latin + Cyrillic look-alike
     "a" * 64 + ".si",  # label over 63 characters
     "bad_name!.si", "evil.si;rm -rf", "spaces in.si", "null\x00.si"],
)
def test_hostile_names_fail_before_any_epp_traffic(world: EppWorld, name: str) -> None:
    with pytest.raises(InvalidInput):
        ops.create_order(world.runner.factory,
                         ops.add_customer(world.runner.factory, CUSTOMER, "t")["id"],
                         [f"domain:{name}:1y"], None, "fcb", "t")
    if "\x00" in name:
        return  # PostgreSQL cannot even store it; the order refused it above
    # and a step that somehow got such a name refuses it before talking to the registry
    order = world.order(["domain:dober.si:1y"])
    assert world.sandbox.server.trace is not None
    world.sandbox.server.trace.clear()
    with transaction(world.runner.factory) as s:
        service = s.get(Service, _service(order)["id"])
        assert service is not None
        service.name = name
        step = s.execute(select(Step).where(Step.order_id == order["id"],
                                            Step.kind == "domain.register")).scalar_one()
        step.state = "queued"
        key = step.key
    world.runner.run_step(key)
    with transaction(world.runner.factory) as s:
        step = s.execute(select(Step).where(Step.key == key)).scalar_one()
        assert step.state == "failed" and "domain name" in (step.last_error or "")
    assert world.sandbox.server.trace == []


def test_renew_extends_expiry_once(world: EppWorld) -> None:
    order = world.order(["domain:podaljsaj.si:1y"])
    before = world.client.info_domain("podaljsaj.si").expires
    assert before is not None
    renewal = world.order(["domain:podaljsaj.si:1y:renew"])
    assert renewal["status"] == "completed", world.steps(renewal["id"])
    after = world.client.info_domain("podaljsaj.si").expires
    assert after == add_period(before, 12)
    # re-running the renew step (a redelivered message) renews nothing twice
    step = world.steps(renewal["id"])["domain.renew"]
    with transaction(world.runner.factory) as s:
        s.execute(select(Step).where(Step.key == step.key)).scalar_one().state = "queued"
    world.runner.run_step(step.key)
    assert world.client.info_domain("podaljsaj.si").expires == after
    assert world.commands("domain:renew") == 1
    del order


def test_info_of_unknown_domain_is_not_found(world: EppWorld) -> None:
    with pytest.raises(ObjectNotFound):
        world.client.info_domain("nobody.si")


def test_poll_marks_a_domain_transferred_away(world: EppWorld, other: EppClient) -> None:
    world.order(["domain:odhaja.si:1y"])
    code = world.client.info_domain("odhaja.si").auth_info
    assert code
    other.transfer_domain("request", "odhaja.si", code)
    seen = domains.drain_poll(world.client, world.runner.factory)
    assert [m.get("transferred_away") for m in seen] == [True]
    with transaction(world.runner.factory) as s:
        record = s.execute(select(DomainRecord).where(DomainRecord.name == "odhaja.si")).scalar_one()
        assert (record.status, record.sponsor) == ("transferred_away", "otherreg")
    assert world.client.poll_request() is None


def test_the_clock_renews_a_domain_at_the_registry_once(world: EppWorld) -> None:
    from datetime import timedelta

    from provisioner.pipeline.capabilities import lifecycle as clock
    from provisioner.store.lifecycle import Renewal
    from provisioner.store.models import Proforma

    order = world.order(["domain:ura.si:1y"])
    sid = _service(order)["id"]
    expires = world.client.info_domain("ura.si").expires
    assert expires is not None
    with transaction(world.runner.factory) as s:
        assert s.get(Service, sid).expires_on == expires  # type: ignore[union-attr]
    clock.sweep(world.runner.factory, expires - timedelta(days=31))
    clock.sweep(world.runner.factory, expires - timedelta(days=30))
    clock.sweep(world.runner.factory, expires - timedelta(days=30))
    with transaction(world.runner.factory) as s:
        (number, gross), = s.execute(select(Proforma.number, Proforma.gross).join(
            Renewal, Renewal.proforma_id == Proforma.id).where(Renewal.service_id == sid)).all()
    notice = PaymentNotice(provider="stripe", event_id=f"evt_{number}", kind="payment",
                           txn_id=f"pi_{number}", amount=gross, currency="EUR", proforma=number,
                           reference=None, payer="Ana Novak", occurred_at=datetime.now(UTC),
                           raw=b"{}")
    outcome = world.ingest(notice)
    assert outcome.settled
    world.runner.dispatch(outcome.order_id)
    world.drain()
    after = world.client.info_domain("ura.si").expires
    assert after == add_period(expires, 12)  # renewed at the registry, from the old expiry
    with transaction(world.runner.factory) as s:
        service = s.get(Service, sid)
        assert service is not None and service.expires_on == after and service.state == "active"
    assert world.commands("domain:renew") == 1
