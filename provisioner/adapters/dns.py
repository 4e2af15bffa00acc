"""Our authoritative DNS server: zones and records through RFC 2136 updates signed with
TSIG, zone creation through the server's own interface, verification by querying.

All dnspython I/O lives here (certbot's `_RFC2136Client` is the model): every library
exception becomes one of ours. An update the server refuses (NOTAUTH for a missing or
wrong TSIG signature, REFUSED by its ACL) raises `DnsUpdateRefused`, never passes as
success; timeouts and SERVFAIL raise `TransientError`.

Knot cannot create a zone through RFC 2136, so `KnotcZoneCreator` adds it with
``knotc conf-begin / conf-set zone[...] / conf-commit`` and seeds SOA and NS with a zone
transaction (``zone-begin / zone-set / zone-commit``); everything after that is RFC 2136.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import dns.update

from provisioner.domain.dns_records import ACME_TTL, Record, absolute, acme_challenge_name, rrsets, txt_data
from provisioner.errors import ConfigurationError, InvalidInput, TransientError

log = logging.getLogger("provisioner.dns")

_ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
}


def _parse(rtype: str, text: str) -> dns.rdata.Rdata:
    """Rdata from zone-file text with absolute names (never relativized to a zone)."""
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), text,
                               origin=dns.name.root, relativize=False)


class DnsUpdateRefused(ConfigurationError):
    """The server refused an update (bad/missing TSIG, ACL). Not retried: fix the key."""

    def __init__(self, zone: str, rcode: str, detail: str = "") -> None:
        super().__init__(f"DNS update of zone {zone} refused by the server: {rcode}"
                         + (f" ({detail})" if detail else ""))
        self.zone = zone
        self.rcode = rcode


class DnsVerifyFailed(TransientError):
    """The server does not answer with what we just wrote (yet)."""


@dataclass(frozen=True)
class DnsResult:
    changed: bool
    details: dict[str, Any] = field(default_factory=dict)


class ZoneCreator(Protocol):
    def create_zone(self, zone: str, soa: Record, ns: Sequence[Record]) -> None: ...


@dataclass
class KnotcZoneCreator:
    """Creates zones on a Knot server through its control socket."""

    socket: str
    knotc: str = "knotc"
    timeout_s: float = 20.0

    def _run(self, *args: str, check: bool = True) -> str:
        cmd = [self.knotc, "-s", self.socket, "-t", str(int(self.timeout_s)), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s + 5)
        except FileNotFoundError as exc:
            raise ConfigurationError(f"knotc not found ({self.knotc}); install knot") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"knotc {' '.join(args)} timed out") from exc
        out = (proc.stdout + proc.stderr).strip()
        if check and (proc.returncode != 0 or out.startswith("error")):
            if "connection" in out.lower() or "no such file" in out.lower():
                raise TransientError(f"knotc cannot reach the server: {out}")
            raise ConfigurationError(f"knotc {' '.join(args)} failed: {out}")
        return out

    def create_zone(self, zone: str, soa: Record, ns: Sequence[Record]) -> None:
        name = absolute(zone)
        status = self._run("zone-status", name, check=False)
        if "no such zone" in status.lower() or "invalid" in status.lower() or status.startswith("error"):
            self._run("conf-begin")
            try:
                self._run("conf-set", f"zone[{name}]")
                self._run("conf-commit")
            except Exception:
                self._run("conf-abort", check=False)
                raise
        # An empty zone (just added, or never seeded) gets SOA and NS in one transaction.
        if "serial: -" in self._run("zone-status", name, check=False) or not self._has_soa(name):
            self._run("zone-begin", name)
            try:
                self._run("zone-set", name, "@", str(soa.ttl), "SOA", *soa.data.split())
                for r in ns:
                    self._run("zone-set", name, "@", str(r.ttl), "NS", r.data)
                self._run("zone-commit", name)
            except Exception:
                self._run("zone-abort", name, check=False)
                raise

    def _has_soa(self, name: str) -> bool:
        out = self._run("zone-read", name, "@", "SOA", check=False)
        return " SOA " in out

    def delete_zone(self, zone: str) -> None:
        name = absolute(zone)
        self._run("conf-begin")
        try:
            self._run("conf-unset", f"zone[{name}]")
            self._run("conf-commit")
        except Exception:
            self._run("conf-abort", check=False)
            raise
        self._run("zone-purge", "-f", name, check=False)


@dataclass
class DnsServer:
    """One authoritative server, reached over TCP for updates and queries."""

    server: str
    port: int
    tsig_key_name: str
    tsig_secret: str
    tsig_algorithm: str = "hmac-sha256"
    zone_creator: ZoneCreator | None = None
    timeout_s: float = 10.0
    verify_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.tsig_key_name or not self.tsig_secret:
            raise ConfigurationError("DNS updates need a TSIG key (dns tsig_key_name / tsig_secret)")
        algorithm = _ALGORITHMS.get(self.tsig_algorithm.lower())
        if algorithm is None:
            raise ConfigurationError(f"unsupported TSIG algorithm {self.tsig_algorithm!r}")
        try:
            self._keyring = dns.tsigkeyring.from_text({self.tsig_key_name: self.tsig_secret})
        except (ValueError, dns.exception.DNSException) as exc:
            raise ConfigurationError(f"bad TSIG secret for key {self.tsig_key_name}: {exc}") from exc
        self._keyname = dns.name.from_text(self.tsig_key_name)
        self._algorithm = algorithm

    # -- queries -----------------------------------------------------------------
    def _query(self, name: str, rtype: str) -> dns.message.Message:
        q = dns.message.make_query(absolute(name), rtype)
        q.flags &= ~dns.flags.RD
        try:
            return dns.query.tcp(q, self.server, port=self.port, timeout=self.timeout_s)
        except (dns.exception.Timeout, OSError) as exc:
            raise TransientError(f"DNS server {self.server}:{self.port} unreachable: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise TransientError(f"DNS query {name} {rtype} failed: {exc}") from exc

    def lookup(self, name: str, rtype: str) -> set[str]:
        """The rdata texts the server answers for (name, type); empty when none."""
        resp = self._query(name, rtype)
        rcode = resp.rcode()
        if rcode in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR):
            want = dns.rdatatype.from_text(rtype)
            out: set[str] = set()
            for rrset in resp.answer:
                if rrset.rdtype == want and rrset.name == dns.name.from_text(absolute(name)):
                    out |= {r.to_text(relativize=False) for r in rrset}
            return out
        if rcode == dns.rcode.REFUSED or rcode == dns.rcode.NOTAUTH:
            return set()  # not our zone
        raise TransientError(f"DNS query {name} {rtype}: {dns.rcode.to_text(rcode)}")

    def zone_exists(self, zone: str) -> bool:
        resp = self._query(zone, "SOA")
        if resp.rcode() != dns.rcode.NOERROR or not resp.flags & dns.flags.AA:
            return False
        apex = dns.name.from_text(absolute(zone))
        return any(r.rdtype == dns.rdatatype.SOA and r.name == apex for r in resp.answer)

    def zone_for(self, name: str) -> str | None:
        """The zone on this server that holds `name` (walking up the labels), if any."""
        labels = absolute(name).rstrip(".").split(".")
        if labels[0] == "*":
            labels = labels[1:]
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:]) + "."
            if self.zone_exists(candidate):
                return candidate
        return None

    # -- updates -----------------------------------------------------------------
    def _update(self, zone: str) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(absolute(zone), keyring=self._keyring, keyname=self._keyname,
                                        keyalgorithm=self._algorithm)

    def send(self, upd: dns.update.UpdateMessage, zone: str) -> None:
        """Send one update; anything but NOERROR is an error, never success."""
        try:
            resp = dns.query.tcp(upd, self.server, port=self.port, timeout=self.timeout_s)
        except (dns.exception.Timeout, OSError) as exc:
            raise TransientError(f"DNS server {self.server}:{self.port} unreachable: {exc}") from exc
        except dns.tsig.PeerError as exc:  # BADKEY/BADSIG/BADTIME signalled in the reply's TSIG
            raise DnsUpdateRefused(zone, type(exc).__name__, str(exc)) from exc
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature) as exc:
            raise DnsUpdateRefused(zone, "BADSIG", f"reply failed TSIG verification: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise DnsUpdateRefused(zone, type(exc).__name__, str(exc)) from exc
        rcode = resp.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if rcode == dns.rcode.SERVFAIL:
            raise TransientError(f"DNS update of zone {zone}: SERVFAIL")
        if rcode == dns.rcode.NOTZONE:
            raise InvalidInput(f"DNS update: a name is outside the zone {zone}")
        raise DnsUpdateRefused(zone, text)

    def _rdata(self, record: Record) -> dns.rdata.Rdata:
        try:
            return _parse(record.rtype, record.data)
        except (dns.exception.DNSException, ValueError) as exc:
            raise InvalidInput(f"bad {record.rtype} record {record.name}: {record.data!r}: {exc}") from exc

    def _differences(self, zone: str, records: Iterable[Record]) -> list[tuple[str, str]]:
        """(name, type) of every rrset whose content on the server differs from `records`.
        The SOA is the server's (its serial moves with every update) and is skipped."""
        wanted = rrsets(r for r in records if r.rtype != "SOA")
        by_key = {r.rrset_key: r for r in records}
        out: list[tuple[str, str]] = []
        for key, datas in wanted.items():
            name, rtype = key
            want = {self._rdata(Record(name, rtype, d, by_key[key].ttl)) for d in datas}
            have_text = self.lookup(name, rtype)
            have = {_parse(rtype, t) for t in have_text}
            if want != have:
                out.append(key)
        return out

    def ensure_zone(self, zone: str, records: Sequence[Record]) -> DnsResult:
        """Observe, act, verify: create the zone if missing, replace every rrset that
        differs from `records` in one update, then query until the server agrees."""
        zone = absolute(zone)
        created = False
        if not self.zone_exists(zone):
            if self.zone_creator is None:
                raise ConfigurationError(f"zone {zone} does not exist and no zone creator is configured")
            soa = [r for r in records if r.rtype == "SOA"]
            ns = [r for r in records if r.rtype == "NS" and r.name == zone]
            if not soa or not ns:
                raise InvalidInput(f"zone {zone}: SOA and NS are needed to create it")
            self.zone_creator.create_zone(zone, soa[0], ns)
            self._wait(lambda: self.zone_exists(zone), f"zone {zone} to be served")
            created = True
        todo = self._differences(zone, records)
        if todo:
            upd = self._update(zone)
            wanted = rrsets(records)
            ttls = {r.rrset_key: r.ttl for r in records}
            for name, rtype in todo:
                rel = dns.name.from_text(name)
                upd.delete(rel, rtype)
                for data in sorted(wanted[(name, rtype)]):
                    upd.add(rel, ttls[(name, rtype)], self._rdata(Record(name, rtype, data)))
            self.send(upd, zone)
        self.verify(zone, records)
        return DnsResult(created or bool(todo), {"zone": zone, "created": created,
                                                 "rrsets_changed": [f"{n} {t}" for n, t in todo]})

    def verify(self, zone: str, records: Sequence[Record]) -> None:
        """Query until the server answers with `records`; DnsVerifyFailed otherwise."""
        last: list[tuple[str, str]] = []

        def agrees() -> bool:
            nonlocal last
            last = self._differences(zone, records)
            return not last

        self._wait(agrees, f"zone {zone} to hold the records",
                   lambda: f"differs: {', '.join(f'{n} {t}' for n, t in last)}")

    def _wait(self, predicate: Any, what: str, detail: Any = None) -> None:
        deadline = time.monotonic() + self.verify_timeout_s
        delay = 0.01
        while True:
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise DnsVerifyFailed(f"timed out waiting for {what}" + (f": {detail()}" if detail else ""))
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    # -- DNS-01 ------------------------------------------------------------------
    def set_txt(self, name: str, value: str, ttl: int = ACME_TTL, zone: str | None = None) -> str:
        """Add one TXT value at `name` (other values stay: several challenges may be in
        flight), verify the server answers it. Returns the zone it went into."""
        zone = zone or self.zone_for(name)
        if zone is None:
            raise InvalidInput(f"no zone on our DNS server holds {name}")
        record = Record(absolute(name), "TXT", txt_data(value), ttl)
        upd = self._update(zone)
        upd.add(dns.name.from_text(record.name), ttl, self._rdata(record))
        self.send(upd, zone)
        want = self._rdata(record)
        self._wait(lambda: want in self._have(record), f"TXT {name} to be served")
        return zone

    def delete_txt(self, name: str, value: str, zone: str | None = None) -> None:
        zone = zone or self.zone_for(name)
        if zone is None:
            return
        record = Record(absolute(name), "TXT", txt_data(value))
        upd = self._update(zone)
        upd.delete(dns.name.from_text(record.name), self._rdata(record))
        self.send(upd, zone)

    def set_ttl(self, zone: str, name: str, rtype: str, ttl: int) -> list[str]:
        """Serve the (name, type) rrset with ``ttl``, its values unchanged (a migration's
        cut-over lowers them ahead of the switch). Returns the values; none: nothing done."""
        have = sorted(self.lookup(name, rtype))
        if have:
            upd = self._update(zone)
            rel = dns.name.from_text(absolute(name))
            upd.delete(rel, rtype)
            for text in have:
                upd.add(rel, ttl, _parse(rtype, text))
            self.send(upd, zone)
        return have

    def delete_rrset(self, zone: str, name: str, rtype: str) -> None:
        """Remove the (name, type) rrset (a migration's cut-over: an old AAAA where our node
        has no IPv6 address)."""
        upd = self._update(zone)
        upd.delete(dns.name.from_text(absolute(name)), rtype)
        self.send(upd, zone)

    def _have(self, record: Record) -> set[dns.rdata.Rdata]:
        return {_parse(record.rtype, t) for t in self.lookup(record.name, record.rtype)}

    def challenge_name(self, name: str) -> str:
        return acme_challenge_name(name)
