"""The records of a hosted zone, as plain values. No I/O.

`hosting_zone_records(HostedZone(...))` is what a hosting order puts into its zone: SOA
and NS, A/AAAA for the site and ``www``, MX, SPF, DMARC, the account's DKIM key and the
mail-client autoconfig (Thunderbird ``autoconfig``) and autodiscover (Outlook, RFC 6186
SRV) records. Names are absolute (trailing dot) everywhere, so comparing what we want
with what the server holds is a set comparison.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from provisioner.domain.names import normalize_domain
from provisioner.errors import InvalidInput

DEFAULT_TTL = 3600
ACME_TTL = 60
ACME_LABEL = "_acme-challenge"
_TXT_CHUNK = 255


@dataclass(frozen=True, order=True)
class Record:
    """One resource record: absolute owner name, type, TTL and data in zone-file text."""

    name: str
    rtype: str
    data: str
    ttl: int = DEFAULT_TTL

    @property
    def rrset_key(self) -> tuple[str, str]:
        return (self.name, self.rtype)


@dataclass(frozen=True)
class HostedZone:
    """What a hosting order needs in its zone. `site_ipv4`/`site_ipv6` are the node's
    addresses; `dkim_public_key` is the account's key (base64 of the DER public key)."""

    zone: str
    nameservers: tuple[str, ...]
    hostmaster: str
    site_ipv4: tuple[str, ...] = ()
    site_ipv6: tuple[str, ...] = ()
    mail_host: str = ""  # default: mail.<zone>, with the site's addresses
    mx_priority: int = 10
    spf_include: tuple[str, ...] = ()
    dmarc_policy: str = "quarantine"
    dmarc_rua: str = ""  # default: mailto:dmarc@<zone>
    dkim_selector: str = "default"
    dkim_public_key: str = ""
    autoconfig_target: str = ""  # default: mail_host
    serial: int = 1
    ttl: int = DEFAULT_TTL
    extra: tuple[Record, ...] = field(default=())


def absolute(name: str) -> str:
    """A normalized absolute name (``example.si.``). `_`-labels (``_dmarc``) and a leading
    ``*`` are allowed; everything else goes through the customer-name guard."""
    raw = name.strip().rstrip(".").lower()
    if not raw:
        raise InvalidInput("empty DNS name")
    labels = raw.split(".")
    # Service labels (`_dmarc`, `default._domainkey`) and a leading `*` come before the
    # plain host name, which goes through the customer-name guard.
    cut = max((i + 1 for i, label in enumerate(labels) if label == "*" or "_" in label), default=0)
    head, labels = labels[:cut], labels[cut:]
    for i, label in enumerate(head):
        if label == "*" and i == 0:
            continue
        if not label or len(label) > 63 or not all(c.isalnum() or c in "-_" for c in label):
            raise InvalidInput(f"bad DNS label {label!r} in {name!r}")
    if not labels:
        raise InvalidInput(f"DNS name {name!r} has no domain part")
    base = normalize_domain(".".join(labels))
    return ".".join([*head, base]) + "."


def relative_to(name: str, zone: str) -> str:
    """``www.example.si.`` relative to ``example.si.`` is ``www``; the apex is ``@``."""
    name, zone = absolute(name), absolute(zone)
    if name == zone:
        return "@"
    if not name.endswith("." + zone):
        raise InvalidInput(f"{name} is not inside the zone {zone}")
    return name[: -len(zone) - 1]


def in_zone(name: str, zone: str) -> bool:
    name, zone = absolute(name), absolute(zone)
    return name == zone or name.endswith("." + zone)


def txt_data(text: str) -> str:
    """TXT rdata in zone-file form, split into <=255-byte strings (DKIM keys are longer)."""
    if any(c in text for c in '"\\\n\r'):
        raise InvalidInput("TXT text must not contain quotes, backslashes or line breaks")
    raw = text.encode("ascii", errors="strict")
    chunks = [raw[i : i + _TXT_CHUNK].decode() for i in range(0, len(raw), _TXT_CHUNK)] or [""]
    return " ".join(f'"{c}"' for c in chunks)


def acme_challenge_name(name: str) -> str:
    """Where the DNS-01 TXT record of `name` lives; a wildcard's is its base name's."""
    base = absolute(name)
    if base.startswith("*."):
        base = base[2:]
    return f"{ACME_LABEL}.{base}"


def serial_for(now: datetime, previous: int = 0) -> int:
    """A date-based SOA serial (YYYYMMDDnn) that always increases."""
    candidate = int(now.strftime("%Y%m%d")) * 100
    return max(candidate, previous + 1)


def soa_record(zone: str, primary_ns: str, hostmaster: str, serial: int, ttl: int = DEFAULT_TTL,
               refresh: int = 3600, retry: int = 900, expire: int = 1209600, minimum: int = 300) -> Record:
    if "@" in hostmaster:
        local, _, domain = hostmaster.partition("@")
        hostmaster = local.replace(".", "\\.") + "." + domain
    return Record(absolute(zone), "SOA",
                  f"{absolute(primary_ns)} {hostmaster.rstrip('.').lower()}. {serial} {refresh} "
                  f"{retry} {expire} {minimum}", ttl)


def ns_records(zone: str, nameservers: Sequence[str], ttl: int = DEFAULT_TTL) -> list[Record]:
    if not nameservers:
        raise InvalidInput(f"zone {zone}: at least one name server is needed")
    return [Record(absolute(zone), "NS", absolute(ns), ttl) for ns in nameservers]


def address_records(name: str, ipv4: Iterable[str], ipv6: Iterable[str],
                    ttl: int = DEFAULT_TTL) -> list[Record]:
    out: list[Record] = []
    for raw in ipv4:
        addr = ipaddress.ip_address(raw)
        if addr.version != 4:
            raise InvalidInput(f"{raw} is not an IPv4 address")
        out.append(Record(absolute(name), "A", str(addr), ttl))
    for raw in ipv6:
        addr = ipaddress.ip_address(raw)
        if addr.version != 6:
            raise InvalidInput(f"{raw} is not an IPv6 address")
        out.append(Record(absolute(name), "AAAA", str(addr), ttl))
    return out


def site_records(zone: str, ipv4: Sequence[str], ipv6: Sequence[str], ttl: int = DEFAULT_TTL) -> list[Record]:
    """A/AAAA for the apex and ``www``."""
    if not ipv4 and not ipv6:
        raise InvalidInput(f"zone {zone}: the site needs at least one address")
    return [*address_records(zone, ipv4, ipv6, ttl),
            *address_records(f"www.{absolute(zone)}", ipv4, ipv6, ttl)]


def mx_records(zone: str, mail_host: str, priority: int = 10, ttl: int = DEFAULT_TTL) -> list[Record]:
    return [Record(absolute(zone), "MX", f"{priority} {absolute(mail_host)}", ttl)]


def spf_record(zone: str, include: Sequence[str] = (), ttl: int = DEFAULT_TTL) -> Record:
    parts = ["v=spf1", "mx", "a", *(f"include:{absolute(i).rstrip('.')}" for i in include), "~all"]
    return Record(absolute(zone), "TXT", txt_data(" ".join(parts)), ttl)


def dmarc_record(zone: str, policy: str = "quarantine", rua: str = "", ttl: int = DEFAULT_TTL) -> Record:
    if policy not in ("none", "quarantine", "reject"):
        raise InvalidInput(f"DMARC policy {policy!r} is not none, quarantine or reject")
    rua = rua or f"mailto:dmarc@{absolute(zone).rstrip('.')}"
    return Record(f"_dmarc.{absolute(zone)}", "TXT", txt_data(f"v=DMARC1; p={policy}; rua={rua}"), ttl)


def dkim_record(zone: str, selector: str, public_key_b64: str, ttl: int = DEFAULT_TTL) -> Record:
    key = "".join(public_key_b64.split())
    if not key or not all(c.isalnum() or c in "+/=" for c in key):
        raise InvalidInput("the DKIM public key must be base64")
    if not selector or not all(c.isalnum() or c == "-" for c in selector):
        raise InvalidInput(f"bad DKIM selector {selector!r}")
    return Record(f"{selector}._domainkey.{absolute(zone)}", "TXT",
                  txt_data(f"v=DKIM1; k=rsa; p={key}"), ttl)


def autoconfig_records(zone: str, mail_host: str, ttl: int = DEFAULT_TTL) -> list[Record]:
    """Thunderbird's autoconfig host, Outlook's autodiscover, RFC 6186 SRV for IMAP/SMTP."""
    z, host = absolute(zone), absolute(mail_host)
    return [
        Record(f"autoconfig.{z}", "CNAME", host, ttl),
        Record(f"autodiscover.{z}", "CNAME", host, ttl),
        Record(f"_autodiscover._tcp.{z}", "SRV", f"0 1 443 {host}", ttl),
        Record(f"_imaps._tcp.{z}", "SRV", f"0 1 993 {host}", ttl),
        Record(f"_submission._tcp.{z}", "SRV", f"0 1 587 {host}", ttl),
        Record(f"_pop3s._tcp.{z}", "SRV", f"10 1 995 {host}", ttl),
    ]


def hosting_zone_records(spec: HostedZone) -> list[Record]:
    """Every record of a hosted zone, sorted; the SOA first."""
    zone = normalize_domain(spec.zone) + "."  # a zone is a plain domain (no `_`, no `*`)
    mail_host = absolute(spec.mail_host) if spec.mail_host else f"mail.{zone}"
    records = [soa_record(zone, spec.nameservers[0] if spec.nameservers else "", spec.hostmaster,
                          spec.serial, spec.ttl)] if spec.nameservers else []
    records += ns_records(zone, spec.nameservers, spec.ttl)
    records += site_records(zone, spec.site_ipv4, spec.site_ipv6, spec.ttl)
    if in_zone(mail_host, zone) and mail_host != zone:
        records += address_records(mail_host, spec.site_ipv4, spec.site_ipv6, spec.ttl)
    records += mx_records(zone, mail_host, spec.mx_priority, spec.ttl)
    records.append(spf_record(zone, spec.spf_include, spec.ttl))
    records.append(dmarc_record(zone, spec.dmarc_policy, spec.dmarc_rua, spec.ttl))
    if spec.dkim_public_key:
        records.append(dkim_record(zone, spec.dkim_selector, spec.dkim_public_key, spec.ttl))
    records += autoconfig_records(zone, spec.autoconfig_target or mail_host, spec.ttl)
    for extra in spec.extra:
        if not in_zone(extra.name, zone):
            raise InvalidInput(f"record {extra.name} is not inside the zone {zone}")
        records.append(extra)
    _check_cname_exclusive(records)
    soa = [r for r in records if r.rtype == "SOA"]
    return soa + sorted(r for r in records if r.rtype != "SOA")


def _check_cname_exclusive(records: Sequence[Record]) -> None:
    cnames = {r.name for r in records if r.rtype == "CNAME"}
    clash = sorted({r.name for r in records if r.rtype != "CNAME" and r.name in cnames})
    if clash:
        raise InvalidInput(f"a CNAME cannot share its name with other records: {', '.join(clash)}")


def rrsets(records: Iterable[Record]) -> dict[tuple[str, str], set[str]]:
    """Records grouped by (name, type) -> set of rdata texts; the unit RFC 2136 replaces."""
    out: dict[tuple[str, str], set[str]] = {}
    for r in records:
        out.setdefault(r.rrset_key, set()).add(r.data)
    return out


def needs_dns01(name: str) -> bool:
    """Wildcards can only be validated through DNS."""
    return absolute(name).startswith("*.")


def certificate_names(name: str, with_www: bool = True) -> list[str]:
    """The names a site's certificate covers: ``example.si`` and ``www.example.si``;
    a wildcard ``*.example.si`` also covers its base name."""
    full = absolute(name).rstrip(".")
    if full.startswith("*."):
        return [full, full[2:]]
    if with_www and not full.startswith("www."):
        return [full, f"www.{full}"]
    return [full]
