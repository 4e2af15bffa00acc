"""A mailbox at the old provider copied into our mailbox on this node (issue 13, parts
``mailbox1`` / ``mailbox2``). Runs on the node as root; standard library only; the
contract is in ``common.py``.

Why an IMAP loop here and not ``doveadm backup``/``sync`` through ``imapc``:

* dsync makes our mailbox match the old one: ``backup`` deletes what is only on our
  side (mail delivered to us before the cut-over's final pass would be lost) and a
  one-way ``sync`` keeps no per-message size filter, so a message over our limit would
  be copied silently (our Postfix refuses it at delivery) with nothing to name it;
* re-running must copy nothing twice by Message-ID plus size: dsync matches imapc
  messages by a hash of Date+Message-ID (``dsync_hashed_headers``) and UIDs, and
  re-creates a mailbox whose UIDVALIDITY it cannot keep;
* the byte cap must stop *before* a message would cross it, message by message.

So the program reads the old mailbox over IMAPS (``imaplib``; the password only in this
process's memory, sent over TLS: no file, no argv) and writes into our Dovecot through
its own ``imap`` binary run preauthenticated for our mailbox (``doveadm exec imap -u
<mailbox>``: Dovecot's documented way for an administrator to open a user's mail, over
a pipe; no password, no master user, no network; our quota plugin still applies).
APPEND keeps the flags and the internal date (a batch of up to 100 messages / 8 MB is one
MULTIAPPEND with LITERAL+: one transaction, no round trip per message; message by message
when our Dovecot refuses the batch, so that each refusal is named); folder names travel
as the server's modified UTF-7 (only the hierarchy separator is translated).

Per folder: the old side's messages (UID, flags, internal date, size, Message-ID, Date,
From, Subject headers) and ours (Message-ID and size) are listed; a message whose key
(Message-ID, or a hash of Date/From/Subject without one, plus the size) is already here
is not copied again (a multiset: duplicates at the source arrive once each); a message
over ``max_message_bytes`` is never fetched and is named (``item`` over_limit, folder
and subject). The byte cap is checked before each message is fetched; the deadline is a
timer that interrupts whatever is blocking. ``verify`` lists both sides the same way and
names each message of the source that is not here (over-limit ones excluded).

``folder_prefix`` (the job's; absent or empty: the root): the old mailbox's folders land
under one top-level folder of ours named after it (the second source mailbox, so that two
people's INBOXes are not merged into one), its INBOX included (``<prefix>/INBOX``). Copy
and verify both list, compare and deduplicate within the prefixed folders. The prefix is
one level: a character that is not a letter, digit, ``@``, ``+``, ``-`` or ``_`` (our
hierarchy separator ``.``, ``/``, Dovecot's ``~``, the LIST wildcards, ``&`` of modified
UTF-7, control characters) becomes ``_``, and the change is named (``item`` renamed).
"""

from __future__ import annotations

import base64
import email.header
import email.parser
import email.policy
import hashlib
import imaplib
import io
import os
import re
import signal
import ssl
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NoReturn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python3 -I: common.py beside us
import common  # noqa: E402

IMAP_TIMEOUT_S = 60.0
BATCH_BYTES = 8 * 1024 * 1024  # one FETCH of whole messages brings at most this much
BATCH_MESSAGES = 100
HEADERS = "MESSAGE-ID DATE FROM SUBJECT"
_MAILBOX = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_START = re.compile(rb"^\d+ \(")
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>"(?:\\.|[^"\\])*"|NIL) (?P<name>.*)$')
_NAMESPACE = re.compile(rb'^\(\("((?:\\.|[^"\\])*)" (?:"(?:\\.|[^"\\])*"|NIL)')
_FLAG_OK = re.compile(r"^\\?[^\s(){%*\"\\\]]+$")
_EXISTS = re.compile(rb"^(\d+)$")
_PREFIX_UNSAFE = re.compile(r"[^A-Za-z0-9@+_-]")
PREFIX_MAX = 128
_CRLF = re.compile(rb"\r\n|\r(?!\n)|\n(?<!\r)")  # imaplib's MapCRLF


def fail(kind: str, message: str, *, credential: str | None = None) -> NoReturn:
    common.fail(kind, message, credential=credential)
    raise SystemExit(common.EXIT_INVALID)  # common.fail exits; this tells the type checker


class OutOfTime(Exception):
    """The part's deadline passed (raised by the timer, wherever the program was)."""


class OverQuota(Exception):
    """Our mailbox refused a message because it is full."""


# -- pure helpers (unit-tested) ------------------------------------------------------------
def decode_mutf7(raw: str) -> str:
    """RFC 3501 modified UTF-7 (a folder name as IMAP sends it) to text."""
    out, i = [], 0
    while i < len(raw):
        ch = raw[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = raw.find("-", i)
        if end < 0:
            out.append(raw[i:])
            break
        chunk = raw[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                out.append(base64.b64decode(b64).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                out.append(raw[i:end + 1])
        i = end + 1
    return "".join(out)


def shown(text: str, limit: int = 200) -> str:
    """A name as the report shows it: control characters escaped, bounded."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return out[:limit]


def parse_list(data: list[Any]) -> list[tuple[str, str | None, bool]]:
    """``LIST`` response lines -> (raw name, delimiter, selectable)."""
    out = []
    for item in data:
        literal = None
        if isinstance(item, tuple):
            line, literal = item
        elif isinstance(item, bytes):
            line = item
        else:
            continue
        m = _LIST.match(line)
        if m is None:
            continue
        flags = m.group("flags").lower()
        selectable = b"\\noselect" not in flags and b"\\nonexistent" not in flags
        delim_raw = m.group("delim")
        delim = None if delim_raw == b"NIL" else _unquote(delim_raw).decode("utf-8", "replace")
        if literal is not None:
            name = literal.decode("utf-8", "replace")
        else:
            raw = m.group("name")
            name = (_unquote(raw) if raw.startswith(b'"') else raw).decode("utf-8", "replace")
        out.append((name, delim, selectable))
    return out


def parse_namespace(data: list[Any]) -> str:
    """The personal namespace's prefix (``INBOX.`` on Courier-style servers, else "")."""
    for item in data:
        if isinstance(item, bytes):
            m = _NAMESPACE.match(item)
            if m:
                return _unquote(b'"' + m.group(1) + b'"').decode("utf-8", "replace")
    return ""


def _unquote(raw: bytes) -> bytes:
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def target_name(raw: str, delim: str | None, prefix: str, our_delim: str) -> tuple[str, bool]:
    """The old folder's raw name as ours: the personal namespace prefix dropped, the
    hierarchy separator translated; a level holding our separator or ``/`` (which a
    Maildir cannot hold) gets ``_`` instead (returns renamed=True)."""
    if raw.upper() == "INBOX":
        return "INBOX", False
    name = raw[len(prefix):] if prefix and raw.startswith(prefix) and raw != prefix else raw
    levels = name.split(delim) if delim else [name]
    renamed = False
    fixed = []
    for level in levels:
        clean = level.replace(our_delim, "_").replace("/", "_") or "_"
        renamed = renamed or clean != level
        fixed.append(clean)
    if fixed[0].upper() == "INBOX":
        fixed[0] = "INBOX"
    return our_delim.join(fixed), renamed


def prefix_level(address: str) -> tuple[str, bool]:
    """The top-level folder a mailbox lands under (``folder_prefix``): one level, ASCII
    letters, digits and ``@+-_`` only (so it is the same in modified UTF-7), anything else
    ``_``; returns (level, renamed). ``ana@example.si`` -> ``ana@example_si`` (``.`` is our
    hierarchy separator); a login ``INBOX`` (any case) becomes ``INBOX_``, never our INBOX."""
    level = _PREFIX_UNSAFE.sub("_", address[:PREFIX_MAX]) or "_"
    if level.upper() == "INBOX":
        level += "_"
    return level, level != address


def under(top: str, name: str, our_delim: str) -> str:
    """Our folder ``name`` (already ours: INBOX, levels joined by ``our_delim``) moved under
    the top-level folder ``top`` ("" = the root: unchanged)."""
    return f"{top}{our_delim}{name}" if top else name


@dataclass
class Message:
    uid: int
    size: int
    flags: list[str] = field(default_factory=list)
    date: str = ""
    message_id: str = ""
    subject: str = ""
    key: tuple[str, int] = ("", 0)
    body: bytes | None = None


def parse_fetch(data: list[Any]) -> list[tuple[bytes, bytes | None]]:
    """imaplib's FETCH data -> one (metadata text, literal) per message, whatever the
    order of the items the server chose (UID after the literal, no literal at all)."""
    out: list[list[Any]] = []
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes):
            head, literal = item
            if _START.match(head) or not out:
                out.append([head, literal])
            else:
                out[-1][0] += head
        elif isinstance(item, bytes):
            if _START.match(item) or not out:
                out.append([item, None])
            else:
                out[-1][0] += item
    return [(meta, literal) for meta, literal in out]


def header_key(headers: bytes, size: int) -> tuple[str, str, str, tuple[str, int]]:
    """(Message-ID, subject shown, date header, key) of a message from its header fields."""
    # raw 8-bit header bytes (unencoded UTF-8 subjects happen) read as UTF-8
    parsed = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(
        (headers or b"").decode("utf-8", "replace"))

    def value_of(name: str) -> str:
        return str(parsed.get(name, "") or "")

    mid = " ".join(value_of("Message-ID").split())
    date, sender, subject = value_of("Date"), value_of("From"), value_of("Subject")
    try:
        subject = str(email.header.make_header(email.header.decode_header(subject)))
    except (ValueError, LookupError, UnicodeDecodeError):
        pass
    subject = " ".join(subject.split())
    if mid:
        key = mid
    else:
        key = "h:" + hashlib.sha256("\n".join((date, sender, subject)).encode("utf-8", "replace")).hexdigest()
    return mid, shown(subject), date, (key, size)


def parse_messages(data: list[Any]) -> list[Message]:
    out = []
    for meta, literal in parse_fetch(data):
        uid, size = _UID.search(meta), _SIZE.search(meta)
        if uid is None or size is None:
            continue  # an unsolicited FETCH (a flag change): not a listing line
        flags_m, date_m = _FLAGS.search(meta), _DATE.search(meta)
        flags = [f for f in (flags_m.group(1).decode("utf-8", "replace").split() if flags_m else [])
                 if f.lower() != "\\recent" and _FLAG_OK.match(f)]
        mid, subject, _, key = header_key(literal or b"", int(size.group(1)))
        out.append(Message(int(uid.group(1)), int(size.group(1)), flags,
                           date_m.group(1).decode("ascii", "replace") if date_m else "", mid, subject, key))
    return out


def to_copy(source: list[Message], target_keys: Counter[tuple[str, int]],
            limit: int) -> tuple[list[Message], list[Message], int]:
    """(messages to copy, messages over the limit, messages already here)."""
    left = Counter(target_keys)
    copy, over, there = [], [], 0
    for msg in source:
        if msg.size > limit:
            over.append(msg)
        elif left[msg.key] > 0:
            left[msg.key] -= 1
            there += 1
        else:
            copy.append(msg)
    return copy, over, there


# -- the two sides ---------------------------------------------------------------------------
class Ours(imaplib.IMAP4_stream):
    """Our Dovecot's ``imap`` for one mailbox, preauthenticated (``doveadm exec imap
    -u``): argv without a shell; nothing secret involved."""

    def __init__(self, mailbox: str, err: Any) -> None:
        self.err = err
        super().__init__(mailbox)

    def open(self, host: Any = None, port: Any = None, timeout: Any = None) -> None:
        self.host = None  # type: ignore[assignment]
        self.port = None  # type: ignore[assignment]
        self.sock = None  # type: ignore[assignment]
        self.file = None  # type: ignore[assignment]
        self.process = subprocess.Popen(["doveadm", "exec", "imap", "-u", self.command],
                                        bufsize=io.DEFAULT_BUFFER_SIZE, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.err, close_fds=True,
                                        start_new_session=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.writefile = self.process.stdin
        self.readfile = self.process.stdout

    def batched(self) -> bool:
        return "MULTIAPPEND" in self.capabilities and "LITERAL+" in self.capabilities

    def append_many(self, mailbox: str, messages: list[Message]) -> tuple[str, list[Any]]:
        """One MULTIAPPEND (RFC 3502) of ``messages`` with non-synchronising literals
        (RFC 7888): one command, one transaction (all saved or none), no round trip per
        message. Uses imaplib's tag bookkeeping as its own commands do."""
        tag = self._new_tag()
        chunks = [tag + b" APPEND " + quote(mailbox).encode("ascii")]
        for msg in messages:
            body = _CRLF.sub(b"\r\n", msg.body or b"")  # line ends as imaplib's append makes them
            flags = (" (" + " ".join(msg.flags) + ")") if msg.flags else ""
            date = f' "{msg.date}"' if msg.date else ""
            chunks += [f"{flags}{date} {{{len(body)}+}}\r\n".encode("ascii"), body]
        chunks.append(b"\r\n")
        self.send(b"".join(chunks))
        return self._command_complete("APPEND", tag)


def _ok(typ: str, data: list[Any], what: str) -> list[Any]:
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{what}: {_text(data)}")
    return data


def _text(data: list[Any]) -> str:
    parts = [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d) for d in data if d is not None]
    return shown(" ".join(parts), 300)


def list_folder(imap: imaplib.IMAP4, name: str, *, full: bool) -> list[Message]:
    """The folder's messages (read-only); ``full``: flags, dates and subjects too."""
    typ, data = imap.select(quote(name), readonly=True)
    _ok(typ, data, f"EXAMINE {name}")
    m = _EXISTS.match(data[0] or b"") if data and isinstance(data[0], bytes) else None
    if m is not None and int(m.group(1)) == 0:
        return []
    items = ("(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (%s)])" if full
             else "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (%s)])") % HEADERS
    typ, data = imap.uid("FETCH", "1:*", items)
    _ok(typ, data, f"FETCH {name}")
    return sorted(parse_messages(data), key=lambda msg: msg.uid)


def source_folders(imap: imaplib.IMAP4, our_delim: str, top: str = "") -> list[tuple[str, str, str, bool]]:
    """The old mailbox's selectable folders: (raw, ours raw, shown name, renamed); under
    the top-level folder ``top`` of ours when one is given (see `prefix_level`)."""
    prefix = ""
    if "NAMESPACE" in imap.capabilities:
        typ, data = imap.namespace()
        if typ == "OK":
            prefix = parse_namespace(data)
    typ, data = imap.list()
    _ok(typ, data, "LIST")
    out = []
    for raw, delim, selectable in parse_list(data):
        if not selectable:
            continue
        ours, renamed = target_name(raw, delim, prefix, our_delim)
        ours = under(top, ours, our_delim)
        out.append((raw, ours, shown(decode_mutf7(ours)), renamed))
    inbox = under(top, "INBOX", our_delim)
    out.sort(key=lambda f: (f[1] != inbox, f[1]))
    return out


def connect_source(job: dict[str, Any]) -> imaplib.IMAP4_SSL:
    part, src = str(job["part"]), job["source"]
    i = int(src.get("index") or part[-1])
    host, user = str(src[f"mail{i}_host"]), str(src[f"mail{i}_user"])
    port = int(src.get(f"mail{i}_port") or 993)
    where = f"imaps {shown(user, 100)}@{shown(host, 100)}:{port}"
    context = ssl.create_default_context()
    if (job.get("flags") or {}).get("skip_cert_verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        imap = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=IMAP_TIMEOUT_S)
    except (OSError, imaplib.IMAP4.error) as exc:
        fail("unreachable", f"{where} did not answer: {type(exc).__name__}: {shown(str(exc), 200)}")
    try:
        imap.login(user, str(src[f"mail{i}_password"]))
    except imaplib.IMAP4.error as exc:
        if b"UNAVAILABLE" in str(exc).encode():
            fail("unreachable", f"{where} is unavailable: {shown(str(exc), 200)}")
        fail("refused", f"{where} refused the login", credential=part)
    except OSError as exc:
        fail("unreachable", f"{where} dropped the connection: {type(exc).__name__}")
    return imap


def open_ours(job: dict[str, Any]) -> tuple[Ours, str]:
    mailbox = str(job["account"]["mailbox"])
    if not _MAILBOX.match(mailbox):
        fail("invalid", f"our mailbox {shown(mailbox, 100)!r} is not an address")
    err = open(common.job_dir(job) / f".imap-{job['part']}.err", "w+b")  # noqa: SIM115 - kept open
    try:
        ours = Ours(mailbox, err)
        typ, data = ours.list('""', '""')
        delim = "."
        for _, d, _ in parse_list(data if typ == "OK" else []):
            delim = d or delim
        return ours, delim
    except (imaplib.IMAP4.error, OSError, EOFError) as exc:
        err.seek(0)
        tail = err.read()[-400:].decode(errors="replace")
        fail("invalid", f"our mailbox {mailbox} could not be opened on this node: "
                               f"{type(exc).__name__} {shown(tail, 400)}")


# -- the run ---------------------------------------------------------------------------------
def _arm(seconds: float) -> None:
    def ring(signum: int, frame: Any) -> None:
        raise OutOfTime

    signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def _ensure_folder(ours: Ours, name: str) -> None:
    if name == "INBOX":
        return
    typ, data = ours.create(quote(name))
    if typ != "OK" and "ALREADYEXISTS" not in _text(data).upper():
        raise imaplib.IMAP4.error(f"CREATE: {_text(data)}")
    ours.subscribe(quote(name))


def _fetch_bodies(src: imaplib.IMAP4, batch: list[Message]) -> None:
    by_uid = {m.uid: m for m in batch}
    typ, data = src.uid("FETCH", ",".join(str(m.uid) for m in batch), "(UID BODY.PEEK[])")
    _ok(typ, data, "FETCH")
    for meta, literal in parse_fetch(data):
        uid = _UID.search(meta)
        if uid is not None and literal is not None and int(uid.group(1)) in by_uid:
            by_uid[int(uid.group(1))].body = literal


def _batches(messages: list[Message]) -> list[list[Message]]:
    out: list[list[Message]] = [[]]
    size = 0
    for msg in messages:
        if out[-1] and (size + msg.size > BATCH_BYTES or len(out[-1]) >= BATCH_MESSAGES):
            out.append([])
            size = 0
        out[-1].append(msg)
        size += msg.size
    return [b for b in out if b]


class Run:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.part = str(job["part"])
        self.limit = int(job.get("max_message_bytes") or 52_428_800)
        self.budget = common.Budget(job)
        self.progress = common.Progress(self.part)
        self.bytes = 0
        self.items = 0
        self.source_counts: dict[str, int] = {}
        self.target_counts: dict[str, int] = {}
        self.over = 0
        self.there = 0
        self.delim = "."  # our hierarchy separator (from our LIST)
        wanted = job.get("folder_prefix") or ""
        if not isinstance(wanted, str):
            fail("invalid", "folder_prefix is not text")
        self.prefix_wanted = wanted
        self.top, self.top_renamed = prefix_level(wanted) if wanted else ("", False)

    def item(self, kind: str, folder: str, msg: Message | None, reason: str, **extra: Any) -> None:
        name = f"{folder}: {msg.subject or '(no subject)'}" if msg is not None else folder
        common.emit("item", part=self.part, kind=kind, name=name, reason=reason, folder=folder,
                    **({"subject": msg.subject, "bytes": msg.size} if msg is not None else {}), **extra)

    def copy(self, src: imaplib.IMAP4, ours: Ours) -> tuple[str, str | None]:
        """Returns (state, error)."""
        plans = []
        if self.top:  # where this mailbox's mail goes: one line in the report
            changed = (" (a character that cannot be in one of our folder names: '_' instead)"
                       if self.top_renamed else "")
            self.item("renamed", shown(self.prefix_wanted), None,
                      f"its folders are in {self.job['account']['mailbox']} under the folder "
                      f"{shown(self.top)!r}{changed}, its INBOX as {shown(self.top)}/INBOX")
        for raw, name, label, renamed in source_folders(src, self.delim, self.top):
            if renamed:
                self.item("renamed", label, None, f"the old name {shown(decode_mutf7(raw))!r} holds a "
                          f"character our folders cannot ({self.delim!r} or '/'): '_' instead")
            source = list_folder(src, raw, full=True)
            try:
                _ensure_folder(ours, name)
                target = list_folder(ours, name, full=False)
            except imaplib.IMAP4.error as exc:
                self.item("error", label, None, f"the folder could not be made here: {shown(str(exc))}")
                self.source_counts[label] = len(source)
                self.target_counts[label] = 0
                continue
            copy, over, there = to_copy(source, Counter(m.key for m in target), self.limit)
            for msg in over:
                self.item("over_limit", label, msg, f"{msg.size} bytes, over our limit of {self.limit} bytes "
                          "per message: not copied (it stays at the old provider)")
            self.over += len(over)
            self.there += there
            self.source_counts[label] = len(source)
            self.target_counts[label] = len(target)
            plans.append((raw, name, label, copy))
        for raw, name, label, copy in plans:
            if not copy:
                continue
            typ, data = src.select(quote(raw), readonly=True)
            _ok(typ, data, f"EXAMINE {label}")
            for batch in _batches(copy):
                fits: list[Message] = []
                for msg in batch:  # the cap holds before a message is fetched, not after
                    if self.bytes + sum(m.size for m in fits) + msg.size > self.budget.cap_bytes:
                        break
                    fits.append(msg)
                if fits:
                    _fetch_bodies(src, fits)
                    self._append_batch(ours, name, label, fits)
                if len(fits) < len(batch):
                    return "cap_reached", None
        return "done", None

    def _append_batch(self, ours: Ours, name: str, label: str, batch: list[Message]) -> None:
        """The batch in one MULTIAPPEND; when our Dovecot refuses it (a message it will not
        take, a full mailbox), message by message, so that each refusal is named."""
        present = [m for m in batch if m.body is not None]
        if len(present) > 1 and ours.batched():
            typ, _ = ours.append_many(name, present)
            if typ == "OK":
                for msg in present:
                    self._saved(label, msg)
                return
        for msg in batch:
            self._append(ours, name, label, msg)

    def _saved(self, label: str, msg: Message) -> None:
        msg.body = None
        self.bytes += msg.size
        self.items += 1
        self.target_counts[label] = self.target_counts.get(label, 0) + 1
        self.progress(self.bytes, self.items)

    def _append(self, ours: Ours, name: str, label: str, msg: Message) -> None:
        if msg.body is None:
            self.item("error", label, msg, "the old provider did not send this message (gone since the "
                      "listing?): not copied")
            return
        flags = "(" + " ".join(msg.flags) + ")" if msg.flags else None
        date = f'"{msg.date}"' if msg.date else None
        typ, data = ours.append(quote(name), flags, date, msg.body)
        if typ != "OK":
            text = _text(data)
            if "OVERQUOTA" in text.upper() or "QUOTA" in text.upper():
                raise OverQuota(text)
            self.item("error", label, msg, f"our Dovecot refused it: {text}")
            return
        self._saved(label, msg)

    def verify(self, src: imaplib.IMAP4, ours: Ours) -> dict[str, Any]:
        differences = []
        typ, data = ours.list('""', '"*"')
        here = {name for name, _, selectable in parse_list(data if typ == "OK" else []) if selectable}
        for raw, name, label, _ in source_folders(src, self.delim, self.top):
            source = list_folder(src, raw, full=True)
            self.source_counts[label] = len(source)
            if name not in here:
                self.target_counts[label] = 0
                wanted = [m for m in source if m.size <= self.limit]
                if wanted:
                    differences.append(f"{label}: the folder is not here ({len(wanted)} messages at the "
                                       "old provider)")
                continue
            target = list_folder(ours, name, full=False)
            self.target_counts[label] = len(target)
            missing, over, _ = to_copy(source, Counter(m.key for m in target), self.limit)
            self.over += len(over)
            if missing:
                names = ", ".join(repr(m.subject or "(no subject)") for m in missing[:10])
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                differences.append(f"{label}: {len(missing)} of {len(source)} messages at the old provider "
                                   f"are not here: {names}{more}")
        return {"source": dict(self.source_counts), "target": dict(self.target_counts),
                "over_limit": self.over, "differences": differences}

    def main(self) -> None:
        if self.budget.left_s() <= 0:
            self.result("budget_exhausted")
            return
        src = connect_source(self.job)
        ours, self.delim = open_ours(self.job)
        error: str | None = None
        verify = self.job["mode"] == "verify"
        try:
            _arm(self.budget.left_s())
            try:
                if verify:
                    counts = self.verify(src, ours)
                    state = "done"
                else:
                    state, error = self.copy(src, ours)
            except OutOfTime:
                state = "budget_exhausted"
            except OverQuota as exc:
                state, error = "failed", (f"our mailbox {self.job['account']['mailbox']} is full: "
                                          f"{shown(str(exc))}; {self.items} messages copied before")
            finally:
                _disarm()
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
            fail("unreachable", f"the {self.job['mode']} of {self.part} was cut after {self.items} "
                                       f"messages: {type(exc).__name__}: {shown(str(exc), 200)}")
        except (imaplib.IMAP4.error, UnicodeError) as exc:  # a refused command, a name not in ASCII
            fail("invalid", f"{self.part}: {shown(str(exc), 300)}")
        finally:
            for conn in (src, ours):  # no LOGOUT round trip: an APPEND cut by the timer is dropped
                try:
                    conn.shutdown()
                except (OSError, ValueError):
                    pass
        if not (verify and state == "done"):
            counts = {"source": dict(self.source_counts), "target": dict(self.target_counts),
                      "over_limit": self.over, "already_there": self.there}
        self.progress(self.bytes, self.items, force=True)
        self.result(state, error=error, counts=counts)

    def result(self, state: str, *, error: str | None = None, counts: dict[str, Any] | None = None) -> None:
        common.emit("result", part=self.part, state=state, bytes=self.bytes, items=self.items,
                    counts=counts or {}, error=error)


def main() -> None:
    job = common.read_job()
    if job.get("part") not in ("mailbox1", "mailbox2") or job.get("mode") not in ("copy", "verify"):
        fail("invalid", "mail.py runs the mailbox1 and mailbox2 parts, in copy or verify mode")
    Run(job).main()


if __name__ == "__main__":
    main()
