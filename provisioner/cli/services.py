"""``provisioner services``: what orders became, and the clock of each service."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, factory, guarded, out, table, wired
from provisioner.pipeline.capabilities import lifecycle
from provisioner.pipeline.usecases import maintenance, ops, reads

app = typer.Typer(help="Services.", no_args_is_help=True)


@app.command("list")
def services_list(as_json: JsonOpt = False) -> None:
    def run() -> list[dict[str, Any]]:
        p = wired()
        return reads.services(p.factory, actor(), planned=p.planner.planned_kinds())

    data = guarded(run)
    emit(data, as_json, lambda d: table(d, ["id", "order", "kind", "product", "name", "state",
                                            "expires_on", "detail"]))


@app.command("show")
def services_show(service_id: int, as_json: JsonOpt = False) -> None:
    def run() -> dict[str, Any]:
        p = wired()
        return ops.show_service(p.factory, service_id, actor(), planned=p.planner.planned_kinds())

    data = guarded(run)
    emit(data, as_json, lambda d: table([d], ["id", "kind", "product", "name", "state",
                                              "expires_on", "detail"]))


@app.command("change-plan")
def services_change_plan(
    service_id: int,
    plan: Annotated[str, typer.Option(help="The hosting plan to move to (see `catalog list`).")],
    force_window: Annotated[str | None, typer.Option(
        "--force-window", metavar="REASON",
        help="Run it now, outside the maintenance window (audited).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move a hosting account to another plan. It restarts the account's services, so
    it waits for the maintenance window (23:00-05:00) unless --force-window gives a reason."""

    def run() -> dict[str, Any]:
        p = wired()
        data = maintenance.request_plan_change(p.factory, service_id, plan, actor(), force_window)
        p.runner.dispatch(data["order"])
        return data

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(
        f"service {service_id}: {d['from']} -> {d['to']} queued as {d['step']}"
        + (" (forced now)" if d["forced"] else " (runs in the maintenance window)")))


@app.command("hold")
def services_hold(service_id: int,
                  reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
                  as_json: JsonOpt = False) -> None:
    """Stop a service's clock: no shutdown and no deletion until it is released."""
    data = guarded(lambda: lifecycle.hold(factory(), service_id, reason, actor()))
    emit(data, as_json, lambda d: out.print(f"service {service_id} is on hold ({d['reason']}); "
                                            f"{d['withdrawn']} pending clock step(s) withdrawn"))


@app.command("release")
def services_release(service_id: int, as_json: JsonOpt = False) -> None:
    """Start a held service's clock again; the next sweep catches up."""
    data = guarded(lambda: lifecycle.release(factory(), service_id, actor()))
    emit(data, as_json, lambda d: out.print(f"service {service_id}: clock running"))


@app.command("stages")
def services_stages(service_id: int, as_json: JsonOpt = False) -> None:
    """What the shutdown and deletion stages of a service did (paths, backups, sizes)."""
    data = guarded(lambda: lifecycle.stage_records(factory(), service_id))
    emit(data, as_json, lambda d: table(
        [{**r, "manifest": json.dumps(r["manifest"], default=str)[:200]} for r in d],
        ["stage", "term_expiry", "due_on", "done_on", "manifest"]))
