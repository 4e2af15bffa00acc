"""Shared fixtures: real PostgreSQL, Redis and SMTP servers started by the tests,
and a live API + Celery worker stack for the end-to-end pipeline tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from provisioner.devstack.smtp_sink import SmtpSink, read_maildir
from provisioner.config import Settings
from provisioner.pipeline.engine.plan import enable_line_kinds
from provisioner.store.db import dispose_all, upgrade
from tests.servers import PgServer, free_port, postgres_server, redis_server, wait_for

__all__ = ["PgServer", "free_port", "wait_for"]  # re-exported for the tests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


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


# -- settings and a live stack ---------------------------------------------------------------
STRIPE_SECRET = "whsec_test_" + "k" * 24
API_TOKEN = "test-token-" + "t" * 20


def make_settings(tmp_path: Path, db: str, smtp_port: int, **over: object) -> Settings:
    values: dict[str, object] = dict(
        data_dir=tmp_path / "data",
        database_url=db,
        broker_url=f"filesystem://{tmp_path / 'broker'}",
        api_token=API_TOKEN,
        stripe_webhook_secret=STRIPE_SECRET,
        smtp_port=smtp_port,
        step_lease_s=30,
        step_backoff_s=0.2,
        redrive_interval_s=1.0,
        line_kinds="",  # the core's tests: billing steps only; capabilities test themselves
    )
    values.update(over)
    return Settings().with_overrides(**values)


def settings_env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    for name in ("data_dir", "database_url", "broker_url", "api_token", "stripe_webhook_secret",
                 "smtp_host", "smtp_port", "step_lease_s", "step_max_attempts", "step_backoff_s",
                 "redrive_interval_s", "max_body_bytes", "braintree_merchant_id",
                 "braintree_public_key", "braintree_private_key", "paypal_webhook_id",
                 "paypal_cert_hosts", "paypal_ca_file", "ops_email", "line_kinds"):
        env[f"PROVISIONER_{name.upper()}"] = str(getattr(s, name))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Stack:
    settings: Settings
    api: str
    maildir: Path
    logs: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30,
                            headers={"Authorization": f"Bearer {API_TOKEN}"})

    def start_worker(self, name: str = "worker", concurrency: int = 2) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own fd
            proc = subprocess.Popen(
                [str(VENV_BIN / "celery"), "-A", "provisioner.tasks", "worker", "-B",
                 "--concurrency", str(concurrency), "--loglevel", "INFO", "-Q", "provisioner",
                 "--pool", "prefork", "-s", str(self.logs / f"{name}-beat"), "-n",
                 f"{name}@%h"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def mails(self) -> list:  # type: ignore[type-arg]
        return read_maildir(self.maildir)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM if name == "api" else signal.SIGKILL)


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
    enable_line_kinds(None)
