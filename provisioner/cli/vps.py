"""``provisioner vps``: the VPS hosts and the machines on them (issue 14)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, err, factory, guarded, out, settings, table, wired
from provisioner.pipeline.usecases import vps as vps_reads
from provisioner.pipeline.usecases import vps_ops, vps_usage
from provisioner.pipeline.usecases.maintenance import EXIT_OUTSIDE_WINDOW
from provisioner.store.db import transaction
from provisioner.store.vps import add_host
from provisioner.timeutil import utcnow

app = typer.Typer(help="VPS hosts and machines", no_args_is_help=True)
host_app = typer.Typer(help="VPS hosts (where machines run)", no_args_is_help=True)
app.add_typer(host_app, name="host")

COLUMNS = ["vps_id", "hostname", "plan", "address", "host", "state", "service_id", "service_state",
           "expires_on", "access_data"]


@host_app.command("add")
def host_add(
    name: Annotated[str, typer.Argument(help="host name: [a-z][a-z0-9-]{0,62}; a name in the "
                                             "setting vps_local_hosts is this machine")],
    address: Annotated[str, typer.Option("--address", help="host name or IP it is reached at (SSH)")],
    pool: Annotated[str, typer.Option("--pool", help="its machines' addresses, CIDR; the first "
                                                     "address is the host's own (the gateway)")],
    capacity: Annotated[int, typer.Option("--capacity", help="most live machines")] = 20,
    ssh_user: Annotated[str, typer.Option("--ssh-user")] = "root",
    ssh_port: Annotated[int, typer.Option("--ssh-port")] = 22,
    throwaway: Annotated[bool, typer.Option(
        "--throwaway", help="Only for a throwaway host of this machine; its SSH host key is not "
        "checked.")] = False,
    country: Annotated[str | None, typer.Option("--country", help="ISO 3166 country")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register VPS host NAME and its address pool."""

    def run() -> dict[str, Any]:
        with transaction(factory()) as s:
            h = add_host(s, name, address, pool=pool, capacity=capacity, now=utcnow(),
                         ssh_user=ssh_user, ssh_port=ssh_port, throwaway=throwaway, country=country)
            return {"name": h.name, "address": h.address, "pool": h.pool, "gateway": h.gateway,
                    "capacity": h.capacity, "state": h.state}

    row = guarded(run)
    emit(row, as_json, lambda r: typer.echo(f"VPS host {r['name']} added ({r['pool']})"))


@app.command("list")
def list_(
    as_json: JsonOpt = False,
    deleted: Annotated[bool, typer.Option("--deleted", help="deleted machines too")] = False,
) -> None:
    """Every VPS machine with its host, address and service."""
    rows = guarded(lambda: vps_reads.list_machines(factory(), include_deleted=deleted))
    emit(rows, as_json, lambda r: table(r, COLUMNS, "VPS"))


@app.command("show")
def show(vps_id: Annotated[int, typer.Argument(help="the VPS id")], as_json: JsonOpt = False) -> None:
    """One VPS: its record, host, address and the ssh command (never a password)."""
    row = guarded(lambda: vps_reads.show_machine(factory(), vps_id, actor()))
    emit(row, as_json, lambda r: typer.echo("\n".join(f"{k}: {v}" for k, v in r.items())))


USAGE_COLUMNS = ["vps_id", "hostname", "plan", "host", "cpu_pct", "memory_pct", "io_pct", "coverage_pct",
                 "samples", "over"]


@app.command("usage")
def usage(
    days: Annotated[int, typer.Option("--days", help="the window, days back from now")] = 30,
    as_json: JsonOpt = False,
) -> None:
    """Fair use: each live VPS's average CPU, memory and IO over the window as a percent of
    its plan, from the sampled counters; rows above 50 % are flagged (RULES: fair use)."""
    cfg = settings()
    rows = guarded(lambda: vps_usage.report(factory(cfg), utcnow(), days=days,
                                            interval=timedelta(minutes=max(cfg.vps_usage_minutes, 1))))

    def render(r: list[dict[str, Any]]) -> None:
        table([{**x, "over": ",".join(x["over"]) or "-"} for x in r], USAGE_COLUMNS, "VPS usage")
        typer.echo(vps_usage.ops_report(r, days))

    emit(rows, as_json, render)


RECONCILE_COLUMNS = ["kind", "host", "machine", "service_id", "tag", "detail"]
EXIT_FOUND = 3  # like `provisioner nodes drift`


@app.command("reconcile")
def reconcile(as_json: JsonOpt = False) -> None:
    """Every VPS host's tagged machines against our records: orphans (a tagged machine with
    no live record), missing machines, drifted limits, states that differ. Read-only:
    nothing is changed or deleted, an untagged machine is never listed. Exit status: 0
    clean, 1 it could not run, 2 bad input, 3 something found."""
    report = guarded(lambda: wired(settings(), enqueue=lambda key: None).vps_reconcile(alert=False))

    def render(r: dict[str, Any]) -> None:
        hosts = ", ".join(f"{h['host']} ({h['machines']} machine(s))" for h in r["hosts"]) or "no VPS host"
        if r["clean"]:
            typer.echo(f"VPS reconcile: clean ({hosts})")
        else:
            table(r["findings"], RECONCILE_COLUMNS, f"VPS reconcile: {hosts}")

    emit(report, as_json, render)
    raise typer.Exit(0 if report["clean"] else EXIT_FOUND)


@app.command("resize")
def resize(
    service_id: Annotated[int, typer.Argument(help="the VPS service")],
    plan: Annotated[str, typer.Option("--plan", help="the VPS plan to move to (see `catalog list`)")],
    force_window: Annotated[str | None, typer.Option(
        "--force-window", metavar="REASON",
        help="Resize now, outside the maintenance window (audited).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move a VPS to another plan: its disk grows (never shrinks: a smaller disk is refused)
    and its limits change. The machine restarts, so outside the maintenance window
    (23:00-05:00 Europe/Ljubljana) the command exits 4 and changes nothing, unless
    --force-window gives a reason."""
    cfg = settings()

    def run() -> tuple[Any, dict[str, Any] | None]:
        p = wired(cfg)
        gate, data = vps_ops.request_resize(cfg, p.factory, service_id, plan, actor(),
                                            force_reason=force_window)
        if data is not None:
            p.runner.dispatch(data["order"])
        return gate, data

    gate, data = guarded(run)
    if data is None:
        err.print(f"[bold red]outside the maintenance window[/] ({gate.window}): service {service_id} "
                  f"not resized; it opens {gate.next_opening.isoformat()} (or --force-window REASON)")
        raise typer.Exit(EXIT_OUTSIDE_WINDOW)
    emit(data, as_json, lambda d: out.print(
        f"service {service_id}: {d['from']} -> {d['to']} queued as {d['step']}"
        + (" (forced outside the window)" if d["forced"] else "")))


@app.command("reinstall")
def reinstall(
    service_id: Annotated[int, typer.Argument(help="the VPS service")],
    as_json: JsonOpt = False,
) -> None:
    """Reinstall a VPS from its image: everything on its disk is gone; a new root password
    goes to the customer by a new one-time link, and the old one stops working."""

    def run() -> dict[str, Any]:
        cfg = settings()
        p = wired(cfg)
        data = vps_ops.request_reinstall(cfg, p.factory, service_id, actor())
        p.runner.dispatch(data["order"])
        return data

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(
        f"service {service_id}: VPS {d['vps_id']} reinstall queued as {d['step']}; the new access "
        f"data go out by {d['notify']}"))
