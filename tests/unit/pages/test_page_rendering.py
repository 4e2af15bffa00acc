"""The pages' rendering and headers without a server: language choice, the CSP hash of
the inline stylesheet, escaping of what the pages show, the access-log redaction of the
new token route, and the migration line in the catalog."""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest

from provisioner.api.customer_pages import TEXT, language, render, stylesheet
from provisioner.api.gate import RedactCredentialTokens
from provisioner.api.routers.pages import _sections
from provisioner.domain.catalog import OrderItem, check_order_lines, parse_item
from provisioner.domain.policy import FCB, ISERVER
from provisioner.errors import InvalidInput


@pytest.mark.parametrize(
    ("lang", "accept", "langs"),
    [
        ("en", "sl", ("en",)),
        ("sl", None, ("sl",)),
        (None, "en-US,sl;q=0.5", ("en",)),
        (None, "de-AT, sl;q=0.8", ("sl",)),
        (None, "fr", ("sl", "en")),
        (None, None, ("sl", "en")),
        ("xx", "", ("sl", "en")),
    ],
)
def test_the_language_is_the_customers_else_the_browsers_else_both(
    lang: str | None, accept: str | None, langs: tuple[str, ...]
) -> None:
    assert language(lang, accept) == langs


@pytest.mark.parametrize("brand", [FCB, ISERVER])
def test_the_csp_allows_exactly_the_inline_stylesheet(brand: object) -> None:
    page = render("link_invalid", ("en",), brand, 410, reason="used")  # type: ignore[arg-type]
    css, source = stylesheet(brand.colour)  # type: ignore[attr-defined]
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert source == f"'sha256-{digest}'"
    assert f"<style>{css}</style>" in page.body.decode()
    assert page.headers["content-security-policy"].startswith(f"default-src 'none'; style-src {source};")
    assert brand.colour in css  # type: ignore[attr-defined]


def test_what_a_page_shows_is_escaped() -> None:
    data = {
        "domain": "<b>x</b>.si",
        "ftp": {"user": "<script>alert(1)</script>", "password": "a&\"'<"},
        "weird": "<img src=x>",
    }
    body = render(
        "credentials_shown", ("sl",), FCB, domain=data["domain"], sections=_sections(data)
    ).body.decode()
    assert "<script>alert" not in body and "&lt;script&gt;" in body
    assert "<img src=x>" not in body and "<b>x</b>" not in body
    assert "a&amp;&#34;&#39;&lt;" in body


def test_both_languages_have_the_same_texts() -> None:
    assert set(TEXT["sl"]) == set(TEXT["en"])


@pytest.mark.parametrize("path", ["/credentials/", "/migration/"])
def test_the_access_log_never_shows_a_token(path: str) -> None:
    token = "Tok3n-" + "a" * 40
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "x",
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", f"{path}{token}?x=1", "1.1", 200),
        None,
    )
    assert RedactCredentialTokens().filter(record)
    assert token not in record.getMessage() and f"{path}<redacted>" in record.getMessage()


def test_a_migration_line_is_free_and_needs_a_new_hosting_line_for_its_site() -> None:
    item = parse_item("migration:Example.SI")
    assert item == OrderItem("migration", "migration", "example.si", 1, "new")
    assert parse_item(item.to_spec()) == item
    for bad in ("migration:example.si:12m", "migration:x:example.si", "migration:example.si:renew"):
        with pytest.raises(InvalidInput):
            parse_item(bad)
    check_order_lines([parse_item("hosting:giga5:example.si"), item])
    with pytest.raises(InvalidInput, match="needs a new hosting line"):
        check_order_lines([parse_item("hosting:giga5:example.si:renew"), item])
