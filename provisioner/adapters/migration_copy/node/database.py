"""The old provider's database copied into the account's database on this node (issue 13,
part ``database``). Runs on the node as root; standard library plus python3-pymysql (a
package of the node); the contract is in ``common.py``.

The dump: ``mysqldump --single-transaction --no-tablespaces --hex-blob
--default-character-set=utf8mb4`` (``--no-tablespaces`` because shared hosts deny
PROCESS), run at the old host through the files section's SSH login (``db_via`` "ssh":
the ``[client]`` section with the password goes to the remote mysqldump on ssh's stdin,
``--defaults-extra-file=/dev/stdin``) or here against the old server (``db_via``
"mysql": the node's own mysqldump, the defaults file in the job's secrets dir). Routines
and events are not dumped (``--skip-routines --skip-events``): they run as a definer that
does not exist here; each one the source holds is named in the report (``excluded``).
Tables, their rows, views and triggers are copied.

The load never runs the dump through the ``mysql`` client (whose ``\\!``/``system``
commands would run as root): this program splits the stream into statements itself and
sends each over PyMySQL as a MariaDB user of this job (``mig_<job>``, a random password
held in memory only) whose only privilege is ALL on a staging database
(``mig_<job>_new``): whatever the dump says, it cannot reach another database, a file
(no FILE privilege; no ``LOAD DATA LOCAL`` from this client), a user or a grant. Every
DEFINER clause is stripped on the way in.

Data statements (``INSERT``/``REPLACE``, one line each as mysqldump writes them) pass
through untouched. Every other statement is tokenized (string literals, quoted
identifiers and comments skipped) and only its collation and charset clauses are
rewritten: ``COLLATE x``, ``CHARSET x``, ``CHARACTER SET x``, ``SET NAMES x``,
``collation_connection = x`` and the like, through the survey's explicit
``collation_map``; a collation or charset neither this MariaDB has nor the map names is
refused by name. MySQL 8-only versioned comments (``/*!80016 ...*/`` and up, which
MariaDB's 6-digit version would execute) are dropped; replication statements
(``SQL_LOG_BIN``, ``@@GLOBAL.GTID_PURGED``) are skipped.

A stream that does not begin as a mysqldump dump (HTML, an error page, anything else) is
refused before anything is loaded; one that ends without mysqldump's ``-- Dump
completed`` trailer is a cut dump. Only a complete load whose row counts were read is
swapped in: as root, views and triggers are lifted off the staging tables, the account's
old tables move aside and the staging ones in, in one ``RENAME TABLE`` (atomic), and the
triggers and views are re-created in the account's database with the account's own
database user as their definer, from the server's own definitions. A failed, capped or
interrupted load leaves the account's database as it was; a re-run replaces it (no row
twice). Row counts per table: ``SELECT COUNT(*)`` at the source over the same route
against the loaded tables.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python3 -I: common.py beside us
import common  # noqa: E402

SOCKET = "/run/mysqld/mysqld.sock"
CHUNK = 1024 * 1024
MAX_STATEMENT = 64 * 1024 * 1024  # a statement this long is not a dump's
DUMP_FLAGS = ("--single-transaction", "--no-tablespaces", "--hex-blob", "--default-character-set=utf8mb4",
              "--skip-routines", "--skip-events", "--triggers", "--quick")
HEADERS = (b"-- MySQL dump ", b"-- MariaDB dump ")
SANDBOX = re.compile(rb"\A/\*M?!999999\\?- enable the sandbox mode \*/[^\n]*\n")
TRAILER = b"-- Dump completed"
_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_$-]{0,63}$")
_ACCOUNT = re.compile(r"^[a-z][a-z0-9]{0,31}$")
_DATA = re.compile(rb"(?:INSERT|REPLACE)\s", re.IGNORECASE)
_DELIMITER = re.compile(rb"DELIMITER[ \t]+(\S+)[^\n]*(?:\n|\Z)", re.IGNORECASE)
_SPACE = re.compile(rb"(?:\s+|--(?=[ \t\r\n])[^\n]*(?:\n|\Z)|--\Z|#[^\n]*(?:\n|\Z)|/\*(?!M?!)(?:.|\n)*?\*/)+")
_TOKEN = re.compile(rb"""
    (?P<ws>\s+)
  | (?P<com>--(?=[ \t\r\n])[^\n]*(?:\n|\Z)|\#[^\n]*(?:\n|\Z)|/\*(?!M?!).*?\*/)
  | (?P<vopen>/\*(?P<m>M?)!(?P<ver>\d{0,6}))
  | (?P<vclose>\*/)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<ident>`(?:[^`]|``)*`)
  | (?P<open>['"`]|/\*)
  | (?P<word>[A-Za-z0-9_$]+)
  | (?P<punct>.)
""", re.VERBOSE | re.DOTALL)
_TABLE = re.compile(rb"(?:INSERT|REPLACE)\s+(?:IGNORE\s+)?INTO\s+(`(?:[^`]|``)*`)|CREATE\s+TABLE\s+"
                    rb"(?:IF\s+NOT\s+EXISTS\s+)?(`(?:[^`]|``)*`)", re.IGNORECASE)
COLLATION_WORDS = {b"COLLATE", b"COLLATION_CONNECTION", b"COLLATION_DATABASE", b"COLLATION_SERVER"}
CHARSET_WORDS = {b"CHARSET", b"CHARACTER_SET_CLIENT", b"CHARACTER_SET_RESULTS", b"CHARACTER_SET_CONNECTION",
                 b"CHARACTER_SET_DATABASE", b"CHARACTER_SET_SERVER"}
_UCA0900 = re.compile(r"_0900_")


class DumpRefused(Exception):
    """The stream is not a dump this node loads (the reason names what and where)."""


# -- statements: split and rewrite (pure, unit-tested) ----------------------------------------
@dataclass
class Token:
    kind: str
    text: bytes


def tokenize(statement: bytes) -> list[Token]:
    """A statement's tokens; an unterminated literal or comment is one ``open`` token
    holding the rest (the server refuses the statement, nothing is guessed)."""
    out: list[Token] = []
    pos = 0
    while pos < len(statement):
        m = _TOKEN.match(statement, pos)
        assert m is not None  # ``punct`` matches any byte
        kind = m.lastgroup if m.lastgroup not in ("m", "ver") else "vopen"
        if kind == "open":
            out.append(Token("open", statement[pos:]))
            break
        out.append(Token(str(kind), m.group(0)))
        pos = m.end()
    return out


def _unquote(token: Token) -> bytes:
    if token.kind in ("str", "ident"):
        return token.text[1:-1]
    return token.text


def _requote(token: Token, name: bytes) -> bytes:
    if token.kind in ("str", "ident"):
        return token.text[:1] + name + token.text[-1:]
    return name


@dataclass
class Rewriter:
    """Maps the collations (and checks the charsets) of a dump's non-data statements.

    ``collation_map``: the survey's explicit map (source name -> ours); ``collations``
    and ``charsets``: what this server has (None: anything not mapped and not MySQL 8's
    ``_0900_`` family passes). ``mapped`` counts what was rewritten."""

    collation_map: dict[str, str]
    collations: set[str] | None = None
    charsets: set[str] | None = None
    mapped: dict[str, int] = field(default_factory=dict)

    def collation(self, name: str) -> str:
        low = name.lower()
        if low in self.collation_map:
            target = self.collation_map[low]
            self.mapped[low] = self.mapped.get(low, 0) + 1
            return target
        if (self.collations is not None and low not in self.collations) or (
                self.collations is None and _UCA0900.search(low)):
            raise DumpRefused(f"the dump uses collation {name!r}, which this MariaDB does not have and "
                              "the survey's collation map does not name")
        return name

    def charset(self, name: str) -> str:
        low = name.lower()
        if low in ("default", "binary"):
            return name
        if self.charsets is not None and low not in self.charsets:
            raise DumpRefused(f"the dump uses character set {name!r}, which this MariaDB does not have")
        return name

    def statement(self, statement: bytes) -> bytes | None:
        """The statement as it is loaded here, or None to skip it (nothing left, or a
        replication statement). Data statements come back unchanged, byte for byte."""
        head = _SPACE.match(statement)
        body = statement[head.end():] if head else statement
        if _DATA.match(body):
            return statement
        tokens = _drop_mysql8_comments(tokenize(statement))
        code = [i for i, t in enumerate(tokens) if t.kind not in ("ws", "com", "vopen", "vclose")]
        if not code:
            return None
        words = b" ".join(tokens[i].text.upper() for i in code[:16])
        if words.startswith(b"SET ") and (b"SQL_LOG_BIN" in words or b"GTID_PURGED" in words
                                          or b"@ @ GLOBAL" in words):
            return None  # replication state of the old server: not ours to set
        drop: set[int] = set()
        for n, i in enumerate(code):
            token = tokens[i]
            if token.kind != "word":
                continue
            upper = token.text.upper()
            after = code[n + 1:]
            if upper == b"DEFINER" and after and tokens[after[0]].text == b"=":
                drop |= set(range(i, _definer_end(tokens, after) + 1))
            elif upper in COLLATION_WORDS:
                self._rename(tokens, after, self.collation)
            elif upper in CHARSET_WORDS:
                self._rename(tokens, after, self.charset)
            elif upper == b"CHARACTER" and after and tokens[after[0]].text.upper() == b"SET":
                self._rename(tokens, after[1:], self.charset)
            elif upper == b"NAMES" and n > 0 and tokens[code[n - 1]].text.upper() == b"SET":
                self._rename(tokens, after, self.charset)
        return b"".join(t.text for i, t in enumerate(tokens) if i not in drop)

    @staticmethod
    def _rename(tokens: list[Token], after: list[int], how: Any) -> None:
        if after and tokens[after[0]].text == b"=":
            after = after[1:]
        if not after or tokens[after[0]].kind not in ("word", "str", "ident"):
            return  # ``= @saved_cs_client`` and the like: not a name
        token = tokens[after[0]]
        raw = _unquote(token)
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise DumpRefused(f"the dump names a collation or charset that is not ASCII: {raw[:40]!r}") \
                from None
        if token.kind == "word" and name.upper() in ("DEFAULT",):
            return
        new = how(name)
        if new != name:
            token.text = _requote(token, new.encode("ascii"))


def _definer_end(tokens: list[Token], after: list[int]) -> int:
    """The index of the last token of a DEFINER clause (``= user@host``, ``=
    CURRENT_USER[()]``) whose first code token after DEFINER is ``after[0]``."""
    k = 0
    if k < len(after) and tokens[after[k]].text == b"=":
        k += 1
    if k >= len(after):
        return after[-1] if after else -1
    last = after[k]
    if tokens[last].text.upper() == b"CURRENT_USER":
        if k + 2 < len(after) and tokens[after[k + 1]].text == b"(" and tokens[after[k + 2]].text == b")":
            return after[k + 2]
        return last
    if k + 2 < len(after) and tokens[after[k + 1]].text == b"@":
        return after[k + 2]
    return last


def _drop_mysql8_comments(tokens: list[Token]) -> list[Token]:
    """Remove ``/*!NNNNN ... */`` comments for MySQL 8.0 and later (5 digits, 80000 and
    up): MariaDB compares them with its own 6-digit version and would run them."""
    out: list[Token] = []
    skipping = False
    for token in tokens:
        if skipping:
            skipping = token.kind != "vclose"
            continue
        if token.kind == "vopen" and token.text.startswith(b"/*!"):
            version = token.text[3:]
            if len(version) == 5 and int(version) >= 80000:
                skipping = True
                continue
        out.append(token)
    return out


class Splitter:
    """A dump stream (bytes, in chunks) cut into statements the way the ``mysql`` client
    would: the delimiter outside literals and comments, ``DELIMITER`` lines obeyed.
    Data statements are one line each (mysqldump escapes newlines in literals), taken
    whole without scanning. Whether mysqldump's trailer was seen is in ``completed``."""

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0
        self.delimiter = b";"
        self.completed = False
        self.header_checked = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        if not self.header_checked:
            if len(self.buf) < 256:
                return  # judged on its first 256 bytes (or all of it, at the end)
            check_header(self.buf)
            self.header_checked = True
        yield from self._drain(eof=False)

    def finish(self) -> Iterator[bytes]:
        if not self.header_checked:
            check_header(self.buf)
            self.header_checked = True
        yield from self._drain(eof=True)
        if self.buf[self.pos:].strip():
            raise DumpRefused("the dump ends inside a statement (cut short)")

    def _drain(self, eof: bool) -> Iterator[bytes]:
        buf = self.buf
        while True:
            m = _SPACE.match(buf, self.pos)
            if m:
                if TRAILER in buf[self.pos:m.end()]:
                    self.completed = True
                if m.end() == len(buf) and not eof:
                    # a comment may go on in the next chunk: keep its line
                    self.pos = max(self.pos, buf.rfind(b"\n", self.pos, m.end()) + 1)
                    return
                self.pos = m.end()
            if self.pos >= len(buf):
                return
            if buf[self.pos:self.pos + 9].upper() == b"DELIMITER":
                d = _DELIMITER.match(buf, self.pos)
                if d is None or (not d.group(0).endswith(b"\n") and not eof):
                    return
                self.delimiter = d.group(1)
                self.pos = d.end()
                continue
            end = self._statement_end(eof)
            if end is None:
                if len(buf) - self.pos > MAX_STATEMENT:
                    raise DumpRefused(f"a statement of the dump is over {MAX_STATEMENT >> 20} MB")
                return
            statement = buf[self.pos:end[0]]
            self.pos = end[1]
            self.completed = False  # the trailer counts only at the very end
            yield statement

    def _statement_end(self, eof: bool) -> tuple[int, int] | None:
        """(end of the statement, start of what follows) or None: need more data."""
        buf, delim, pos = self.buf, self.delimiter, self.pos
        if _DATA.match(buf, pos):
            at = buf.find(delim + b"\n", pos)
            if at >= 0:
                return at, at + len(delim) + 1
            if eof and buf.endswith(delim):
                return len(buf) - len(delim), len(buf)
            return None
        while pos < len(buf):
            if buf.startswith(delim, pos):
                return pos, pos + len(delim)
            m = _TOKEN.match(buf, pos)
            assert m is not None
            if m.lastgroup == "open" or (m.end() == len(buf) and not eof and m.lastgroup != "punct"):
                return None  # an unfinished literal, comment or word: wait for more
            if m.lastgroup in ("word", "ws") and delim[:1] in m.group(0):
                cut = buf.find(delim, pos, m.end())
                if cut >= 0:
                    return cut, cut + len(delim)
            pos = m.end()
        return None


def check_header(buf: bytes) -> None:
    """Refuse a stream that does not begin as mysqldump's output does."""
    head = SANDBOX.sub(b"", buf[:4096], count=1).lstrip(b"\r\n")
    if not head.startswith(HEADERS):
        shown = head[:60].decode("utf-8", "replace").encode("unicode_escape").decode("ascii")
        raise DumpRefused(f"what the old provider returned is not a mysqldump dump (it begins {shown!r})")


def table_of(statement: bytes) -> str | None:
    m = _TABLE.search(statement[:4096])
    if m is None:
        return None
    raw = (m.group(1) or m.group(2))[1:-1].replace(b"``", b"`")
    return common_name(raw.decode("utf-8", "replace"))


def common_name(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")


def option_value(value: str) -> str:
    """A value for a MySQL option file (double-quoted, escapes as the parser reads them)."""
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("a line break in a database credential")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def client_section(source: dict[str, Any], *, with_host: bool = True) -> str:
    lines = ["[client]", f"user={option_value(str(source['db_user']))}",
             f"password={option_value(str(source['db_password']))}"]
    host = str(source.get("db_host") or "localhost")
    if with_host and host != "localhost":
        lines += [f"host={option_value(host)}", f"port={int(source.get('db_port') or 3306)}"]
    return "\n".join(lines) + "\n"


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# -- the source: mysqldump and mysql over the route ------------------------------------------
class Source:
    """The old database over its route: a command whose stdout is the tool's output."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.source = dict(job["source"])
        self.via = str(self.source.get("db_via") or "")
        self.db = str(self.source.get("db_name") or "")
        if self.via not in ("ssh", "mysql"):
            common.fail("invalid", f"unknown database route {self.via!r}")
        if not self.db or self.db.startswith("-") or any(c in self.db for c in "\x00\r\n/\\"):
            common.fail("invalid", "the database name is not one a MySQL server has")
        try:
            self.client = client_section(self.source)
        except ValueError as exc:
            common.fail("invalid", str(exc))

    def command(self, tool: str, args: list[str]) -> tuple[list[str], bytes | None, tuple[int, ...]]:
        """(argv, what to write to its stdin, fds to pass) for ``tool args`` at the source."""
        if self.via == "ssh":
            argv, fd = common.ssh_argv(self.job, self.source)
            remote = " ".join(shlex.quote(a) for a in [tool, "--defaults-extra-file=/dev/stdin", *args])
            return [*argv, remote], self.client.encode(), (() if fd is None else (fd,))
        path = common.secret_file(self.job, "source.cnf", self.client)
        return [tool, f"--defaults-extra-file={path}", *args], None, ()

    def dump(self) -> tuple[subprocess.Popen[bytes], str]:
        argv, stdin, fds = self.command("mysqldump", [*DUMP_FLAGS, self.db])
        err = common.RUN_ROOT / f".dump-stderr-{os.getpid()}"
        with open(err, "wb") as fh:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fh,
                                    pass_fds=fds, start_new_session=True)
        for fd in fds:
            os.close(fd)
        assert proc.stdin is not None
        if stdin:
            proc.stdin.write(stdin)
        proc.stdin.close()
        return proc, str(err)

    def query(self, sql: str, timeout_s: float) -> list[list[str]]:
        """Rows of ``sql`` at the source (mysql -N -B, values unescaped)."""
        argv, stdin, fds = self.command("mysql", ["-N", "-B", "--default-character-set=utf8mb4",
                                                  "-e", sql, self.db])
        try:
            done = subprocess.run(argv, input=stdin or b"", capture_output=True, pass_fds=fds,
                                  timeout=max(timeout_s, 5.0), check=False)
        except subprocess.TimeoutExpired:
            common.fail("unreachable", "the old database did not answer the row count in time")
        finally:
            for fd in fds:
                os.close(fd)
        if done.returncode != 0:
            self.classify(done.stderr.decode("utf-8", "replace"), done.returncode)
        return [[_unescape(v) for v in line.split("\t")]
                for line in done.stdout.decode("utf-8", "replace").splitlines() if line]

    def classify(self, err: str, code: int) -> None:
        """End with the error the tool's message means (never echoing a secret)."""
        text = err.replace(str(self.source.get("db_password") or "\x00"), "***")
        if self.via == "ssh" and code == 255:
            if "Permission denied" in text or "Too many authentication" in text:
                common.fail("refused", "the old host refused the SSH login", credential="files")
            if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION" in text:
                common.fail("invalid", "the old host's SSH key is not the one the survey saw")
            common.fail("unreachable", f"the old host did not answer over SSH: {_last(text)}")
        if re.search(r"\b(1044|1045|1049|1698)\b", text) or "Access denied" in text:
            common.fail("refused", "the old provider refused the database login", credential="database")
        if re.search(r"\b(2002|2003|2005|2006|2013)\b", text):
            common.fail("unreachable", f"the old database did not answer: {_last(text)}")
        if code == 127:
            common.fail("invalid", "the old host has no mysqldump/mysql client")
        common.fail("invalid", f"the old database's tool failed (exit {code}): {_last(text)}")


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return common_name(lines[-1][:300]) if lines else "(no message)"


def _unescape(value: str) -> str:
    if value == "NULL":
        return ""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "0": "\0", "\\": "\\"}.get(m.group(1),
                                                                                     m.group(1)), value)


INVENTORY = (
    "SELECT 'T', table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
    "AND table_type = 'BASE TABLE' "
    "UNION ALL SELECT 'R', CONCAT(routine_type, ' ', routine_name) FROM information_schema.routines "
    "WHERE routine_schema = DATABASE() "
    "UNION ALL SELECT 'E', event_name FROM information_schema.events WHERE event_schema = DATABASE()")


def count_sql(tables: list[str]) -> str:
    # quoted identifiers of the source's own tables, and their indexes: no value of the customer's
    return " UNION ALL ".join(f"SELECT {i}, COUNT(*) FROM {quote_ident(t)}"  # noqa: S608
                              for i, t in enumerate(tables))


def source_inventory(src: Source, budget: common.Budget) -> tuple[dict[str, int], list[str]]:
    """The source's base tables with their row counts, and its routines and events."""
    rows = src.query(INVENTORY, budget.left_s())
    tables = sorted(name for kind, name in rows if kind == "T")
    others = sorted(f"{'event' if kind == 'E' else name.split(' ', 1)[0].lower()} {name.split(' ', 1)[-1]}"
                    for kind, name in rows if kind in ("R", "E"))
    counts: dict[str, int] = {}
    for start in range(0, len(tables), 200):
        part = tables[start:start + 200]
        for index, count in src.query(count_sql(part), budget.left_s()):
            counts[part[int(index)]] = int(count)
    return counts, others


# -- our side ----------------------------------------------------------------------------------
def root_connection(database: str | None = None) -> Any:
    import pymysql  # noqa: PLC0415 - the node's package, not needed to unit-test the rewriting

    return pymysql.connect(unix_socket=SOCKET, user="root", database=database, autocommit=True,
                           charset="utf8mb4")


def server_names(conn: Any) -> tuple[set[str], set[str]]:
    with conn.cursor() as cur:
        cur.execute("SELECT collation_name, character_set_name FROM information_schema.collations")
        rows = cur.fetchall()
    return {str(c).lower() for c, _ in rows}, {str(s).lower() for _, s in rows} | {"utf8", "utf8mb3"}


def target_counts(conn: Any, database: str) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                    "AND table_type = 'BASE TABLE'", (database,))
        tables = sorted(str(r[0]) for r in cur.fetchall())
        counts = {}
        for table in tables:
            cur.execute(f"SELECT COUNT(*) FROM {quote_ident(database)}.{quote_ident(table)}")  # noqa: S608
            counts[table] = int(cur.fetchone()[0])
    return counts


class Staging:
    """The job's staging database and its database user (ALL on that database only)."""

    def __init__(self, root: Any, job_id: str) -> None:
        self.root = root
        self.name = f"mig_{job_id}_new"
        self.trash = f"mig_{job_id}_old"
        self.user = f"mig_{job_id}"
        self.password = secrets.token_urlsafe(24)

    def create(self) -> Any:
        import pymysql  # noqa: PLC0415

        self.drop()
        with self.root.cursor() as cur:
            cur.execute(f"CREATE DATABASE {quote_ident(self.name)} CHARACTER SET utf8mb4 "
                        "COLLATE utf8mb4_unicode_ci")
            cur.execute("CREATE USER %s@'localhost' IDENTIFIED BY %s", (self.user, self.password))
            # in a GRANT, "_" is a wildcard: escaped, the grant names this database only
            pattern = quote_ident(self.name.replace("_", "\\_"))
            cur.execute(f"GRANT ALL PRIVILEGES ON {pattern}.* TO %s@'localhost'", (self.user,))
        return pymysql.connect(unix_socket=SOCKET, user=self.user, password=self.password, database=self.name,
                               autocommit=True, charset="utf8mb4", max_allowed_packet=MAX_STATEMENT + 1024,
                               local_infile=False)  # LOAD DATA LOCAL would read our files

    def drop(self) -> None:
        with self.root.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'localhost'", (self.user,))
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.name)}")
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.trash)}")

    def swap_into(self, target: str, owner: str) -> None:
        """The staging tables become ``target``'s (one RENAME TABLE); its triggers and
        views are re-created there with ``owner``@localhost as their definer."""
        cur = self.root.cursor()
        stage, t = quote_ident(self.name), quote_ident(target)
        cur.execute("SELECT table_name, view_definition, check_option, security_type FROM "
                    "information_schema.views WHERE table_schema = %s ORDER BY table_name", (self.name,))
        views = list(cur.fetchall())
        cur.execute("SELECT trigger_name, action_timing, event_manipulation, event_object_table, "
                    "action_statement, sql_mode FROM information_schema.triggers WHERE trigger_schema = %s "
                    "ORDER BY event_object_table, action_timing, event_manipulation, action_order",
                    (self.name,))
        triggers = list(cur.fetchall())
        for name, *_ in views:
            cur.execute(f"DROP VIEW {stage}.{quote_ident(name)}")
        for name, *_ in triggers:
            cur.execute(f"DROP TRIGGER {stage}.{quote_ident(name)}")
        cur.execute("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = %s",
                    (target,))
        old = list(cur.fetchall())
        cur.execute("SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = %s",
                    (target,))
        for (name,) in cur.fetchall():
            cur.execute(f"DROP TRIGGER {t}.{quote_ident(name)}")
        for name, kind in old:
            if kind == "VIEW":
                cur.execute(f"DROP VIEW {t}.{quote_ident(name)}")
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.name,))
        new = [str(r[0]) for r in cur.fetchall()]
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(self.trash)}")
        moves = [f"{t}.{quote_ident(n)} TO {quote_ident(self.trash)}.{quote_ident(n)}"
                 for n, kind in old if kind != "VIEW"]
        moves += [f"{stage}.{quote_ident(n)} TO {t}.{quote_ident(n)}" for n in new]
        if moves:
            cur.execute("RENAME TABLE " + ", ".join(moves))
        cur.execute(f"USE {t}")
        definer = f"{quote_ident(owner)}@'localhost'"
        for name, timing, event, table, statement, sql_mode in triggers:
            cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
            cur.execute(f"CREATE DEFINER={definer} TRIGGER {t}.{quote_ident(name)} {timing} {event} ON "
                        f"{quote_ident(table)} FOR EACH ROW {statement}")
        cur.execute("SET SESSION sql_mode = DEFAULT")
        pending = list(views)
        while pending:  # a view over another view: create in the order that works
            failed = []
            for name, definition, check, security in pending:
                body = str(definition).replace(f"{stage}.", f"{t}.")
                option = "" if check == "NONE" else f" WITH {check} CHECK OPTION"
                try:
                    cur.execute(f"CREATE DEFINER={definer} SQL SECURITY {security} VIEW "
                                f"{t}.{quote_ident(name)} AS {body}{option}")
                except Exception as exc:  # noqa: BLE001 - pymysql's errors; retried in the next pass
                    failed.append((name, definition, check, security, exc))
            if len(failed) == len(pending):
                raise DumpRefused(f"view {common_name(str(failed[0][0]))} could not be re-created: "
                                  f"{failed[0][4]}")
            pending = [f[:4] for f in failed]
        cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.trash)}")
        cur.close()


# -- the part ----------------------------------------------------------------------------------
@dataclass
class Load:
    bytes: int = 0
    statements: int = 0
    tables: int = 0
    state: str = "done"


def load(proc: subprocess.Popen[bytes], conn: Any, rewriter: Rewriter, budget: common.Budget,
         progress: common.Progress) -> Load:
    import pymysql  # noqa: PLC0415

    out = Load()
    splitter = Splitter()
    assert proc.stdout is not None
    timer = threading.Timer(budget.left_s(), common._stop_group, (proc,))
    timer.daemon = True
    timer.start()
    try:
        while True:
            chunk = proc.stdout.read1(CHUNK) if hasattr(proc.stdout, "read1") else proc.stdout.read(CHUNK)
            out.bytes += len(chunk)
            if out.bytes > budget.cap_bytes:
                out.state = "cap_reached"
                break
            if not chunk:
                if budget.expired():
                    out.state = "budget_exhausted"
                    break
                if proc.wait() != 0:
                    return out  # the caller reads the tool's error
                statements = splitter.finish()
            else:
                statements = splitter.feed(chunk)
            for statement in statements:
                sql = rewriter.statement(statement)
                if sql is None:
                    continue
                try:
                    conn.query(sql)
                except pymysql.err.MySQLError as exc:
                    if exc.args and exc.args[0] == 1065:  # "Query was empty": a comment-only statement
                        continue
                    where = table_of(statement)
                    raise DumpRefused(f"statement {out.statements + 1}"
                                      + (f" (table {where})" if where else "")
                                      + f" failed: {common_name(str(exc))[:300]}") from None
                out.statements += 1
                if sql[:40].upper().lstrip().startswith(b"CREATE TABLE"):
                    out.tables += 1
            progress(out.bytes, out.tables)
            if not chunk:
                if not splitter.completed:
                    raise DumpRefused("the dump ended before mysqldump's 'Dump completed' line (cut short)")
                return out
            if budget.expired():
                out.state = "budget_exhausted"
                break
    finally:
        timer.cancel()
    common._stop_group(proc)
    proc.wait()
    return out


def _stderr(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read()[-4000:].decode("utf-8", "replace")
    finally:
        if os.path.exists(path):
            os.unlink(path)


def differences(source: dict[str, int], target: dict[str, int]) -> list[str]:
    out = []
    for table in sorted(set(source) | set(target)):
        shown = common_name(table)
        if table not in target:
            out.append(f"table {shown}: missing here ({source[table]} rows at the source)")
        elif table not in source:
            out.append(f"table {shown}: not at the source ({target[table]} rows here)")
        elif source[table] != target[table]:
            out.append(f"table {shown}: {source[table]} rows at the source, {target[table]} here")
    return out


def main() -> None:
    job = common.read_job()
    part, mode = "database", str(job.get("mode"))
    account = dict(job.get("account") or {})
    # the account's database user is named as its database (the hosting_account role)
    target = owner = str(account.get("database") or "")
    if not _ACCOUNT.match(target):
        common.fail("invalid", "the account's database or user is not an account name")
    src = Source(job)
    budget, progress = common.Budget(job), common.Progress(part)
    root = root_connection()
    if mode == "verify":
        source_counts, _ = source_inventory(src, budget)
        here = target_counts(root, target)
        common.emit("result", part=part, state="done", bytes=0, items=len(here),
                    counts={"source": source_counts, "target": here,
                            "differences": differences(source_counts, here)}, error=None)
        return
    collations, charsets = server_names(root)
    rewriter = Rewriter({k.lower(): v for k, v in dict(job.get("collation_map") or {}).items()},
                        collations, charsets)
    staging = Staging(root, str(job["job"]))
    proc, err_path = src.dump()
    conn = None
    try:
        conn = staging.create()
        try:
            done = load(proc, conn, rewriter, budget, progress)
        except DumpRefused as exc:
            ended = proc.poll()  # the tool had already failed: its error is the reason
            common._stop_group(proc)
            proc.wait()
            err = _stderr(err_path)
            if ended not in (0, None):
                src.classify(err, ended)
            common.emit("item", part=part, kind="error", name=f"database {common_name(src.db)}",
                        reason=str(exc))
            common.emit("result", part=part, state="failed", bytes=0, items=0, counts={}, error=str(exc))
            return
        conn.close()  # its LOCK TABLES (a stopped load's) would block the counts below
        conn = None
        err = _stderr(err_path)
        if done.state == "done" and proc.returncode != 0:
            src.classify(err, proc.returncode)
        if done.state != "done":
            loaded = target_counts(root, staging.name)
            common.emit("result", part=part, state=done.state, bytes=done.bytes, items=done.tables,
                        counts={"loaded_then_discarded": loaded},
                        error=f"stopped after {done.bytes} bytes of the dump; the account's database is "
                              "unchanged")
            return
        here = target_counts(root, staging.name)
        source_counts, others = source_inventory(src, budget)
        for other in others:
            common.emit("item", part=part, kind="excluded", name=common_name(other),
                        reason="routines and events are not copied (their definer does not exist here): "
                               "re-create them as the account's database user")
        diff = differences(source_counts, here)
        for line in diff:
            common.emit("item", part=part, kind="error", name=line.split(":", 1)[0], reason=line)
        try:
            staging.swap_into(target, owner)
        except Exception as exc:  # noqa: BLE001 - pymysql's errors and ours: a failed part, named
            reason = f"the loaded database could not be swapped in: {common_name(str(exc))[:300]}"
            common.emit("item", part=part, kind="error", name=f"database {common_name(src.db)}",
                        reason=reason)
            common.emit("result", part=part, state="failed", bytes=done.bytes, items=0, counts={},
                        error=reason)
            return
        progress(done.bytes, done.tables, force=True)
        counts = {t: {"source": source_counts.get(t), "target": n} for t, n in here.items()}
        for t in source_counts:
            counts.setdefault(t, {"source": source_counts[t], "target": None})
        common.emit("result", part=part, state="done", bytes=done.bytes, items=len(here), counts=counts,
                    error="; ".join(diff) or None)
    finally:
        if conn is not None:
            conn.close()
        if proc.poll() is None:
            common._stop_group(proc)
            proc.wait()
        staging.drop()


if __name__ == "__main__":
    main()
