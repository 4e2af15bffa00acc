"""The demo's access-data link opens while the demo runs: the demo serves its API at the
address its ``public_base_url`` names, so the link in the delivered e-mail (real SMTP, the
demo's sink) answers, and a browser shows the data behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from provisioner.devstack.demo import DemoStack, access_link, check_link, start_api
from provisioner.devstack.net import free_port, wait_for
from provisioner.devstack.smtp_sink import SmtpSink, read_maildir
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, add_node
from tests.browser import screenshot
from tests.helpers import customer, make_settings, make_world
from tests.unit.pipeline.fakes import FakeHosting


def _up(api: str, stack: DemoStack) -> bool:
    assert stack.procs["api"].poll() is None, (stack.root / "api.log").read_text()
    try:
        return httpx.get(f"{api}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_demos_access_link_opens_in_a_browser_while_its_api_runs(
    sqlite_url: str, tmp_path: Path, browser: Any, page_shots: Path
) -> None:
    sink = SmtpSink(tmp_path / "mail")
    sink.start()
    settings = make_settings(
        tmp_path,
        sqlite_url,
        sink.port,
        line_kinds="hosting",
        smtp_host="127.0.0.1",
        public_base_url=f"http://127.0.0.1:{free_port()}",
    )
    stack = DemoStack(settings, tmp_path, sink=sink)
    try:
        api = start_api(stack)
        assert api == settings.public_base_url
        wait_for(lambda: _up(api, stack), 30, "the demo's API")
        hosting = FakeHosting()
        world = make_world(settings, hosting=hosting)  # the real mailer, to the demo's sink
        with transaction(world.factory) as s:
            add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
        order = world.order(["hosting:giga5:novak.example"], who=customer("sl"))
        p = order["proforma"]
        assert world.pay(p["number"], p["gross"], "txn-demo").settled
        world.runner.dispatch(order["order"])
        for _ in range(20):
            if not world.queue.keys:
                break
            world.drain()
        link = access_link(read_maildir(tmp_path / "mail"), api)
        assert link is not None and link.startswith(f"{api}/credentials/")
        ok, seen = check_link(link)
        assert ok, seen
        browser.get(link)
        browser.find_element(By.ID, "reveal").click()
        WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.ID, "ftp-password"))
        with transaction(world.factory) as s:
            user = s.execute(select(HostingAccount.username)).scalar_one()
        assert browser.find_element(By.ID, "ftp-password").text == hosting.passwords[user].account
        screenshot(browser, page_shots, "demo-access-shown-sl")
    finally:
        stack.stop()
