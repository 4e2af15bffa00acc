"""The EPP client against a scripted in-memory peer: framing, login, keep-alive, the retry
rules, result-code mapping, and hostile input refused before any traffic."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
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
    RegistryLoginFailed,
    RegistryRefused,
    RegistryUnavailable,
    StatusProhibits,
    error_for,
)
from provisioner.adapters.registry import protocol as p
from provisioner.errors import ConfigurationError, Conflict, InvalidInput, NotFound, TransientError

SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).resolve().parents[2] / "schemas" / "epp"
                                         / "all.xsd")))
GREETING = (b'<?xml version="1.0" encoding="UTF-8"?><epp xmlns="urn:ietf:params:xml:ns:epp-1.0">'
            b"<greeting><svID>fake</svID><svDate>2026-11-22T00:00:00.0Z</svDate><svcMenu>"
            b"<version>1.0</version><lang>en</lang>"
            b"<objURI>urn:ietf:params:xml:ns:domain-1.0</objURI></svcMenu><dcp><access><all/>"
            b"</access><statement><purpose><admin/></purpose><recipient><ours/></recipient>"
            b"<retention><stated/></retention></statement></dcp></greeting></epp>")


def answer(code: int, res: str = "") -> bytes:
    return (f'<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><response><result code="{code}">'
            f"<msg>m</msg></result>{res}<trID><svTRID>SV-1</svTRID></trID></response></epp>").encode()


CHK = ('<resData><domain:chkData xmlns:domain="urn:ietf:params:xml:ns:domain-1.0"><domain:cd>'
       '<domain:name avail="1">a.si</domain:name></domain:cd></domain:chkData></resData>')


class FakeSocket:
    """A registry that answers from a script: Callable(command-xml) -> bytes | None
    (None: the connection drops instead of answering)."""

    def __init__(self, script: Callable[[etree._Element], bytes | None], sent: list[bytes]) -> None:
        self.script = script
        self.sent = sent
        self.inbox = struct.pack(">I", len(GREETING) + 4) + GREETING
        self.closed = False

    def settimeout(self, value: float) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        if self.closed:
            raise BrokenPipeError("closed")
        payload = data[4:]
        assert struct.unpack(">I", data[:4])[0] == len(data)
        self.sent.append(payload)
        root = etree.fromstring(payload)
        assert SCHEMA.validate(root), SCHEMA.error_log.last_error
        if root.find("epp:hello", p.NSMAP) is not None:
            reply: bytes | None = GREETING
        elif root.find("epp:command/epp:login", p.NSMAP) is not None:
            reply = answer(1000)
        elif root.find("epp:command/epp:logout", p.NSMAP) is not None:
            reply = answer(1500)
        else:
            reply = self.script(root)
        if reply is None:
            self.closed = True
            return
        self.inbox += struct.pack(">I", len(reply) + 4) + reply

    def recv(self, size: int) -> bytes:
        if not self.inbox:
            return b""  # peer closed
        chunk, self.inbox = self.inbox[:size], self.inbox[size:]
        return chunk

    def close(self) -> None:
        self.closed = True


class Registry:
    def __init__(self, script: Callable[[etree._Element], bytes | None]) -> None:
        self.script = script
        self.sent: list[bytes] = []
        self.connects = 0

    def connect(self) -> socket.socket:
        self.connects += 1
        return FakeSocket(self.script, self.sent)  # type: ignore[return-value]

    def commands(self, tag: str) -> int:
        return sum(1 for m in self.sent if f"<{tag}".encode() in m)


def client(reg: Registry, **over: object) -> EppClient:
    values: dict[str, object] = dict(host="127.0.0.1", port=700, login="provisioner",
                                     password="secret-pw")
    values.update(over)
    return EppClient(RegistryConfig(**values), connector=reg.connect)  # type: ignore[arg-type]


def test_greeting_login_and_keep_alive() -> None:
    reg = Registry(lambda cmd: answer(1000, CHK))
    c = client(reg)
    assert c.check_domains(["a.si"])["a.si"].available
    assert c.check_domains(["a.si"])["a.si"].available
    assert reg.connects == 1 and reg.commands("login") == 1
    c.close()
    assert reg.commands("logout") == 1


def test_session_per_command_logs_out_each_time() -> None:
    reg = Registry(lambda cmd: answer(1000, CHK))
    c = client(reg, keep_alive=False)
    c.check_domains(["a.si"])
    c.check_domains(["a.si"])
    assert reg.connects == 2 and reg.commands("logout") == 2


def test_a_query_is_resent_once_on_a_new_connection() -> None:
    drops = [True]

    def script(cmd: etree._Element) -> bytes | None:
        if drops:
            drops.pop()
            return None
        return answer(1000, CHK)

    reg = Registry(script)
    assert client(reg).check_domains(["a.si"])["a.si"].available
    assert reg.connects == 2


def test_a_create_is_never_resent() -> None:
    reg = Registry(lambda cmd: None)
    with pytest.raises(OutcomeUnknown) as exc:
        client(reg).create_domain("a.si", 1, "PV1", {}, ["ns1.x.example"])
    assert isinstance(exc.value, TransientError)
    assert reg.commands("domain:create") == 1


def test_closing_codes_end_the_session() -> None:
    codes = [2502, 1000]
    reg = Registry(lambda cmd: answer(codes.pop(0), CHK if not codes else ""))
    c = client(reg)
    with pytest.raises(RegistryUnavailable):
        c.check_domains(["a.si"])
    c.check_domains(["a.si"])
    assert reg.connects == 2


def test_refused_login_is_a_configuration_error() -> None:
    class Refusing(Registry):
        def connect(self) -> socket.socket:
            sock = super().connect()
            orig = sock.sendall

            def sendall(data: bytes) -> None:
                if b"<login>" in data:
                    sock.inbox += struct.pack(">I", len(answer(2200)) + 4) + answer(2200)  # type: ignore[attr-defined]
                    return
                orig(data)

            sock.sendall = sendall  # type: ignore[method-assign]
            return sock

    with pytest.raises(RegistryLoginFailed) as exc:
        client(Refusing(lambda cmd: answer(1000))).check_domains(["a.si"])
    assert isinstance(exc.value, ConfigurationError)


def test_unreachable_registry_is_transient() -> None:
    def refuse() -> socket.socket:
        raise ConnectionRefusedError("refused")

    c = EppClient(RegistryConfig("127.0.0.1", 1, "provisioner", "secret-pw"), connector=refuse)
    with pytest.raises(RegistryUnavailable):
        c.check_domains(["a.si"])


@pytest.mark.parametrize(
    ("code", "kind", "family"),
    [
        (2302, ObjectExists, Conflict),
        (2303, ObjectNotFound, NotFound),
        (2304, StatusProhibits, Conflict),
        (2305, StatusProhibits, Conflict),
        (2106, StatusProhibits, Conflict),
        (2201, AuthorizationFailed, InvalidInput),
        (2202, AuthorizationFailed, InvalidInput),
        (2200, RegistryLoginFailed, ConfigurationError),
        (2400, RegistryUnavailable, TransientError),
        (2500, RegistryUnavailable, TransientError),
        (2501, RegistryUnavailable, TransientError),
        (2502, RegistryUnavailable, TransientError),
        (2001, RegistryRefused, InvalidInput),
        (2005, RegistryRefused, InvalidInput),
        (2306, RegistryRefused, InvalidInput),
    ],
)
def test_result_codes_map_onto_our_errors(code: int, kind: type, family: type) -> None:
    err = error_for(code, "msg", "domain:create", "why")
    assert isinstance(err, kind) and isinstance(err, family)
    assert err.code == code and "why" in str(err)  # type: ignore[attr-defined]


def test_result_code_from_the_wire_is_raised() -> None:
    reg = Registry(lambda cmd: answer(2302))
    with pytest.raises(ObjectExists):
        client(reg).create_domain("a.si", 1, "PV1", {})


@pytest.mark.parametrize(
    "name",
    ["paypal-\u0440ay.si", "a" * 64 + ".si", "bad_name.si", "x..si", "-lead.si", "a.si\r\n<x/>",
     "ünï\u200bcode.si", "a" * 250 + ".si"],
)
def test_hostile_names_are_refused_before_any_traffic(name: str) -> None:
    def never() -> socket.socket:
        raise AssertionError("no EPP traffic for a hostile name")

    c = EppClient(RegistryConfig("127.0.0.1", 700, "provisioner", "secret-pw"), connector=never)
    for call in (lambda: c.check_domains([name]), lambda: c.info_domain(name),
                 lambda: c.create_domain(name, 1, "PV1", {}),
                 lambda: c.transfer_domain("request", name, "x")):
        with pytest.raises(InvalidInput):
            call()


def test_idn_is_sent_as_punycode() -> None:
    reg = Registry(lambda cmd: answer(1000, CHK.replace("a.si", "xn--aba-b3a.si")))
    result = client(reg).check_domains(["Žaba.SI"])
    assert "xn--aba-b3a.si" in result
    assert b"<domain:name>xn--aba-b3a.si</domain:name>" in reg.sent[-1]


def test_frames_over_a_real_socket_pair() -> None:
    a, b = socket.socketpair()
    with a, b:
        p.write_frame(a, b"<epp/>")
        assert p.read_frame(b) == b"<epp/>"
        a.sendall(struct.pack(">I", 3))
        with pytest.raises(p.FrameError):
            p.read_frame(b)
        a.close()
        with pytest.raises(p.FrameError):
            p.read_frame(b)


def test_parser_refuses_entities_and_non_epp() -> None:
    with pytest.raises(p.FrameError):
        p.parse(b"<foo/>")
    bomb = (b'<?xml version="1.0"?><!DOCTYPE epp [<!ENTITY a "aaaaaaaaaa">]>'
            b'<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><hello>&a;</hello></epp>')
    root = p.parse(bomb)
    assert "aaaaaaaaaa" not in etree.tostring(root).decode()
