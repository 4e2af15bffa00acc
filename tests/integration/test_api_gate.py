"""The HTTP interface's front door: the bearer token is checked before a byte of the body
is read, one body cap holds for every route, the API docs are private unless a setting
says otherwise, refused webhooks cannot flood the audit log, and /health never waits
for the database's write lock."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from provisioner.api.app import create_app
from provisioner.config import Settings
from provisioner.pipeline.usecases import ops
from provisioner.store import db
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import AuditEntry
from tests.helpers import API_TOKEN, STRIPE_SECRET, Queue, Stack, make_settings
from tests.payloads import stripe_event, stripe_signature

MB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, enqueue=Queue()))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, sqlite_url, 25, max_body_bytes=64 * 1024)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(settings) as c:
        yield c


# -- the token before the body ---------------------------------------------------------
@pytest.mark.parametrize("path", ["/orders", "/customers", "/bank-statements"])
async def test_an_unauthenticated_malformed_body_gets_401_not_a_parse_error(
        client: httpx.AsyncClient, path: str) -> None:
    refused = await client.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", [API_TOKEN, f"Token {API_TOKEN}", f"Bearer{API_TOKEN}",
                                    f"Bearer {API_TOKEN}x", "Bearer ", f"{API_TOKEN} Bearer"])
async def test_only_the_bearer_scheme_with_the_exact_token_is_accepted(
        client: httpx.AsyncClient, header: str) -> None:
    assert (await client.get("/metrics", headers={"Authorization": header})).status_code == 401
    assert (await client.get("/metrics", headers=AUTH)).status_code == 200
    assert (await client.get("/metrics", headers={"Authorization": f"bearer {API_TOKEN}"})).status_code == 200


async def test_an_unknown_path_asks_for_the_token_before_saying_it_is_not_there(
        client: httpx.AsyncClient) -> None:
    assert (await client.post("/admin", content=b"x")).status_code == 401
    assert (await client.post("/admin", content=b"x", headers=AUTH)).status_code == 404


# -- one body cap ------------------------------------------------------------------------
def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


async def _achunks(total: int) -> AsyncIterator[bytes]:
    for chunk in _chunks(total):
        yield chunk


@pytest.mark.parametrize("path", ["/orders", "/bank-statements", "/webhooks/stripe"])
async def test_one_body_cap_holds_for_every_route(
        client: httpx.AsyncClient, settings: Settings, path: str) -> None:
    cap = settings.max_body_bytes
    declared = await client.post(path, content=b" " * (cap + 1), headers=AUTH)
    streamed = await client.post(path, content=_achunks(2 * cap), headers=AUTH)
    assert declared.status_code == 413
    assert streamed.status_code == 413
    at_cap = await client.post(path, content=b" " * cap, headers=AUTH)
    assert at_cap.status_code in (400, 422)  # read, and refused for its content, not its size


# -- the docs ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_the_api_docs_need_the_token_by_default(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 401


async def test_the_openapi_spec_is_served_with_the_token(client: httpx.AsyncClient) -> None:
    spec = await client.get("/openapi.json", headers=AUTH)
    assert spec.status_code == 200
    assert "/orders" in spec.json()["paths"] and "/openapi.json" not in spec.json()["paths"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_the_api_docs_are_public_when_the_setting_says_so(settings: Settings, path: str) -> None:
    async with _client(settings.with_overrides(api_docs_public=True)) as client:
        assert (await client.get(path)).status_code == 200


# -- refused webhooks --------------------------------------------------------------------
def _rejections(settings: Settings) -> list[AuditEntry]:
    with transaction(session_factory(settings.effective_database_url)) as s:
        rows = list(s.execute(select(AuditEntry).where(AuditEntry.action == "webhook.rejected")
                              .order_by(AuditEntry.id)).scalars())
        s.expunge_all()
        return rows


async def test_refused_webhooks_are_audited_once_a_minute_per_provider_and_address(
        client: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    app = client._transport.app  # type: ignore[attr-defined]
    app.state.webhooks.rejections.clock = lambda: clock[0]
    body = stripe_event("evt_forged", "PF-2026-0001", 1000, "eur")
    forged = {"Stripe-Signature": stripe_signature(body, "whsec_someone_else"),
              "Content-Type": "application/json"}

    async def deliver(n: int) -> None:
        for _ in range(n):
            assert (await client.post("/webhooks/stripe", content=body, headers=forged)).status_code == 400

    with caplog.at_level(logging.WARNING, logger="provisioner.api"):
        await deliver(50)
        assert len(_rejections(settings)) == 1
        clock[0] += 59
        await deliver(10)
        assert len(_rejections(settings)) == 1
        clock[0] += 2  # a minute after the first row
        await deliver(1)
    rows = _rejections(settings)
    assert len(rows) == 2
    assert rows[0].detail["suppressed"] == 0
    assert rows[1].detail["suppressed"] == 59  # the ones held back in that minute, counted
    warnings = [r for r in caplog.records if "rejected stripe webhook" in r.getMessage()]
    assert len(warnings) == 2
    good = stripe_event("evt_ok", "PF-2026-0001", 1000, "eur")
    accepted = await client.post("/webhooks/stripe", content=good, headers={
        "Stripe-Signature": stripe_signature(good, STRIPE_SECRET), "Content-Type": "application/json"})
    assert accepted.status_code == 200  # the limit is on the log, never on deliveries


# -- /health ----------------------------------------------------------------------------
def test_health_answers_while_another_process_holds_the_write_lock(settings: Settings) -> None:
    factory = session_factory(settings.effective_database_url)
    ops.ping(factory)  # the engine is connected before the writer takes the lock
    writer = sqlite3.connect(settings.effective_database_url.split("///", 1)[1],
                             isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")  # e.g. a worker's long batch
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(ops.ping, factory).result(timeout=10)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_health_reads_only_and_leaves_the_pool_writable(db_url: str) -> None:
    factory = session_factory(db_url)
    if factory.kw["bind"].dialect.name == "postgresql":
        with db.read_only(factory) as s, pytest.raises(DBAPIError, match="read-only transaction"):
            s.execute(text("CREATE TABLE nope (id integer)"))
    for n in range(15):  # a pooled connection that served a ping serves the next write
        ops.ping(factory)
        with transaction(factory) as s:
            s.add(AuditEntry(at=datetime.now(UTC), actor="test", action="write", entity="x",
                             entity_id=str(n)))
    with transaction(factory) as s:
        assert s.execute(select(func.count()).select_from(AuditEntry)).scalar_one() == 15


# -- against a real server: memory stays flat -----------------------------------------
def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes: what reading a body would raise."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _stream(stack: Stack, path: str, total: int, headers: dict[str, str]) -> tuple[int, int]:
    """POST ``total`` bytes from a generator (chunked, no Content-Length); the status and
    how much the server's peak memory grew meanwhile."""
    pid = stack.procs["api"].pid
    before = _peak_rss(pid)
    with httpx.Client(base_url=stack.api, timeout=120) as c:
        status = c.post(path, content=_chunks(total), headers=headers).status_code
        assert c.get("/health").status_code == 200  # still serving
    return status, _peak_rss(pid) - before


@pytest.fixture
def live(stack_factory: Callable[..., Stack], sqlite_url: str) -> Stack:
    return stack_factory(sqlite_url, worker=False, max_body_bytes=MB)


@pytest.mark.parametrize("path", ["/orders", "/bank-statements"])
def test_an_unauthenticated_60_mb_post_is_refused_before_the_body_is_read(live: Stack, path: str) -> None:
    status, grown = _stream(live, path, 60 * MB, {"Content-Type": "application/json"})
    assert grown < 10 * MB, f"the server's peak memory grew by {grown / MB:.1f} MB"
    assert status == 401


def test_an_authenticated_60_mb_post_is_cut_at_the_cap(live: Stack) -> None:
    status, grown = _stream(live, "/orders", 60 * MB, {**AUTH, "Content-Type": "application/json"})
    assert status == 413
    assert grown < 10 * MB, f"the server's peak memory grew by {grown / MB:.1f} MB"
