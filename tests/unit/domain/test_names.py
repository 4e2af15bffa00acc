import pytest

from provisioner.domain.names import (
    normalize_domain,
    normalize_username,
    tld_of,
    username_for_domain,
)
from provisioner.errors import InvalidInput


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.si", "example.si"),
        ("  Example.SI  ", "example.si"),
        ("example.si.", "example.si"),
        ("www.sub.example.com", "www.sub.example.com"),
        ("a-b.eu", "a-b.eu"),
        ("123.si", "123.si"),
        ("žaba.si", "xn--aba-b3a.si"),
        ("ŽABA.si", "xn--aba-b3a.si"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai"),
        ("例え。jp", "xn--r8jz45g.jp"),
        ("a" * 63 + ".si", "a" * 63 + ".si"),
        (".".join(["a" * 61] * 4) + ".si", ".".join(["a" * 61] * 4) + ".si"),
    ],
)
def test_normalize_domain_accepts(raw: str, expected: str) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("../etc", "contains '/'"),
        ("../etc/passwd", "contains '/'"),
        ("a;rm -rf /", "contains ';'"),
        ("example.si; rm -rf /", "contains ';'"),
        ("$(reboot).si", "contains '\\$'"),
        ("`id`.si", "contains '`'"),
        ("exa mple.si", "white space"),
        ("example.si\n", None),
        ("exa\nmple.si", "white space"),
        ("exa\x00mple.si", "NUL"),
        ("exa\tmple.si", "white space"),
        ("a" * 300, "too long"),
        ("a" * 2000, "far too long"),
        (".".join(["a" * 63] * 4) + ".si", "too long"),
        ("a" * 64 + ".si", "longer than 63"),
        ("", "empty"),
        ("   ", "empty"),
        ("localhost", "at least two labels"),
        ("si", "at least two labels"),
        ("example..si", "empty label"),
        (".example.si", "empty label"),
        ("example.si..", "empty label"),
        ("-example.si", "start or end"),
        ("example-.si", "start or end"),
        ("under_score.si", "contains '_'"),
        ("example.123", "alphabetic"),
        ("example.s1", "alphabetic"),
        ("example.s", "alphabetic"),
        ("ex*ample.si", "contains '\\*'"),
        ("exa'mple.si", "contains"),
        ("pаypal.com", "mixes scripts"),  # Cyrillic 'а'
        ("xn--pypal-4ve.com", "mixes scripts"),  # the same, already in punycode
        ("xn--zz.com", "invalid punycode"),
        ("exa\u200bmple.si", "U\\+200B"),  # zero-width space
        ("exa\u202emple.si", "U\\+202E"),  # right-to-left override
        ("exa\u3000mple.si", "white space"),
        ("@example.si", "contains '@'"),
        ("example.si:80", "contains ':'"),
        ("http://example.si", "contains ':'"),
        ("exam%70le.si", "contains '%'"),
        ("exam\\ple.si", "contains"),
    ],
)
def test_normalize_domain_refuses(raw: str, reason: str | None) -> None:
    if raw == "example.si\n":
        # a trailing newline is surrounding white space and is stripped
        assert normalize_domain(raw) == "example.si"
        return
    with pytest.raises(InvalidInput, match=reason):
        normalize_domain(raw)


@pytest.mark.parametrize("value", [None, 42, b"example.si"])
def test_normalize_domain_refuses_non_text(value: object) -> None:
    with pytest.raises(InvalidInput, match="must be text"):
        normalize_domain(value)  # type: ignore[arg-type]


def test_tld_of() -> None:
    assert tld_of("Example.SI.") == "si"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        (" Alice ", "alice"),
        ("a", "a"),
        ("A1b2", "a1b2"),
        ("a" * 32, "a" * 32),
    ],
)
def test_normalize_username_accepts(raw: str, expected: str) -> None:
    assert normalize_username(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("1abc", "start with a letter"),
        ("-abc", "'-'"),
        ("_abc", "'_'"),
        ("a1_b", "'_'"),  # the account-name rule: no '_' or '-' (provisioner.domain.hosting_names)
        ("a-b", "'-'"),
        ("a" * 33, "longer than 32"),
        ("a b", "white space"),
        ("a;rm", "';'"),
        ("../etc", "'\\.'"),
        ("a\x00b", "NUL"),
        ("žan", "'ž'"),
        ("root", "reserved"),
        ("www-data", "'-'"),
        ("hosting", "reserved"),
        ("dovenull", "reserved"),
        ("a$b", "'\\$'"),
    ],
)
def test_normalize_username_refuses(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        normalize_username(raw)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("example.si", "examplesi"),
        ("123.si", "u123si"),
        ("a-very-long-domain-name.example.com", "averylongdomainn"),
    ],
)
def test_username_for_domain(domain: str, expected: str) -> None:
    assert username_for_domain(domain) == expected
