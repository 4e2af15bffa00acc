"""The pipeline of an order: ``provisioner plan | apply | jobs | redrive``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, err, factory, follow, guarded, out, table, wired
from provisioner.pipeline.usecases import maintenance, ops, reads
from provisioner.pipeline.usecases.junit import Case, junit_xml
from provisioner.pipeline.usecases.orders import find_order
from provisioner.store.db import transaction

app = typer.Typer()  # its commands sit at the root: plan, apply, jobs, redrive


@app.command("plan")
def plan_cmd(order: str, as_json: JsonOpt = False) -> None:
    """The steps of an order, nothing touched."""

    def run() -> dict[str, Any]:
        p = wired()
        return ops.plan_order(p.factory, order, p.planner)

    data = guarded(run)
    emit(data, as_json, lambda d: table(d["steps"], ["key", "kind", "deps", "state"],
                                        f"Plan of order {d['order']} (paid: {d['paid']})"))


@app.command("apply")
def apply_cmd(
    order: str,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the steps to the end.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    force_window: Annotated[str | None, typer.Option(
        "--force-window", metavar="REASON",
        help="Run its disruptive steps now, outside the maintenance window (audited).")] = None,
    junit: Annotated[Path | None, typer.Option(
        "--junit", metavar="FILE", help="With --wait: a JUnit XML report, one test case per step.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run an order's ready steps (through Celery). Disruptive steps (a plan change that
    restarts services) wait for the maintenance window unless --force-window gives a reason.
    Exit status: 0 done (or queued without --wait), 1 a step failed or --wait timed out,
    2 bad input."""
    p = guarded(wired)
    if force_window is not None:
        forced = guarded(lambda: maintenance.force_order_window(p.factory, order, force_window, actor()))
        err.print(f"order {forced['order']}: {len(forced['steps'])} step(s) may run outside the "
                  "maintenance window")

    def resolve() -> int:
        with transaction(p.factory) as s:
            return find_order(s, order).id

    order_id = guarded(resolve)
    queued = p.runner.dispatch(order_id)
    if not as_json:
        out.print(f"order {order_id}: {len(queued)} step(s) queued")
    if not wait:
        if as_json:
            emit({"order": order_id, "queued": len(queued)}, True, print)
        return
    status = follow(p.factory, order_id, timeout, redrive=p.runner.redrive, quiet=as_json)
    steps = ops.list_jobs(p.factory, str(order_id), False)
    if junit is not None:
        junit.write_text(steps_junit(order_id, steps), encoding="utf-8")
    if as_json:
        emit({"order": order_id, "queued": len(queued), "steps": status,
              "failed": [s["key"] for s in steps if s["state"] == "failed"]}, True, print)
    if status.get("failed"):
        err.print(f"[bold red]{status['failed']} step(s) failed[/]: see `provisioner jobs "
                  f"--order {order_id} --failed`")
        raise typer.Exit(1)
    if status.get("done", 0) != sum(status.values()):
        err.print("[bold red]timed out[/] before every step finished")
        raise typer.Exit(1)
    out.print("[bold green]all steps done[/]")


def steps_junit(order_id: int, steps: list[dict[str, Any]]) -> str:
    """An order's steps as JUnit: a failed step is a failure with its error, a step not
    done when --wait gave up is a failure too (the order did not complete)."""
    cases = [Case(st["key"], f"order{order_id}.{st['kind']}",
                  None if st["state"] == "done" else
                  (f"failed: {(st['last_error'] or '')[:200]}" if st["state"] == "failed"
                   else f"not done ({st['state']}) when the wait ended"),
                  st["last_error"] or "") for st in steps]
    return junit_xml(f"provisioner apply {order_id}", cases)


@app.command("jobs")
def jobs_cmd(
    order: Annotated[str | None, typer.Option(help="Only this order.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only failed steps.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Steps in the journal."""
    data = guarded(lambda: reads.jobs(factory(), actor(), order, failed))
    emit(data, as_json, lambda d: table(d, ["key", "state", "attempts", "updated_at",
                                            "last_error"]))


@app.command("force-window")
def force_window_cmd(
    step: Annotated[str, typer.Argument(help="the step's key (see `provisioner jobs`)")],
    reason: Annotated[str, typer.Option("--reason", help="why it cannot wait (audited)")],
) -> None:
    """Let one disruptive step run outside the maintenance window."""
    data = guarded(lambda: maintenance.force_step_window(factory(), step, reason, actor()))
    out.print(f"step {data['step']} may run outside the maintenance window")


@app.command("redrive")
def redrive_cmd() -> None:
    """Re-enqueue steps whose worker died or whose message was lost (beat runs this)."""
    result = guarded(lambda: wired().redrive())
    out.print(result)
