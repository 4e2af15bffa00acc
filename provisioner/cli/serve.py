"""The long-running processes: ``provisioner serve | worker | beat``."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from provisioner.bootstrap import Provisioner
from provisioner.cli.common import guarded, wired
from provisioner.domain.maintenance import zone
from provisioner.errors import ConfigurationError, InvalidInput
from provisioner.pipeline.usecases.residency import check_residency

app = typer.Typer()  # its commands sit at the root: serve, worker, beat


def started() -> Provisioner:
    """The wiring, once the configuration passed the start-up checks: a migrated
    database, every place that keeps personal data inside `allowed_countries`, and a
    maintenance window's time zone that exists."""
    p = wired()
    check_residency(p.settings, p.factory)
    try:
        zone(p.settings.maintenance_timezone)
    except InvalidInput as exc:
        raise ConfigurationError(f"setting maintenance_timezone: {exc}") from exc
    return p


@app.command("serve")
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """The HTTP API (uvicorn)."""
    import uvicorn  # only this command runs a web server

    guarded(started)  # a migrated database and a configuration that wires, before serving
    uvicorn.run("provisioner.api.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info")


@app.command("worker")
def worker(
    concurrency: int = 2,
    beat: Annotated[bool, typer.Option("--beat", help="Run the beat (re-drive) too.")] = False,
) -> None:
    """A Celery worker. It refuses to start while the journal holds steps of a kind it
    has no handler for (an old or partial install): a configuration error, not a
    service that fails later and is refunded."""
    guarded(lambda: started().runner.check_journal())
    argv = [sys.executable, "-m", "celery", "-A", "provisioner.tasks", "worker",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "-Q", "provisioner"]
    if beat:
        argv.append("-B")
    os.execv(sys.executable, argv)


@app.command("beat")
def beat() -> None:
    """Celery beat: the periodic re-drive."""
    guarded(started)
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "provisioner.tasks", "beat",
                              "--loglevel", "INFO"])
