"""The old provider's access, as the customer (intake form) or ops (a JSON file) give it:
strict validation, pure (no I/O).

One flat form of field names serves both: the page posts them, and `from_json` turns
the file's nested form into them, so both go through `validate`. Every field is checked
on its own (host names or IP addresses, ports, user names, paths, no control characters,
lengths) and every error is collected under its field with a code the page translates;
`SourceInvalid` carries them, nothing is kept. Secrets (passwords, the private key) are
never part of an error, a summary or a message.

Sections (each optional, at least one):

* files: ``files_protocol`` (sftp | ftps | ftp), ``files_host``, ``files_port``
  (default 22 / 21), ``files_user``, ``files_password`` or ``files_key`` (SFTP only),
  ``files_path`` (on the old server; default ``.``). Plain FTP only with
  ``allow_plain_ftp``.
* database: ``db_via`` (ssh: through the files section's SSH login, the host as seen from
  there, default ``localhost``; mysql: a direct connection, default port 3306),
  ``db_host``, ``db_port``, ``db_name``, ``db_user``, ``db_password``.
* mailboxes 1 and 2: ``mail1_host``, ``mail1_port`` (default 993, IMAPS), ``mail1_user``,
  ``mail1_password`` (and ``mail2_*``).
* ``skip_cert_verify``: do not verify the old provider's TLS certificates (reported).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provisioner.errors import InvalidInput

MAX_MAILBOXES = 2
FILE_PROTOCOLS = ("sftp", "ftps", "ftp")
DB_VIA = ("ssh", "mysql")
FLAGS = ("allow_plain_ftp", "skip_cert_verify")
SECRET_FIELDS = frozenset(
    {
        "files_password",
        "files_key",
        "db_password",
        *(f"mail{i}_password" for i in range(1, MAX_MAILBOXES + 1)),
    }
)

_FILE_FIELDS = (
    "files_protocol",
    "files_host",
    "files_port",
    "files_user",
    "files_password",
    "files_key",
    "files_path",
)
_DB_FIELDS = ("db_via", "db_host", "db_port", "db_name", "db_user", "db_password")
_MAIL_FIELDS = tuple(
    f"mail{i}_{k}" for i in range(1, MAX_MAILBOXES + 1) for k in ("host", "port", "user", "password")
)
FIELDS = _FILE_FIELDS + _DB_FIELDS + _MAIL_FIELDS

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_USER = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
_DB_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")
_PATH = re.compile(r"^[A-Za-z0-9._/~@+ -]{1,255}$")
_KEY = re.compile(
    r"^-----BEGIN ([A-Z0-9 ]{1,40})-----\n([A-Za-z0-9+/=:,\- \n]{16,16000})\n-----END \1-----\n?$"
)
_PASSWORD_MAX = 256


class SourceInvalid(InvalidInput):
    """The intake has errors: ``errors`` maps each bad field to a code (`ERROR_TEXT`)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        named = ", ".join(f"{k}: {ERROR_TEXT['en'].get(v, v)}" for k, v in sorted(self.errors.items()))
        super().__init__(f"the migration source has errors ({named})")


# The page shows these beside the field, in the customer's language.
ERROR_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "required": "required",
        "host": "not a host name or a public IP address",
        "port": "not a port (1-65535)",
        "user": "letters, digits and . _ @ + - only, up to 128",
        "db_name": "letters, digits and _ $ - only, up to 64",
        "path": "a path of letters, digits and . _ / ~ @ + - (no ..)",
        "control": "contains control characters",
        "too_long": "too long",
        "choice": "not one of the choices",
        "plain_ftp": 'plain FTP sends the password unencrypted: tick "plain FTP allowed" or use FTPS/SFTP',
        "key": "not a private key in PEM/OpenSSH form",
        "key_sftp": "a key works with SFTP only",
        "secret": "give a password (or, for SFTP, a key)",
        "ssh_needs_sftp": "a database through SSH needs the files section over SFTP",
        "nothing": "give at least one of: files, database, a mailbox",
        "unknown": "not a field of this form",
        "flag": "not a yes/no value",
    },
    "sl": {
        "required": "obvezno",
        "host": "ni ime strežnika ali javni naslov IP",
        "port": "ni vrata (1-65535)",
        "user": "samo črke, številke in . _ @ + -, do 128 znakov",
        "db_name": "samo črke, številke in _ $ -, do 64 znakov",
        "path": "pot iz črk, številk in . _ / ~ @ + - (brez ..)",
        "control": "vsebuje kontrolne znake",
        "too_long": "predolgo",
        "choice": "ni ena od možnosti",
        "plain_ftp": 'navadni FTP pošlje geslo nešifrirano: označite "navadni FTP dovoljen" '
        "ali uporabite FTPS/SFTP",
        "key": "ni zasebni ključ v obliki PEM/OpenSSH",
        "key_sftp": "ključ deluje samo s SFTP",
        "secret": "vpišite geslo (ali, za SFTP, ključ)",
        "ssh_needs_sftp": "podatkovna baza prek SSH potrebuje datoteke prek SFTP",
        "nothing": "vpišite vsaj eno od: datoteke, podatkovna baza, poštni predal",
        "unknown": "to polje ne obstaja",
        "flag": "ni da/ne",
    },
}


@dataclass(frozen=True)
class Source:
    """A validated source: ``values`` (the clean fields, secrets included: seal them,
    never log them) and the flags."""

    values: dict[str, Any]
    allow_plain_ftp: bool = False
    skip_cert_verify: bool = False

    def sections(self) -> list[str]:
        out = [s for s in ("files", "database") if self.values.get(f"{_prefix(s)}_host")]
        out += [f"mailbox{i}" for i in range(1, MAX_MAILBOXES + 1) if self.values.get(f"mail{i}_host")]
        return out

    def summary(self) -> dict[str, Any]:
        """What may be shown (`provisioner migration show`, the audit log): no secret."""
        v = self.values
        out: dict[str, Any] = {
            "flags": {"allow_plain_ftp": self.allow_plain_ftp, "skip_cert_verify": self.skip_cert_verify}
        }
        if v.get("files_host"):
            out["files"] = {
                "protocol": v["files_protocol"],
                "host": v["files_host"],
                "port": v["files_port"],
                "user": v["files_user"],
                "path": v["files_path"],
                "auth": "key" if v.get("files_key") else "password",
            }
        if v.get("db_host"):
            out["database"] = {
                "via": v["db_via"],
                "host": v["db_host"],
                "port": v["db_port"],
                "name": v["db_name"],
                "user": v["db_user"],
            }
        out["mailboxes"] = [
            {"host": v[f"mail{i}_host"], "port": v[f"mail{i}_port"], "user": v[f"mail{i}_user"]}
            for i in range(1, MAX_MAILBOXES + 1)
            if v.get(f"mail{i}_host")
        ]
        warnings = []
        if v.get("files_protocol") == "ftp":
            warnings.append("plain FTP: the password travels unencrypted")
        if self.skip_cert_verify:
            warnings.append("TLS certificates of the old provider are not verified")
        out["warnings"] = warnings
        return out


def _prefix(section: str) -> str:
    return {"files": "files", "database": "db"}[section]


# -- single fields --------------------------------------------------------------------------
def _text(raw: object, *, limit: int = 255) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise _Bad("choice")
    text = str(raw)
    if len(text) > limit:
        raise _Bad("too_long")
    return text


class _Bad(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def check_host(raw: str, *, allow_localhost: bool = False) -> str:
    """A DNS name (IDNA-encoded, at least two labels) or a public/private IP address;
    never loopback, link-local, multicast or unspecified (the node must not be pointed at
    itself or its neighbours' link)."""
    text = raw.strip().lower().rstrip(".")
    if _CONTROL.search(raw):
        raise _Bad("control")
    if allow_localhost and text == "localhost":
        return text
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
            raise _Bad("host")
        return str(ip)
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise _Bad("host") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2 or not all(_LABEL.match(lb) for lb in labels):
        raise _Bad("host")
    if labels[-1].isdigit() or ascii_name.endswith(".localhost") or ascii_name == "localhost":
        raise _Bad("host")
    return ascii_name


def check_port(raw: object, default: int) -> int:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if isinstance(raw, bool):
        raise _Bad("port")
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _Bad("port")
    return int(text)


def check_password(raw: str) -> str:
    if len(raw) > _PASSWORD_MAX:
        raise _Bad("too_long")
    if _CONTROL.search(raw):
        raise _Bad("control")
    return raw


def check_key(raw: str) -> str:
    text = raw.replace("\r\n", "\n").strip() + "\n"
    if len(text) > 16384:
        raise _Bad("too_long")
    if "\x00" in text or not _KEY.match(text) or "PRIVATE KEY" not in text.split("\n", 1)[0]:
        raise _Bad("key")
    return text


def check_path(raw: str) -> str:
    text = raw.strip() or "."
    if _CONTROL.search(text):
        raise _Bad("control")
    if not _PATH.match(text) or ".." in text.split("/"):
        raise _Bad("path")
    return text


def _flag(raw: object) -> bool:
    if raw is None or raw is False or raw == "":
        return False
    if raw is True:
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("1", "on", "yes", "true"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "off", "no", "false"):
        return False
    raise _Bad("flag")


# -- the whole intake -----------------------------------------------------------------------
def validate(form: Mapping[str, object]) -> Source:
    """The clean `Source` of ``form`` (flat field names), or SourceInvalid naming every bad field."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name in form:
        if name not in FIELDS and name not in FLAGS:
            errors[str(name)[:40]] = "unknown"

    def get(name: str, limit: int = 255) -> str:
        try:
            text = _text(form.get(name), limit=limit)
        except _Bad as bad:
            errors[name] = bad.code
            return ""
        if name not in SECRET_FIELDS:
            text = text.strip()
        return text

    def run(name: str, check: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except _Bad as bad:
            errors[name] = bad.code
            return None

    flags = {}
    for flag in FLAGS:
        flags[flag] = bool(run(flag, _flag, form.get(flag)))

    def filled(fields: tuple[str, ...]) -> bool:
        return any(form.get(f) not in (None, "") for f in fields if not f.endswith(("_protocol", "_via")))

    # files
    if filled(_FILE_FIELDS):
        protocol = get("files_protocol").lower() or "sftp"
        if protocol not in FILE_PROTOCOLS:
            errors["files_protocol"] = "choice"
        elif protocol == "ftp" and not flags["allow_plain_ftp"]:
            errors["files_protocol"] = "plain_ftp"
        values["files_protocol"] = protocol
        host = get("files_host")
        values["files_host"] = (
            run("files_host", check_host, host)
            if host
            else errors.setdefault("files_host", "required") and None
        )
        values["files_port"] = run(
            "files_port", check_port, form.get("files_port"), 22 if protocol == "sftp" else 21
        )
        user = get("files_user", 128)
        if not user:
            errors.setdefault("files_user", "required")
        elif not _USER.match(user):
            errors["files_user"] = "user"
        values["files_user"] = user
        password = get("files_password", 1000)
        key = get("files_key", 20000)
        values["files_password"] = run("files_password", check_password, password) if password else ""
        values["files_key"] = ""
        if key.strip():
            if protocol != "sftp":
                errors["files_key"] = "key_sftp"
            else:
                values["files_key"] = run("files_key", check_key, key) or ""
        if not password and not key.strip():
            errors.setdefault("files_password", "secret")
        values["files_path"] = run("files_path", check_path, get("files_path"))
    # database
    if filled(_DB_FIELDS):
        via = get("db_via").lower() or "mysql"
        if via not in DB_VIA:
            errors["db_via"] = "choice"
        elif via == "ssh" and values.get("files_protocol") != "sftp":
            errors["db_via"] = "ssh_needs_sftp"
        values["db_via"] = via
        host = get("db_host") or ("localhost" if via == "ssh" else "")
        values["db_host"] = (
            run("db_host", check_host, host, allow_localhost=via == "ssh")
            if host
            else errors.setdefault("db_host", "required") and None
        )
        values["db_port"] = run("db_port", check_port, form.get("db_port"), 3306)
        name = get("db_name", 64)
        if not name:
            errors.setdefault("db_name", "required")
        elif not _DB_NAME.match(name):
            errors["db_name"] = "db_name"
        values["db_name"] = name
        user = get("db_user", 128)
        if not user:
            errors.setdefault("db_user", "required")
        elif not _USER.match(user):
            errors["db_user"] = "user"
        values["db_user"] = user
        password = get("db_password", 1000)
        if not password:
            errors.setdefault("db_password", "secret")
        values["db_password"] = run("db_password", check_password, password) if password else ""
    # mailboxes
    for i in range(1, MAX_MAILBOXES + 1):
        fields = tuple(f for f in _MAIL_FIELDS if f.startswith(f"mail{i}_"))
        if not filled(fields):
            continue
        host = get(f"mail{i}_host")
        values[f"mail{i}_host"] = (
            run(f"mail{i}_host", check_host, host)
            if host
            else errors.setdefault(f"mail{i}_host", "required") and None
        )
        values[f"mail{i}_port"] = run(f"mail{i}_port", check_port, form.get(f"mail{i}_port"), 993)
        user = get(f"mail{i}_user", 128)
        if not user:
            errors.setdefault(f"mail{i}_user", "required")
        elif not _USER.match(user):
            errors[f"mail{i}_user"] = "user"
        values[f"mail{i}_user"] = user
        password = get(f"mail{i}_password", 1000)
        if not password:
            errors.setdefault(f"mail{i}_password", "secret")
        values[f"mail{i}_password"] = run(f"mail{i}_password", check_password, password) if password else ""
    if not values and not errors:
        errors["files_host"] = "nothing"
    if errors:
        raise SourceInvalid(errors)
    return Source(values, flags["allow_plain_ftp"], flags["skip_cert_verify"])


def from_json(data: object) -> dict[str, object]:
    """The nested JSON of ``provisioner migration source`` as the flat form::

    {"files": {"protocol", "host", "port", "user", "password" | "key", "path"},
     "database": {"via", "host", "port", "name", "user", "password"},
     "mailboxes": [{"host", "port", "user", "password"}, ...],
     "allow_plain_ftp": false, "skip_cert_verify": false}
    """
    if not isinstance(data, dict):
        raise SourceInvalid({"file": "choice"})
    flat: dict[str, object] = {}
    errors: dict[str, str] = {}
    for key, value in data.items():
        if key == "files" and isinstance(value, dict):
            flat.update({f"files_{k}": v for k, v in value.items()})
        elif key == "database" and isinstance(value, dict):
            flat.update({f"db_{k}": v for k, v in value.items()})
        elif key == "mailboxes" and isinstance(value, list) and len(value) <= MAX_MAILBOXES:
            for i, box in enumerate(value, start=1):
                if not isinstance(box, dict):
                    errors[f"mail{i}"] = "choice"
                    continue
                flat.update({f"mail{i}_{k}": v for k, v in box.items()})
        elif key in FLAGS:
            flat[key] = value
        else:
            errors[str(key)[:40]] = "unknown" if key not in ("files", "database", "mailboxes") else "choice"
    if errors:
        raise SourceInvalid(errors)
    return flat
