"""Fixtures of the customer pages' browser tests: one headless Chromium for the session
(starting it per test would dominate the suite's time), and where screenshots go."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def page_shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots of every page, for review: ``<pytest basetemp>/test-output/pages/``."""
    out = tmp_path_factory.getbasetemp() / "test-output" / "pages"
    out.mkdir(parents=True, exist_ok=True)
    return out
