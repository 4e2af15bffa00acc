"""Engines and sessions. SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE, so that
concurrent writers queue instead of failing; PostgreSQL uses row locks.

With BEGIN IMMEDIATE every SQLite transaction holds the database's write lock, so they
run one at a time anyway. Inside one process they also queue on a lock of ours
(`transaction()`): a thread waiting there is woken when the previous transaction ends,
instead of polling in SQLite's busy handler, which sleeps in steps of up to 100 ms while
the API's thread pool has dozens of requests waiting. Other processes (more uvicorn
workers, Celery) still queue in SQLite."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from provisioner.errors import ConfigurationError, TransientError
from provisioner.keyfiles import make_private_dir

_MIGRATIONS = Path(__file__).parent / "migrations"
_READ_ONLY = "provisioner_read_only"
_BUSY_TIMEOUT_S = 60.0
# One lock per SQLite engine: the in-process queue of its transactions (see above).
_SQLITE_LOCKS: dict[Engine, threading.RLock] = {}


def _private_file(path: Path) -> None:
    """The SQLite file (customer data, raw webhooks) is created 0600 in a directory
    created 0700; SQLite gives its -wal and -shm files the database file's mode. An
    existing file or directory keeps its mode."""
    make_private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if is_sqlite(url):
        path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
        if path and path != ":memory:":
            _private_file(Path(path))
        engine = create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_S,
                                                  "check_same_thread": False})
        _SQLITE_LOCKS[engine] = threading.RLock()

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A read-only unit of work (`read_only`) takes no write lock: in WAL mode
            # it reads while another connection writes.
            reader = conn.get_execution_options().get(_READ_ONLY, False)
            conn.exec_driver_sql("BEGIN DEFERRED" if reader else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        # Batched INSERTs in pages whose statement text repeats (psycopg caches the parse
        # of statements up to 4 kB; bigger pages were re-parsed every time).
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True,
                             insertmanyvalues_page_size=25)
    raise ConfigurationError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(url: str) -> Engine:
    """One engine (one pool) per URL and process."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = make_engine(url)
        return engine


def dispose_all() -> None:
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
            _SQLITE_LOCKS.pop(engine, None)
        _ENGINES.clear()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)


@contextmanager
def _queued(factory: sessionmaker[Session]) -> Iterator[None]:
    lock = _SQLITE_LOCKS.get(factory.kw.get("bind"))  # type: ignore[arg-type]
    if lock is None:  # PostgreSQL: row locks, no queue of ours
        yield
        return
    if not lock.acquire(timeout=_BUSY_TIMEOUT_S):
        raise TransientError(f"the database stayed busy for {_BUSY_TIMEOUT_S:.0f} s")
    try:
        yield
    finally:
        lock.release()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error. On SQLite the
    process's transactions queue on the engine's lock first (see the module doc)."""
    with _queued(factory):
        session = factory()
        try:
            with session.begin():
                yield session
        finally:
            session.close()


@contextmanager
def read_only(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work that only reads: on SQLite a deferred transaction (no write lock,
    not queued behind the process's writers), on PostgreSQL a READ ONLY transaction.
    It never commits anything."""
    engine = factory.kw.get("bind")
    assert isinstance(engine, Engine)
    options: dict[str, Any] = {_READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        options["postgresql_readonly"] = True
    with engine.connect().execution_options(**options) as conn:
        session = factory(bind=conn)
        try:
            yield session
        finally:
            session.close()
            conn.rollback()


def alembic_config(url: str) -> Any:
    from alembic.config import Config  # deferred with `upgrade`: see there

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    from alembic import command  # deferred: alembic (with mako) costs every CLI start 0.2 s

    command.upgrade(alembic_config(url), revision)
