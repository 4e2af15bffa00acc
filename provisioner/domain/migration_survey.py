"""The migration survey's pure core (issue 13, item 3): what was measured at the old
provider, the collation mapping, IMAP folder names, the projection and the verdict.

The adapter (`adapters.migration_source`) measures; this module turns the measures into
a `SurveyReport` (frozen dataclasses, ``to_json`` for the migration record): what fits
the caps (RULES "Free migration": 2 GB of data, 1 working hour), what does not and why,
the projected duration. Nothing here does I/O; nothing here holds a secret.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1024 * 1024
LIST_LIMIT = 50  # names listed per kind in a report (the counts are always whole)

# Collations MySQL 8 writes that MariaDB cannot load (``Unknown collation``), mapped
# explicitly: the UCA 9.0.0 ones to MariaDB's UCA 5.2.0 ones (same accent/case
# sensitivity), language-specific ones to MariaDB's per-language utf8mb4 collations.
_LANG = {
    "sl": "slovenian", "hr": "croatian", "cs": "czech", "sk": "slovak", "pl": "polish",
    "hu": "hungarian", "ro": "romanian", "de_pb": "german2", "es": "spanish", "es_trad": "spanish2",
    "sv": "swedish", "da": "danish", "is": "icelandic", "lv": "latvian", "lt": "lithuanian",
    "et": "estonian", "tr": "turkish", "vi": "vietnamese", "la": "roman", "eo": "esperanto",
}
_UCA0900 = re.compile(
    r"^utf8mb4_(?:(?P<lang>[a-z]{2}(?:_[a-z]{2,4})?)_)?0900_(?P<kind>ai_ci|as_ci|as_cs|bin)$")
UNICODE_DEFAULT = "utf8mb4_unicode_520_ci"
# Engines a MariaDB node loads the tables of (anything else does not fit: "only from
# compatible software").
ENGINES_OK = frozenset({"innodb", "myisam", "aria", "memory", "csv", "merge", "mrg_myisam", "archive"})
_HOSTILE = re.compile(r"[\x00-\x1f\x7f`$\\;|&<>*?'\"!\n]")


def map_collation(name: str) -> str | None:
    """The collation a MariaDB node uses for ``name``, or None when it loads ``name`` as it is.

    >>> map_collation("utf8mb4_0900_ai_ci")
    'utf8mb4_unicode_520_ci'
    """
    m = _UCA0900.match(name.lower())
    if m is None:
        return None
    kind, lang = m.group("kind"), m.group("lang")
    if kind in ("as_cs", "bin"):
        return "utf8mb4_bin"
    if lang is not None and lang in _LANG:
        return f"utf8mb4_{_LANG[lang]}_ci" if kind == "ai_ci" else f"utf8mb4_{_LANG[lang]}_520_ci"
    return UNICODE_DEFAULT


def collation_map(names: Iterable[str]) -> dict[str, str]:
    """Every collation of ``names`` a MariaDB node cannot load, with what it maps to."""
    out = {}
    for name in names:
        target = map_collation(name)
        if target is not None:
            out[name] = target
    return dict(sorted(out.items()))


_DUMP_COLLATION = re.compile(
    r"(?:COLLATE\s*=?\s*|collation_connection\s*=\s*|_COLLATION\s*=\s*)'?([A-Za-z0-9_]+)'?", re.IGNORECASE
)
_DUMP_CHARSET = re.compile(
    r"(?:CHARSET\s*=\s*|CHARACTER SET\s+|SET NAMES\s+)'?([A-Za-z0-9_]+)'?", re.IGNORECASE)


def dump_header_collations(text: str) -> tuple[set[str], set[str]]:
    """The charsets and collations a mysqldump text names (its header and its CREATE TABLEs)."""
    collations = {m.group(1).lower() for m in _DUMP_COLLATION.finditer(text)}
    charsets = {m.group(1).lower() for m in _DUMP_CHARSET.finditer(text)}
    charsets |= {c.split("_", 1)[0] for c in collations}
    return charsets, collations


def decode_imap_utf7(name: str) -> str:
    """An IMAP folder name in modified UTF-7 (RFC 3501 5.1.3), decoded; a malformed one
    is returned as it is."""
    out, i = [], 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i)
        if end < 0:
            return name
        if end == i + 1:
            out.append("&")
        else:
            chunk = name[i + 1:end].replace(",", "/")
            try:
                raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                return name
        i = end + 1
    return "".join(out)


def encode_imap_utf7(name: str) -> str:
    """``name`` in modified UTF-7 (the inverse of `decode_imap_utf7`)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def shown_name(name: str) -> str:
    """A file or folder name as a report shows it: control characters escaped."""
    return "".join(ch if ch.isprintable() and ch not in "\\" else ascii(ch)[1:-1] for ch in name)


def is_hostile(name: str) -> bool:
    """A name a shell, a path or a template must not see raw: control characters (a
    newline), shell metacharacters, a leading ``-``, ``..``, or not valid UTF-8
    (surrogate-escaped)."""
    if name in (".", "..") or name.startswith("-") or _HOSTILE.search(name):
        return True
    return any(0xDC80 <= ord(ch) <= 0xDCFF for ch in name)


# -- measures (the adapter fills these) ----------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """A short timed transfer: ``bytes`` in ``seconds``, and the per-item overhead seen
    (a round trip per file or message)."""

    bytes: int
    seconds: float
    per_item_s: float = 0.0

    @property
    def rate(self) -> float:
        """Bytes per second (a floor of 1 kB/s so a tiny sample projects something)."""
        return max(self.bytes / self.seconds if self.seconds > 0 else 0.0, 1024.0) if self.bytes else 0.0


@dataclass(frozen=True)
class FilesMeasure:
    protocol: str
    root: str
    bytes: int
    inodes: int  # everything under the root: files, directories, symlinks, specials
    files: int
    dirs: int
    dotfiles: int
    symlinks: list[dict[str, Any]]  # {"path", "target", "outside"}: never followed
    specials: list[str]  # devices, FIFOs, sockets
    hostile: list[str]  # names a shell or a path must not see raw (shown escaped)
    unreadable: list[str]
    largest: int
    php_version: str | None
    sample: Sample
    counts: dict[str, int] = field(default_factory=dict)  # whole counts of the lists above
    host_key: str | None = None  # SFTP: the old host's SSH key ("<type> <base64>"), pinned by the copy


@dataclass(frozen=True)
class DatabaseMeasure:
    via: str
    name: str
    server: str  # "MySQL" or "MariaDB"
    version: str
    bytes: int
    tables: int
    engines: dict[str, int]
    charsets: list[str]
    collations: list[str]
    collation_map: dict[str, str]
    sample: Sample


@dataclass(frozen=True)
class FolderMeasure:
    name: str  # decoded
    raw: str  # as the server names it (modified UTF-7)
    messages: int
    bytes: int
    largest: int


@dataclass(frozen=True)
class MailboxMeasure:
    index: int
    user: str
    host: str
    folders: list[FolderMeasure]
    messages: int
    bytes: int
    largest: int
    over_limit: list[dict[str, Any]]  # {"folder", "uid", "bytes", "subject"}
    sample: Sample


@dataclass(frozen=True)
class Measures:
    files: FilesMeasure | None
    database: DatabaseMeasure | None
    mailboxes: list[MailboxMeasure]
    warnings: list[str]


@dataclass(frozen=True)
class Limits:
    cap_bytes: int
    cap_seconds: float
    max_message_bytes: int
    sample_bytes: int
    node_php: str
    node_mariadb: str


@dataclass(frozen=True)
class Part:
    """One part's projection: its bytes at the sampled rate, plus its items' overhead."""

    name: str
    bytes: int
    items: int
    rate: float
    per_item_s: float
    seconds: float


@dataclass(frozen=True)
class SurveyReport:
    fits: bool
    total_bytes: int
    cap_bytes: int
    projected_seconds: float
    cap_seconds: float
    parts: list[Part]
    blocking: list[str]  # why it does not fit (empty when it fits)
    excluded: list[str]  # what will not be copied, each named
    warnings: list[str]
    compatibility: dict[str, Any]
    files: FilesMeasure | None
    database: DatabaseMeasure | None
    mailboxes: list[MailboxMeasure]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def project(name: str, size: int, items: int, sample: Sample) -> Part:
    """``size`` bytes at the sample's rate plus ``items`` times its per-item overhead."""
    rate = sample.rate
    seconds = (size / rate if rate > 0 else 0.0) + items * sample.per_item_s
    return Part(name, size, items, round(rate, 1), sample.per_item_s, round(seconds, 3))


def _version(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def compatibility(measures: Measures, limits: Limits) -> tuple[dict[str, Any], list[str], list[str]]:
    """The compatibility checks: (facts, blocking reasons, warnings)."""
    facts: dict[str, Any] = {"node_php": limits.node_php, "node_mariadb": limits.node_mariadb}
    blocking: list[str] = []
    warnings: list[str] = []
    db = measures.database
    if db is not None:
        facts["database"] = {"server": db.server, "version": db.version, "collation_map": db.collation_map}
        bad = sorted(e for e in db.engines if e.lower() not in ENGINES_OK)
        if bad:
            blocking.append(f"database: table engine(s) {', '.join(bad)} are not supported by MariaDB")
        ours = _version(limits.node_mariadb)
        theirs = _version(db.version)
        if db.server == "MariaDB" and theirs and ours and theirs[:2] > ours[:2]:
            blocking.append(f"database: MariaDB {db.version} is newer than ours ({limits.node_mariadb})")
        if db.server == "MySQL" and theirs and theirs[0] > 8:
            blocking.append(f"database: MySQL {db.version} is newer than MySQL 8, which we import")
        for src, dst in db.collation_map.items():
            warnings.append(f"database: collation {src} is mapped to {dst}")
    files = measures.files
    if files is not None:
        facts["site_php"] = files.php_version
        theirs, ours = _version(files.php_version or ""), _version(limits.node_php)
        if theirs and ours:
            if theirs[:2] > ours[:2]:
                blocking.append(f"site: PHP {files.php_version} is newer than ours ({limits.node_php})")
            elif theirs[0] < ours[0]:
                warnings.append(f"site: PHP {files.php_version} on the old host, {limits.node_php} here: "
                                "check that the site runs")
    return facts, blocking, warnings


def _excluded(measures: Measures, limits: Limits) -> list[str]:
    out = []
    files = measures.files
    if files is not None:
        out += [f"files: symlink {s['path']} -> {s['target']} (not followed)" for s in files.symlinks
                if s.get("outside")]
        out += [f"files: special file {p}" for p in files.specials]
        out += [f"files: unreadable {p}" for p in files.unreadable]
    for box in measures.mailboxes:
        out += [
            f"mailbox {box.user}: message {m['uid']} in {m['folder']} ({human(m['bytes'])}, subject "
            f"{m['subject']!r}) is over our {human(limits.max_message_bytes)} limit"
            for m in box.over_limit
        ]
    return out


def build_report(measures: Measures, limits: Limits, survey_seconds: float = 0.0) -> SurveyReport:
    """The survey's verdict: over the data cap or the hour, or incompatible, does not fit."""
    parts = []
    if measures.files is not None:
        f = measures.files
        parts.append(project("files", f.bytes, f.inodes, f.sample))
    if measures.database is not None:
        d = measures.database
        parts.append(project("database", d.bytes, d.tables, d.sample))
    for box in measures.mailboxes:
        counted = box.bytes - sum(m["bytes"] for m in box.over_limit)
        parts.append(project(f"mailbox{box.index}", counted, box.messages, box.sample))
    total = sum(p.bytes for p in parts) + sum(
        m["bytes"] for box in measures.mailboxes for m in box.over_limit)
    projected = round(sum(p.seconds for p in parts) + survey_seconds, 3)
    facts, blocking, warnings = compatibility(measures, limits)
    if total > limits.cap_bytes:
        sizes = ", ".join(f"{p.name} {human(p.bytes)}" for p in parts)
        blocking.insert(0, f"data: {human(total)} is over the {human(limits.cap_bytes)} cap ({sizes})")
    if projected > limits.cap_seconds:
        blocking.insert(0, f"time: the copy is projected to take {projected / 60:.1f} min, over the "
                           f"{limits.cap_seconds / 60:.1f} min cap")
    if measures.files is not None and measures.files.hostile:
        warnings.append(f"files: {measures.files.counts.get('hostile', len(measures.files.hostile))} "
                        "name(s) with control or shell characters (copied as they are, never through "
                        "a shell)")
    return SurveyReport(
        fits=not blocking,
        total_bytes=total,
        cap_bytes=limits.cap_bytes,
        projected_seconds=projected,
        cap_seconds=limits.cap_seconds,
        parts=parts,
        blocking=blocking,
        excluded=_excluded(measures, limits),
        warnings=list(measures.warnings) + warnings,
        compatibility=facts,
        files=measures.files,
        database=measures.database,
        mailboxes=list(measures.mailboxes),
    )


def capped(items: Sequence[Any]) -> list[Any]:
    """The first `LIST_LIMIT` of a list a report shows."""
    return list(items[:LIST_LIMIT])
