"""What every command group of the CLI shares: settings, the wiring, error handling and
output. It imports no command module, so any of them can import it.

Every list/show command takes `--json` (`JsonOpt`) and then prints JSON only on stdout
(`emit`). Errors go to stderr with exit status 2 (caller's input) or 1 (anything else)
(`guarded`).
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from provisioner.bootstrap import Provisioner, bootstrap
from provisioner.config import Settings, load_settings
from provisioner.errors import InvalidInput, ProvisionerError
from provisioner.pipeline.engine.runner import Enqueue
from provisioner.pipeline.usecases import ops
from provisioner.store.db import is_sqlite, session_factory, upgrade
from provisioner.timeutil import utcnow

if TYPE_CHECKING:
    from celery import Celery

out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
RequestDayOpt = Annotated[str | None, typer.Option(
    "--now", help="The day of the request (YYYY-MM-DD); default today.")]
T = TypeVar("T")


def actor() -> str:
    return f"cli:{getpass.getuser()}"


def settings() -> Settings:
    return load_settings()


def factory(cfg: Settings | None = None) -> sessionmaker[Session]:
    """The database's session factory, for commands that only read or write rows."""
    url = (cfg or settings()).effective_database_url
    if is_sqlite(url):  # the embedded default needs nothing configured: keep it migrated
        upgrade(url)
    return session_factory(url)


def celery_enqueue(cfg: Settings) -> Enqueue:
    """Hands a step key to the Celery workers; the Celery app is built on the first key,
    so a command that queues nothing never loads Celery."""
    celery: Celery | None = None

    def enqueue(key: str) -> None:
        nonlocal celery
        if celery is None:
            # Deferred: importing the tasks module builds its Celery app (and the broker's
            # folders) from the environment, which only a command that queues should pay for.
            from provisioner.tasks import make_celery

            celery = make_celery(cfg)
        celery.send_task("provisioner.run_step", args=(key,))

    return enqueue


def wired(cfg: Settings | None = None, *, enqueue: Enqueue | None = None,
          now: Callable[[], datetime] = utcnow) -> Provisioner:
    """The process's wiring (`provisioner.bootstrap`): steps go to the Celery workers
    unless ``enqueue`` says otherwise."""
    cfg = cfg or settings()
    return bootstrap(cfg, enqueue=celery_enqueue(cfg) if enqueue is None else enqueue,
                     factory=factory(cfg), now=now)


def parse_day(value: str | None) -> date:
    """``--now YYYY-MM-DD``; none: today (UTC)."""
    if not value:
        return utcnow().date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--now must be a date YYYY-MM-DD, not {value!r}") from None


def guarded(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except InvalidInput as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except ProvisionerError as exc:
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        render(data)


def table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in columns])
    out.print(t)


def follow(f: sessionmaker[Session], order_id: int, timeout: float, *,
           redrive: Callable[[], Any] | None = None, console: Console | None = None,
           quiet: bool = False) -> dict[str, int]:
    """A Rich progress bar over the order's steps until all are done or one failed; none
    when the output is not a terminal (CI) or ``quiet`` (``--json``)."""
    deadline = time.monotonic() + timeout
    last_redrive = 0.0
    counts = ops.order_progress(f, order_id)
    console = console or out
    with Progress(TextColumn("[bold]order {task.fields[order]}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps {task.fields[note]}"),
                  TimeElapsedColumn(), console=console,
                  disable=quiet or not console.is_terminal) as progress:
        task = progress.add_task("steps", total=sum(counts.values()), order=order_id, note="")
        while True:
            counts = ops.order_progress(f, order_id)
            total = sum(counts.values())
            progress.update(task, total=total, completed=counts.get("done", 0),
                            note=", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                                           if k != "done"))
            if counts.get("failed") or (total and counts.get("done", 0) == total):
                return counts
            if time.monotonic() > deadline:
                return counts
            if redrive is not None and time.monotonic() - last_redrive > 5:
                redrive()
                last_redrive = time.monotonic()
            time.sleep(0.2)
