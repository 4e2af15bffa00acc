"""EPP wire format (RFC 5730-5734) shared by the client and the sandbox registry.

RFC 5734 framing: every EPP message is preceded by a 4-byte big-endian length that counts
itself. The XML is built and parsed with lxml; the parser forbids DTDs, entities and
network access (a registry answer is untrusted input).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from datetime import UTC, date, datetime

from lxml import etree

EPP_NS = "urn:ietf:params:xml:ns:epp-1.0"
DOMAIN_NS = "urn:ietf:params:xml:ns:domain-1.0"
CONTACT_NS = "urn:ietf:params:xml:ns:contact-1.0"
HOST_NS = "urn:ietf:params:xml:ns:host-1.0"
DNSSI_NS = "http://www.arnes.si/xml/epp/dnssi-1.2"
EURID_CONTACT_NS = "http://www.eurid.eu/xml/epp/contact-ext-1.3"
EURID_AUTHINFO_NS = "http://www.eurid.eu/xml/epp/authInfo-1.1"
#: RFC 3915: grace periods and the restore of a domain in redemption
RGP_NS = "urn:ietf:params:xml:ns:rgp-1.0"
#: nic.at's domain extension: a deletion scheduled at expiry (the .at "do not renew")
AT_DOMAIN_NS = "http://www.nic.at/xsd/at-ext-domain-1.0"
OBJ_URIS = (DOMAIN_NS, CONTACT_NS, HOST_NS)
EXT_URIS = (DNSSI_NS, EURID_CONTACT_NS, EURID_AUTHINFO_NS, RGP_NS, AT_DOMAIN_NS)

NSMAP = {
    "epp": EPP_NS,
    "domain": DOMAIN_NS,
    "contact": CONTACT_NS,
    "host": HOST_NS,
    "dnssi": DNSSI_NS,
    "ce": EURID_CONTACT_NS,
    "ai": EURID_AUTHINFO_NS,
    "rgp": RGP_NS,
    "atd": AT_DOMAIN_NS,
}

#: Largest message either side accepts (a registry answer is a few kB).
MAX_FRAME = 1024 * 1024
_HEADER = struct.Struct(">I")

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
    remove_blank_text=True,
)


class FrameError(Exception):
    """The peer closed the connection or sent a frame that is not EPP."""


def q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def sub(parent: etree._Element, ns: str, tag: str, text: str | None = None,
        **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, q(ns, tag), attrib=attrs or None)
    if text is not None:
        el.text = text
    return el


def epp_root() -> etree._Element:
    return etree.Element(q(EPP_NS, "epp"), nsmap={None: EPP_NS})


def serialize(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=False))


def parse(data: bytes) -> etree._Element:
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise FrameError(f"not well-formed XML: {exc}") from exc
    if root.tag != q(EPP_NS, "epp"):
        raise FrameError(f"not an EPP message (root element {root.tag!r})")
    return root


# -- framing ---------------------------------------------------------------------------
def write_frame(sock: socket.socket, payload: bytes) -> None:
    if len(payload) + 4 > MAX_FRAME:
        raise FrameError(f"message of {len(payload)} bytes is larger than {MAX_FRAME}")
    sock.sendall(_HEADER.pack(len(payload) + 4) + payload)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise FrameError("connection closed by peer")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> bytes:
    (total,) = _HEADER.unpack(_read_exact(sock, 4))
    if total < 5 or total > MAX_FRAME:
        raise FrameError(f"bad EPP frame length {total}")
    return _read_exact(sock, total - 4)


# -- values ----------------------------------------------------------------------------
def fmt_datetime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0Z")


def parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    value = text.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_date(text: str | None) -> date | None:
    parsed = parse_datetime(text)
    return parsed.date() if parsed else None


def texts(el: etree._Element, path: str) -> list[str]:
    return [str(x.text or "").strip() for x in el.iterfind(path, NSMAP)]


def text(el: etree._Element, path: str) -> str | None:
    found = el.find(path, NSMAP)
    if found is None:
        return None
    return str(found.text or "").strip()


def names(values: Iterable[str]) -> list[str]:
    return sorted({v.lower() for v in values})
