"""ISO 20022 camt.053 bank statements -> PaymentNotice values.

A thin lxml layer, not ``pycamt``. pycamt 1.1.1 was tried first and does not
hold up for matching money:

* a batched entry's transactions all get the *entry's* ``AcctSvcrRef``
  (``TxDtls/Refs/AcctSvcrRef`` is never read), so there is no unique id per
  transaction;
* a transaction's amount is the first ``.//Amt`` below ``TxDtls``: in .001.02
  that is ``AmtDtls/InstdAmt`` (what the payer instructed, possibly in another
  currency) ahead of ``AmtDtls/TxAmt``, and the ``Ccy`` of transaction amounts is
  dropped (the entry's currency is reported instead);
* it returns dicts, not elements, so the entry's XML (``raw``) is lost; it
  accepts any root (version ``"unknown"``) and DOCTYPEs.

Parsing: lxml with ``resolve_entities=False, no_network=True, load_dtd=False``;
any DOCTYPE is refused, so entity bombs and external entities never expand.
The root must be ``Document`` in a ``urn:iso:std:iso:20022:tech:xsd:camt.053.001.NN``
namespace (all element paths below are the same in .02 and .08 except
where noted).

One notice per entry, or per ``NtryDtls/TxDtls`` when an entry has more than
one (a batch). Kinds: a booked credit pays; a booked debit with ``RvslInd``
reverses an earlier credit; a credit with ``RvslInd`` (reversal of one of our
debits), other debits and non-booked (``PDNG``/``INFO``) entries are ignored.

``event_id`` = ``"{IBAN}:{ref}"`` where ref is the first of
``TxDtls/Refs/AcctSvcrRef``, the entry's ``AcctSvcrRef`` (plus ``"#n"``, the
transaction's position, in a batch), ``"e2e:" + EndToEndId``; if none
exists, ``"sha256:" + SHA-256(IBAN, booking date, position, C14N of the entry)``.
A non-booked entry's id ends in ``":{status}"``, so the same entry booked later
is a new event, not a duplicate.

``txn_id`` is the bank's reference (``AcctSvcrRef``, else ``EndToEndId``,
else ``NtryRef``). For a reversal, ``reverses_txn`` is the returned transaction's
``EndToEndId`` (a return carries the original's end-to-end id; camt.053 has no
field for the original entry's bank reference), else the remittance reference.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from datetime import UTC, date, datetime, time
from decimal import Decimal

from lxml import etree

from provisioner.adapters.payments import (
    IGNORED,
    PAYMENT,
    REVERSAL,
    PaymentNotice,
    currency_code,
    decimal_amount,
)
from provisioner.errors import InvalidInput

PROVIDER = "bank"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

_NS_RE = re.compile(r"^urn:iso:std:iso:20022:tech:xsd:camt\.053\.001\.\d{2}$")
# SI (Slovenian model: SIxx + up to 22 digits/hyphens) and ISO 11649 RF references.
_REF_RE = re.compile(r"\b(RF\d{2}[0-9A-Z]{1,21}|SI\d{2} ?[0-9][0-9-]{0,21})(?![0-9A-Z-])", re.I)
_NOT_PROVIDED = "NOTPROVIDED"
# A DOCTYPE in the prolog of an ASCII-compatible document, found before libxml2 reads
# it (other encodings are caught by the docinfo check after parsing).
_PROLOG_DOCTYPE_RE = re.compile(
    rb"(?:\xef\xbb\xbf)?\s*(?:<\?.*?\?>\s*|<!--.*?-->\s*)*<!DOCTYPE", re.S
)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )


def _text(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    text = el.text.strip()
    return text or None


class _Q:
    """Namespaced element paths for one document."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def path(self, path: str) -> str:
        return "/".join(f"{{{self.ns}}}{p}" for p in path.split("/"))

    def find(self, el: etree._Element, path: str) -> etree._Element | None:
        return el.find(self.path(path))

    def findall(self, el: etree._Element, path: str) -> list[etree._Element]:
        return el.findall(self.path(path))

    def text(self, el: etree._Element | None, *paths: str) -> str | None:
        """The text of the first of ``paths`` (relative to ``el``) that has one."""
        if el is None:
            return None
        for path in paths:
            value = _text(self.find(el, path))
            if value is not None:
                return value
        return None


def _load(data: bytes, max_bytes: int) -> etree._Element:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput("a camt.053 statement must be bytes")
    if len(data) > max_bytes:
        raise InvalidInput(f"camt.053 statement is larger than {max_bytes} bytes")
    if not data:
        raise InvalidInput("camt.053 statement is empty")
    if _PROLOG_DOCTYPE_RE.match(bytes(data[:65536])):
        raise InvalidInput("camt.053 statement has a DOCTYPE; refused")
    try:
        root = etree.fromstring(bytes(data), parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise InvalidInput(f"camt.053 statement is not well-formed XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise InvalidInput("camt.053 statement has a DOCTYPE; refused")
    qname = etree.QName(root)
    if qname.localname != "Document" or not _NS_RE.match(qname.namespace or ""):
        raise InvalidInput(f"not a camt.053 document (root {root.tag!r})")
    return root


def _amount(q: _Q, el: etree._Element, *paths: str) -> tuple[Decimal, str] | None:
    for path in paths:
        amt = q.find(el, path)
        if amt is not None:
            value = decimal_amount(amt.text, what="camt.053 Amt")
            return value, currency_code(amt.get("Ccy"))
    return None


def _occurred_at(q: _Q, entry: etree._Element) -> datetime | None:
    dt_tm = q.text(entry, "BookgDt/DtTm", "ValDt/DtTm")
    if dt_tm is not None:
        try:
            parsed = datetime.fromisoformat(dt_tm)
        except ValueError as exc:
            raise InvalidInput(f"camt.053 DtTm is not ISO 8601: {dt_tm!r}") from exc
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    day = q.text(entry, "BookgDt/Dt", "ValDt/Dt")
    if day is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(day[:10]), time(0), tzinfo=UTC)
    except ValueError as exc:
        raise InvalidInput(f"camt.053 Dt is not a date: {day!r}") from exc


def _reference(q: _Q, tx: etree._Element | None) -> str | None:
    if tx is None:
        return None
    for strd in q.findall(tx, "RmtInf/Strd"):
        ref = q.text(strd, "CdtrRefInf/Ref")
        if ref is not None:
            return ref
    for ustrd in q.findall(tx, "RmtInf/Ustrd"):
        text = _text(ustrd)
        match = _REF_RE.search(text) if text else None
        if match:
            return match.group(1).upper()
    return None


def _party_name(q: _Q, tx: etree._Element | None, role: str) -> str | None:
    # .001.02: RltdPties/Dbtr/Nm; .001.08: RltdPties/Dbtr/Pty/Nm
    return q.text(tx, f"RltdPties/{role}/Nm", f"RltdPties/{role}/Pty/Nm")


def _is_true(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def account_id(value: str) -> str:
    """An IBAN (or other account id) as compared: no spaces, upper case."""
    return "".join(value.split()).upper()


def parse_camt053(data: bytes, *, account_iban: str | Collection[str] | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> list[PaymentNotice]:
    """Every entry (or batched transaction) of every statement in ``data``; each notice
    names the account it was booked on (``account``), so it pays only a proforma of
    the brand whose account that is.

    With ``account_iban`` (ours: one IBAN, or each brand's), a document holding a
    statement of any other account is refused whole: another account's credits are not
    payments to us.

    Raises InvalidInput for over-size, malformed, DOCTYPE-carrying or non-camt.053
    input, a statement of another account, and for entries without a readable amount
    or credit/debit indicator.
    """
    root = _load(data, max_bytes)
    q = _Q(etree.QName(root).namespace or "")
    notices: list[PaymentNotice] = []
    statements = q.findall(root, "BkToCstmrStmt/Stmt")
    if not statements:
        raise InvalidInput("camt.053 document has no BkToCstmrStmt/Stmt")
    if account_iban is None:
        ours: set[str] | None = None
    else:
        given = [account_iban] if isinstance(account_iban, str) else list(account_iban)
        ours = {account_id(a) for a in given if a.strip()}
    for stmt in statements:
        iban = q.text(stmt, "Acct/Id/IBAN", "Acct/Id/Othr/Id")
        if iban is None:
            raise InvalidInput("camt.053 statement has no account id")
        iban = iban.replace(" ", "").upper()  # as in every event id stored so far
        if ours is not None and account_id(iban) not in ours:
            raise InvalidInput(f"camt.053 statement of account {iban}, which is not our account "
                               f"({', '.join(sorted(ours))}); nothing imported")
        for entry in q.findall(stmt, "Ntry"):
            notices.extend(_entry_notices(q, iban, entry))
    return notices


def _entry_notices(q: _Q, iban: str, entry: etree._Element) -> list[PaymentNotice]:
    entry_amount = _amount(q, entry, "Amt")
    indicator = q.text(entry, "CdtDbtInd")
    if entry_amount is None or indicator not in ("CRDT", "DBIT"):
        raise InvalidInput("camt.053 entry lacks Amt or a CRDT/DBIT indicator")
    reversal_flag = _is_true(q.text(entry, "RvslInd"))
    status = q.text(entry, "Sts/Cd", "Sts/Prtry", "Sts") or "BOOK"
    status = status.upper()
    occurred_at = _occurred_at(q, entry)
    booking_day = q.text(entry, "BookgDt/Dt", "BookgDt/DtTm") or ""
    entry_ref = q.text(entry, "AcctSvcrRef")
    ntry_ref = q.text(entry, "NtryRef")
    raw = etree.tostring(entry)

    txs: list[etree._Element] = [
        tx for details in q.findall(entry, "NtryDtls") for tx in q.findall(details, "TxDtls")
    ]
    batch = len(txs) > 1
    items: list[etree._Element | None] = list(txs) if txs else [None]

    notices = []
    for position, tx in enumerate(items):
        tx_ref = q.text(tx, "Refs/AcctSvcrRef")
        e2e = q.text(tx, "Refs/EndToEndId")
        if e2e is not None and e2e.upper() == _NOT_PROVIDED:
            e2e = None

        if batch and tx is not None:
            # .001.08: TxDtls/Amt; .001.02: TxDtls/AmtDtls/TxAmt/Amt
            amount_ccy = _amount(q, tx, "Amt", "AmtDtls/TxAmt/Amt")
            tx_indicator = q.text(tx, "CdtDbtInd") or indicator
        else:
            amount_ccy = entry_amount
            tx_indicator = indicator
        if tx_indicator not in ("CRDT", "DBIT"):
            raise InvalidInput(f"camt.053 transaction has CdtDbtInd {tx_indicator!r}")

        if tx_ref is not None:
            id_ref = tx_ref
        elif entry_ref is not None:
            id_ref = f"{entry_ref}#{position}" if batch else entry_ref
        elif e2e is not None:
            id_ref = f"e2e:{e2e}"
        else:
            digest = hashlib.sha256()
            for part in (iban.encode(), booking_day.encode(), str(position).encode()):
                digest.update(part + b"\x00")
            digest.update(etree.tostring(entry, method="c14n"))
            id_ref = f"sha256:{digest.hexdigest()}"
        event_id = f"{iban}:{id_ref}" + ("" if status == "BOOK" else f":{status}")

        if batch:
            txn_id = tx_ref or (f"{entry_ref}#{position}" if entry_ref else None) or e2e
        else:
            txn_id = tx_ref or entry_ref or e2e or ntry_ref
        reference = _reference(q, tx)
        if status != "BOOK":
            kind = IGNORED
        elif tx_indicator == "CRDT":
            kind = IGNORED if reversal_flag else PAYMENT
        else:
            kind = REVERSAL if reversal_flag else IGNORED
        payer_role = "Dbtr" if tx_indicator == "CRDT" else "Cdtr"

        notices.append(
            PaymentNotice(
                provider=PROVIDER,
                event_id=event_id,
                kind=kind,
                txn_id=txn_id,
                amount=amount_ccy[0] if amount_ccy else None,
                currency=amount_ccy[1] if amount_ccy else None,
                proforma=None,
                reference=reference,
                payer=_party_name(q, tx, payer_role),
                occurred_at=occurred_at,
                account=account_id(iban),
                reverses_txn=(e2e or reference) if kind == REVERSAL else None,
                raw=raw,
            )
        )
    return notices


def payer_account(raw: bytes, txn_id: str | None = None) -> str | None:
    """The payer's IBAN (``RltdPties/DbtrAcct/Id/IBAN``) of a credit, from the entry's XML
    a notice kept as ``raw``: the transaction whose bank reference is ``txn_id`` in a batch,
    else the entry's only one. None when the statement does not name it. A refund of a
    bank payment goes back to this account (issue 17, item 3)."""
    try:
        entry = etree.fromstring(bytes(raw), parser=_parser())
    except (etree.XMLSyntaxError, ValueError):
        return None
    q = _Q(etree.QName(entry).namespace or "")
    txs = [tx for details in q.findall(entry, "NtryDtls") for tx in q.findall(details, "TxDtls")]
    if len(txs) > 1 and txn_id:
        txs = [tx for tx in txs if txn_id in (q.text(tx, "Refs/AcctSvcrRef"),
                                               q.text(tx, "Refs/EndToEndId"))] or txs[:0]
    if len(txs) != 1:
        return None
    iban = q.text(txs[0], "RltdPties/DbtrAcct/Id/IBAN")
    return account_id(iban) if iban else None


__all__ = ["DEFAULT_MAX_BYTES", "PROVIDER", "account_id", "parse_camt053", "payer_account"]
