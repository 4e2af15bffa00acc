"""The customer's old provider, read-only: the migration survey's measurements (issue 13, item 3).

`OldProvider.measure` logs in with each credential of a migration's source and measures
it: the files over SFTP (paramiko) or FTPS (``ftplib.FTP_TLS``; plain FTP and an
unverified certificate only with the intake's flags), the database (PyMySQL, directly or
through the files section's SSH login), each mailbox over IMAPS. Nothing is written at
the old provider and nothing is followed out of the files' root (symlinks are listed with
their targets, never entered). A refused login is `CredentialRefused` naming the
credential (never its secret); an unreachable or timing-out source is a TransientError.

The old provider's SSH host key is accepted on first contact; its fingerprint is put in
the report and the key itself (``host_key``, "<type> <base64>") in the files measure:
there is nothing to pin it against yet; the copy pins it.
"""

from __future__ import annotations

import contextlib
import email.header
import ftplib
import functools
import imaplib
import posixpath
import re
import socket
import ssl
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pymysql

from provisioner.adapters.ssh import fingerprint, paramiko_module
from provisioner.domain.migration_survey import (
    DatabaseMeasure,
    FilesMeasure,
    FolderMeasure,
    Limits,
    MailboxMeasure,
    Measures,
    Sample,
    capped,
    collation_map,
    decode_imap_utf7,
    is_hostile,
    shown_name,
)
from provisioner.errors import InvalidInput, TransientError

MAX_ENTRIES = 2_000_000  # a tree larger than this is not walked to its end (reported)
_PHP = re.compile(r"^(\d+\.\d+(?:\.\d+)?)")
_FETCH_SIZE = re.compile(rb"UID (\d+)[^)]*?RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+)[^)]*?UID (\d+)")
_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')


class CredentialRefused(InvalidInput):
    """The old provider refused a login: ``credential`` names which (files, database,
    mailbox1, mailbox2), never its secret."""

    def __init__(self, credential: str, where: str) -> None:
        super().__init__(f"the old provider refused the {credential} login ({where}): check its user "
                         "name and password; nothing was copied")
        self.credential = credential


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


def _dead(credential: str, where: str, exc: BaseException, secrets: Iterable[str] = ()) -> TransientError:
    return TransientError(f"the old provider's {credential} ({where}) did not answer: "
                          f"{type(exc).__name__}: {_scrub(str(exc), secrets)}")


@dataclass
class _Walk:
    bytes: int = 0
    inodes: int = 0
    files: int = 0
    dirs: int = 0
    dotfiles: int = 0
    largest: int = 0
    symlinks: list[dict[str, Any]] = field(default_factory=list)
    specials: list[str] = field(default_factory=list)
    hostile: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    biggest: list[tuple[int, str]] = field(default_factory=list)  # a few large files for the sample

    def entry(self, rel: str, name: str) -> None:
        self.inodes += 1
        if name.startswith("."):
            self.dotfiles += 1
        if is_hostile(name):
            self.hostile.append(shown_name(rel))

    def regular(self, rel: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        self.largest = max(self.largest, size)
        self.biggest.append((size, rel))
        if len(self.biggest) > 64:
            self.biggest = sorted(self.biggest, reverse=True)[:8]

    def measure(self, protocol: str, root: str, php: str | None, sample: Sample,
                host_key: str | None = None) -> FilesMeasure:
        counts = {"symlinks": len(self.symlinks), "specials": len(self.specials),
                  "hostile": len(self.hostile), "unreadable": len(self.unreadable)}
        return FilesMeasure(protocol, root, self.bytes, self.inodes, self.files, self.dirs, self.dotfiles,
                            capped(self.symlinks), capped(self.specials), capped(self.hostile),
                            capped(self.unreadable), self.largest, php, sample, counts, host_key)


def _outside(root: str, link_dir: str, target: str) -> bool:
    resolved = posixpath.normpath(posixpath.join(link_dir, target))
    return not (resolved == root or resolved.startswith(root.rstrip("/") + "/"))


class OldProvider:
    """The real `MigrationSource` (`pipeline.engine.ports`)."""

    def __init__(self, timeout_s: float = 20.0) -> None:
        self.timeout_s = timeout_s

    def measure(self, values: Mapping[str, Any], *, allow_plain_ftp: bool, skip_cert_verify: bool,
                limits: Limits) -> Measures:
        """Log in with every credential first (a refused one fails before anything is
        measured), then measure each part."""
        warnings: list[str] = []
        files = database = None
        mailboxes = []
        with self._ssh(values) as ssh:
            if ssh is not None:
                warnings.append(f"files: SSH host key of {values['files_host']} is {ssh[1]} "
                                "(accepted on first contact)")
            db_conn: Any = None
            imaps: list[tuple[int, imaplib.IMAP4_SSL]] = []
            try:
                db_conn = self._db(values, ssh[0] if ssh is not None else None)
                for i in (1, 2):
                    if values.get(f"mail{i}_host"):
                        imaps.append(self._imap(values, i, skip_cert_verify))
                if values.get("files_host"):
                    if ssh is not None:
                        files = self._files_sftp(values, ssh[0], limits, ssh[2])
                    else:
                        files = self._files_ftp(values, allow_plain_ftp, skip_cert_verify, limits, warnings)
                if db_conn is not None:
                    database = self._measure_db(values, db_conn, limits)
                for index, imap in imaps:
                    mailboxes.append(self._measure_mailbox(values, index, imap, limits))
            finally:
                if db_conn is not None:
                    with contextlib.suppress(Exception):
                        db_conn.close()
                for _, imap in imaps:
                    with contextlib.suppress(imaplib.IMAP4.error, OSError):
                        imap.logout()
        return Measures(files, database, mailboxes, warnings)

    # -- SSH / SFTP --------------------------------------------------------------------------
    @contextmanager
    def _ssh(self, values: Mapping[str, Any]) -> Iterator[tuple[Any, str, str] | None]:
        if values.get("files_protocol") != "sftp" or not values.get("files_host"):
            yield None
            return
        paramiko = paramiko_module()
        host, port, user = values["files_host"], int(values["files_port"]), values["files_user"]
        where = f"sftp {user}@{host}:{port}"
        secrets = [values.get("files_password") or ""]
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        kwargs: dict[str, Any] = {"username": user, "timeout": self.timeout_s,
                                  "banner_timeout": self.timeout_s, "auth_timeout": self.timeout_s,
                                  "allow_agent": False, "look_for_keys": False}
        if values.get("files_key"):
            kwargs["pkey"] = _private_key(paramiko, values["files_key"])
        else:
            kwargs["password"] = values["files_password"]
        try:
            client.connect(host, port=port, **kwargs)
        except paramiko.AuthenticationException:
            client.close()
            raise CredentialRefused("files", where) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise _dead("files", where, exc, secrets) from None
        try:
            key = client.get_transport().get_remote_server_key()
            yield client, fingerprint(key), f"{key.get_name()} {key.get_base64()}"
        finally:
            client.close()

    def _php_version(self, client: Any) -> str | None:
        """The site's PHP (the CLI's, the best guess we have without the site), if any."""
        try:
            _, stdout, _ = client.exec_command("php -r 'echo PHP_VERSION;'", timeout=self.timeout_s)
            m = _PHP.match(stdout.read(64).decode("ascii", "replace"))
        except Exception:  # noqa: BLE001 - no shell, no PHP CLI: not detectable
            return None
        return m.group(1) if m else None

    def _files_sftp(self, values: Mapping[str, Any], client: Any, limits: Limits,
                    host_key: str) -> FilesMeasure:
        where = f"sftp {values['files_user']}@{values['files_host']}"
        try:
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.timeout_s)
            root = sftp.normalize(values.get("files_path") or ".")
        except (OSError, EOFError) as exc:
            raise _dead("files", where, exc) from None
        walk = _Walk()
        started = time.monotonic()
        stack = [root]
        try:
            while stack and walk.inodes < MAX_ENTRIES:
                directory = stack.pop()
                try:
                    entries = sftp.listdir_attr(directory)
                except (OSError, UnicodeDecodeError):
                    walk.unreadable.append(shown_name(directory[len(root):] or "/"))
                    continue
                for attr in entries:
                    name = attr.filename
                    path = posixpath.join(directory, name)
                    rel = path[len(root):].lstrip("/")
                    walk.entry(rel, name)
                    mode = attr.st_mode or 0
                    if stat.S_ISLNK(mode):
                        try:
                            target = sftp.readlink(path) or ""
                        except OSError:
                            target = ""
                        walk.symlinks.append({"path": shown_name(rel), "target": shown_name(target),
                                              "outside": _outside(root, directory, target)})
                    elif stat.S_ISDIR(mode):
                        walk.dirs += 1
                        stack.append(path)
                    elif stat.S_ISREG(mode):
                        walk.regular(rel, attr.st_size or 0)
                    else:
                        walk.specials.append(shown_name(rel))
            walk_s = time.monotonic() - started
            sample = self._sample(walk, lambda rel: sftp.open(posixpath.join(root, rel), "rb"), limits,
                                  walk_s)
        except (OSError, EOFError) as exc:
            raise _dead("files", where, exc) from None
        finally:
            sftp.close()
        return walk.measure("sftp", root, self._php_version(client), sample, host_key)

    def _sample(self, walk: _Walk, open_file: Callable[[str], Any], limits: Limits, walk_s: float) -> Sample:
        """Read up to ``sample_bytes`` of the largest files; the walk's time per entry is
        the per-file overhead."""
        got, started = 0, time.monotonic()
        for _, rel in sorted(walk.biggest, reverse=True)[:4]:
            if got >= limits.sample_bytes:
                break
            with open_file(rel) as fh:
                while got < limits.sample_bytes:
                    chunk = fh.read(min(256 * 1024, limits.sample_bytes - got))
                    if not chunk:
                        break
                    got += len(chunk)
        per_item = walk_s / walk.inodes if walk.inodes else 0.0
        return Sample(got, round(time.monotonic() - started, 4), round(per_item, 5))

    # -- FTP / FTPS --------------------------------------------------------------------------
    def _files_ftp(self, values: Mapping[str, Any], allow_plain: bool, skip_verify: bool, limits: Limits,
                   warnings: list[str]) -> FilesMeasure:
        protocol = values["files_protocol"]
        host, port, user = values["files_host"], int(values["files_port"]), values["files_user"]
        where = f"{protocol} {user}@{host}:{port}"
        secrets = [values.get("files_password") or ""]
        ftp: ftplib.FTP
        if protocol == "ftp":
            if not allow_plain:
                raise InvalidInput("plain FTP without the intake's allow_plain_ftp flag")
            warnings.append("files: plain FTP (the password travelled unencrypted)")
            ftp = ftplib.FTP(timeout=self.timeout_s)  # noqa: S321 - only with the intake's flag, reported
        else:
            context = ssl.create_default_context()
            if skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                warnings.append("files: the FTPS certificate was not verified")
            ftp = ftplib.FTP_TLS(context=context, timeout=self.timeout_s)  # noqa: S321 - FTPS
        try:
            ftp.connect(host, port)
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.auth()
            ftp.login(user, values["files_password"])
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
        except ftplib.error_perm as exc:
            ftp.close()
            if str(exc)[:3] in ("530", "331", "332"):
                raise CredentialRefused("files", where) from None
            raise _dead("files", where, exc, secrets) from None
        except (ftplib.Error, OSError, EOFError) as exc:
            ftp.close()
            raise _dead("files", where, exc, secrets) from None
        try:
            root = posixpath.normpath(posixpath.join(ftp.pwd(), values.get("files_path") or "."))
            walk = _Walk()
            started = time.monotonic()
            stack = [root]
            while stack and walk.inodes < MAX_ENTRIES:
                directory = stack.pop()
                try:
                    entries = list(ftp.mlsd(directory))
                except (ftplib.error_perm, UnicodeDecodeError):
                    walk.unreadable.append(shown_name(directory[len(root):] or "/"))
                    continue
                for name, facts in entries:
                    kind = facts.get("type", "").lower()
                    if kind in ("cdir", "pdir") or name in (".", ".."):
                        continue
                    path = posixpath.join(directory, name)
                    rel = path[len(root):].lstrip("/")
                    walk.entry(rel, name)
                    if kind == "dir":
                        walk.dirs += 1
                        stack.append(path)
                    elif kind == "file":
                        walk.regular(rel, int(facts.get("size", "0") or 0))
                    elif "link" in kind:
                        target = kind.split(":", 1)[1] if ":" in kind else ""
                        walk.symlinks.append({"path": shown_name(rel), "target": shown_name(target),
                                              "outside": not target or _outside(root, directory, target)})
                    else:
                        walk.specials.append(shown_name(rel))
            walk_s = time.monotonic() - started
            sample = self._sample(walk, lambda rel: _FtpRead(ftp, posixpath.join(root, rel)), limits, walk_s)
            return walk.measure(protocol, root, None, sample)
        except (ftplib.Error, OSError, EOFError) as exc:
            raise _dead("files", where, exc, secrets) from None
        finally:
            try:
                ftp.quit()
            except (ftplib.Error, OSError, EOFError):
                ftp.close()

    # -- the database ------------------------------------------------------------------------
    def _db(self, values: Mapping[str, Any], ssh: Any) -> Any:
        """Log in to the database: directly, or through the SSH login (TCP to the host as
        seen from there; for ``localhost`` also the server's socket, where users that may
        only log in locally are let in when the server does not resolve names)."""
        if not values.get("db_host"):
            return None
        via, host, port = values["db_via"], values["db_host"], int(values["db_port"])
        user, name = values["db_user"], values["db_name"]
        where = f"{user}@{host}:{port}/{name}" + (" through SSH" if via == "ssh" else "")
        secrets = [values.get("db_password") or ""]

        def connection() -> Any:
            return pymysql.connections.Connection(
                host=host, port=port, user=user, password=values["db_password"], database=name,
                connect_timeout=int(self.timeout_s), read_timeout=int(self.timeout_s) * 6,
                charset="utf8mb4", defer_connect=True)

        if via == "ssh" and ssh is None:
            raise InvalidInput("a database through SSH needs the files section over SFTP")
        ways: list[Callable[[], Any]] = []
        if via == "ssh":
            transport = ssh.get_transport()
            target = "127.0.0.1" if host == "localhost" else host
            ways.append(lambda: transport.open_channel("direct-tcpip", (target, port), ("127.0.0.1", 0),
                                                       timeout=self.timeout_s))
            if host == "localhost":
                ways += [functools.partial(_streamlocal, transport, path, self.timeout_s) for path in SOCKETS]
        else:
            ways.append(lambda: None)
        refused = dead = None
        for way in ways:
            conn = connection()
            try:
                channel = way()
                if channel is None:
                    conn.connect()
                else:
                    conn.connect(sock=_ChannelSocket(channel, self.timeout_s))
                return conn
            except pymysql.err.OperationalError as exc:
                code = exc.args[0] if exc.args else 0
                if code in (1044, 1045, 1049, 1698):  # access denied, unknown database
                    refused = refused or CredentialRefused("database", where)
                else:
                    dead = dead or _dead("database", where, exc, secrets)
            except Exception as exc:  # noqa: BLE001 - the library's and paramiko's errors, all of them
                dead = dead or _dead("database", where, exc, secrets)
        if refused is not None:
            raise refused
        assert dead is not None
        raise dead

    def _measure_db(self, values: Mapping[str, Any], conn: Any, limits: Limits) -> DatabaseMeasure:
        name = values["db_name"]
        where = f"{values['db_user']}@{values['db_host']}/{name}"
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                version = str(cur.fetchone()[0])
                cur.execute(
                    "SELECT table_name, engine, table_collation, COALESCE(data_length, 0) "
                    "+ COALESCE(index_length, 0) FROM information_schema.tables "
                    "WHERE table_schema = %s AND table_type = 'BASE TABLE'", (name,))
                tables = list(cur.fetchall())
                cur.execute("SELECT DISTINCT character_set_name, collation_name "
                            "FROM information_schema.columns "
                            "WHERE table_schema = %s AND collation_name IS NOT NULL", (name,))
                columns = list(cur.fetchall())
                cur.execute("SELECT default_character_set_name, default_collation_name "
                            "FROM information_schema.schemata WHERE schema_name = %s", (name,))
                schema = cur.fetchone()
            sample = self._db_sample(conn, tables, limits)
        except pymysql.err.MySQLError as exc:
            raise _dead("database", where, exc, [values.get("db_password") or ""]) from None
        engines: dict[str, int] = {}
        collations = {str(c) for _, _, c, _ in tables if c}
        charsets = set()
        for charset, collation in columns:
            charsets.add(str(charset))
            collations.add(str(collation))
        if schema:
            charsets.add(str(schema[0]))
            collations.add(str(schema[1]))
        for _, engine, _, _ in tables:
            engines[str(engine or "unknown")] = engines.get(str(engine or "unknown"), 0) + 1
        charsets |= {c.split("_", 1)[0] for c in collations}
        return DatabaseMeasure(
            via=values["db_via"], name=name, server="MariaDB" if "mariadb" in version.lower() else "MySQL",
            version=version.split("-", 1)[0], bytes=sum(int(t[3]) for t in tables), tables=len(tables),
            engines=dict(sorted(engines.items())), charsets=sorted(charsets), collations=sorted(collations),
            collation_map=collation_map(collations), sample=sample)

    def _db_sample(self, conn: Any, tables: list[Any], limits: Limits) -> Sample:
        """Read rows of the largest table until ``sample_bytes`` (the wire's rate for the dump)."""
        if not tables:
            return Sample(0, 0.0)
        table = max(tables, key=lambda t: int(t[3]))[0]
        quoted = "`" + str(table).replace("`", "``") + "`"
        got, started = 0, time.monotonic()
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            # a quoted identifier, not data; the LIMIT bounds what closing the cursor drains
            cur.execute(f"SELECT * FROM {quoted} LIMIT 5000")  # noqa: S608
            for row in cur:
                got += sum(len(v) if isinstance(v, bytes | str) else 8 for v in row)
                if got >= limits.sample_bytes:
                    break
        return Sample(got, round(time.monotonic() - started, 4))

    # -- mailboxes ---------------------------------------------------------------------------
    def _imap(self, values: Mapping[str, Any], i: int, skip_verify: bool) -> tuple[int, imaplib.IMAP4_SSL]:
        host, port, user = values[f"mail{i}_host"], int(values[f"mail{i}_port"]), values[f"mail{i}_user"]
        where = f"imaps {user}@{host}:{port}"
        secret = values[f"mail{i}_password"]
        context = ssl.create_default_context()
        if skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            imap = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=self.timeout_s)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise _dead(f"mailbox{i}", where, exc, [secret]) from None
        try:
            imap.login(user, secret)
        except imaplib.IMAP4.error:
            imap.shutdown()
            raise CredentialRefused(f"mailbox{i}", where) from None
        except OSError as exc:
            raise _dead(f"mailbox{i}", where, exc, [secret]) from None
        return i, imap

    def _measure_mailbox(self, values: Mapping[str, Any], i: int, imap: imaplib.IMAP4_SSL,
                         limits: Limits) -> MailboxMeasure:
        user, host = values[f"mail{i}_user"], values[f"mail{i}_host"]
        where = f"imaps {user}@{host}"
        folders: list[FolderMeasure] = []
        over: list[dict[str, Any]] = []
        sample_uids: list[tuple[str, bytes, int]] = []
        try:
            typ, listing = imap.list()
            for raw in _folder_names(listing):
                typ, _ = imap.select(_quote(raw), readonly=True)
                if typ != "OK":
                    continue
                sizes = _sizes(imap)
                name = decode_imap_utf7(raw)
                folders.append(FolderMeasure(name, raw, len(sizes), sum(sizes.values()),
                                             max(sizes.values(), default=0)))
                for uid, size in sizes.items():
                    if size > limits.max_message_bytes:
                        over.append({"folder": name, "uid": int(uid), "bytes": size,
                                     "subject": _subject(imap, uid)})
                    elif len(sample_uids) < 200:
                        sample_uids.append((raw, uid, size))
            sample = self._mail_sample(imap, sample_uids, limits)
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            raise _dead(f"mailbox{i}", where, exc, [values[f"mail{i}_password"]]) from None
        return MailboxMeasure(i, user, host, folders, sum(f.messages for f in folders),
                              sum(f.bytes for f in folders), max((f.largest for f in folders), default=0),
                              capped(over), sample)

    def _mail_sample(self, imap: imaplib.IMAP4_SSL, uids: list[tuple[str, bytes, int]],
                     limits: Limits) -> Sample:
        """FETCH whole messages (read-only: BODY.PEEK) until ``sample_bytes``; the time
        per message beyond the bytes is the per-message overhead."""
        got, n, started, selected = 0, 0, time.monotonic(), None
        for raw, uid, size in uids:
            if got >= limits.sample_bytes:
                break
            if raw != selected:
                imap.select(_quote(raw), readonly=True)
                selected = raw
            imap.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
            got += size
            n += 1
        elapsed = time.monotonic() - started
        return Sample(got, round(elapsed, 4), round(elapsed / n, 5) if n else 0.0)


def _private_key(paramiko: Any, text: str) -> Any:
    import io  # noqa: PLC0415 - only for a key login

    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise InvalidInput("the files key is not a private key paramiko can read (Ed25519, ECDSA or RSA)")


def _folder_names(listing: list[Any]) -> list[str]:
    out = []
    for item in listing:
        if isinstance(item, tuple):  # a literal name
            head, literal = item
            flags = head.split(b")", 1)[0]
            if b"\\noselect" not in flags.lower() and b"\\nonexistent" not in flags.lower():
                out.append(literal.decode("utf-8", "replace"))
            continue
        if not isinstance(item, bytes):
            continue
        m = _LIST.match(item)
        if m is None or b"\\noselect" in m.group("flags").lower():
            continue
        name = m.group("name").decode("utf-8", "replace")
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out.append(name)
    return out


def _quote(raw: str) -> str:
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sizes(imap: imaplib.IMAP4_SSL) -> dict[bytes, int]:
    typ, data = imap.uid("FETCH", "1:*", "(RFC822.SIZE)")
    out: dict[bytes, int] = {}
    if typ != "OK":
        return out
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        if not isinstance(line, bytes):
            continue
        m = _FETCH_SIZE.search(line)
        if m is None:
            continue
        uid, size = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        out[uid] = int(size)
    return out


def _subject(imap: imaplib.IMAP4_SSL, uid: bytes) -> str:
    typ, data = imap.uid("FETCH", uid.decode(), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    for item in data:
        if isinstance(item, tuple):
            text = item[1].decode("utf-8", "replace").partition(":")[2].strip()
            try:
                text = str(email.header.make_header(email.header.decode_header(text)))
            except (ValueError, LookupError):
                pass
            return shown_name(text)[:200]
    return ""


# where MySQL/MariaDB servers keep their socket (Debian, RHEL, the default build); read there
SOCKETS = ("/run/mysqld/mysqld.sock", "/var/lib/mysql/mysql.sock", "/tmp/mysql.sock")  # noqa: S108


def _streamlocal(transport: Any, path: str, timeout_s: float) -> Any:
    """A channel to a Unix socket on the SSH server (OpenSSH's
    ``direct-streamlocal@openssh.com``, which paramiko's `open_channel` does not spell
    out: its three fields are added to the open request on the way out)."""
    kind = "direct-streamlocal@openssh.com"
    send = transport._send_user_message
    marker = kind.encode()

    def with_path(message: Any) -> None:
        if marker in message.asbytes()[:64]:
            message.add_string(path)
            message.add_string("")
            message.add_int(0)
        send(message)

    transport._send_user_message = with_path
    try:
        return transport.open_channel(kind, timeout=timeout_s)
    finally:
        del transport._send_user_message


class _FtpRead:
    """A file at the FTP server read as a stream (RETR), closed early."""

    def __init__(self, ftp: ftplib.FTP, path: str) -> None:
        self.ftp = ftp
        self.conn = ftp.transfercmd(f"RETR {path}")

    def __enter__(self) -> _FtpRead:
        return self

    def read(self, n: int) -> bytes:
        return bytes(self.conn.recv(n))

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
        try:
            self.ftp.voidresp()  # 226, or 426 for a transfer closed early
        except ftplib.Error:
            pass


class _ChannelSocket:
    """A paramiko channel as much of a socket as PyMySQL uses."""

    def __init__(self, channel: Any, timeout_s: float) -> None:
        self.channel = channel
        self.channel.settimeout(timeout_s)

    def settimeout(self, value: float | None) -> None:
        self.channel.settimeout(value)

    def setsockopt(self, *args: Any) -> None:
        return None

    def makefile(self, mode: str) -> Any:
        return self.channel.makefile(mode)

    def sendall(self, data: bytes) -> None:
        self.channel.sendall(data)

    def close(self) -> None:
        self.channel.close()

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        self.channel.close()
