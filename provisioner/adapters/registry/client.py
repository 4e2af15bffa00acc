"""EPP client: TLS session with keep-alive and reconnect, the commands, result mapping.

A thin layer on lxml (no maintained Python EPP client installs offline here; ``pyepp``
and ``epptools`` were not an option). All socket, TLS and XML exceptions stay in this
module: callers see ``provisioner.errors`` subclasses from ``.errors``.

Retry rules: a query (check, info, poll, hello) that fails on the wire is resent once
on a fresh connection. A transforming command (create, renew, transfer, update, delete)
is never resent here: if the answer is lost the client raises ``OutcomeUnknown`` and the
caller observes with ``info`` first, so nothing is registered or billed twice.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from lxml import etree

from provisioner.adapters.registry import protocol as p
from provisioner.adapters.registry.errors import (
    CLOSING_CODES,
    OutcomeUnknown,
    RegistryUnavailable,
    error_for,
)
from provisioner.adapters.registry.profiles import RegistryContact, TldProfile, profile_for
from provisioner.domain.names import normalize_domain
from provisioner.errors import ConfigurationError, InvalidInput

log = logging.getLogger("provisioner.registry")


@dataclass(frozen=True)
class RegistryConfig:
    host: str
    port: int
    login: str
    password: str
    ca_file: str = ""
    timeout_s: float = 30.0
    cert_file: str = ""  # client certificate, if the registry wants one
    key_file: str = ""
    keep_alive: bool = True
    #: a session idle longer than this is tested with <hello> before the next command
    idle_check_s: float = 240.0
    lang: str = "en"

    @classmethod
    def from_settings(cls, settings: Any) -> RegistryConfig:
        """From ``Settings``; without ``registry_ca_file`` the sandbox's CA in
        ``data_dir/registry/tls/ca.pem`` is trusted when it exists."""
        ca_file = str(settings.registry_ca_file or "")
        if not ca_file:
            sandbox_ca = Path(settings.data_dir) / "registry" / "tls" / "ca.pem"
            ca_file = str(sandbox_ca) if sandbox_ca.exists() else ""
        return cls(
            host=settings.registry_host,
            port=int(settings.registry_port),
            login=settings.registry_login,
            password=settings.registry_password,
            ca_file=ca_file,
            timeout_s=float(settings.registry_timeout_s),
        )


# -- results ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Response:
    code: int
    message: str
    reason: str
    root: etree._Element
    cl_trid: str | None
    sv_trid: str | None
    msgq: dict[str, Any] | None = None

    @property
    def res_data(self) -> etree._Element | None:
        return self.root.find("epp:response/epp:resData", p.NSMAP)


@dataclass(frozen=True)
class CheckResult:
    name: str
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class DomainInfo:
    name: str
    roid: str
    statuses: tuple[str, ...]
    registrant: str | None
    contacts: dict[str, tuple[str, ...]]
    nameservers: tuple[str, ...]
    hosts: tuple[str, ...]
    sponsor: str
    created: datetime | None
    expires: date | None
    transferred: datetime | None
    auth_info: str | None
    #: RFC 3915 grace-period states (``redemptionPeriod``: deleted or lapsed, restorable)
    rgp_statuses: tuple[str, ...] = ()

    @property
    def in_redemption(self) -> bool:
        return "redemptionPeriod" in self.rgp_statuses or "pendingDelete" in self.statuses


@dataclass(frozen=True)
class DomainCreated:
    name: str
    created: datetime | None
    expires: date | None


@dataclass(frozen=True)
class TransferInfo:
    name: str
    status: str
    requested_by: str
    requested_at: datetime | None
    action_by: str
    action_at: datetime | None
    expires: date | None


@dataclass(frozen=True)
class ContactInfo:
    handle: str
    roid: str
    statuses: tuple[str, ...]
    name: str
    org: str | None
    email: str
    phone: str | None
    city: str
    country: str
    sponsor: str
    privacy: bool


@dataclass(frozen=True)
class PollMessage:
    id: str
    count: int
    queued_at: datetime | None
    text: str
    data: dict[str, str] = field(default_factory=dict)


Connector = Callable[[], socket.socket]


class EppClient:
    """One registrar session to one registry. Thread-safe (one command at a time)."""

    def __init__(self, config: RegistryConfig, *, connector: Connector | None = None,
                 profile: Callable[[str], TldProfile] = profile_for) -> None:
        if not config.login or not config.password:
            raise ConfigurationError("registry login and password must be set")
        self.config = config
        self._connector = connector or self._tls_connect
        self._profile = profile
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._last_used = 0.0
        self.greeting: dict[str, Any] = {}
        self.stats = {"connects": 0, "commands": 0, "reconnects": 0}

    # -- connection ------------------------------------------------------------------
    def _tls_connect(self) -> socket.socket:
        cfg = self.config
        ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        raw = socket.create_connection((cfg.host, cfg.port), timeout=cfg.timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one frame per write
        try:
            return ctx.wrap_socket(raw, server_hostname=cfg.host)
        except BaseException:
            raw.close()
            raise

    def _open(self) -> socket.socket:
        try:
            sock = self._connector()
            sock.settimeout(self.config.timeout_s)
            greeting = p.parse(p.read_frame(sock))
        except (OSError, ssl.SSLError, p.FrameError) as exc:
            raise RegistryUnavailable(
                f"cannot reach the registry at {self.config.host}:{self.config.port}: {exc}"
            ) from None
        self.greeting = _parse_greeting(greeting)
        self.stats["connects"] += 1
        self._sock = sock
        try:
            self._login()
        except BaseException:
            self._drop()
            raise
        return sock

    def _login(self) -> None:
        root = p.epp_root()
        cmd = p.sub(root, p.EPP_NS, "command")
        login = p.sub(cmd, p.EPP_NS, "login")
        p.sub(login, p.EPP_NS, "clID", self.config.login)
        p.sub(login, p.EPP_NS, "pw", self.config.password)
        opts = p.sub(login, p.EPP_NS, "options")
        p.sub(opts, p.EPP_NS, "version", "1.0")
        p.sub(opts, p.EPP_NS, "lang", self.config.lang)
        svcs = p.sub(login, p.EPP_NS, "svcs")
        for uri in p.OBJ_URIS:
            p.sub(svcs, p.EPP_NS, "objURI", uri)
        offered = set(self.greeting.get("extensions", ()))
        wanted = [u for u in p.EXT_URIS if u in offered]
        if wanted:
            ext = p.sub(svcs, p.EPP_NS, "svcExtension")
            for uri in wanted:
                p.sub(ext, p.EPP_NS, "extURI", uri)
        p.sub(cmd, p.EPP_NS, "clTRID", _trid())
        self._check(self._wire(root, "login"), "login")

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        """Log out (best effort) and close the connection."""
        with self._lock:
            if self._sock is None:
                return
            try:
                root = p.epp_root()
                cmd = p.sub(root, p.EPP_NS, "command")
                p.sub(cmd, p.EPP_NS, "logout")
                p.sub(cmd, p.EPP_NS, "clTRID", _trid())
                self._wire(root, "logout")
            except (OSError, p.FrameError, ssl.SSLError):
                pass
            finally:
                self._drop()

    def __enter__(self) -> EppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wire(self, root: etree._Element, command: str) -> Response:
        """Send one message and read its answer (raises OSError/FrameError on the wire)."""
        assert self._sock is not None
        p.write_frame(self._sock, p.serialize(root))
        answer = p.parse(p.read_frame(self._sock))
        self._last_used = time.monotonic()
        self.stats["commands"] += 1
        return _parse_response(answer, command)

    def _check(self, resp: Response, command: str) -> Response:
        if resp.code in CLOSING_CODES:
            self._drop()
        if resp.code >= 2000:
            raise error_for(resp.code, resp.message, command, resp.reason)
        return resp

    def _fresh_enough(self) -> bool:
        """On an idle session, a <hello> tells whether the server still listens."""
        if self._sock is None:
            return False
        if time.monotonic() - self._last_used < self.config.idle_check_s:
            return True
        try:
            assert self._sock is not None
            root = p.epp_root()
            p.sub(root, p.EPP_NS, "hello")
            p.write_frame(self._sock, p.serialize(root))
            p.parse(p.read_frame(self._sock))
            self._last_used = time.monotonic()
            return True
        except (OSError, p.FrameError, ssl.SSLError):
            self._drop()
            return False

    def execute(self, root: etree._Element, command: str, *, query: bool) -> Response:
        """Send a command on the session (opening / logging in as needed)."""
        with self._lock:
            attempts = 2 if query else 1
            for attempt in range(attempts):
                if not self._fresh_enough():
                    if attempt or self.stats["connects"]:
                        self.stats["reconnects"] += 1
                    self._open()
                try:
                    resp = self._wire(root, command)
                except (OSError, p.FrameError, ssl.SSLError) as exc:
                    self._drop()
                    if attempt + 1 < attempts:
                        log.warning("registry connection lost during %s (%s); reconnecting",
                                    command, exc)
                        continue
                    if query:
                        raise RegistryUnavailable(
                            f"registry connection lost during {command}: {exc}") from None
                    raise OutcomeUnknown(
                        f"no answer to {command} (connection lost: {exc}); the registry may "
                        "have executed it"
                    ) from None
                break
            if not self.config.keep_alive:
                self.close()
            return self._check(resp, command)

    # -- helpers ---------------------------------------------------------------------
    def profile(self, name: str) -> TldProfile:
        return self._profile(name.rsplit(".", 1)[-1])

    @staticmethod
    def _command(verb: str, ns: str, **attrs: str) -> tuple[etree._Element, etree._Element,
                                                          etree._Element]:
        root = p.epp_root()
        cmd = p.sub(root, p.EPP_NS, "command")
        action = p.sub(cmd, p.EPP_NS, verb, **attrs)
        prefix = {p.DOMAIN_NS: "domain", p.CONTACT_NS: "contact", p.HOST_NS: "host"}[ns]
        obj = etree.SubElement(action, p.q(ns, verb), nsmap={prefix: ns})
        return root, cmd, obj

    @staticmethod
    def _finish(cmd: etree._Element, extensions: Iterable[etree._Element | None] = ()) -> None:
        exts = [e for e in extensions if e is not None]
        if exts:
            ext = p.sub(cmd, p.EPP_NS, "extension")
            for e in exts:
                ext.append(e)
        p.sub(cmd, p.EPP_NS, "clTRID", _trid())

    # -- session ---------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        with self._lock:
            if self._sock is None:
                self._open()
            root = p.epp_root()
            p.sub(root, p.EPP_NS, "hello")
            try:
                assert self._sock is not None
                p.write_frame(self._sock, p.serialize(root))
                self.greeting = _parse_greeting(p.parse(p.read_frame(self._sock)))
            except (OSError, p.FrameError, ssl.SSLError) as exc:
                self._drop()
                raise RegistryUnavailable(f"no greeting from the registry: {exc}") from None
            self._last_used = time.monotonic()
            return self.greeting

    # -- domains ---------------------------------------------------------------------
    def check_domains(self, names: Sequence[str]) -> dict[str, CheckResult]:
        clean = [normalize_domain(n) for n in names]
        root, cmd, obj = self._command("check", p.DOMAIN_NS)
        for name in clean:
            p.sub(obj, p.DOMAIN_NS, "name", name)
        self._finish(cmd)
        resp = self.execute(root, "domain:check", query=True)
        out: dict[str, CheckResult] = {}
        data = resp.res_data
        if data is not None:
            for cd in data.iterfind("domain:chkData/domain:cd", p.NSMAP):
                name_el = cd.find("domain:name", p.NSMAP)
                assert name_el is not None
                avail = str(name_el.get("avail")) in ("1", "true")
                out[str(name_el.text)] = CheckResult(str(name_el.text), avail,
                                                     p.text(cd, "domain:reason") or "")
        return out

    def create_domain(self, name: str, period_years: int, registrant: str,
                      contacts: dict[str, str], nameservers: Sequence[str] = (),
                      auth_info: str = "") -> DomainCreated:
        name = normalize_domain(name)
        profile = self.profile(name)
        profile.check_period(period_years)
        root, cmd, obj = self._command("create", p.DOMAIN_NS)
        p.sub(obj, p.DOMAIN_NS, "name", name)
        p.sub(obj, p.DOMAIN_NS, "period", str(period_years), unit="y")
        if nameservers:
            ns = p.sub(obj, p.DOMAIN_NS, "ns")
            for host in nameservers:
                p.sub(ns, p.DOMAIN_NS, "hostObj", normalize_domain(host))
        p.sub(obj, p.DOMAIN_NS, "registrant", registrant)
        for role in ("admin", "tech", "billing"):
            if contacts.get(role):
                p.sub(obj, p.DOMAIN_NS, "contact", contacts[role], type=role)
        auth = p.sub(obj, p.DOMAIN_NS, "authInfo")
        p.sub(auth, p.DOMAIN_NS, "pw", "" if profile.empty_auth_on_create else auth_info)
        self._finish(cmd)
        resp = self.execute(root, "domain:create", query=False)
        data = resp.res_data
        cre = data.find("domain:creData", p.NSMAP) if data is not None else None
        if cre is None:
            return DomainCreated(name, None, None)
        return DomainCreated(p.text(cre, "domain:name") or name,
                             p.parse_datetime(p.text(cre, "domain:crDate")),
                             p.parse_date(p.text(cre, "domain:exDate")))

    def info_domain(self, name: str, auth_info: str | None = None,
                    request_auth: bool = False) -> DomainInfo:
        name = normalize_domain(name)
        root, cmd, obj = self._command("info", p.DOMAIN_NS)
        p.sub(obj, p.DOMAIN_NS, "name", name, hosts="all")
        if auth_info:
            auth = p.sub(obj, p.DOMAIN_NS, "authInfo")
            p.sub(auth, p.DOMAIN_NS, "pw", auth_info)
        self._finish(cmd, [self.profile(name).info_ext(request_auth)])
        resp = self.execute(root, "domain:info", query=True)
        data = resp.res_data
        inf = data.find("domain:infData", p.NSMAP) if data is not None else None
        if inf is None:
            raise RegistryUnavailable(f"domain:info {name}: answer without infData")
        contacts: dict[str, list[str]] = {}
        for c in inf.iterfind("domain:contact", p.NSMAP):
            contacts.setdefault(str(c.get("type")), []).append(str(c.text))
        return DomainInfo(
            name=p.text(inf, "domain:name") or name,
            roid=p.text(inf, "domain:roid") or "",
            statuses=tuple(str(s.get("s")) for s in inf.iterfind("domain:status", p.NSMAP)),
            registrant=p.text(inf, "domain:registrant"),
            contacts={k: tuple(v) for k, v in contacts.items()},
            nameservers=tuple(p.names(p.texts(inf, "domain:ns/domain:hostObj"))),
            hosts=tuple(p.texts(inf, "domain:host")),
            sponsor=p.text(inf, "domain:clID") or "",
            created=p.parse_datetime(p.text(inf, "domain:crDate")),
            expires=p.parse_date(p.text(inf, "domain:exDate")),
            transferred=p.parse_datetime(p.text(inf, "domain:trDate")),
            auth_info=p.text(inf, "domain:authInfo/domain:pw"),
            rgp_statuses=tuple(str(s.get("s")) for s in resp.root.iterfind(
                "epp:response/epp:extension/rgp:infData/rgp:rgpStatus", p.NSMAP)),
        )

    def renew_domain(self, name: str, current_expiry: date, period_years: int) -> date | None:
        name = normalize_domain(name)
        self.profile(name).check_period(period_years)
        root, cmd, obj = self._command("renew", p.DOMAIN_NS)
        p.sub(obj, p.DOMAIN_NS, "name", name)
        p.sub(obj, p.DOMAIN_NS, "curExpDate", current_expiry.isoformat())
        p.sub(obj, p.DOMAIN_NS, "period", str(period_years), unit="y")
        self._finish(cmd)
        resp = self.execute(root, "domain:renew", query=False)
        data = resp.res_data
        return p.parse_date(p.text(data, "domain:renData/domain:exDate")) if data is not None else None

    def transfer_domain(self, op: str, name: str, auth_info: str | None = None,
                        period_years: int | None = None) -> TransferInfo:
        if op not in ("request", "query", "approve", "reject", "cancel"):
            raise InvalidInput(f"unknown transfer operation {op!r}")
        name = normalize_domain(name)
        root, cmd, obj = self._command("transfer", p.DOMAIN_NS, op=op)
        p.sub(obj, p.DOMAIN_NS, "name", name)
        if period_years is not None:
            p.sub(obj, p.DOMAIN_NS, "period", str(period_years), unit="y")
        if auth_info is not None:
            auth = p.sub(obj, p.DOMAIN_NS, "authInfo")
            p.sub(auth, p.DOMAIN_NS, "pw", auth_info)
        self._finish(cmd)
        resp = self.execute(root, f"domain:transfer op={op}", query=op == "query")
        data = resp.res_data
        trn = data.find("domain:trnData", p.NSMAP) if data is not None else None
        if trn is None:
            raise RegistryUnavailable(f"domain:transfer {name}: answer without trnData")
        return TransferInfo(
            name=p.text(trn, "domain:name") or name,
            status=p.text(trn, "domain:trStatus") or "",
            requested_by=p.text(trn, "domain:reID") or "",
            requested_at=p.parse_datetime(p.text(trn, "domain:reDate")),
            action_by=p.text(trn, "domain:acID") or "",
            action_at=p.parse_datetime(p.text(trn, "domain:acDate")),
            expires=p.parse_date(p.text(trn, "domain:exDate")),
        )

    def update_domain(self, name: str, *, add_ns: Sequence[str] = (), rem_ns: Sequence[str] = (),
                      add_status: Sequence[str] = (), rem_status: Sequence[str] = (),
                      add_contacts: dict[str, str] | None = None,
                      rem_contacts: dict[str, str] | None = None,
                      registrant: str | None = None, auth_info: str | None = None) -> None:
        name = normalize_domain(name)
        root, cmd, obj = self._command("update", p.DOMAIN_NS)
        p.sub(obj, p.DOMAIN_NS, "name", name)
        for tag, ns_list, contacts, statuses in (("add", add_ns, add_contacts, add_status),
                                                 ("rem", rem_ns, rem_contacts, rem_status)):
            if not (ns_list or contacts or statuses):
                continue
            part = p.sub(obj, p.DOMAIN_NS, tag)
            if ns_list:
                ns = p.sub(part, p.DOMAIN_NS, "ns")
                for host in ns_list:
                    p.sub(ns, p.DOMAIN_NS, "hostObj", normalize_domain(host))
            for role, handle in (contacts or {}).items():
                p.sub(part, p.DOMAIN_NS, "contact", handle, type=role)
            for status in statuses:
                p.sub(part, p.DOMAIN_NS, "status", s=status)
        if registrant is not None or auth_info is not None:
            chg = p.sub(obj, p.DOMAIN_NS, "chg")
            if registrant is not None:
                p.sub(chg, p.DOMAIN_NS, "registrant", registrant)
            if auth_info is not None:
                auth = p.sub(chg, p.DOMAIN_NS, "authInfo")
                p.sub(auth, p.DOMAIN_NS, "pw", auth_info)
        self._finish(cmd)
        self.execute(root, "domain:update", query=False)

    def delete_domain(self, name: str, *, at_expiry: bool = False) -> None:
        """Delete the domain now, or (``at_expiry``, where the registry supports it: .at)
        schedule its deletion at expiry, so the registry does not renew it."""
        name = normalize_domain(name)
        root, cmd, obj = self._command("delete", p.DOMAIN_NS)
        p.sub(obj, p.DOMAIN_NS, "name", name)
        ext = None
        if at_expiry:
            if not self.profile(name).delete_at_expiry:
                raise InvalidInput(f".{name.rsplit('.', 1)[-1]} has no deletion at expiry")
            ext = etree.Element(p.q(p.AT_DOMAIN_NS, "delete"),
                                nsmap={"at-ext-domain": p.AT_DOMAIN_NS})
            p.sub(ext, p.AT_DOMAIN_NS, "scheduledate", "expiration")
        self._finish(cmd, [ext])
        self.execute(root, "domain:delete", query=False)

    def restore_domain(self, name: str) -> None:
        """RFC 3915 restore request: bring a domain in its redemption (quarantine) period
        back; the registry bills the restore. A renew follows for the new term."""
        name = normalize_domain(name)
        root, cmd, obj = self._command("update", p.DOMAIN_NS)
        p.sub(obj, p.DOMAIN_NS, "name", name)
        p.sub(obj, p.DOMAIN_NS, "chg")
        ext = etree.Element(p.q(p.RGP_NS, "update"), nsmap={"rgp": p.RGP_NS})
        p.sub(ext, p.RGP_NS, "restore", op="request")
        self._finish(cmd, [ext])
        self.execute(root, "domain:update restore", query=False)

    # -- contacts --------------------------------------------------------------------
    def check_contacts(self, handles: Sequence[str]) -> dict[str, bool]:
        root, cmd, obj = self._command("check", p.CONTACT_NS)
        for h in handles:
            p.sub(obj, p.CONTACT_NS, "id", h)
        self._finish(cmd)
        resp = self.execute(root, "contact:check", query=True)
        data = resp.res_data
        out: dict[str, bool] = {}
        if data is not None:
            for el in data.iterfind("contact:chkData/contact:cd/contact:id", p.NSMAP):
                out[str(el.text)] = str(el.get("avail")) in ("1", "true")
        return out

    def _postal(self, parent: etree._Element, c: RegistryContact, tag: str) -> None:
        info = p.sub(parent, p.CONTACT_NS, tag, type="loc")
        p.sub(info, p.CONTACT_NS, "name", c.name)
        if c.org:
            p.sub(info, p.CONTACT_NS, "org", c.org)
        addr = p.sub(info, p.CONTACT_NS, "addr")
        p.sub(addr, p.CONTACT_NS, "street", c.street)
        p.sub(addr, p.CONTACT_NS, "city", c.city)
        p.sub(addr, p.CONTACT_NS, "pc", c.postal_code)
        p.sub(addr, p.CONTACT_NS, "cc", c.country)

    @staticmethod
    def _disclose(parent: etree._Element, c: RegistryContact) -> None:
        # WHOIS privacy: ask the registry not to publish the personal fields.
        if c.privacy:
            disclose = p.sub(parent, p.CONTACT_NS, "disclose", flag="0")
            p.sub(disclose, p.CONTACT_NS, "name", type="loc")
            p.sub(disclose, p.CONTACT_NS, "addr", type="loc")
            p.sub(disclose, p.CONTACT_NS, "voice")
            p.sub(disclose, p.CONTACT_NS, "email")

    def create_contact(self, contact: RegistryContact, tld: str, auth_info: str) -> str:
        root, cmd, obj = self._command("create", p.CONTACT_NS)
        p.sub(obj, p.CONTACT_NS, "id", contact.handle)
        self._postal(obj, contact, "postalInfo")
        p.sub(obj, p.CONTACT_NS, "voice", contact.phone)
        p.sub(obj, p.CONTACT_NS, "email", contact.email)
        auth = p.sub(obj, p.CONTACT_NS, "authInfo")
        p.sub(auth, p.CONTACT_NS, "pw", auth_info)
        self._disclose(obj, contact)
        self._finish(cmd, [self._profile(tld).contact_ext(contact)])
        resp = self.execute(root, "contact:create", query=False)
        data = resp.res_data
        return (p.text(data, "contact:creData/contact:id") if data is not None else None) or \
            contact.handle

    def info_contact(self, handle: str) -> ContactInfo:
        root, cmd, obj = self._command("info", p.CONTACT_NS)
        p.sub(obj, p.CONTACT_NS, "id", handle)
        self._finish(cmd)
        resp = self.execute(root, "contact:info", query=True)
        data = resp.res_data
        inf = data.find("contact:infData", p.NSMAP) if data is not None else None
        if inf is None:
            raise RegistryUnavailable(f"contact:info {handle}: answer without infData")
        return ContactInfo(
            handle=p.text(inf, "contact:id") or handle,
            roid=p.text(inf, "contact:roid") or "",
            statuses=tuple(str(s.get("s")) for s in inf.iterfind("contact:status", p.NSMAP)),
            name=p.text(inf, "contact:postalInfo/contact:name") or "",
            org=p.text(inf, "contact:postalInfo/contact:org"),
            email=p.text(inf, "contact:email") or "",
            phone=p.text(inf, "contact:voice"),
            city=p.text(inf, "contact:postalInfo/contact:addr/contact:city") or "",
            country=p.text(inf, "contact:postalInfo/contact:addr/contact:cc") or "",
            sponsor=p.text(inf, "contact:clID") or "",
            privacy=inf.find("contact:disclose[@flag='0']", p.NSMAP) is not None,
        )

    def update_contact(self, contact: RegistryContact) -> None:
        root, cmd, obj = self._command("update", p.CONTACT_NS)
        p.sub(obj, p.CONTACT_NS, "id", contact.handle)
        chg = p.sub(obj, p.CONTACT_NS, "chg")
        self._postal(chg, contact, "postalInfo")
        p.sub(chg, p.CONTACT_NS, "voice", contact.phone)
        p.sub(chg, p.CONTACT_NS, "email", contact.email)
        self._disclose(chg, contact)
        self._finish(cmd)
        self.execute(root, "contact:update", query=False)

    # -- hosts -----------------------------------------------------------------------
    def check_hosts(self, names: Sequence[str]) -> dict[str, bool]:
        root, cmd, obj = self._command("check", p.HOST_NS)
        for n in names:
            p.sub(obj, p.HOST_NS, "name", normalize_domain(n))
        self._finish(cmd)
        resp = self.execute(root, "host:check", query=True)
        data = resp.res_data
        out: dict[str, bool] = {}
        if data is not None:
            for el in data.iterfind("host:chkData/host:cd/host:name", p.NSMAP):
                out[str(el.text)] = str(el.get("avail")) in ("1", "true")
        return out

    def create_host(self, name: str, addresses: Sequence[str] = ()) -> None:
        """A host object; ``addresses`` (glue) are needed when the host lies inside a
        domain of this registry."""
        root, cmd, obj = self._command("create", p.HOST_NS)
        p.sub(obj, p.HOST_NS, "name", normalize_domain(name))
        for addr in addresses:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                raise InvalidInput(f"glue address {addr!r} is not an IP address") from None
            p.sub(obj, p.HOST_NS, "addr", str(ip), ip=f"v{ip.version}")
        self._finish(cmd)
        self.execute(root, "host:create", query=False)

    # -- poll ------------------------------------------------------------------------
    def poll_request(self) -> PollMessage | None:
        root = p.epp_root()
        cmd = p.sub(root, p.EPP_NS, "command")
        p.sub(cmd, p.EPP_NS, "poll", op="req")
        p.sub(cmd, p.EPP_NS, "clTRID", _trid())
        resp = self.execute(root, "poll req", query=True)
        if resp.code == 1300 or not resp.msgq:
            return None
        data: dict[str, str] = {}
        res = resp.res_data
        if res is not None:
            for el in res.iter():
                if isinstance(el.tag, str) and el.text and el.text.strip() and len(el) == 0:
                    data[etree.QName(el).localname] = el.text.strip()
        return PollMessage(str(resp.msgq["id"]), int(resp.msgq["count"]),
                           resp.msgq.get("qdate"), str(resp.msgq.get("msg") or ""), data)

    def poll_ack(self, message_id: str) -> int:
        root = p.epp_root()
        cmd = p.sub(root, p.EPP_NS, "command")
        p.sub(cmd, p.EPP_NS, "poll", op="ack", msgID=message_id)
        p.sub(cmd, p.EPP_NS, "clTRID", _trid())
        resp = self.execute(root, "poll ack", query=False)
        return int(resp.msgq["count"]) if resp.msgq else 0


def _trid() -> str:
    return f"PRV-{uuid.uuid4().hex[:24]}"


def _parse_greeting(root: etree._Element) -> dict[str, Any]:
    g = root.find("epp:greeting", p.NSMAP)
    if g is None:
        raise RegistryUnavailable("the registry did not send a greeting")
    return {
        "server": p.text(g, "epp:svID") or "",
        "date": p.text(g, "epp:svDate"),
        "objects": p.texts(g, "epp:svcMenu/epp:objURI"),
        "extensions": p.texts(g, "epp:svcMenu/epp:svcExtension/epp:extURI"),
    }


def _parse_response(root: etree._Element, command: str) -> Response:
    resp = root.find("epp:response", p.NSMAP)
    if resp is None:
        raise p.FrameError(f"answer to {command} is not an EPP response")
    result = resp.find("epp:result", p.NSMAP)
    if result is None:
        raise p.FrameError(f"answer to {command} has no result")
    reasons = [" ".join(str(x) for x in v.itertext()).strip()
               for v in result.iterfind("epp:extValue/epp:reason", p.NSMAP)]
    msgq_el = resp.find("epp:msgQ", p.NSMAP)
    msgq = None
    if msgq_el is not None:
        msgq = {"count": int(msgq_el.get("count") or 0), "id": msgq_el.get("id"),
                "qdate": p.parse_datetime(p.text(msgq_el, "epp:qDate")),
                "msg": p.text(msgq_el, "epp:msg")}
    return Response(
        code=int(result.get("code") or 0),
        message=p.text(result, "epp:msg") or "",
        reason="; ".join(r for r in reasons if r),
        root=root,
        cl_trid=p.text(resp, "epp:trID/epp:clTRID"),
        sv_trid=p.text(resp, "epp:trID/epp:svTRID"),
        msgq=msgq,
    )
