"""Shared fixtures: real PostgreSQL, Redis and SMTP servers started by the tests,
and a live API + Celery worker stack for the end-to-end pipeline tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.store.db import dispose_all, upgrade
from tests.helpers import VENV_BIN, Stack, make_settings, settings_env
from tests.servers import PgServer, free_port, postgres_server, redis_server, wait_for

ROOT = Path(__file__).resolve().parent.parent


# -- async tests ---------------------------------------------------------------------
@pytest.fixture
def anyio_backend() -> str:
    """The API runs on uvicorn's asyncio loop; its async tests run there too (trio, which
    Selenium brings along, is not a loop the product runs on)."""
    return "asyncio"


# -- PostgreSQL ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database on each engine the product supports."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'provisioner.sqlite'}"
    else:
        url = request.getfixturevalue("pg_server").create_database()
    upgrade(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'provisioner.sqlite'}"
    upgrade(url)
    return url


# -- Redis -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


# -- SMTP ----------------------------------------------------------------------------------
@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "maildir") as sink:
        yield sink


# -- a live stack ----------------------------------------------------------------------
@pytest.fixture
def stack_factory(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def start(db: str, worker: bool = True, **over: object) -> Stack:
        port_for_mail = int(over.pop("smtp_port", smtp_sink.port))  # type: ignore[call-overload]
        s = make_settings(tmp_path, db, port_for_mail, **over)
        upgrade(s.effective_database_url)
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        env = settings_env(s)
        port = free_port()
        with open(logs / "api.log", "ab") as api_log:  # the child keeps its own fd
            api = subprocess.Popen(
                [str(VENV_BIN / "uvicorn"), "--factory", "provisioner.api.app:app_from_env",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                env=env, stdout=api_log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        stack = Stack(s, f"http://127.0.0.1:{port}", smtp_sink.maildir, logs, env, {"api": api})
        stacks.append(stack)

        def healthy() -> bool:
            if api.poll() is not None:
                raise AssertionError((logs / "api.log").read_text())
            try:
                return httpx.get(f"{stack.api}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 30, "the API to answer /health")
        if worker:
            stack.start_worker()
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    dispose_all()
