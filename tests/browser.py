"""The customer pages in a real browser: headless Chromium from Debian's packages
(``scripts/install-deps-browser.sh``) driven by Selenium, and the API served by a real
uvicorn on a free port in this process (so a test shares its database and clock)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService

from provisioner.devstack.net import free_port, port_open, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1280, 1000)
PHONE = (390, 844)  # a common phone's CSS viewport


def chromium(lang: str = "en-GB") -> webdriver.Chrome:
    """Headless Chromium through Debian's chromedriver (no download: both paths given)."""
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--lang={lang}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
    return webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=opts)


@contextmanager
def served(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` served by uvicorn on ``port`` (default: a free one) of the loopback; yields
    its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 30, f"uvicorn on port {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def screenshot(driver: webdriver.Chrome, out: Path, name: str) -> list[Path]:
    """The page as seen now, full height, on a desktop and on a phone: ``name-desktop.png``
    and ``name-phone.png`` under ``out``. Checks that the phone needs no sideways scrolling."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        driver.set_window_size(width, height)
        full = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(width, max(height, min(full + 140, 6000)))
        path = out / f"{name}-{label}.png"
        assert driver.save_screenshot(str(path)), path
        written.append(path)
        if label == "phone":
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert int(overflow) <= 0, f"{name}: {overflow}px wider than a phone"
    driver.set_window_size(*DESKTOP)
    return written
