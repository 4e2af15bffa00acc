"""``provisioner breach``: personal-data breaches and their 72-hour notification deadline."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, err, factory, guarded, out, settings, table
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases import breach

app = typer.Typer(help="Personal-data breaches (supervisory authority within 72 hours).",
                  no_args_is_help=True)


@app.command("open")
def breach_open(
    summary: Annotated[str, typer.Option("--summary", help="What happened, which data, whose.")],
    brand: Annotated[str | None, typer.Option(help="The brand whose customers it concerns "
                                                   "(default: the installation's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a breach; ops are reminded until it is closed."""
    data = guarded(lambda: breach.open_breach(factory(), summary, actor(), brand or settings().brand))
    emit(data, as_json, lambda d: err.print(
        f"breach [bold]{d['id']}[/] opened: notify the supervisory authority by "
        f"[bold]{d['deadline_at']}[/] ({d['hours']} hours)"))


@app.command("list")
def breach_list(
    open_only: Annotated[bool, typer.Option("--open", help="Only breaches not closed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Breaches with their deadline and state (open, overdue, closed)."""
    data = guarded(lambda: breach.list_breaches(factory(), open_only))
    emit(data, as_json, lambda d: table(d, ["id", "brand", "state", "opened_at", "deadline_at",
                                            "notified_at", "reminders", "summary"]))


@app.command("close")
def breach_close(
    breach_id: Annotated[int, typer.Argument(help="the breach's id")],
    notified_at: Annotated[str, typer.Option("--notified-at", help="When the supervisory "
                                             "authority was notified (ISO 8601 with zone).")],
    as_json: JsonOpt = False,
) -> None:
    """Close a breach: the authority was notified; the reminders stop."""

    def run() -> dict[str, Any]:
        try:
            when = datetime.fromisoformat(notified_at.strip())
        except ValueError as exc:
            raise InvalidInput(f"--notified-at: {exc}") from exc
        return breach.close_breach(factory(), breach_id, when, actor())

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(f"breach {d['id']} closed (notified {d['notified_at']})"))
