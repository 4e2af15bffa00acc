"""The records of a hosted zone, as plain values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from provisioner.domain import dns_records as d
from provisioner.errors import InvalidInput

SPEC = d.HostedZone("Example.SI", ("ns1.provider.example", "ns2.provider.example"),
                    "hostmaster@provider.example", ("192.0.2.10",), ("2001:db8::10",),
                    dkim_public_key="QUJD" * 100, serial=2026112201)
RECORDS = d.hosting_zone_records(SPEC)
BY_KEY = d.rrsets(RECORDS)


def test_soa_comes_first_with_the_serial_and_hostmaster() -> None:
    soa = RECORDS[0]
    assert soa.rtype == "SOA" and soa.name == "example.si."
    assert soa.data.startswith("ns1.provider.example. hostmaster.provider.example. 2026112201 ")


@pytest.mark.parametrize(("name", "rtype", "expected"), [
    ("example.si.", "NS", {"ns1.provider.example.", "ns2.provider.example."}),
    ("example.si.", "A", {"192.0.2.10"}),
    ("www.example.si.", "A", {"192.0.2.10"}),
    ("example.si.", "AAAA", {"2001:db8::10"}),
    ("www.example.si.", "AAAA", {"2001:db8::10"}),
    ("mail.example.si.", "A", {"192.0.2.10"}),
    ("example.si.", "MX", {"10 mail.example.si."}),
    ("example.si.", "TXT", {'"v=spf1 mx a ~all"'}),
    ("_dmarc.example.si.", "TXT", {'"v=DMARC1; p=quarantine; rua=mailto:dmarc@example.si"'}),
    ("autoconfig.example.si.", "CNAME", {"mail.example.si."}),
    ("autodiscover.example.si.", "CNAME", {"mail.example.si."}),
    ("_autodiscover._tcp.example.si.", "SRV", {"0 1 443 mail.example.si."}),
    ("_imaps._tcp.example.si.", "SRV", {"0 1 993 mail.example.si."}),
    ("_submission._tcp.example.si.", "SRV", {"0 1 587 mail.example.si."}),
])
def test_hosting_zone_has_the_record(name: str, rtype: str, expected: set[str]) -> None:
    assert BY_KEY[(name, rtype)] == expected


def test_dkim_key_is_split_into_255_byte_strings() -> None:
    (data,) = BY_KEY[("default._domainkey.example.si.", "TXT")]
    parts = [p.strip('"') for p in data.split('" "')]
    assert all(len(p) <= 255 for p in parts)
    assert "".join(parts) == "v=DKIM1; k=rsa; p=" + "QUJD" * 100


def test_no_dkim_without_a_key_and_an_external_mail_host() -> None:
    spec = d.HostedZone("example.si", ("ns1.provider.example",), "hostmaster@provider.example",
                        ("192.0.2.10",), mail_host="mx.provider.example")
    keys = d.rrsets(d.hosting_zone_records(spec))
    assert not any(name.endswith("_domainkey.example.si.") for name, _ in keys)
    assert keys[("example.si.", "MX")] == {"10 mx.provider.example."}
    assert ("mail.example.si.", "A") not in keys


@pytest.mark.parametrize(("change", "message"), [
    ({"site_ipv4": (), "site_ipv6": ()}, "at least one address"),
    ({"site_ipv4": ("2001:db8::1",)}, "not an IPv4"),
    ({"nameservers": ()}, "name server"),
    ({"dmarc_policy": "maybe"}, "DMARC policy"),
    ({"dkim_public_key": "not base64!"}, "base64"),
    ({"zone": "bad_zone.si"}, "_"),
    ({"extra": (d.Record("mail.other.si.", "A", "192.0.2.1"),)}, "not inside"),
    ({"extra": (d.Record("autoconfig.example.si.", "A", "192.0.2.1"),)}, "CNAME"),
])
def test_bad_input_is_refused(change: dict[str, object], message: str) -> None:
    values = {**SPEC.__dict__, **change}
    with pytest.raises(InvalidInput, match=message):
        d.hosting_zone_records(d.HostedZone(**values))


@pytest.mark.parametrize(("name", "expected"), [
    ("Example.SI", "example.si."),
    ("www.example.si.", "www.example.si."),
    ("_dmarc.example.si", "_dmarc.example.si."),
    ("sel._domainkey.example.si", "sel._domainkey.example.si."),
    ("*.example.si", "*.example.si."),
])
def test_absolute(name: str, expected: str) -> None:
    assert d.absolute(name) == expected


@pytest.mark.parametrize("name", ["", "a.*.example.si", "ex ample.si", "bad!._tcp.example.si"])
def test_absolute_refuses(name: str) -> None:
    with pytest.raises(InvalidInput):
        d.absolute(name)


@pytest.mark.parametrize(("name", "expected"), [
    ("example.si", "_acme-challenge.example.si."),
    ("*.example.si", "_acme-challenge.example.si."),
    ("www.example.si", "_acme-challenge.www.example.si."),
])
def test_acme_challenge_name(name: str, expected: str) -> None:
    assert d.acme_challenge_name(name) == expected


@pytest.mark.parametrize(("name", "expected", "dns01"), [
    ("example.si", ["example.si", "www.example.si"], False),
    ("www.example.si", ["www.example.si"], False),
    ("*.example.si", ["*.example.si", "example.si"], True),
])
def test_certificate_names(name: str, expected: list[str], dns01: bool) -> None:
    assert d.certificate_names(name) == expected
    assert d.needs_dns01(name) is dns01


def test_relative_and_in_zone() -> None:
    assert d.relative_to("www.example.si", "example.si") == "www"
    assert d.relative_to("example.si.", "example.si") == "@"
    assert d.in_zone("a.b.example.si", "example.si") and not d.in_zone("example.sik", "example.si")
    with pytest.raises(InvalidInput):
        d.relative_to("www.other.si", "example.si")


def test_serial_always_increases() -> None:
    day = datetime(2026, 11, 22, tzinfo=UTC)
    assert d.serial_for(day) == 2026112200
    assert d.serial_for(day, previous=2026112205) == 2026112206


def test_txt_data_refuses_quotes() -> None:
    with pytest.raises(InvalidInput):
        d.txt_data('a"b')
