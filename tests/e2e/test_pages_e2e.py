"""The access-data page against a real node: a paid hosting order converged on a
throwaway node through the product's Ansible adapter, its e-mailed link opened in headless
Chromium, the button pressed, and the values read off the page log in over FTPS and IMAPS
on the node; a second visit gets the used-link page. Screenshots under
``<basetemp>/test-output/pages/``."""

from __future__ import annotations

import ftplib
import imaplib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from provisioner.api.app import create_app
from provisioner.devstack.net import free_port
from provisioner.store.db import dispose_all, transaction, upgrade
from provisioner.store.hosting import add_node
from tests.browser import chromium, screenshot, served
from tests.helpers import MemoryMailer, customer, make_settings, make_world
from tests.servers import self_signed_tls_context


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def test_the_access_data_page_shows_what_works_over_ftp_and_imap_on_the_node(
        node: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, browser: Any) -> None:
    shots = tmp_path_factory.getbasetemp() / "test-output" / "pages"
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    upgrade(url)
    port = free_port()
    settings = make_settings(tmp_path, url, 25, line_kinds="hosting", public_base_url=f"http://127.0.0.1:{port}",
                             node_ssh_key=str(node.info.ssh_key))
    mailer = MemoryMailer()
    world = make_world(settings, mailer=mailer)
    with transaction(world.factory) as s:
        add_node(s, node.info.name, node.info.address, capacity_accounts=50, capacity_disk_mb=500_000,
                 throwaway=True)
    domain = "pages-e2e.si"
    order = world.order([f"hosting:mega:{domain}"], who=customer("sl"), brand="iserver")
    p = order["proforma"]
    assert world.pay(p["number"], p["gross"], "txn-pages-e2e").settled
    world.runner.dispatch(order["order"])
    for _ in range(20):
        if not world.queue.keys:
            break
        world.drain()
    failed = {k: st.last_error for k, st in world.steps(order["order"]).items() if st.state != "done"}
    assert not failed, failed
    mail = next(m for m in mailer.sent if "/credentials/" in m["text"])
    assert "iSERVER" in mail["subject"] and "podatki za dostop" in mail["subject"]
    match = re.search(re.escape(settings.public_base_url) + r"/credentials/[A-Za-z0-9_-]{40,}", mail["text"])
    assert match
    link = match.group(0)
    try:
        with served(create_app(settings, enqueue=world.queue), port):
            browser.get(link)
            assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "sl"
            assert browser.find_element(By.CSS_SELECTOR, "header .brand").text == "iSERVER"
            browser.find_element(By.ID, "reveal").click()
            WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.ID, "ftp-password"))
            seen = {e.get_attribute("id"): e.text for e in browser.find_elements(By.CSS_SELECTOR, "td code")}
            screenshot(browser, shots, "e2e-access-shown-sl-iserver")
            browser.get(link)
            assert browser.find_element(By.TAG_NAME, "h1").text == "Ta povezava je že bila uporabljena"
            screenshot(browser, shots, "e2e-link-used-sl-iserver")
            assert httpx.post(link, timeout=10).status_code == 410
    finally:
        dispose_all()
    assert "panel-password" not in seen
    # what the page showed works on the node
    ftp = ftplib.FTP_TLS(timeout=20, context=self_signed_tls_context())  # noqa: S321
    try:
        ftp.connect(seen["ftp-host"], int(seen["ftp-port"]))
        ftp.login(seen["ftp-user"], seen["ftp-password"])
        ftp.prot_p()
        assert "public_html" in ftp.nlst()
    finally:
        ftp.close()
    imap = imaplib.IMAP4_SSL(seen["mail-imap_host"], int(seen["mail-imap_port"]),
                             ssl_context=self_signed_tls_context(), timeout=20)
    try:
        status, _ = imap.login(seen["mail-user"], seen["mail-password"])
        assert status == "OK"
        assert imap.select("INBOX")[0] == "OK"
    finally:
        imap.logout()
    assert seen["mail-smtp_port"] == "587" and seen["mail-address"] == f"info@{domain}"
