"""Guards for names a customer sends (domains, host names, user names).

Everything a customer types passes through here before it reaches a shell, a path, a
template or a registry. Each function either returns a canonical, safe string or raises
InvalidInput saying what is wrong.
"""

from __future__ import annotations

import re
import unicodedata

from provisioner.domain.hosting_names import (
    ACCOUNT_NAME_MAX_LENGTH,
    RESERVED_ACCOUNT_NAMES,
    account_name_problem,
)
from provisioner.errors import InvalidInput

MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
_MAX_RAW_LENGTH = 1000  # refuse before doing any Unicode work on absurd input

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TLD_RE = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")
_ASCII_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def _describe(ch: str) -> str:
    if ch == "\x00":
        return "NUL"
    if ch.isspace():
        return f"white space {ch!r}"
    if unicodedata.category(ch).startswith("C"):
        return f"control character U+{ord(ch):04X}"
    return repr(ch)


def _script(ch: str) -> str | None:
    """The Unicode script of a letter, approximated by the first word of its name."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    if not name:
        return "UNKNOWN"
    first = name.split()[0]
    if first == "CJK":
        return "HAN"
    return first


def _check_single_script(label: str, original: str) -> None:
    scripts = {s for s in (_script(c) for c in label) if s is not None}
    # Japanese legitimately mixes Han with kana.
    if scripts <= {"HAN", "HIRAGANA", "KATAKANA"}:
        return
    if len(scripts) > 1:
        names = ", ".join(sorted(s.title() for s in scripts))
        raise InvalidInput(
            f"domain name {original!r} mixes scripts in one label ({names}); "
            "look-alike names are refused"
        )


def _to_ascii_label(label: str, original: str) -> str:
    if label.isascii():
        if label.startswith("xn--"):
            try:
                decoded = label.encode("ascii").decode("idna")
            except UnicodeError:
                raise InvalidInput(
                    f"domain name {original!r} has an invalid punycode label {label!r}"
                ) from None
            _check_single_script(decoded, original)
        return label
    for ch in label:
        if unicodedata.category(ch)[0] in "CZ":
            raise InvalidInput(f"domain name {original!r} contains {_describe(ch)}")
    _check_single_script(label, original)
    try:
        encoded = label.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput(
            f"domain name {original!r} has a label that is not a valid international name"
        ) from None
    return encoded.lower()


def normalize_domain(name: str) -> str:
    """The canonical ASCII (punycode) form of a domain or host name.

    Strips surrounding white space, lower-cases, drops one trailing dot, converts IDN
    labels to punycode (IDNA 2003, ``str.encode("idna")``) after refusing labels that mix
    scripts (e.g. Latin + Cyrillic look-alikes). The result has at least two labels, each
    1..63 characters of ``[a-z0-9-]`` not starting or ending with ``-``, at most 253
    characters in total, and an alphabetic (or ``xn--``) top-level domain.
    """
    if not isinstance(name, str):
        raise InvalidInput(f"domain name must be text, not {type(name).__name__}")
    if len(name) > _MAX_RAW_LENGTH:
        raise InvalidInput(f"domain name is far too long ({len(name)} characters)")
    original = name
    text = name.strip().lower()
    if not text:
        raise InvalidInput("domain name is empty")
    for ch in text:
        if ch.isascii() and ch not in _ASCII_ALLOWED:
            raise InvalidInput(
                f"domain name {original!r} contains {_describe(ch)}; only letters, digits, "
                "'-' and '.' are allowed"
            )
        if not ch.isascii() and unicodedata.category(ch)[0] in "CZ":
            raise InvalidInput(f"domain name {original!r} contains {_describe(ch)}")
    # Full-width and ideographic dots are label separators in IDNA.
    for dot in ("\u3002", "\uff0e", "\uff61"):
        text = text.replace(dot, ".")
    if text.endswith("."):
        text = text[:-1]
    # punycode is never shorter than the Unicode form, so this check is safe before IDNA
    if len(text) > MAX_DOMAIN_LENGTH:
        raise InvalidInput(
            f"domain name is too long ({len(text)} characters, at most {MAX_DOMAIN_LENGTH})"
        )
    labels = text.split(".")
    if any(label == "" for label in labels):
        raise InvalidInput(f"domain name {original!r} has an empty label ('..' or leading '.')")
    if len(labels) < 2:
        raise InvalidInput(f"domain name {original!r} needs at least two labels (name.tld)")
    ascii_labels = [_to_ascii_label(label, original) for label in labels]
    for label in ascii_labels:
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidInput(
                f"domain name {original!r} has a label longer than {MAX_LABEL_LENGTH} characters"
            )
        if label.startswith("-") or label.endswith("-"):
            raise InvalidInput(
                f"domain name {original!r}: label {label!r} must not start or end with '-'"
            )
        if not _LABEL_RE.fullmatch(label):
            raise InvalidInput(f"domain name {original!r}: label {label!r} is not valid")
    result = ".".join(ascii_labels)
    if len(result) > MAX_DOMAIN_LENGTH:
        raise InvalidInput(
            f"domain name is too long ({len(result)} characters, at most {MAX_DOMAIN_LENGTH})"
        )
    if not _TLD_RE.fullmatch(ascii_labels[-1]):
        raise InvalidInput(
            f"domain name {original!r}: top-level domain {ascii_labels[-1]!r} must be "
            "alphabetic"
        )
    return result


def tld_of(name: str) -> str:
    """The top-level domain (last label) of a normalized domain name: ``"si"``."""
    return normalize_domain(name).rsplit(".", 1)[1]


def validate_account_name(name: object) -> str:
    """A hosting account's name exactly as given, or InvalidInput: ``[a-z][a-z0-9]{0,31}``
    and not reserved (the rule in :mod:`provisioner.domain.hosting_names`, the nodes' too)."""
    problem = account_name_problem(name)
    if problem is not None:
        raise InvalidInput(f"account name {name!r} {problem}")
    assert isinstance(name, str)  # account_name_problem refuses anything else
    return name


def normalize_username(name: str) -> str:
    """A hosting account's name from what a person typed: trimmed, lower-cased, then the
    account-name rule (:func:`validate_account_name`), with the offending character named."""
    if not isinstance(name, str):
        raise InvalidInput(f"user name must be text, not {type(name).__name__}")
    if len(name) > _MAX_RAW_LENGTH:
        raise InvalidInput(f"user name is far too long ({len(name)} characters)")
    text = name.strip().lower()
    if not text:
        raise InvalidInput("user name is empty")
    if len(text) > ACCOUNT_NAME_MAX_LENGTH:
        raise InvalidInput(f"user name {name!r} is longer than {ACCOUNT_NAME_MAX_LENGTH} characters")
    for ch in text:
        if not (ch.isascii() and ch.isalnum()):
            raise InvalidInput(
                f"user name {name!r} contains {_describe(ch)}; only a-z and 0-9 are allowed"
            )
    if not text[0].isalpha():
        raise InvalidInput(f"user name {name!r} must start with a letter a-z")
    return validate_account_name(text)


def username_for_domain(domain: str, max_length: int = 16) -> str:
    """A deterministic user-name suggestion from a domain (``"example.si"`` -> ``"examplesi"``).

    Callers still have to make it unique (e.g. by appending a number).
    """
    base = "".join(ch for ch in normalize_domain(domain) if ch.isalnum())
    if not base[0].isalpha():
        base = "u" + base
    candidate = base[: max(1, min(max_length, ACCOUNT_NAME_MAX_LENGTH))]
    if candidate in RESERVED_ACCOUNT_NAMES:
        candidate = ("u" + candidate)[:ACCOUNT_NAME_MAX_LENGTH]
    return normalize_username(candidate)
