"""The DNS adapter against a real Knot: zones, records, DNS-01 TXT, refused updates."""

from __future__ import annotations

import base64

import dns.name
import dns.tsigkeyring
import dns.update
import pytest

from provisioner.adapters.dns import DnsServer, DnsUpdateRefused
from provisioner.devstack.dns_tls import KnotServer
from provisioner.domain.dns_records import HostedZone, Record, hosting_zone_records
from provisioner.errors import ConfigurationError, TransientError
from tests.integration.dns_tls.conftest import new_zone

DKIM = base64.b64encode(b"k" * 294).decode()


def _spec(zone: str, **over: object) -> HostedZone:
    values: dict[str, object] = dict(zone=zone, nameservers=("ns1.provider.example", "ns2.provider.example"),
                                      hostmaster="hostmaster@provider.example", site_ipv4=("127.0.0.1",),
                                      site_ipv6=("::1",), dkim_public_key=DKIM)
    values.update(over)
    return HostedZone(**values)  # type: ignore[arg-type]


def test_hosting_zone_is_created_and_answers_every_record(dns_server: DnsServer) -> None:
    zone = "fresh-hosting.test"
    records = hosting_zone_records(_spec(zone))
    first = dns_server.ensure_zone(zone, records)
    assert first.changed and first.details["created"]
    assert dns_server.zone_exists(zone)
    assert dns_server.lookup("www.fresh-hosting.test", "A") == {"127.0.0.1"}
    assert dns_server.lookup("fresh-hosting.test", "AAAA") == {"::1"}
    assert dns_server.lookup("fresh-hosting.test", "MX") == {"10 mail.fresh-hosting.test."}
    assert any("v=spf1" in t for t in dns_server.lookup("fresh-hosting.test", "TXT"))
    assert any("v=DMARC1" in t for t in dns_server.lookup("_dmarc.fresh-hosting.test", "TXT"))
    dkim = "".join(dns_server.lookup("default._domainkey.fresh-hosting.test", "TXT")).replace('" "', "")
    assert DKIM in dkim
    assert dns_server.lookup("autoconfig.fresh-hosting.test", "CNAME") == {"mail.fresh-hosting.test."}
    assert dns_server.lookup("_imaps._tcp.fresh-hosting.test", "SRV") == {"0 1 993 mail.fresh-hosting.test."}
    assert len(dns_server.lookup("fresh-hosting.test", "NS")) == 2


def test_ensure_zone_twice_changes_nothing_and_converges_a_drift(dns_server: DnsServer) -> None:
    zone = new_zone(dns_server)
    records = hosting_zone_records(_spec(zone))
    dns_server.ensure_zone(zone, records)
    again = dns_server.ensure_zone(zone, records)
    assert not again.changed
    moved = hosting_zone_records(_spec(zone, site_ipv4=("127.0.0.9",)))
    changed = dns_server.ensure_zone(zone, moved)
    assert changed.changed and f"www.{zone}. A" in changed.details["rrsets_changed"]
    assert dns_server.lookup(f"www.{zone}", "A") == {"127.0.0.9"}


def test_txt_records_for_dns01_come_and_go(dns_server: DnsServer, zone: str) -> None:
    name = f"_acme-challenge.{zone}"
    assert dns_server.set_txt(name, "token-one") == f"{zone}."
    dns_server.set_txt(name, "token-two")
    assert dns_server.lookup(name, "TXT") == {'"token-one"', '"token-two"'}
    dns_server.delete_txt(name, "token-one")
    assert dns_server.lookup(name, "TXT") == {'"token-two"'}


def _unsigned(zone: str) -> dns.update.UpdateMessage:
    return dns.update.UpdateMessage(f"{zone}.")


def _wrong_secret(zone: str) -> dns.update.UpdateMessage:
    ring = dns.tsigkeyring.from_text({"provisioner-update": base64.b64encode(b"w" * 32).decode()})
    return dns.update.UpdateMessage(f"{zone}.", keyring=ring,
                                    keyname=dns.name.from_text("provisioner-update"))


def _unknown_key(zone: str) -> dns.update.UpdateMessage:
    ring = dns.tsigkeyring.from_text({"intruder": base64.b64encode(b"i" * 32).decode()})
    return dns.update.UpdateMessage(f"{zone}.", keyring=ring, keyname=dns.name.from_text("intruder"))


@pytest.mark.parametrize("make", [_unsigned, _wrong_secret, _unknown_key],
                         ids=["unsigned", "wrong-secret", "unknown-key"])
def test_badly_signed_update_is_refused_and_reported(dns_server: DnsServer, zone: str, make: object) -> None:
    upd = make(zone)  # type: ignore[operator]
    upd.add(dns.name.from_text(f"evil.{zone}."), 60, "A", "10.6.6.6")
    with pytest.raises(DnsUpdateRefused) as err:
        dns_server.send(upd, zone)
    assert isinstance(err.value, ConfigurationError)  # never retried, never success
    assert err.value.zone == zone
    assert dns_server.lookup(f"evil.{zone}", "A") == set()


@pytest.mark.parametrize("secret", ["wrong", "unknown-key"])
def test_adapter_with_a_wrong_key_reports_the_refusal(knot_server: KnotServer, dns_server: DnsServer,
                                                      zone: str, secret: str) -> None:
    key_name = knot_server.tsig_key_name if secret == "wrong" else "someone-else"
    bad = DnsServer(knot_server.host, knot_server.port, key_name, base64.b64encode(b"x" * 32).decode())
    with pytest.raises(DnsUpdateRefused):
        bad.set_txt(f"_acme-challenge.{zone}", "nope", zone=zone)
    with pytest.raises(DnsUpdateRefused):
        bad.ensure_zone(zone, [Record(f"www.{zone}.", "A", "10.6.6.6")])
    assert dns_server.lookup(f"www.{zone}", "A") == {"127.0.0.1"}
    assert dns_server.lookup(f"_acme-challenge.{zone}", "TXT") == set()


def test_unreachable_server_is_transient(knot_server: KnotServer) -> None:
    from provisioner.devstack.net import free_port

    gone = DnsServer("127.0.0.1", free_port(), knot_server.tsig_key_name, knot_server.tsig_secret,
                     timeout_s=2)
    with pytest.raises(TransientError):
        gone.zone_exists("anything.test")


def test_zone_we_do_not_host_is_not_ours(dns_server: DnsServer) -> None:
    assert dns_server.zone_for("www.not-ours.example") is None
