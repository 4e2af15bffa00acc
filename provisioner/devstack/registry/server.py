"""The sandbox registry's TLS server: RFC 5734 framing, RFC 5730 sessions, and the
RFC 5731-5733 commands answered from the state in ``registry.py``."""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lxml import etree

from provisioner.adapters.registry import protocol as p
from provisioner.devstack.registry.faults import Faults
from provisioner.devstack.registry.registry import EppFailure, Registry, parse
from provisioner.devstack.registry.store import Store
from provisioner.domain.names import normalize_domain
from provisioner.errors import InvalidInput

log = logging.getLogger("provisioner.devstack.registry")

MESSAGES = {
    1000: "Command completed successfully",
    1001: "Command completed successfully; action pending",
    1300: "Command completed successfully; no messages",
    1301: "Command completed successfully; ack to dequeue",
    1500: "Command completed successfully; ending session",
    2001: "Command syntax error",
    2002: "Command use error",
    2003: "Required parameter missing",
    2004: "Parameter value range error",
    2005: "Parameter value syntax error",
    2104: "Billing failure",
    2106: "Object is not eligible for transfer",
    2200: "Authentication error",
    2201: "Authorization error",
    2202: "Invalid authorization information",
    2300: "Object pending transfer",
    2301: "Object not pending transfer",
    2302: "Object exists",
    2303: "Object does not exist",
    2304: "Object status prohibits operation",
    2305: "Object association prohibits operation",
    2306: "Parameter value policy error",
    2400: "Command failed",
    2500: "Command failed; server closing connection",
    2501: "Authentication error; server closing connection",
    2502: "Session limit exceeded; server closing connection",
}
IDLE_TIMEOUT_S = 600.0


class _Drop(Exception):
    """Close the connection without answering (a fault switch)."""


def _fmt(value: str | None) -> str | None:
    dt = parse(value)
    return p.fmt_datetime(dt) if dt else None


class SandboxServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], data_dir: Path, tls: ssl.SSLContext,
                 accounts: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.tls = tls
        self.store = Store(data_dir / "registry.sqlite")
        self.faults = Faults(data_dir / "faults.json")
        self.registry = Registry(self.store, self.now)
        self.trace: list[bytes] | None = None  # tests: every message in and out
        self._svtrid = 0
        self._conn_lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        with self.store.transaction():
            for login, password in accounts.items():
                self.store.put("registrars", {"id": login, "password": password})
        super().__init__(address, SandboxHandler)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(days=self.faults.clock_offset_days())

    def sv_trid(self) -> str:
        with self._conn_lock:
            self._svtrid += 1
            return f"SBX-{self._svtrid:08d}"

    def server_close(self) -> None:
        super().server_close()
        with self._conn_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.store.close()


class SandboxHandler(socketserver.BaseRequestHandler):
    server: SandboxServer

    def setup(self) -> None:
        self.cl_id: str | None = None

    def handle(self) -> None:
        raw: socket.socket = self.request
        try:
            raw.settimeout(IDLE_TIMEOUT_S)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self.server.tls.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.info("TLS handshake failed: %s", exc)
            return
        with self.server._conn_lock:
            self.server.connections.add(conn)
        try:
            self.send(conn, self.greeting())
            while True:
                try:
                    data = p.read_frame(conn)
                except (p.FrameError, OSError, ssl.SSLError):
                    return
                if self.server.trace is not None:
                    self.server.trace.append(data)
                try:
                    answer, close = self.dispatch(data)
                except _Drop:
                    return
                self.send(conn, answer)
                if close:
                    return
        finally:
            with self.server._conn_lock:
                self.server.connections.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def send(self, conn: socket.socket, root: etree._Element) -> None:
        payload = p.serialize(root)
        if self.server.trace is not None:
            self.server.trace.append(payload)
        try:
            p.write_frame(conn, payload)
        except (OSError, ssl.SSLError):
            raise _Drop() from None

    # -- messages --------------------------------------------------------------------
    def greeting(self) -> etree._Element:
        root = p.epp_root()
        g = p.sub(root, p.EPP_NS, "greeting")
        p.sub(g, p.EPP_NS, "svID", "Provisioner EPP sandbox")
        p.sub(g, p.EPP_NS, "svDate", p.fmt_datetime(self.server.now()))
        menu = p.sub(g, p.EPP_NS, "svcMenu")
        p.sub(menu, p.EPP_NS, "version", "1.0")
        p.sub(menu, p.EPP_NS, "lang", "en")
        for uri in p.OBJ_URIS:
            p.sub(menu, p.EPP_NS, "objURI", uri)
        ext = p.sub(menu, p.EPP_NS, "svcExtension")
        for uri in p.EXT_URIS:
            p.sub(ext, p.EPP_NS, "extURI", uri)
        dcp = p.sub(g, p.EPP_NS, "dcp")
        access = p.sub(dcp, p.EPP_NS, "access")
        p.sub(access, p.EPP_NS, "all")
        st = p.sub(dcp, p.EPP_NS, "statement")
        purpose = p.sub(st, p.EPP_NS, "purpose")
        p.sub(purpose, p.EPP_NS, "admin")
        p.sub(purpose, p.EPP_NS, "prov")
        rec = p.sub(st, p.EPP_NS, "recipient")
        p.sub(rec, p.EPP_NS, "ours")
        p.sub(rec, p.EPP_NS, "public")
        ret = p.sub(st, p.EPP_NS, "retention")
        p.sub(ret, p.EPP_NS, "stated")
        return root

    def response(self, code: int, cl_trid: str | None, res: etree._Element | None = None,
                 msgq: dict[str, Any] | None = None, reason: str = "",
                 extension: etree._Element | None = None) -> etree._Element:
        root = p.epp_root()
        r = p.sub(root, p.EPP_NS, "response")
        result = p.sub(r, p.EPP_NS, "result", code=str(code))
        p.sub(result, p.EPP_NS, "msg", MESSAGES.get(code, "Command failed"))
        if reason and code >= 2000:
            ext = p.sub(result, p.EPP_NS, "extValue")
            value = p.sub(ext, p.EPP_NS, "value")
            p.sub(value, p.EPP_NS, "text", reason[:200])
            p.sub(ext, p.EPP_NS, "reason", reason[:200])
        if msgq is not None:
            mq = p.sub(r, p.EPP_NS, "msgQ", count=str(msgq["count"]), id=str(msgq["id"]))
            if msgq.get("qdate"):
                p.sub(mq, p.EPP_NS, "qDate", msgq["qdate"])
            if msgq.get("msg"):
                p.sub(mq, p.EPP_NS, "msg", msgq["msg"])
        if res is not None:
            rd = p.sub(r, p.EPP_NS, "resData")
            rd.append(res)
        if extension is not None:
            p.sub(r, p.EPP_NS, "extension").append(extension)
        tr = p.sub(r, p.EPP_NS, "trID")
        if cl_trid:
            p.sub(tr, p.EPP_NS, "clTRID", cl_trid)
        p.sub(tr, p.EPP_NS, "svTRID", self.server.sv_trid())
        return root

    def dispatch(self, data: bytes) -> tuple[etree._Element, bool]:
        try:
            root = p.parse(data)
        except p.FrameError as exc:
            return self.response(2001, None, reason=str(exc)), False
        if root.find("epp:hello", p.NSMAP) is not None:
            return self.greeting(), False
        cmd = root.find("epp:command", p.NSMAP)
        if cmd is None or len(cmd) == 0:
            return self.response(2001, None, reason="expected <hello> or <command>"), False
        cl_trid = p.text(cmd, "epp:clTRID")
        verb_el = cmd[0]
        verb = etree.QName(verb_el).localname
        obj = verb_el[0] if len(verb_el) else None
        key = verb if obj is None else f"{_prefix(obj)}:{verb}"
        faults = self.server.faults
        if faults.take("drop_before", key):
            raise _Drop()
        code = faults.take("fail", key)
        if code:
            return self.response(int(code), cl_trid, reason="injected fault"), int(code) >= 2500
        if verb == "login":
            return self.login(verb_el, cl_trid)
        if verb == "logout":
            self.cl_id = None
            return self.response(1500, cl_trid), True
        if self.cl_id is None:
            return self.response(2002, cl_trid, reason="log in first"), False
        try:
            with self.server.store.transaction():
                self.server.registry.sweep()
                answer = self.command(key, verb_el, obj, cmd, cl_trid)
        except EppFailure as exc:
            answer = self.response(exc.code, cl_trid, reason=exc.reason)
        except (InvalidInput, ValueError, TypeError, AttributeError) as exc:
            answer = self.response(2005, cl_trid, reason=str(exc))
        if faults.take("drop_after", key):
            raise _Drop()
        delay = faults.delay(key)  # a slow registry: the command is done, the answer is late
        if delay:
            time.sleep(delay)
        return answer, False

    def login(self, el: etree._Element, cl_trid: str | None) -> tuple[etree._Element, bool]:
        if self.cl_id is not None:
            return self.response(2002, cl_trid, reason="already logged in"), False
        cl_id, pw = p.text(el, "epp:clID"), p.text(el, "epp:pw")
        with self.server.store.lock:
            row = self.server.store.get("registrars", "id", cl_id or "")
        if row is None or row["password"] != pw:
            return self.response(2200, cl_trid, reason="wrong client id or password"), False
        self.cl_id = cl_id
        return self.response(1000, cl_trid), False

    # -- commands --------------------------------------------------------------------
    def command(self, key: str, verb_el: etree._Element, obj: etree._Element | None,
                cmd: etree._Element, cl_trid: str | None) -> etree._Element:
        assert self.cl_id is not None
        reg = self.server.registry
        me = self.cl_id
        if key == "poll":
            return self.poll(verb_el, cl_trid)
        if obj is None:
            raise EppFailure(2001, f"<{key}> without an object")
        if key == "domain:check":
            res = _el(p.DOMAIN_NS, "chkData")
            for name in p.texts(obj, "domain:name"):
                try:
                    clean = normalize_domain(name)
                    avail, reason = reg.check_domain(clean)
                except InvalidInput:
                    clean, avail, reason = name, False, "Invalid domain name"
                cd = p.sub(res, p.DOMAIN_NS, "cd")
                p.sub(cd, p.DOMAIN_NS, "name", clean, avail="1" if avail else "0")
                if reason:
                    p.sub(cd, p.DOMAIN_NS, "reason", reason)
            return self.response(1000, cl_trid, res)
        if key == "domain:create":
            name = _name(obj, "domain:name")
            contacts: dict[str, list[str]] = {}
            for c in obj.iterfind("domain:contact", p.NSMAP):
                contacts.setdefault(str(c.get("type")), []).append(str(c.text))
            period = obj.find("domain:period", p.NSMAP)
            years = int(period.text or 1) if period is not None else 1
            if period is not None and period.get("unit") == "m":
                raise EppFailure(2004, "periods are in years")
            row = reg.create_domain(
                me, name, years, p.text(obj, "domain:registrant"), contacts,
                [normalize_domain(h) for h in p.texts(obj, "domain:ns/domain:hostObj")],
                p.text(obj, "domain:authInfo/domain:pw") or "")
            res = _el(p.DOMAIN_NS, "creData")
            p.sub(res, p.DOMAIN_NS, "name", name)
            p.sub(res, p.DOMAIN_NS, "crDate", _fmt(row["cr_date"]))
            p.sub(res, p.DOMAIN_NS, "exDate", _fmt(row["ex_date"]))
            return self.response(1000, cl_trid, res)
        if key == "domain:info":
            name = _name(obj, "domain:name")
            auth = p.text(obj, "domain:authInfo/domain:pw")
            want = cmd.find("epp:extension/ai:info/ai:request", p.NSMAP) is not None
            row, full = reg.info_domain(me, name, auth, want)
            rgp = None
            if row["state"] == "quarantine":  # RFC 3915: the grace-period state
                rgp = etree.Element(p.q(p.RGP_NS, "infData"), nsmap={"rgp": p.RGP_NS})
                p.sub(rgp, p.RGP_NS, "rgpStatus", s="redemptionPeriod")
            return self.response(1000, cl_trid, self.domain_inf(row, full), extension=rgp)
        if key == "domain:renew":
            name = _name(obj, "domain:name")
            period = obj.find("domain:period", p.NSMAP)
            years = int(period.text or 1) if period is not None else 1
            row = reg.renew_domain(me, name, p.text(obj, "domain:curExpDate") or "", years)
            res = _el(p.DOMAIN_NS, "renData")
            p.sub(res, p.DOMAIN_NS, "name", name)
            p.sub(res, p.DOMAIN_NS, "exDate", _fmt(row["ex_date"]))
            return self.response(1000, cl_trid, res)
        if key == "domain:transfer":
            name = _name(obj, "domain:name")
            op = str(verb_el.get("op"))
            period = obj.find("domain:period", p.NSMAP)
            tr_years = int(period.text or 1) if period is not None else None
            row, code = reg.transfer(me, op, name, p.text(obj, "domain:authInfo/domain:pw"),
                                     tr_years)
            tr = row["transfer"]
            res = _el(p.DOMAIN_NS, "trnData")
            p.sub(res, p.DOMAIN_NS, "name", name)
            p.sub(res, p.DOMAIN_NS, "trStatus", tr["status"])
            p.sub(res, p.DOMAIN_NS, "reID", tr["re_id"])
            p.sub(res, p.DOMAIN_NS, "reDate", _fmt(tr["re_date"]))
            p.sub(res, p.DOMAIN_NS, "acID", tr["ac_id"])
            p.sub(res, p.DOMAIN_NS, "acDate", _fmt(tr["ac_date"]))
            p.sub(res, p.DOMAIN_NS, "exDate", _fmt(row["ex_date"]))
            return self.response(code, cl_trid, res)
        if key == "domain:update":
            name = _name(obj, "domain:name")
            restore = cmd.find("epp:extension/rgp:update/rgp:restore", p.NSMAP)
            if restore is not None:  # RFC 3915
                if restore.get("op") == "request":
                    reg.restore_domain(me, name)
                elif reg.own_domain(name, me)["state"] != "active":
                    raise EppFailure(2304, "no restore is pending")
                return self.response(1000, cl_trid)
            parts = {}
            for tag in ("add", "rem"):
                el = obj.find(f"domain:{tag}", p.NSMAP)
                part: dict[str, Any] = {"ns": [], "contacts": {}, "status": []}
                if el is not None:
                    part["ns"] = [normalize_domain(h) for h in p.texts(el, "domain:ns/domain:hostObj")]
                    for c in el.iterfind("domain:contact", p.NSMAP):
                        part["contacts"].setdefault(str(c.get("type")), []).append(str(c.text))
                    part["status"] = [str(s.get("s")) for s in el.iterfind("domain:status", p.NSMAP)]
                parts[tag] = part
            chg = obj.find("domain:chg", p.NSMAP)
            registrant = auth = None
            if chg is not None:
                registrant = p.text(chg, "domain:registrant")
                if chg.find("domain:authInfo", p.NSMAP) is not None:
                    auth = p.text(chg, "domain:authInfo/domain:pw") or ""
            reg.update_domain(me, name, parts["add"], parts["rem"], registrant, auth)
            return self.response(1000, cl_trid)
        if key == "domain:delete":
            when = p.text(cmd, "epp:extension/atd:delete/atd:scheduledate") or "now"
            if when not in ("now", "expiration"):
                raise EppFailure(2004, f"scheduledate {when!r} is not now or expiration")
            reg.delete_domain(me, _name(obj, "domain:name"), at_expiry=when == "expiration")
            return self.response(1000, cl_trid)
        if key == "contact:check":
            res = _el(p.CONTACT_NS, "chkData")
            for handle in p.texts(obj, "contact:id"):
                exists = self.server.store.get("contacts", "id", handle) is not None
                cd = p.sub(res, p.CONTACT_NS, "cd")
                p.sub(cd, p.CONTACT_NS, "id", handle, avail="0" if exists else "1")
            return self.response(1000, cl_trid, res)
        if key == "contact:create":
            handle = p.text(obj, "contact:id") or ""
            if not 3 <= len(handle) <= 16:
                raise EppFailure(2005, "contact id must be 3-16 characters")
            data = _contact_data(obj)
            kind = cmd.find("epp:extension/dnssi:ext/dnssi:create/dnssi:contact", p.NSMAP)
            if kind is not None:
                data["type"] = kind.get("type")
            eu = cmd.find("epp:extension/ce:create", p.NSMAP)
            if eu is not None:
                data["eu_type"] = p.text(eu, "ce:type")
                data["lang"] = p.text(eu, "ce:lang")
            reg.create_contact(me, handle, data, p.text(obj, "contact:authInfo/contact:pw") or "")
            res = _el(p.CONTACT_NS, "creData")
            p.sub(res, p.CONTACT_NS, "id", handle)
            p.sub(res, p.CONTACT_NS, "crDate", p.fmt_datetime(self.server.now()))
            return self.response(1000, cl_trid, res)
        if key == "contact:info":
            return self.response(1000, cl_trid, self.contact_inf(reg.contact(
                p.text(obj, "contact:id") or "")))
        if key == "contact:update":
            chg = obj.find("contact:chg", p.NSMAP)
            data = _contact_data(chg) if chg is not None else {}
            reg.update_contact(me, p.text(obj, "contact:id") or "", data)
            return self.response(1000, cl_trid)
        if key == "host:check":
            res = _el(p.HOST_NS, "chkData")
            for name in p.texts(obj, "host:name"):
                exists = self.server.store.get("hosts", "name", name.lower()) is not None
                cd = p.sub(res, p.HOST_NS, "cd")
                p.sub(cd, p.HOST_NS, "name", name, avail="0" if exists else "1")
            return self.response(1000, cl_trid, res)
        if key == "host:create":
            name = _name(obj, "host:name")
            addrs = [(str(a.get("ip") or "v4"), str(a.text)) for a in obj.iterfind("host:addr", p.NSMAP)]
            reg.create_host(me, name, addrs)
            res = _el(p.HOST_NS, "creData")
            p.sub(res, p.HOST_NS, "name", name)
            p.sub(res, p.HOST_NS, "crDate", p.fmt_datetime(self.server.now()))
            return self.response(1000, cl_trid, res)
        raise EppFailure(2101 if key.split(":")[0] in ("domain", "contact", "host") else 2307,
                         f"{key} is not implemented by the sandbox")

    def poll(self, el: etree._Element, cl_trid: str | None) -> etree._Element:
        assert self.cl_id is not None
        reg = self.server.registry
        if el.get("op") == "ack":
            count, next_id = reg.ack(self.cl_id, str(el.get("msgID") or ""))
            return self.response(1000, cl_trid, msgq={"count": count, "id": next_id})
        msg, count = reg.poll(self.cl_id)
        if msg is None:
            return self.response(1300, cl_trid)
        res = None
        data = msg["data"]
        if data.get("event", "").startswith("transfer") and data.get("name"):
            row = self.server.store.get("domains", "name", data["name"])
            tr = self.server.store.get("transfers", "name", data["name"])
            if row is not None and tr is not None:
                res = _el(p.DOMAIN_NS, "trnData")
                p.sub(res, p.DOMAIN_NS, "name", data["name"])
                p.sub(res, p.DOMAIN_NS, "trStatus", tr["status"])
                p.sub(res, p.DOMAIN_NS, "reID", tr["re_id"])
                p.sub(res, p.DOMAIN_NS, "reDate", _fmt(tr["re_date"]))
                p.sub(res, p.DOMAIN_NS, "acID", tr["ac_id"])
                p.sub(res, p.DOMAIN_NS, "acDate", _fmt(tr["ac_date"]))
                p.sub(res, p.DOMAIN_NS, "exDate", _fmt(row["ex_date"]))
        return self.response(1301, cl_trid, res, msgq={
            "count": count, "id": msg["id"], "qdate": _fmt(msg["qdate"]), "msg": msg["msg"]})

    def domain_inf(self, row: dict[str, Any], full: bool) -> etree._Element:
        res = _el(p.DOMAIN_NS, "infData")
        p.sub(res, p.DOMAIN_NS, "name", row["name"])
        p.sub(res, p.DOMAIN_NS, "roid", row["roid"])
        for s in row["statuses"]:
            p.sub(res, p.DOMAIN_NS, "status", s=s)
        if full:
            if row["registrant"]:
                p.sub(res, p.DOMAIN_NS, "registrant", row["registrant"])
            for role in ("admin", "billing", "tech"):
                for handle in row["contacts"].get(role, []):
                    p.sub(res, p.DOMAIN_NS, "contact", handle, type=role)
            if row["ns"]:
                ns = p.sub(res, p.DOMAIN_NS, "ns")
                for host in row["ns"]:
                    p.sub(ns, p.DOMAIN_NS, "hostObj", host)
            for host in self.server.store.all("SELECT name FROM hosts WHERE name LIKE ?",
                                              f"%.{row['name']}"):
                p.sub(res, p.DOMAIN_NS, "host", host["name"])
        p.sub(res, p.DOMAIN_NS, "clID", row["cl_id"])
        p.sub(res, p.DOMAIN_NS, "crID", row["cr_id"])
        p.sub(res, p.DOMAIN_NS, "crDate", _fmt(row["cr_date"]))
        if full and row.get("up_date"):
            p.sub(res, p.DOMAIN_NS, "upDate", _fmt(row["up_date"]))
        p.sub(res, p.DOMAIN_NS, "exDate", _fmt(row["ex_date"]))
        if row.get("tr_date"):
            p.sub(res, p.DOMAIN_NS, "trDate", _fmt(row["tr_date"]))
        if full and row.get("auth_pw"):
            auth = p.sub(res, p.DOMAIN_NS, "authInfo")
            p.sub(auth, p.DOMAIN_NS, "pw", row["auth_pw"])
        return res

    def contact_inf(self, row: dict[str, Any]) -> etree._Element:
        d = row["data"]
        mine = row["cl_id"] == self.cl_id
        res = _el(p.CONTACT_NS, "infData")
        p.sub(res, p.CONTACT_NS, "id", row["id"])
        p.sub(res, p.CONTACT_NS, "roid", row["roid"])
        p.sub(res, p.CONTACT_NS, "status", s="ok")
        info = p.sub(res, p.CONTACT_NS, "postalInfo", type="loc")
        hidden = bool(d.get("privacy")) and not mine
        p.sub(info, p.CONTACT_NS, "name", "REDACTED" if hidden else d.get("name") or "?")
        if d.get("org"):
            p.sub(info, p.CONTACT_NS, "org", d["org"])
        addr = p.sub(info, p.CONTACT_NS, "addr")
        if not hidden:
            for street in d.get("street", []):
                p.sub(addr, p.CONTACT_NS, "street", street)
        p.sub(addr, p.CONTACT_NS, "city", d.get("city") or "?")
        if d.get("pc") and not hidden:
            p.sub(addr, p.CONTACT_NS, "pc", d["pc"])
        p.sub(addr, p.CONTACT_NS, "cc", d.get("cc") or "SI")
        if d.get("voice") and not hidden:
            p.sub(res, p.CONTACT_NS, "voice", d["voice"])
        p.sub(res, p.CONTACT_NS, "email", "redacted@sandbox.invalid" if hidden else d.get("email") or "?")
        p.sub(res, p.CONTACT_NS, "clID", row["cl_id"])
        p.sub(res, p.CONTACT_NS, "crID", row["cl_id"])
        p.sub(res, p.CONTACT_NS, "crDate", _fmt(row["cr_date"]))
        if row.get("up_date"):
            p.sub(res, p.CONTACT_NS, "upDate", _fmt(row["up_date"]))
        if mine:
            auth = p.sub(res, p.CONTACT_NS, "authInfo")
            p.sub(auth, p.CONTACT_NS, "pw", row["auth_pw"] or "none")
        if d.get("privacy"):
            disclose = p.sub(res, p.CONTACT_NS, "disclose", flag="0")
            p.sub(disclose, p.CONTACT_NS, "name", type="loc")
            p.sub(disclose, p.CONTACT_NS, "addr", type="loc")
            p.sub(disclose, p.CONTACT_NS, "voice")
            p.sub(disclose, p.CONTACT_NS, "email")
        return res


def _prefix(obj: etree._Element) -> str:
    ns = etree.QName(obj).namespace
    return {p.DOMAIN_NS: "domain", p.CONTACT_NS: "contact", p.HOST_NS: "host"}.get(ns or "", "?")


def _el(ns: str, tag: str) -> etree._Element:
    prefix = {p.DOMAIN_NS: "domain", p.CONTACT_NS: "contact", p.HOST_NS: "host"}[ns]
    return etree.Element(p.q(ns, tag), nsmap={prefix: ns})


def _name(obj: etree._Element, path: str) -> str:
    value = p.text(obj, path)
    if not value:
        raise EppFailure(2003, f"{path} is required")
    try:
        return normalize_domain(value)
    except InvalidInput as exc:
        raise EppFailure(2005, str(exc)) from None


def _contact_data(el: etree._Element) -> dict[str, Any]:
    data: dict[str, Any] = {}
    info = el.find("contact:postalInfo", p.NSMAP)
    if info is not None:
        for key, path in (("name", "contact:name"), ("org", "contact:org"),
                          ("city", "contact:addr/contact:city"), ("pc", "contact:addr/contact:pc"),
                          ("cc", "contact:addr/contact:cc")):
            value = p.text(info, path)
            if value is not None:
                data[key] = value
        data["street"] = p.texts(info, "contact:addr/contact:street")
    for key in ("voice", "email"):
        value = p.text(el, f"contact:{key}")
        if value is not None:
            data[key] = value
    disclose = el.find("contact:disclose", p.NSMAP)
    if disclose is not None:
        data["privacy"] = disclose.get("flag") in ("0", "false")
    return data

