"""What the beat runs daily, by hand: ``provisioner sweep | quota``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import Progress

from provisioner.cli.common import (
    JsonOpt,
    emit,
    err,
    factory,
    guarded,
    out,
    parse_day,
    settings,
    table,
    wired,
)
from provisioner.pipeline.capabilities import lifecycle
from provisioner.pipeline.capabilities.lifecycle import SweepReport
from provisioner.timeutil import now_at

app = typer.Typer()  # its commands sit at the root: sweep, quota


def _in_process(key: str) -> None:
    """Steps the sweep writes are not handed to workers: `run_day` runs them here."""


@app.command("sweep")
def sweep_cmd(
    now: Annotated[str | None, typer.Option("--now", help="The day to sweep (YYYY-MM-DD); "
                                            "default today.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what is due; touch "
                                          "nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Renewal proformas, reminders, shutdowns and staged deletion that are due.

    The steps it writes are run here, with the clock at --now (the beat's daily sweep
    hands them to the workers instead)."""
    cfg = settings()
    day = guarded(lambda: parse_day(now))
    with Progress(console=err, transient=True, disable=as_json) as progress:
        task = progress.add_task(f"sweep {day}", total=None)

        def run() -> SweepReport:
            if dry_run:
                return lifecycle.sweep(factory(cfg), day, dry_run=True,
                                       progress=lambda n: progress.advance(task, n))
            p = wired(cfg, enqueue=_in_process, now=now_at(day))
            return lifecycle.run_day(p.factory, p.runner, day)

        report = guarded(run)
    data = report.as_dict()

    def render(d: dict[str, Any]) -> None:
        table([{**a, "service": a["service_id"]} for a in d["actions"]],
              ["service", "event", "due_on", "detail"],
              title=f"sweep {d['today']}{' (dry run)' if d['dry_run'] else ''}")
        out.print(f"looked at {d['looked_at']} service(s); {d['counts'] or 'nothing due'}")

    emit(data, as_json, render)


@app.command("quota")
def quota_cmd(as_json: JsonOpt = False) -> None:
    """Read every node's usage: warn accounts over their quota, and stop the free backups
    of those still over it after the grace days (the beat runs this daily)."""
    data = guarded(lambda: wired().check_quotas())
    emit(data, as_json, lambda d: out.print(d))
