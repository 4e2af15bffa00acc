"""The EPP client against the sandbox registry: every command, every message validated
against the RFC 5730-5733 schemas, per-TLD rules, transfers, poll, the clock, faults."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from lxml import etree

from provisioner.adapters.registry import (
    AuthorizationFailed,
    EppClient,
    ObjectExists,
    ObjectNotFound,
    OutcomeUnknown,
    RegistryConfig,
    RegistryContact,
    RegistryLoginFailed,
    RegistryRefused,
    RegistryUnavailable,
    StatusProhibits,
)
from provisioner.devstack.registry import Sandbox, run_sandbox
from provisioner.domain.lifecycle import add_period
from provisioner.errors import InvalidInput
from provisioner.timeutil import utcnow

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "epp"
OWNER = RegistryContact("PVTEST1", "Ana Novak", "ana@example.si", "Slovenska 1", "Ljubljana",
                        "1000", "SI", "+386.41123456", privacy=True)
ORG = RegistryContact("PVORG1", "Ana Novak", "info@podjetje.si", "Trg 2", "Kranj", "4000", "SI",
                      "+386.4123456", org="Podjetje d.o.o.")


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "all.xsd")))


@pytest.fixture
def sandbox(tmp_path: Path, schema: etree.XMLSchema) -> Iterator[Sandbox]:
    with run_sandbox(tmp_path / "registry") as sb:
        sb.server.trace = []
        yield sb
        invalid = []
        for message in sb.server.trace:
            if not schema.validate(etree.fromstring(message)):
                invalid.append((message.decode()[:1400], str(schema.error_log.last_error)))
        assert not invalid, invalid


@pytest.fixture
def us(sandbox: Sandbox) -> Iterator[EppClient]:
    with EppClient(sandbox.config()) as client:
        client.create_contact(OWNER, "si", "owner-pw1")
        client.create_host("ns1.provider.example")
        client.create_host("ns2.provider.example")
        yield client


@pytest.fixture
def them(sandbox: Sandbox) -> Iterator[EppClient]:
    with EppClient(sandbox.other_config()) as client:
        client.create_contact(RegistryContact("OTH1", "Bojan", "b@example.net", "Trg 1", "Maribor",
                                              "2000", "SI", "+386.2123456"), "si", "other-pw1")
        yield client


NS = ["ns1.provider.example", "ns2.provider.example"]


def test_domain_lifecycle_commands(us: EppClient, sandbox: Sandbox) -> None:
    assert us.check_domains(["prost.si"])["prost.si"].available
    created = us.create_domain("prost.si", 3, "PVTEST1", {"admin": "PVTEST1", "tech": "PVTEST1"}, NS)
    assert created.expires == add_period(utcnow().date(), 36)
    check = us.check_domains(["prost.si"])["prost.si"]
    assert not check.available and check.reason == "In use"
    with pytest.raises(ObjectExists):
        us.create_domain("prost.si", 1, "PVTEST1", {}, NS)
    info = us.info_domain("prost.si")
    assert info.statuses == ("ok",) and info.nameservers == tuple(NS)
    assert info.auth_info  # .si: made by the registry
    assert created.expires is not None
    assert us.renew_domain("prost.si", created.expires, 1) == add_period(created.expires, 12)
    # statuses such as clientTransferProhibited; contacts; name servers
    us.create_contact(ORG, "si", "org-pw-12")
    us.update_domain("prost.si", add_status=["clientTransferProhibited"], rem_ns=[NS[1]],
                     add_contacts={"tech": "PVORG1"}, rem_contacts={"tech": "PVTEST1"})
    info = us.info_domain("prost.si")
    assert info.statuses == ("clientTransferProhibited",)
    assert info.nameservers == (NS[0],) and info.contacts["tech"] == ("PVORG1",)
    # a glue record for a host inside the domain
    us.create_host("ns1.prost.si", ["192.0.2.10", "2001:db8::10"])
    us.update_domain("prost.si", add_ns=["ns1.prost.si"])
    assert "ns1.prost.si" in us.info_domain("prost.si").hosts
    with pytest.raises(RegistryRefused):
        us.create_host("ns2.prost.si")  # in-zone host without glue
    us.update_domain("prost.si", add_status=["clientDeleteProhibited"])
    with pytest.raises(StatusProhibits):
        us.delete_domain("prost.si")
    us.update_domain("prost.si", rem_status=["clientDeleteProhibited"], rem_ns=["ns1.prost.si"])
    sandbox.server.store.execute("DELETE FROM hosts WHERE name = 'ns1.prost.si'")
    us.delete_domain("prost.si")
    check = us.check_domains(["prost.si"])["prost.si"]
    assert not check.available and check.reason == "In quarantine"
    # .si quarantine is 30 days
    sandbox.faults.set(clock_offset_days=31)
    assert us.check_domains(["prost.si"])["prost.si"].available
    with pytest.raises(ObjectNotFound):
        us.info_domain("prost.si")


def test_contacts_carry_the_tld_extensions(us: EppClient, sandbox: Sandbox) -> None:
    us.create_contact(ORG, "si", "org-pw-12")
    row = sandbox.server.store.get("contacts", "id", "PVORG1")
    assert row is not None and row["data"]["type"] == "org"
    assert sandbox.server.store.get("contacts", "id", "PVTEST1")["data"]["type"] == "person"  # type: ignore[index]
    eu = RegistryContact("PVEU1", "Ana Novak", "ana@example.si", "S 1", "Ljubljana", "1000", "SI",
                         "+386.41123456", lang="sl")
    us.create_contact(eu, "eu", "eu-pw-123")
    data = sandbox.server.store.get("contacts", "id", "PVEU1")["data"]  # type: ignore[index]
    assert (data["eu_type"], data["lang"]) == ("registrant", "sl")
    info = us.info_contact("PVTEST1")
    assert info.privacy and info.name == "Ana Novak"
    us.update_contact(RegistryContact("PVTEST1", "Ana Novak", "nova@example.si", "Slovenska 1",
                                      "Ljubljana", "1000", "SI", "+386.41123456"))
    assert us.info_contact("PVTEST1").email == "nova@example.si"
    with pytest.raises(ObjectExists):
        us.create_contact(OWNER, "si", "owner-pw1")


def test_si_create_needs_allowed_period_and_existing_objects(us: EppClient) -> None:
    with pytest.raises(InvalidInput):
        us.create_domain("dolgo.si", 6, "PVTEST1", {}, NS)  # the client refuses: .si is 1-5 years
    with pytest.raises(ObjectNotFound):
        us.create_domain("dolgo.si", 1, "NOBODY", {}, NS)
    with pytest.raises(ObjectNotFound):
        us.create_domain("dolgo.si", 1, "PVTEST1", {}, ["ns9.nowhere.example"])


def test_eu_transfer_with_requested_auth_code(us: EppClient, them: EppClient) -> None:
    them.create_domain("selitev.eu", 1, "OTH1", {"tech": "OTH1"}, auth_info="their-secret")
    plain = them.info_domain("selitev.eu")
    assert plain.auth_info is None  # EURid: not shown unless requested
    code = them.info_domain("selitev.eu", request_auth=True).auth_info
    assert code
    with pytest.raises(AuthorizationFailed):
        us.transfer_domain("request", "selitev.eu", "wrong-code")
    with pytest.raises(AuthorizationFailed):
        us.info_domain("selitev.eu", auth_info="wrong-code")
    assert us.info_domain("selitev.eu", auth_info=code).registrant == "OTH1"
    done = us.transfer_domain("request", "selitev.eu", code)
    assert done.status == "serverApproved"
    assert plain.expires and done.expires == add_period(plain.expires, 12)
    assert us.info_domain("selitev.eu").sponsor == "provisioner"
    msg = them.poll_request()
    assert msg is not None and msg.data["name"] == "selitev.eu" and msg.count == 1
    assert them.poll_ack(msg.id) == 0
    assert them.poll_request() is None


def test_gtld_transfer_pending_then_approve_or_reject(us: EppClient, them: EppClient,
                                                      sandbox: Sandbox) -> None:
    for name in ("approve.com", "reject.com", "later.com"):
        them.create_domain(name, 1, "OTH1", {"tech": "OTH1"}, auth_info=f"code-{name}")
    pending = us.transfer_domain("request", "approve.com", "code-approve.com")
    assert pending.status == "pending" and pending.action_by == "otherreg"
    assert us.transfer_domain("query", "approve.com").status == "pending"
    with pytest.raises(AuthorizationFailed):
        us.transfer_domain("approve", "approve.com")  # only the losing registrar approves
    assert them.transfer_domain("approve", "approve.com").status == "clientApproved"
    assert us.info_domain("approve.com").sponsor == "provisioner"
    us.transfer_domain("request", "reject.com", "code-reject.com")
    assert them.transfer_domain("reject", "reject.com").status == "clientRejected"
    assert them.info_domain("reject.com").sponsor == "otherreg"
    them.update_domain("later.com", add_status=["clientTransferProhibited"])
    with pytest.raises(StatusProhibits):
        us.transfer_domain("request", "later.com", "code-later.com")
    them.update_domain("later.com", rem_status=["clientTransferProhibited"])
    us.transfer_domain("request", "later.com", "code-later.com")
    sandbox.faults.set(clock_offset_days=6)  # five days pass: the registry approves
    assert us.info_domain("later.com").sponsor == "provisioner"
    messages = []
    while (msg := us.poll_request()) is not None:
        messages.append(msg.data.get("trStatus"))
        us.poll_ack(msg.id)
    assert sorted(m for m in messages if m) == ["clientApproved", "clientRejected", "serverApproved"]


def test_expiry_quarantine_and_auto_renew_follow_the_clock(us: EppClient, them: EppClient,
                                                           sandbox: Sandbox) -> None:
    us.create_domain("poteka.si", 1, "PVTEST1", {}, NS)
    them.create_domain("auto.com", 1, "OTH1", {}, auth_info="code-auto")
    before = them.info_domain("auto.com").expires
    sandbox.faults.set(clock_offset_days=367)
    info = us.info_domain("poteka.si")
    assert "pendingDelete" in info.statuses
    assert not us.check_domains(["poteka.si"])["poteka.si"].available
    assert before and them.info_domain("auto.com").expires == add_period(before, 12)
    assert [c["op"] for c in sandbox.charges("auto.com")] == ["create", "autoRenew"]
    # reactivation during quarantine: an RFC 3915 restore (billed), then a renew
    assert info.expires is not None and info.in_redemption
    assert info.rgp_statuses == ("redemptionPeriod",)
    with pytest.raises(StatusProhibits, match="restore it first"):
        us.renew_domain("poteka.si", info.expires, 1)
    us.restore_domain("poteka.si")  # past its expiry: restored with a year's renewal
    restored = us.info_domain("poteka.si")
    assert not restored.in_redemption and restored.statuses == ("ok",)
    assert restored.expires == add_period(info.expires, 12)
    assert [c["op"] for c in sandbox.charges("poteka.si")] == ["create", "restore", "renew"]


def test_gtld_deleted_before_expiry_is_not_auto_renewed_and_can_be_restored(
        us: EppClient, sandbox: Sandbox) -> None:
    us.create_domain("izbrisi.com", 1, "PVTEST1", {}, NS, auth_info="code-izbrisi")
    us.create_domain("ostane.com", 1, "PVTEST1", {}, NS, auth_info="code-ostane")
    sandbox.faults.set(clock_offset_days=364)
    us.delete_domain("izbrisi.com")
    sandbox.faults.set(clock_offset_days=367)
    info = us.info_domain("izbrisi.com")
    assert info.in_redemption
    assert sandbox.charges("izbrisi.com", "autoRenew") == []
    # the one nobody deleted was renewed by the registry, at our cost
    assert [c["op"] for c in sandbox.charges("ostane.com")] == ["create", "autoRenew"]
    us.restore_domain("izbrisi.com")
    assert info.expires is not None
    assert us.info_domain("izbrisi.com").expires == add_period(info.expires, 12)
    assert [c["op"] for c in sandbox.charges("izbrisi.com")] == ["create", "restore", "renew"]


def test_domain_deleted_before_expiry_is_restored_with_its_expiry(us: EppClient,
                                                                  sandbox: Sandbox) -> None:
    created = us.create_domain("nazaj.com", 1, "PVTEST1", {}, NS, auth_info="code-nazaj")
    sandbox.faults.set(clock_offset_days=360)
    us.delete_domain("nazaj.com")
    us.restore_domain("nazaj.com")
    assert created.expires is not None
    assert us.info_domain("nazaj.com").expires == created.expires
    assert us.renew_domain("nazaj.com", created.expires, 1) == add_period(created.expires, 12)
    assert [c["op"] for c in sandbox.charges("nazaj.com")] == ["create", "restore", "renew"]


def test_at_deletion_at_expiry_keeps_it_until_expiry_and_stops_the_auto_renew(
        us: EppClient, sandbox: Sandbox) -> None:
    us.create_domain("konec.at", 1, "PVTEST1", {}, NS, auth_info="code-konec")
    with pytest.raises(InvalidInput, match="no deletion at expiry"):
        us.delete_domain("other.com", at_expiry=True)  # refused before anything is sent
    sandbox.faults.set(clock_offset_days=360)
    us.delete_domain("konec.at", at_expiry=True)
    info = us.info_domain("konec.at")
    assert not info.in_redemption and info.statuses == ("ok",)  # still works until expiry
    sandbox.faults.set(clock_offset_days=367)
    info = us.info_domain("konec.at")
    assert info.in_redemption
    assert [c["op"] for c in sandbox.charges("konec.at")] == ["create"]
    with pytest.raises(RegistryRefused, match="cannot be restored"):
        us.restore_domain("konec.at")


def test_at_auto_renews_without_a_scheduled_deletion(us: EppClient, sandbox: Sandbox) -> None:
    us.create_domain("ostane.at", 1, "PVTEST1", {}, NS, auth_info="code-ostane")
    sandbox.faults.set(clock_offset_days=367)
    assert not us.info_domain("ostane.at").in_redemption
    assert [c["op"] for c in sandbox.charges("ostane.at")] == ["create", "autoRenew"]


def test_si_never_activated_is_deleted_with_a_refund_within_16_days(
        us: EppClient, sandbox: Sandbox) -> None:
    us.create_domain("brez-ns.si", 1, "PVTEST1", {})  # no name servers: never activated
    us.create_domain("z-ns.si", 1, "PVTEST1", {}, NS)  # name servers set: activated
    us.create_domain("pozno.si", 1, "PVTEST1", {})
    sandbox.faults.set(clock_offset_days=15)
    us.delete_domain("brez-ns.si")
    us.delete_domain("z-ns.si")
    assert us.check_domains(["brez-ns.si"])["brez-ns.si"].available  # freed at once
    assert [c["op"] for c in sandbox.charges("brez-ns.si")] == ["create", "refund"]
    assert us.info_domain("z-ns.si").in_redemption
    assert [c["op"] for c in sandbox.charges("z-ns.si")] == ["create"]
    sandbox.faults.set(clock_offset_days=17)
    us.delete_domain("pozno.si")  # after 16 days: a plain deletion, no refund
    assert [c["op"] for c in sandbox.charges("pozno.si")] == ["create"]
    assert us.info_domain("pozno.si").in_redemption


def test_si_transfer_code_expires_after_16_days(us: EppClient, them: EppClient,
                                                sandbox: Sandbox) -> None:
    them.create_domain("stara.si", 2, "OTH1", {})
    code = them.info_domain("stara.si").auth_info
    assert code
    sandbox.faults.set(clock_offset_days=17)
    with pytest.raises(AuthorizationFailed):
        us.transfer_domain("request", "stara.si", code)


def test_wrong_password_is_a_configuration_error(sandbox: Sandbox) -> None:
    with pytest.raises(RegistryLoginFailed), EppClient(sandbox.config(password="wrong-pw-1")) as c:
        c.check_domains(["x.si"])


def test_injected_2400_and_2502_are_transient(us: EppClient, sandbox: Sandbox) -> None:
    sandbox.faults.set(fail={"domain:check": [2400, 1]})
    with pytest.raises(RegistryUnavailable) as busy:
        us.check_domains(["a.si"])
    assert busy.value.code == 2400
    assert us.check_domains(["a.si"])["a.si"].available  # same session goes on
    sandbox.faults.set(fail={"domain:check": [2502, 1]})
    connects = us.stats["connects"]
    with pytest.raises(RegistryUnavailable) as closing:
        us.check_domains(["a.si"])
    assert closing.value.code == 2502
    assert us.check_domains(["a.si"])["a.si"].available
    assert us.stats["connects"] == connects + 1  # the server closed it; we reconnected


def test_dropped_connection_retries_queries_but_not_transforms(us: EppClient, sandbox: Sandbox) -> None:
    sandbox.faults.set(drop_before={"domain:check": 1})
    assert us.check_domains(["b.si"])["b.si"].available  # resent once on a new session
    sandbox.faults.set(drop_after={"domain:create": 1})
    with pytest.raises(OutcomeUnknown):
        us.create_domain("b.si", 1, "PVTEST1", {}, NS)
    assert us.info_domain("b.si").sponsor == "provisioner"  # it did happen


def test_slow_answer_times_out_as_outcome_unknown(sandbox: Sandbox) -> None:
    with EppClient(sandbox.config(timeout_s=0.3)) as client:
        client.create_contact(OWNER, "si", "owner-pw1")
        client.create_host("ns1.provider.example")
        sandbox.faults.set(delay={"domain:create": 1.0})
        with pytest.raises(OutcomeUnknown):
            client.create_domain("pocasi.si", 1, "PVTEST1", {}, ["ns1.provider.example"])
        sandbox.faults.clear()
        assert client.info_domain("pocasi.si").sponsor == "provisioner"


def test_keep_alive_tests_an_idle_session_with_hello(sandbox: Sandbox) -> None:
    with EppClient(sandbox.config(idle_check_s=0.0)) as client:
        client.check_domains(["c.si"])
        for conn in list(sandbox.server.connections):  # the registry drops idle sessions
            # shutdown, not close: closing a socket another thread is reading frees its fd
            # number, which the next accepted connection may get while that thread still
            # uses it. The handler sees EOF and closes the socket itself.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        assert client.check_domains(["c.si"])["c.si"].available
        assert client.stats["connects"] == 2


def test_session_per_command_mode(sandbox: Sandbox) -> None:
    client = EppClient(sandbox.config(keep_alive=False))
    for _ in range(3):
        client.check_domains(["d.si"])
    assert client.stats["connects"] == 3
    assert client.hello()["server"] == "Provisioner EPP sandbox"
    client.close()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    with run_sandbox(tmp_path / "reg") as sb, EppClient(sb.config()) as c:
        c.create_contact(OWNER, "si", "owner-pw1")
        c.create_domain("trajno.si", 1, "PVTEST1", {})
    with run_sandbox(tmp_path / "reg") as sb, EppClient(sb.config()) as c:
        info = c.info_domain("trajno.si")
        assert info.sponsor == "provisioner"
        assert info.expires and info.expires - utcnow().date() > timedelta(days=360)


def test_cli_sets_faults_on_a_running_sandbox_and_lists_domains(us: EppClient, sandbox: Sandbox) -> None:
    from typer.testing import CliRunner

    from provisioner.cli.registry import app

    runner = CliRunner()
    result = runner.invoke(app, ["faults", "--data-dir", str(sandbox.data_dir), "--set",
                                 '{"fail": {"domain:check": [2400, 1]}}'])
    assert result.exit_code == 0, result.output
    with pytest.raises(RegistryUnavailable):
        us.check_domains(["e.si"])
    us.create_domain("seznam.si", 1, "PVTEST1", {}, NS)
    listed = runner.invoke(app, ["domains", "--data-dir", str(sandbox.data_dir), "--json"])
    assert [d["name"] for d in json.loads(listed.output)] == ["seznam.si"]
    assert runner.invoke(app, ["faults", "--data-dir", str(sandbox.data_dir), "--clear"]).exit_code == 0


def test_sandbox_runs_as_a_module(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "provisioner.devstack.registry", "--data-dir",
                             str(tmp_path / "reg"), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        config = RegistryConfig(started["host"], started["port"], "provisioner", "sandbox-pw-1",
                                ca_file=started["ca_file"], timeout_s=10)
        with EppClient(config) as client:
            assert client.check_domains(["modul.si"])["modul.si"].available
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
