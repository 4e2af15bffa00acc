"""The backup the customer may download before deletion (issue 17 item 9): a ``backup``
line beside a hosting line; when the hosting is shut down, the day after the shutdown the
customer gets a one-time link (their language, their brand) valid until the data deletion
date; GET shows a button and uses nothing up; POST streams the archive with its manifest
and uses the link up once the download completed; a broken download keeps the link; used,
expired and unknown links get their page. The node is a recording fake whose
``fetch_archive`` writes a tar of a directory (the e2e test uses a real node)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from sqlalchemy import select

from provisioner.adapters.hosting.ansible import Target
from provisioner.api.app import create_app
from provisioner.devstack.net import free_port
from provisioner.domain.lifecycle import data_deletion_date, earliest_event
from provisioner.domain.policy import get_brand
from provisioner.errors import InvalidInput, TransientError
from provisioner.pipeline.capabilities import lifecycle
from provisioner.pipeline.capabilities.backup_download import LINK
from provisioner.store.db import transaction
from provisioner.store.hosting import add_node
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import BackupDownloadLink, Proforma, Service, Step
from provisioner.timeutil import now_at
from tests.browser import screenshot, served
from tests.helpers import MemoryMailer, World, customer, make_settings, make_world
from tests.unit.pipeline.fakes import FakeBackups, FakeHosting

START = date(2026, 3, 2)
EXPIRY = date(2026, 3, 20)
SUBJECT = {"sl": "prenesite varnostno kopijo", "en": "download the backup"}
TITLE = {"sl": "Prenesite varnostno kopijo", "en": "Download your backup"}
USED = {"sl": "Ta varnostna kopija je že bila prenesena", "en": "This backup was already downloaded"}
EXPIRED = {"sl": "Ta povezava je potekla", "en": "This link has expired"}


@dataclass
class DumpingBackups(FakeBackups):
    """`FakeBackups` whose ``fetch_archive`` writes a tar of ``root`` (what the node's
    ``hosting-backup dump`` sends), for a snapshot it holds of the account only."""

    root: Path = Path("/nonexistent")
    fail: Exception | None = None
    fetched: list[str] = field(default_factory=list)

    def fetch_archive(self, node: Target, account: str, snapshot: str, dest: Path) -> int:
        self.calls.append(("fetch_archive", node.name, account, snapshot))
        if self.fail is not None:
            raise self.fail
        if snapshot not in [r.id for r in self.repos.get(node.name, {}).get(account, [])]:
            raise InvalidInput(f"snapshot {snapshot} is not one of {account}'s")
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
            for child in sorted(self.root.iterdir()):
                tar.add(child, arcname=child.name)
        self.fetched.append(str(dest.parent))
        return dest.stat().st_size


@dataclass
class Site:
    world: World
    backups: DumpingBackups
    mailer: MemoryMailer
    base: str
    files: dict[str, bytes]

    def order(self, items: list[str], lang: str = "sl", brand: str = "fcb",
              email: str = "ana@example.si") -> int:
        """Ordered, paid and provisioned; then both services expire on EXPIRY."""
        order = self.world.order(items, who=customer(lang, email=email), brand=brand)
        p = order["proforma"]
        assert self.world.pay(p["number"], p["gross"], f"txn-{email}-{items[0]}").settled
        self.world.runner.dispatch(order["order"])
        for _ in range(20):
            if not self.world.queue.keys:
                break
            self.world.drain()
        with transaction(self.world.factory) as s:
            services = s.execute(select(Service).where(Service.order_id == order["order"])).scalars().all()
            assert {sv.state for sv in services} == {"active"}, [(sv.kind, sv.state) for sv in services]
            for sv in services:
                sv.expires_on = EXPIRY
                sv.clock_on = earliest_event(EXPIRY)
            hosting_id = next(sv.id for sv in services if sv.kind == "hosting")
        self.day(START)  # the renewal proforma
        return hosting_id

    def day(self, day: date) -> None:
        self.world.at(day)
        lifecycle.run_day(self.world.factory, self.world.runner, day)

    def links(self, to: str = "ana@example.si") -> list[tuple[str, dict[str, Any]]]:
        found = []
        for m in self.mailer.sent:
            match = re.search(re.escape(self.base) + r"/backup/([A-Za-z0-9_-]{40,})", m["text"])
            if m["to"] == to and match:
                found.append((match.group(1), m))
        return found

    def link(self, to: str = "ana@example.si") -> tuple[str, dict[str, Any]]:
        links = self.links(to)
        assert len(links) == 1, [m["subject"] for m in self.mailer.sent]
        return links[0]

    def row(self, token: str) -> BackupDownloadLink:
        with transaction(self.world.factory) as s:
            row = s.execute(select(BackupDownloadLink).where(
                BackupDownloadLink.token_sha256 == hashlib.sha256(token.encode()).hexdigest())).scalar_one()
            s.expunge(row)
            return row


def _tree(root: Path, account_files: dict[str, bytes]) -> None:
    for rel, data in account_files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


FILES = {
    "srv/hosting/shopsi/public_html/index.php": b"<?php echo 'shop';\n",
    "srv/hosting/shopsi/public_html/img/logo.png": bytes(range(256)) * 40,
    "var/mail/vhosts/shop.si/info/cur/1700000000.M1.eml": b"From: a@b.si\r\nSubject: hi\r\n\r\nhello\r\n",
    "var/lib/hosting-backup/dump/shopsi/shopsi.sql": b"CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n",
}


def _site(db_url: str, tmp_path: Path, files: dict[str, bytes]) -> Iterator[Site]:
    root = tmp_path / "node-snapshot"
    _tree(root, files)
    backups, mailer = DumpingBackups(root=root), MemoryMailer()
    downloads = tmp_path / "downloads"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, db_url, 25, line_kinds="hosting,backup",
                             public_base_url=base,
                             backup_download_dir=str(downloads))
    world = make_world(settings, now=now_at(START), hosting=FakeHosting(), backups=backups, mailer=mailer)
    with transaction(world.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    app = create_app(settings, enqueue=world.queue)
    # the app's wiring with the world's (fake node, the test's clock)
    app.state.api = dataclasses.replace(app.state.api, provisioner=world.app)
    with served(app, port):
        yield Site(world, backups, mailer, base, files)


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    yield from _site(db_url, tmp_path, FILES)


def _steps(site: Site, kind: str) -> list[Step]:
    with transaction(site.world.factory) as s:
        rows = list(s.execute(select(Step).where(Step.kind == kind)).scalars())
        s.expunge_all()
        return rows


def _url(site: Site, token: str) -> str:
    return f"{site.base}/backup/{token}"


def _members(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


# -- planning ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("lang", "brand"), [("sl", "fcb"), ("en", "iserver")])
def test_a_backup_service_gets_a_link_the_day_after_the_shutdown_in_the_customers_language(
        site: Site, lang: str, brand: str) -> None:
    hosting_id = site.order(["hosting:giga5:shop.si", "backup:shop.si"], lang, brand)
    site.day(EXPIRY + timedelta(days=1))  # shutdown
    assert site.world.app.adapters.hosting.calls[-1][0] == "suspend"  # type: ignore[attr-defined]
    [step] = _steps(site, LINK)
    assert step.service_id == hosting_id and step.params["due_on"] == str(EXPIRY + timedelta(days=2))
    assert step.state != "done" and site.links() == []  # not on the day of the shutdown
    site.day(EXPIRY + timedelta(days=2))  # the retention has started
    token, mail = site.link()
    assert SUBJECT[lang] in mail["subject"] and get_brand(brand).display_name in mail["subject"]
    assert "shop.si" in mail["text"] and get_brand(brand).support_email in mail["text"]
    [step] = _steps(site, LINK)
    assert step.state == "done"
    snap = step.result["snapshot"]  # type: ignore[index]
    assert any(c[0] == "backup" for c in site.backups.calls)
    row = site.row(token)
    deletion = data_deletion_date(EXPIRY, get_brand(brand))
    assert row.snapshot_id == snap and row.used_at is None
    assert row.expires_at == datetime(deletion.year, deletion.month, deletion.day, tzinfo=UTC)
    # the sweep the next days and a re-run of the step send nothing more
    site.world.runner.run_step(step.key)
    site.day(EXPIRY + timedelta(days=3))
    assert len(site.links()) == 1
    page = httpx.get(_url(site, token))
    assert page.status_code == 200 and TITLE[lang] in page.text
    assert f'<html lang="{lang}">' in page.text and get_brand(brand).display_name in page.text


def test_no_backup_service_no_link(site: Site) -> None:
    site.order(["hosting:giga5:shop.si"])
    site.day(EXPIRY + timedelta(days=1))
    site.day(EXPIRY + timedelta(days=2))
    assert _steps(site, LINK) == [] and site.links() == []
    assert not any(c[0] == "backup" for c in site.backups.calls)


def test_a_backup_service_that_ran_out_before_the_hosting_gives_no_link(site: Site) -> None:
    site.order(["hosting:giga5:shop.si", "backup:shop.si"])
    with transaction(site.world.factory) as s:
        backup = s.execute(select(Service).where(Service.kind == "backup")).scalar_one()
        backup.expires_on = EXPIRY - timedelta(days=40)  # not renewed: lapsed long before
        backup.state = "purged"
        backup.clock_on = None
    site.day(EXPIRY + timedelta(days=1))
    site.day(EXPIRY + timedelta(days=2))
    assert _steps(site, LINK) == [] and site.links() == []


def test_a_renewal_paid_before_the_retention_started_sends_no_link(site: Site) -> None:
    hosting_id = site.order(["hosting:giga5:shop.si", "backup:shop.si"])
    site.day(EXPIRY + timedelta(days=1))
    with transaction(site.world.factory) as s:
        number, gross = s.execute(select(Proforma.number, Proforma.gross).join(
            Renewal, Renewal.proforma_id == Proforma.id).where(Renewal.service_id == hosting_id)).one()
    assert site.world.pay(number, gross, "txn-renew").settled
    site.world.run_queued()
    site.day(EXPIRY + timedelta(days=2))
    [step] = _steps(site, LINK)
    assert step.state == "done" and "skipped" in (step.result or {})
    assert site.links() == []


# -- the download -----------------------------------------------------------------------------
@pytest.fixture
def linked(site: Site) -> tuple[Site, str]:
    site.order(["hosting:giga5:shop.si", "backup:shop.si"], "en", "iserver")
    site.day(EXPIRY + timedelta(days=1))
    site.day(EXPIRY + timedelta(days=2))
    token, _ = site.link()
    return site, token


def test_get_shows_a_button_and_uses_nothing_up(linked: tuple[Site, str]) -> None:
    site, token = linked
    for _ in range(3):  # a mail scanner, a link preview, the customer
        page = httpx.get(_url(site, token))
        assert page.status_code == 200
        assert 'method="post"' in page.text and 'id="download"' in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "script" not in page.text.lower()
    row = site.row(token)
    assert row.used_at is None and row.started_at is None
    assert not any(c[0] == "fetch_archive" for c in site.backups.calls)


def test_post_streams_the_archive_with_its_manifest_once(linked: tuple[Site, str]) -> None:
    site, token = linked
    r = httpx.post(_url(site, token), timeout=60)
    assert r.status_code == 200, r.text
    name = f"shop.si-backup-{EXPIRY + timedelta(days=2)}.tar.gz"
    assert r.headers["content-disposition"] == f'attachment; filename="{name}"'
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox; frame-ancestors 'none'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert int(r.headers["content-length"]) == len(r.content)
    members = _members(r.content)
    manifest = json.loads(members.pop("MANIFEST.json"))
    assert members == FILES  # byte for byte what the snapshot holds
    listed = {f["path"].lstrip("/"): f for f in manifest["files"] if f["type"] == "file"}
    assert set(listed) == set(FILES)
    for rel, data in FILES.items():
        assert listed[rel]["size"] == len(data)
        assert listed[rel]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["domain"] == "shop.si" and manifest["snapshot"] == site.row(token).snapshot_id
    assert manifest["file_count"] == len(FILES) and manifest["bytes"] == sum(map(len, FILES.values()))
    assert site.row(token).used_at is not None and site.row(token).bytes_sent == len(r.content)
    # the private directory is gone; the link is used up
    assert site.backups.fetched and not any(Path(d).exists() for d in site.backups.fetched)
    again = httpx.post(_url(site, token))
    assert again.status_code == 410 and USED["en"] in again.text
    assert httpx.get(_url(site, token)).status_code == 410
    assert len([c for c in site.backups.calls if c[0] == "fetch_archive"]) == 1


def test_expired_and_unknown_links_get_their_page(linked: tuple[Site, str]) -> None:
    site, token = linked
    unknown = httpx.get(f"{site.base}/backup/{'x' * 43}")
    assert unknown.status_code == 404 and "This link is not valid" in unknown.text
    assert httpx.post(f"{site.base}/backup/short").status_code == 404
    deletion = data_deletion_date(EXPIRY, get_brand("iserver"))
    site.world.at(deletion)  # the data deletion date: the link is over
    for r in (httpx.get(_url(site, token)), httpx.post(_url(site, token))):
        assert r.status_code == 410 and EXPIRED["en"] in r.text
        assert r.headers["cache-control"] == "no-store"
    assert not any(c[0] == "fetch_archive" for c in site.backups.calls)


def test_a_failed_fetch_keeps_the_link_and_a_download_under_way_blocks_a_second(
        linked: tuple[Site, str]) -> None:
    site, token = linked
    site.backups.fail = TransientError("node n1 unreachable")
    r = httpx.post(_url(site, token))
    assert r.status_code == 503 and "cannot be prepared" in r.text
    row = site.row(token)
    assert row.used_at is None and row.started_at is None  # the lease was given back
    site.backups.fail = None
    with transaction(site.world.factory) as s:  # a download under way holds the lease
        s.get(BackupDownloadLink, row.id).started_at = site.world.runner.now()  # type: ignore[union-attr]
    busy = httpx.post(_url(site, token))
    assert busy.status_code == 409 and "under way" in busy.text
    with transaction(site.world.factory) as s:  # a lease older than its time is taken over
        s.get(BackupDownloadLink, row.id).started_at = (  # type: ignore[union-attr]
            site.world.runner.now() - timedelta(hours=7))
    assert httpx.post(_url(site, token), timeout=60).status_code == 200
    assert site.row(token).used_at is not None  # with the last chunk


@pytest.fixture
def big_site(sqlite_url: str, tmp_path: Path) -> Iterator[Site]:
    files = {**FILES, "srv/hosting/shopsi/public_html/video.bin": os.urandom(48 << 20)}
    yield from _site(sqlite_url, tmp_path, files)


def test_a_big_archive_streams_and_a_broken_download_keeps_the_link(big_site: Site) -> None:
    site = big_site
    site.order(["hosting:giga5:shop.si", "backup:shop.si"])
    site.day(EXPIRY + timedelta(days=1))
    site.day(EXPIRY + timedelta(days=2))
    token, _ = site.link()
    # a download broken off after the first chunk: the link still works
    with httpx.stream("POST", _url(site, token), timeout=120) as r:
        assert r.status_code == 200
        next(r.iter_raw(1 << 16))
    _wait(lambda: site.row(token).started_at is None)
    assert site.row(token).used_at is None
    # the whole download: never more than a few chunks in memory (48 MB file)
    tracemalloc.start()
    try:
        digest, size = hashlib.sha256(), 0
        with httpx.stream("POST", _url(site, token), timeout=120) as r:
            assert r.status_code == 200
            total = int(r.headers["content-length"])
            for chunk in r.iter_raw(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == total > 48 << 20
    assert peak < 24 << 20, f"peak {peak} bytes traced during a {size}-byte download"
    assert site.row(token).used_at is not None and site.row(token).bytes_sent == size


def _wait(ok: Any, rounds: int = 200) -> None:
    for _ in range(rounds):
        if ok():
            return
        time.sleep(0.05)
    raise AssertionError("the condition did not hold in time")


@pytest.fixture
def sqlite_site(sqlite_url: str, tmp_path: Path) -> Iterator[Site]:
    yield from _site(sqlite_url, tmp_path, FILES)


@pytest.mark.parametrize(("lang", "brand"), [("sl", "fcb"), ("en", "iserver")])
def test_in_chromium_the_page_offers_the_download_and_the_button_fetches_it(
        sqlite_site: Site, browser: Any, page_shots: Path, tmp_path: Path, lang: str, brand: str) -> None:
    site = sqlite_site
    site.order(["hosting:giga5:shop.si", "backup:shop.si"], lang, brand)
    site.day(EXPIRY + timedelta(days=1))
    site.day(EXPIRY + timedelta(days=2))
    token, _ = site.link()
    downloads = tmp_path / "chromium-downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow",
                                                            "downloadPath": str(downloads)})
    browser.get(_url(site, token))
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
    assert browser.find_element(By.TAG_NAME, "h1").text == TITLE[lang]
    assert browser.find_element(By.CSS_SELECTOR, "header .brand").text == get_brand(brand).display_name
    screenshot(browser, page_shots, f"backup-download-{lang}-{brand}")
    # keyboard only: Tab reaches the button, Enter presses it
    browser.find_element(By.TAG_NAME, "h1").click()
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "download"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    name = f"shop.si-backup-{EXPIRY + timedelta(days=2)}.tar.gz"
    _wait(lambda: (downloads / name).is_file() and not list(downloads.glob("*.crdownload")), 400)
    assert _members((downloads / name).read_bytes()).keys() == {*FILES, "MANIFEST.json"}
    assert site.row(token).used_at is not None
    browser.get(_url(site, token))  # a second visit: the used-link page
    assert browser.find_element(By.TAG_NAME, "h1").text == USED[lang]
    screenshot(browser, page_shots, f"backup-used-{lang}-{brand}")
