"""Throwaway PostgreSQL and Redis servers, for the tests and the benchmarks.

Plain context managers (no pytest), so ``bench/`` can use them too::

    with postgres_server() as pg:
        url = pg.create_database()      # postgresql+psycopg://postgres@127.0.0.1:<port>/<db>
    with redis_server() as redis:
        url = redis.url                 # redis://127.0.0.1:<port>/0

PostgreSQL is Debian's (``/usr/lib/postgresql/*/bin``), initialised with trust
auth and run as the ``postgres`` user when we are root, on 127.0.0.1 with a free
port and durability switched off (these are throwaway servers). ``free_port``,
``port_open`` and ``wait_for`` are provisioner.devstack.net's, re-exported.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.devstack.net import free_port, port_open, wait_for

__all__ = [
    "PgServer",
    "RedisServer",
    "free_port",
    "port_open",
    "postgres_server",
    "redis_server",
    "wait_for",
]


def self_signed_tls_context() -> ssl.SSLContext:
    """A client context for the throwaway nodes' self-signed FTPS/IMAPS/SMTP certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- PostgreSQL ----------------------------------------------------------------------
@dataclass
class PgServer:
    port: int
    datadir: Path
    bindir: Path
    counter: Iterator[int] = field(default_factory=itertools.count)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self.counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: run `make setup` "
                           "(scripts/install-deps.sh installs Debian's postgresql)")
    return Path(found[-1]).parent


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    bindir = pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="prov-pg-"))
    datadir = base / "data"
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    as_user: list[str] = ["runuser", "-u", "postgres", "--"] if user else []
    if user:
        os.chown(base, user.pw_uid, user.pw_gid)
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust",
                    "-U", "postgres", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True)
    port = free_port()
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts,
                    "-l", str(base / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield PgServer(port, datadir, bindir)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-m",
                        "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# -- Redis -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RedisServer:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="prov-redis-"))
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 10, "redis-server")
        yield RedisServer(port)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
