"""The customer pages in headless Chromium (Debian's ``chromium`` + ``chromium-driver``),
served by a real uvicorn: the access-data link (button, then the data once, then the
used-link page), the unknown-link page, and the migration intake form (errors beside the
fields, then the source sealed). Each page in the customer's language and brand, the
same as its e-mail; screenshots of every page in both languages, on a desktop and a
phone, under ``<basetemp>/test-output/pages/``."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import select

from provisioner.api.app import create_app
from provisioner.devstack.net import free_port
from provisioner.pipeline.capabilities.migration import sources
from provisioner.store.db import transaction
from provisioner.store.hosting import add_node
from provisioner.store.models import Migration, Service
from tests.browser import screenshot, served
from tests.helpers import MemoryMailer, World, customer, make_settings, make_world
from tests.unit.pipeline.fakes import FakeHosting

BRANDS = {
    "fcb": ("FCB", "podpora@fcb.si", "rgb(31, 78, 121)"),
    "iserver": ("iSERVER", "podpora@iserver.si", "rgb(138, 28, 28)"),
}
TITLES = {
    "sl": ("Vaši podatki za dostop", "Ta povezava je že bila uporabljena", "podatki za dostop"),
    "en": ("Your access data", "This link was already used", "access data"),
}


@dataclass
class Site:
    world: World
    hosting: FakeHosting
    mailer: MemoryMailer
    base: str

    def paid(self, items: list[str], lang: str, brand: str) -> None:
        order = self.world.order(items, who=customer(lang, email=f"{lang}-{brand}@example.si"), brand=brand)
        p = order["proforma"]
        assert self.world.pay(p["number"], p["gross"], f"txn-{items[0]}").settled
        self.world.runner.dispatch(order["order"])
        for _ in range(20):
            if not self.world.queue.keys:
                break
            self.world.drain()

    def link(self, path: str, to: str) -> tuple[str, dict[str, Any]]:
        mails = [m for m in self.mailer.sent if m["to"] == to and f"{self.base}/{path}/" in m["text"]]
        assert len(mails) == 1, [m["subject"] for m in self.mailer.sent]
        match = re.search(re.escape(self.base) + f"/{path}/" + r"[A-Za-z0-9_-]{40,}", mails[0]["text"])
        assert match
        return match.group(0), mails[0]


@pytest.fixture
def site(sqlite_url: str, tmp_path: Path) -> Iterator[Site]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, sqlite_url, 25, line_kinds="hosting,migration", public_base_url=base)
    hosting, mailer = FakeHosting(), MemoryMailer()
    world = make_world(settings, hosting=hosting, mailer=mailer)
    with transaction(world.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    with served(create_app(settings, enqueue=world.queue), port):
        yield Site(world, hosting, mailer, base)


def _page_checks(browser: Any, lang: str, brand: str) -> None:
    """The page is in ``lang`` and ``brand``: its html lang, the brand's name, contact
    and colour (the inline stylesheet applies: the CSP's hash lets it in)."""
    name, email, colour = BRANDS[brand]
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
    assert browser.find_element(By.CSS_SELECTOR, "header .brand").text == name
    assert email in browser.find_element(By.TAG_NAME, "footer").text
    header = browser.find_element(By.TAG_NAME, "header")
    assert header.value_of_css_property("background-color") in (
        colour,
        colour.replace("rgb", "rgba")[:-1] + ", 1)",
    )


@pytest.mark.parametrize(("lang", "brand"), [("sl", "fcb"), ("en", "iserver")])
def test_the_access_data_page_shows_the_data_once_in_the_mails_language_and_brand(
    site: Site, browser: Any, page_shots: Path, lang: str, brand: str
) -> None:
    to = f"{lang}-{brand}@example.si"
    site.paid([f"hosting:giga5:{lang}-{brand}.si"], lang, brand)
    link, mail = site.link("credentials", to)
    title, used_title, subject_words = TITLES[lang]
    assert subject_words in mail["subject"] and BRANDS[brand][0] in mail["subject"]
    assert BRANDS[brand][1] in mail["text"]
    assert "panel" not in mail["text"].lower() and "plošča" not in mail["text"]
    browser.get(link)
    assert browser.find_element(By.TAG_NAME, "h1").text == title
    _page_checks(browser, lang, brand)
    screenshot(browser, page_shots, f"access-button-{lang}-{brand}")
    # keyboard only: Tab reaches the button, Enter presses it
    browser.find_element(By.TAG_NAME, "h1").click()  # focus starts at the heading
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "reveal"
    _submit(browser, lambda: ActionChains(browser).send_keys(Keys.ENTER).perform())
    user = browser.find_element(By.ID, "ftp-user").text
    shown = {
        key: browser.find_element(By.ID, key).text
        for key in (
            "ftp-host",
            "ftp-port",
            "ftp-password",
            "database-password",
            "mail-password",
            "mail-imap_host",
            "mail-imap_port",
            "mail-smtp_port",
        )
    }
    _page_checks(browser, lang, brand)
    secret = site.hosting.passwords[user]  # what the node's logins accept
    assert shown["ftp-password"] == secret.account
    assert shown["database-password"] == secret.database
    assert shown["mail-password"] == secret.mailboxes["info"]
    assert (
        shown["ftp-host"],
        shown["ftp-port"],
        shown["mail-imap_host"],
        shown["mail-imap_port"],
        shown["mail-smtp_port"],
    ) == ("192.0.2.10", "21", "192.0.2.10", "993", "587")
    security = browser.find_element(By.ID, "ftp-security").text
    assert security == ("FTPS (izrecni TLS)" if lang == "sl" else "FTPS (explicit TLS)")
    assert not browser.find_elements(By.ID, "h-panel")  # no control panel in this installation
    screenshot(browser, page_shots, f"access-shown-{lang}-{brand}")
    # a second visit: the used-link page, in the same language, 410
    browser.get(link)
    assert browser.find_element(By.TAG_NAME, "h1").text == used_title
    _page_checks(browser, lang, brand)
    screenshot(browser, page_shots, f"link-used-{lang}-{brand}")
    assert httpx.get(link, timeout=10).status_code == 410
    assert httpx.post(link, timeout=10).status_code == 410


@pytest.mark.parametrize(
    ("accept", "langs"), [("en-GB,en;q=0.9", ["en"]), ("sl", ["sl"]), ("de", ["sl", "en"])]
)
def test_an_unknown_link_answers_404_in_the_browsers_language_or_both(
    site: Site, browser: Any, page_shots: Path, accept: str, langs: list[str]
) -> None:
    url = f"{site.base}/credentials/{'x' * 43}"
    r = httpx.get(url, headers={"Accept-Language": accept}, timeout=10)
    assert r.status_code == 404
    for lang in ("sl", "en"):
        assert (f'id="invalid-{lang}"' in r.text) == (lang in langs)
    assert "Traceback" not in r.text
    for path in (f"/migration/{'y' * 43}", "/credentials/short", "/migration/%00%0a"):
        bad = httpx.post(site.base + path, headers={"Accept-Language": accept}, timeout=10)
        assert bad.status_code == 404 and "Traceback" not in bad.text
    if accept.startswith("en"):  # the browser's own Accept-Language is en-GB
        browser.get(url)
        _page_checks(browser, "en", "fcb")  # no customer: the installation's brand
        assert len(browser.find_elements(By.CSS_SELECTOR, "section[lang]")) == 1
        screenshot(browser, page_shots, "link-unknown-en")
    else:  # the page as served, shown for review (a data: URL carries no header)
        browser.get("data:text/html;base64," + base64.b64encode(r.content).decode())
        assert len(browser.find_elements(By.CSS_SELECTOR, "section[lang]")) == len(langs)
        screenshot(browser, page_shots, f"link-unknown-{'-'.join(langs)}")


def test_every_page_sends_no_store_no_referrer_and_a_strict_csp(site: Site) -> None:
    site.paid(["hosting:giga5:headers.si", "migration:headers.si"], "en", "fcb")
    cred, _ = site.link("credentials", "en-fcb@example.si")
    intake, _ = site.link("migration", "en-fcb@example.si")
    responses = [
        httpx.get(cred, timeout=10),
        httpx.get(intake, timeout=10),
        httpx.post(
            intake,
            content=b"files_port=x",
            timeout=10,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        httpx.post(intake, content=b"\xff\xfe=1", timeout=10),
        httpx.post(cred, timeout=10),
        httpx.post(cred, timeout=10),
        httpx.get(f"{site.base}/migration/{'z' * 43}", timeout=10),
    ]
    assert [r.status_code for r in responses] == [200, 200, 422, 400, 200, 410, 404]
    for r in responses:
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"
        csp = r.headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'sha256-") and "frame-ancestors 'none'" in csp
        assert "<script" not in r.text and "http://" not in r.text.split("</head>")[0]


def _submit(browser: Any, press: Any) -> None:
    """Press (click or key) and wait until the browser has left the page."""
    old = browser.find_element(By.TAG_NAME, "html")
    press()
    WebDriverWait(browser, 15).until(staleness_of(old))


def _fill(browser: Any, values: dict[str, str]) -> None:
    for name, value in values.items():
        element = browser.find_element(By.NAME, name)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        elif element.get_attribute("type") == "checkbox":
            if element.is_selected() != (value == "1"):
                element.click()
        else:
            element.clear()
            element.send_keys(value)


@pytest.mark.parametrize(("lang", "brand"), [("sl", "iserver"), ("en", "fcb")])
def test_the_migration_form_is_filled_in_the_browser_and_the_source_arrives_sealed(
    site: Site, browser: Any, page_shots: Path, lang: str, brand: str
) -> None:
    domain = f"move-{lang}.si"
    to = f"{lang}-{brand}@example.si"
    site.paid([f"hosting:giga5:{domain}", f"migration:{domain}"], lang, brand)
    link, mail = site.link("migration", to)
    assert BRANDS[brand][0] in mail["subject"] and ("selitev" in mail["subject"]) == (lang == "sl")
    browser.get(link)
    _page_checks(browser, lang, brand)
    screenshot(browser, page_shots, f"migration-form-{lang}-{brand}")
    # every input has a label the browser associates with it
    for element in browser.find_elements(By.CSS_SELECTOR, "form input, form select, form textarea"):
        ident = element.get_attribute("id")
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{ident}']"), ident
    typed = {
        "files_protocol": "sftp",
        "files_host": "old-host.example.net",
        "files_port": "70000",
        "files_user": "olduser",
        "files_password": "Old-ftp-Secret-1",
        "files_path": "public_html",
        "db_via": "ssh",
        "db_name": "shop_db",
        "db_user": "shop",
        "db_password": "Old-db-Secret-2",
        "mail1_host": "imap.example.net",
        "mail1_user": "info@old.si",
        "mail1_password": "Old-mail-Secret-3",
    }
    _fill(browser, typed)
    _submit(browser, browser.find_element(By.ID, "submit").click)
    # an error beside the field, in the customer's language; secrets not sent back; nothing stored
    error = browser.find_element(By.ID, "files_port-error").text
    assert error.startswith("Napaka" if lang == "sl" else "Error")
    assert browser.find_element(By.ID, "files_port").get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.ID, "files_host").get_attribute("value") == "old-host.example.net"
    assert browser.find_element(By.ID, "files_password").get_attribute("value") == ""
    assert "Old-ftp-Secret-1" not in browser.page_source
    screenshot(browser, page_shots, f"migration-errors-{lang}-{brand}")
    with transaction(site.world.factory) as s:
        sid = s.execute(
            select(Service.id).where(Service.kind == "migration", Service.name == domain)
        ).scalar_one()
        assert (
            s.execute(select(Migration.state).where(Migration.service_id == sid)).scalar_one()
            == "awaiting_source"
        )
    _fill(browser, {**typed, "files_port": ""})
    _submit(browser, browser.find_element(By.ID, "submit").click)
    errors = [e.get_attribute("id") + ": " + e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error")]
    assert not errors
    assert browser.find_element(By.ID, "done").text
    received = browser.find_element(By.ID, "received").text
    assert "olduser@old-host.example.net:22" in received and "Secret" not in browser.page_source
    _page_checks(browser, lang, brand)
    screenshot(browser, page_shots, f"migration-done-{lang}-{brand}")
    source = sources.open_source(site.world.factory, site.world.app.settings, sid)
    assert source.values["files_password"] == "Old-ftp-Secret-1"
    assert source.values["db_password"] == "Old-db-Secret-2"
    assert source.values["mail1_password"] == "Old-mail-Secret-3"
    assert source.values["files_port"] == 22
    shown = sources.show(site.world.factory, sid, datetime.now(UTC))
    assert shown["state"] == "source_received" and shown["source_by"] == "customer:link"
    # the link is used up: the form again is the used-link page
    browser.get(link)
    assert browser.find_element(By.TAG_NAME, "h1").text == TITLES[lang][1]
    screenshot(browser, page_shots, f"migration-used-{lang}-{brand}")


def test_a_control_panel_is_named_only_where_the_installation_has_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, sqlite_url, 25, line_kinds="hosting", control_panel_url="https://panel.provider.example/"
    )
    mailer = MemoryMailer()
    world = make_world(settings, hosting=FakeHosting(), mailer=mailer)
    with transaction(world.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    order = world.order(["hosting:giga5:panel.si"], who=customer("en"))
    p = order["proforma"]
    assert world.pay(p["number"], p["gross"], "txn-panel").settled
    world.runner.dispatch(order["order"])
    for _ in range(20):
        if not world.queue.keys:
            break
        world.drain()
    mail = next(m for m in mailer.sent if "/credentials/" in m["text"])
    assert "control panel" in mail["text"]
    token = re.search(r"/credentials/([A-Za-z0-9_-]{40,})", mail["text"])
    assert token
    app = create_app(settings, enqueue=world.queue)
    with served(app) as base:
        page = httpx.post(f"{base}/credentials/{token.group(1)}", timeout=10)
    assert page.status_code == 200
    assert 'id="h-panel"' in page.text and "https://panel.provider.example/" in page.text
