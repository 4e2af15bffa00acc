"""The one-time credentials link: shown once under concurrent requests on both databases,
its sealed data purged once it expires, its token kept out of the access log."""

from __future__ import annotations

import secrets
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities import hosting
from provisioner.pipeline.capabilities.hosting import open_link, seal, token_hash
from provisioner.store.db import transaction
from provisioner.store.hosting import CredentialLink
from provisioner.store.models import Service
from tests.helpers import VENV_BIN, World, make_settings, make_world, settings_env
from tests.servers import free_port, wait_for

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DATA = {"domain": "example.si", "panel": {"user": "u1", "password": "pw-1"}}


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> World:
    w = make_world(make_settings(tmp_path, db_url, 25, line_kinds="hosting"))
    w.order(["hosting:giga5:example.si"])
    return w


def _service(world: World) -> int:
    with transaction(world.factory) as s:
        return s.execute(select(Service.id)).scalars().first()  # type: ignore[return-value]


def new_link(world: World, *, expires: datetime = NOW + timedelta(hours=72)) -> str:
    token = secrets.token_urlsafe(32)
    with transaction(world.factory) as s:
        s.add(CredentialLink(token_sha256=token_hash(token), service_id=_service(world),
                             sealed=seal(token, DATA), expires_at=expires, created_at=NOW))
    return token


def _link(world: World, token: str) -> CredentialLink:
    with transaction(world.factory) as s:
        row = s.execute(select(CredentialLink).where(
            CredentialLink.token_sha256 == token_hash(token))).scalar_one()
        s.expunge(row)
        return row


def _together_at_the_links_table(world: World, parties: int) -> Callable[[], None]:
    """On PostgreSQL, hold each caller's first statement on ``credential_links`` until
    all of them have reached it, so the requests overlap inside the database (the race
    a reader-then-writer loses). SQLite runs one write transaction at a time (BEGIN
    IMMEDIATE): there the callers only start together. Returns the remover."""
    engine = world.factory.kw["bind"]
    if engine.dialect.name != "postgresql":
        return lambda: None
    barrier = threading.Barrier(parties, timeout=30)
    seen = threading.local()

    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "credential_links" in statement and not getattr(seen, "done", False):
            seen.done = True
            barrier.wait()

    event.listen(engine, "before_cursor_execute", hold)
    return lambda: event.remove(engine, "before_cursor_execute", hold)


def test_two_concurrent_opens_of_one_link_show_the_data_exactly_once(world: World) -> None:
    for _ in range(3):
        token = new_link(world)
        start = threading.Barrier(2, timeout=30)
        remove = _together_at_the_links_table(world, 2)

        def open_it(_: int, token: str = token, start: threading.Barrier = start) -> str:
            start.wait()
            try:
                return "shown" if open_link(world.factory, token, NOW) == DATA else "wrong data"
            except InvalidInput as exc:
                return str(exc)

        try:
            with ThreadPoolExecutor(2) as pool:
                outcomes = sorted(pool.map(open_it, range(2)))
        finally:
            remove()
        assert outcomes == ["shown", "this link was already used; ask for new access data"]
        link = _link(world, token)
        assert link.used_at is not None and link.sealed == b"-"


def test_a_link_tells_why_it_cannot_be_opened(world: World) -> None:
    used = new_link(world)
    open_link(world.factory, used, NOW)
    expired = new_link(world, expires=NOW - timedelta(seconds=1))
    with pytest.raises(InvalidInput, match="already used"):
        open_link(world.factory, used, NOW)
    with pytest.raises(InvalidInput, match="expired"):
        open_link(world.factory, expired, NOW)
    with pytest.raises(InvalidInput, match="not valid"):
        open_link(world.factory, secrets.token_urlsafe(32), NOW)
    assert _link(world, expired).used_at is None  # an expired link is not "used"


def test_the_purge_removes_the_sealed_data_of_expired_links_only(world: World) -> None:
    expired = new_link(world, expires=NOW - timedelta(minutes=1))
    valid = new_link(world)
    assert hosting.purge_expired_links(world.factory, NOW) == 1
    assert _link(world, expired).sealed == b"-"
    assert _link(world, valid).sealed != b"-"
    assert open_link(world.factory, valid, NOW) == DATA
    with pytest.raises(InvalidInput, match="expired"):
        open_link(world.factory, expired, NOW)
    assert hosting.purge_expired_links(world.factory, NOW) == 0  # nothing left to purge


def test_the_beat_purges_expired_links_daily(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = world.app.settings
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", settings.effective_database_url)
    from provisioner import tasks  # imported here: its Celery app reads the environment above

    tasks.provisioner.cache_clear()
    tasks._settings.cache_clear()
    try:
        entry = tasks.make_celery(settings).conf.beat_schedule["purge_links"]
        assert entry["task"] == "provisioner.purge_links" == tasks.purge_links.name
        assert entry["schedule"].hour == {0} and len(entry["schedule"].minute) == 1  # daily
        expired = new_link(world, expires=datetime.now(UTC) - timedelta(minutes=1))
        assert tasks.purge_links()["purged"] == 1
        assert tasks.purge_links()["skipped"]  # once a day, however many beats send it
        assert _link(world, expired).sealed == b"-"
    finally:
        tasks.provisioner.cache_clear()
        tasks._settings.cache_clear()


def test_the_access_log_does_not_record_a_credentials_token(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sqlite_url, 25, line_kinds="hosting")
    world = make_world(settings)
    world.order(["hosting:giga5:example.si"])
    token = new_link(world, expires=datetime.now(UTC) + timedelta(hours=1))
    port = free_port()
    log_path = tmp_path / "api.log"
    with open(log_path, "ab") as out:  # the child keeps its own fd
        api = subprocess.Popen(
            [str(VENV_BIN / "uvicorn"), "--factory", "provisioner.api.app:app_from_env",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"],
            env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert api.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "the API to answer /health")
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get(f"/credentials/{token}?x=1").status_code == 200
            shown = c.post(f"/credentials/{token}")
            assert shown.status_code == 200 and "pw-1" in shown.text
            assert c.get("/health?probe=last").status_code == 200
        wait_for(lambda: "probe=last" in log_path.read_text(), 10, "the access log line of the last request")
    finally:
        api.terminate()
        api.wait(30)
    log = log_path.read_text()
    assert "/credentials/" in log  # the requests were logged ...
    assert token not in log  # ... without their token
    assert token[:12] not in log
