"""Issue 17 item 4, through the product against the sandbox registry (a TLS server speaking
EPP, RFC 5730-5734 and RFC 3915's restore), with the clock moved day by day and the
registry's clock moved with it:

* an unpaid .com is deleted the day before expiry, so the registry never renews it at our
  cost; the restore fee goes on its renewal proforma;
* an unpaid .at is set not to renew (its deletion scheduled at expiry) after its cut-off
  and keeps working until it expires; a payment after the cut-off is refused clearly
  (the line fails, the refund is flagged) instead of failing at the registry;
* an unpaid .eu lapses into its 40-day quarantine; a late payment (with the restore fee
  on the proforma) restores and renews it from the original expiry;
* a renewal paid in time renews at the registry and nothing is deleted;
* a .si registration never activated is withdrawn with a refund (deleted at the registry,
  which refunds it); one with our name servers counts as activated and is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.adapters.registry import RegistryContact
from provisioner.cli import app
from provisioner.devstack.registry import Sandbox, run_sandbox
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.lifecycle import add_period
from provisioner.domain.tld_profiles import RESTORE_FEE_DESCRIPTION, registry_profile
from provisioner.errors import Conflict
from provisioner.pipeline.capabilities import domains
from provisioner.store.db import transaction
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import Order, Service, Step
from tests.helpers import RegistrarWorld as Registrar
from tests.helpers import make_registrar_world

START = date(2027, 3, 1)  # the registrations; their terms end a year later


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with run_sandbox(tmp_path / "registry") as sb:
        yield sb


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink, sandbox: Sandbox) -> Iterator[Registrar]:
    w = make_registrar_world(db_url, tmp_path, smtp_sink, sandbox, START)
    yield w
    w.client.close()


def test_unpaid_com_is_deleted_before_the_registry_renews_it(world: Registrar) -> None:
    sid = world.register("neplacan.com")
    expiry = world.get(sid).expires_on
    assert expiry == add_period(START, 12)
    profile = registry_profile("com")
    world.days(expiry - timedelta(days=40), expiry - timedelta(days=2))
    assert world.client.info_domain("neplacan.com").statuses == ("ok",)  # not before its day
    world.days(expiry - timedelta(days=1), expiry + timedelta(days=3))
    step = world.step(f"service:{sid}/clock.registry_cutoff")
    assert step.state == "done" and step.params["due_on"] == profile.lapse_on(expiry).isoformat()
    info = world.client.info_domain("neplacan.com")
    assert info.in_redemption and info.expires == expiry  # deleted, never renewed
    assert world.sandbox.charges("neplacan.com", "autoRenew") == []
    assert world.sandbox.charges("neplacan.com", "renew") == []
    rec = world.record(sid)
    assert (rec.registry_action, rec.registry_action_on) == ("deleted", expiry - timedelta(days=1))
    _number, _gross, lines = world.renewal_proforma(sid)
    assert (RESTORE_FEE_DESCRIPTION, Decimal("90.00")) in lines


def test_com_paid_in_time_is_renewed_and_not_deleted(world: Registrar) -> None:
    sid = world.register("placan.com")
    expiry = world.get(sid).expires_on
    assert expiry is not None
    world.days(expiry - timedelta(days=31), expiry - timedelta(days=30))
    number, gross, _ = world.renewal_proforma(sid)
    world.at(expiry - timedelta(days=10))
    assert world.pay(number, gross, "txn-placan").settled
    world.days(expiry - timedelta(days=3), expiry + timedelta(days=2))
    assert world.client.info_domain("placan.com").expires == add_period(expiry, 12)
    assert [c["op"] for c in world.sandbox.charges("placan.com")] == ["create", "renew"]
    assert world.get(sid).expires_on == add_period(expiry, 12)
    with transaction(world.factory) as s:
        assert s.execute(select(Step).where(Step.kind == "clock.registry_cutoff")).first() is None


def test_unpaid_at_is_set_not_to_renew_and_a_late_payment_is_refused(world: Registrar) -> None:
    sid = world.register("neplacan.at")
    expiry = world.get(sid).expires_on
    assert expiry is not None
    world.days(expiry - timedelta(days=36), expiry - timedelta(days=4))
    assert world.record(sid).registry_action == "not_renewing"
    assert world.client.info_domain("neplacan.at").statuses == ("ok",)  # works until expiry
    world.days(expiry - timedelta(days=3), expiry + timedelta(days=2))
    assert world.client.info_domain("neplacan.at").in_redemption
    assert world.sandbox.charges("neplacan.at", "autoRenew") == []
    # paid after the cut-off: refused with a clear error, not a registry failure
    number, gross, lines = world.renewal_proforma(sid)
    assert not any(d == RESTORE_FEE_DESCRIPTION for d, _ in lines)  # .at: no restore
    assert world.pay(number, gross, "txn-pozno-at").settled
    step = world.step(f"service:{sid}/domain.renew")
    assert step.state == "failed"
    assert "past the registry's cut-off" in (step.last_error or "")
    with transaction(world.factory) as s:
        order = s.execute(select(Order).join(Renewal, Renewal.order_id == Order.id)
                          .where(Renewal.service_id == sid)).scalar_one()
        assert order.refund_flag
    assert world.sandbox.charges("neplacan.at", "renew") == []


def test_late_eu_payment_restores_it_with_the_fee(world: Registrar) -> None:
    sid = world.register("pozen.eu")
    expiry = world.get(sid).expires_on
    assert expiry is not None
    world.days(expiry - timedelta(days=36), expiry - timedelta(days=1))
    number, gross_before, lines = world.renewal_proforma(sid)
    assert not any(d == RESTORE_FEE_DESCRIPTION for d, _ in lines)  # in time: no fee
    world.days(expiry, expiry + timedelta(days=10))
    assert world.client.info_domain("pozen.eu").in_redemption  # the 40-day quarantine
    number, gross, lines = world.renewal_proforma(sid)
    assert (RESTORE_FEE_DESCRIPTION, Decimal("15.00")) in lines
    assert gross == gross_before + Decimal("15.00") + Decimal("10.00")  # + reactivation fee
    assert world.pay(number, gross, "txn-pozen-eu").settled
    info = world.client.info_domain("pozen.eu")
    assert not info.in_redemption and info.expires == add_period(expiry, 12)
    assert [c["op"] for c in world.sandbox.charges("pozen.eu")] == ["create", "restore", "renew"]
    service = world.get(sid)
    assert service.state == "active" and service.expires_on == add_period(expiry, 12)
    rec = world.record(sid)
    assert rec.registry_action == "restored"
    assert world.step(f"service:{sid}/domain.renew").result["restored"] == {
        "fee_on_proforma": "15.00"}


def test_never_activated_si_is_withdrawn_with_a_refund(world: Registrar) -> None:
    world.at(START)
    sid = world.service("domain:brez-ns.si:1y", add_period(START, 12))
    # the registration without name servers (as the registry got it: never activated)
    world.client.create_contact(RegistryContact("PVWD1", "Ana Novak", "ana@example.si", "S 1",
                                                "Ljubljana", "1000", "SI", "+386.41123456"),
                                "si", "contact-pw1")
    world.client.create_domain("brez-ns.si", 1, "PVWD1", {})
    activated = world.register("z-ns.si")  # through the pipeline: our name servers
    day = START + timedelta(days=10)
    world.at(day)
    assert domains.withdrawable(world.factory, world.client, sid, day).allowed
    with pytest.raises(Conflict, match="counts as activated"):
        domains.withdraw_registration(world.factory, world.client, activated, day)
    done = domains.withdraw_registration(world.factory, world.client, sid, day)
    assert done["withdrawn"] and done["refund_due"]
    assert [c["op"] for c in world.sandbox.charges("brez-ns.si")] == ["create", "refund"]
    assert world.client.check_domains(["brez-ns.si"])["brez-ns.si"].available
    rec = world.record(sid)
    assert (rec.registry_action, rec.refund_due) == ("withdrawn", True)
    with transaction(world.factory) as s:
        service = s.get(Service, sid)
        assert service is not None and service.state == "cancelled"
        order = s.get(Order, service.order_id)
        assert order is not None and order.refund_flag
    again = domains.withdraw_registration(world.factory, world.client, sid, day)
    assert not again["withdrawn"]  # safe to run twice
    assert [c["op"] for c in world.sandbox.charges("brez-ns.si")] == ["create", "refund"]


def test_withdrawal_after_the_window_is_refused(world: Registrar) -> None:
    world.at(START)
    sid = world.service("domain:prepozno.si:1y", add_period(START, 12))
    world.client.create_contact(RegistryContact("PVWD2", "Ana Novak", "ana@example.si", "S 1",
                                                "Ljubljana", "1000", "SI", "+386.41123456"),
                                "si", "contact-pw2")
    world.client.create_domain("prepozno.si", 1, "PVWD2", {})
    day = START + timedelta(days=16)  # the brand's window is 15 days
    world.at(day)
    with pytest.raises(Conflict, match="15-day window"):
        domains.withdraw_registration(world.factory, world.client, sid, day)
    assert world.sandbox.charges("prepozno.si", "refund") == []


def test_withdraw_from_the_cli(world: Registrar, monkeypatch: pytest.MonkeyPatch) -> None:
    world.at(START)
    sid = world.service("domain:ukaz.si:1y", add_period(START, 12))
    world.client.create_contact(RegistryContact("PVWD3", "Ana Novak", "ana@example.si", "S 1",
                                                "Ljubljana", "1000", "SI", "+386.41123456"),
                                "si", "contact-pw3")
    world.client.create_domain("ukaz.si", 1, "PVWD3", {})
    settings = world.app.settings
    for key in [k for k in os.environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    env = {"DATA_DIR": settings.data_dir, "DATABASE_URL": settings.effective_database_url,
           "BROKER_URL": settings.broker_url, **{k.upper(): v for k, v in
                                                 world.sandbox.settings_overrides().items()}}
    for key, value in env.items():
        monkeypatch.setenv(f"PROVISIONER_{key}", str(value))
    runner = CliRunner()
    day = (START + timedelta(days=3)).isoformat()
    checked = runner.invoke(app, ["domains", "withdraw", str(sid), "--check", "--now", day, "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["allowed"] is True
    done = runner.invoke(app, ["domains", "withdraw", str(sid), "--now", day, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["refund_due"] is True
    assert [c["op"] for c in world.sandbox.charges("ukaz.si")] == ["create", "refund"]
    late = runner.invoke(app, ["domains", "withdraw", str(world.register("drug.si")), "--now", day])
    assert late.exit_code != 0 and "counts as activated" in late.output
