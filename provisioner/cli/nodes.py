"""``provisioner nodes``: the shared-hosting nodes accounts are placed on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import select

from provisioner.cli.common import JsonOpt, actor, err, factory, guarded, out, settings
from provisioner.pipeline.usecases import fleet
from provisioner.pipeline.usecases.maintenance import EXIT_OUTSIDE_WINDOW, check_window, converge_node
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingNode, add_node, node_loads
from provisioner.timeutil import utcnow

app = typer.Typer(help="Shared-hosting nodes (placement targets)", no_args_is_help=True)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="node name: [a-z][a-z0-9-]{0,62}")],
    address: Annotated[str, typer.Option("--address", help="host name or IP the node is reached at")],
    capacity_accounts: Annotated[int, typer.Option("--capacity-accounts", help="most accounts")] = 500,
    capacity_disk_mb: Annotated[int, typer.Option("--capacity-disk-mb", help="disk MB")] = 1_000_000,
    ssh_user: Annotated[str, typer.Option("--ssh-user")] = "root",
    ssh_port: Annotated[int, typer.Option("--ssh-port")] = 22,
    throwaway: Annotated[bool, typer.Option(
        "--throwaway", help="Only for a throwaway host of this machine from `provisioner hosts up`; "
        "its SSH host key is not checked.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the node as JSON")] = False,
    country: Annotated[str | None, typer.Option(
        "--country", help="ISO 3166 country its data sit in (data residency); default: the "
        "setting node_country_default for a new node")] = None,
) -> None:
    """Register node NAME (or update its address and capacity)."""

    def run() -> tuple[dict[str, Any], bool]:
        cfg = settings()
        with transaction(factory(cfg)) as s:
            exists = s.execute(select(HostingNode.id).where(HostingNode.name == name)).first()
            where = country if country is not None or exists else cfg.node_country_default
            node, created = add_node(s, name, address, capacity_accounts=capacity_accounts,
                                     capacity_disk_mb=capacity_disk_mb, ssh_user=ssh_user,
                                     ssh_port=ssh_port, throwaway=throwaway, country=where)
            return _row(node, 0, 0), created

    row, created = guarded(run)
    if as_json:
        typer.echo(json.dumps({**row, "created": created}))
    else:
        err.print(f"node {name} {'added' if created else 'updated'} ({address})")


def _row(node: HostingNode, accounts: int, disk_mb: int) -> dict[str, Any]:
    return {"name": node.name, "address": node.address, "ssh_user": node.ssh_user, "ssh_port": node.ssh_port,
            "state": node.state, "accounts": accounts, "capacity_accounts": node.capacity_accounts,
            "disk_mb": disk_mb, "capacity_disk_mb": node.capacity_disk_mb, "country": node.country}


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every registered node with its load."""

    def run() -> list[dict[str, Any]]:
        with transaction(factory()) as s:
            return [_row(node, load.accounts, load.disk_mb) for node, load in node_loads(s)]

    rows = guarded(run)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("name", "address", "state", "accounts", "disk MB")
    for r in rows:
        table.add_row(r["name"], r["address"], r["state"], f"{r['accounts']}/{r['capacity_accounts']}",
                      f"{r['disk_mb']}/{r['capacity_disk_mb']}")
    out.print(table)


@app.command("converge")
def converge(
    name: Annotated[str, typer.Argument(help="the node to converge (hosting_node playbook)")],
    force_window: Annotated[str | None, typer.Option(
        "--force-window", metavar="REASON",
        help="Converge now, outside the maintenance window (audited).")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Only check the window: exit 0 when the converge may run, 4 when not.")] = False,
) -> None:
    """Converge node NAME. It restarts the node's daemons, so it runs only inside the
    maintenance window (23:00-05:00 Europe/Ljubljana) unless --force-window gives a reason;
    outside it the command exits with status 4 and changes nothing."""
    cfg = settings()
    if check:
        gate = guarded(lambda: check_window(cfg, utcnow(), force_window))
        typer.echo(json.dumps(gate.as_dict()))
        raise typer.Exit(0 if gate.allowed else EXIT_OUTSIDE_WINDOW)
    gate, result = guarded(lambda: converge_node(cfg, factory(cfg), name, force_reason=force_window,
                                                 actor=actor()))
    if result is None:
        err.print(f"[bold red]outside the maintenance window[/] ({gate.window}): node {name} not "
                  f"converged; it opens {gate.next_opening.isoformat()} (or --force-window REASON)")
        raise typer.Exit(EXIT_OUTSIDE_WINDOW)
    if not result.ok:
        err.print(f"[bold red]converge of {name} failed[/]: {result.errors or result.status}")
        raise typer.Exit(1)
    out.print(f"node {name} converged ({result.changed} change(s))")


JunitOpt = Annotated[Path | None, typer.Option("--junit", metavar="FILE",
                                               help="Write a JUnit XML report, one test case per node.")]
NodesArg = Annotated[list[str] | None, typer.Argument(help="only these nodes (default: every active node)")]


def _fleet_report(report: fleet.FleetReport, as_json: bool, junit: Path | None) -> None:
    if junit is not None:
        junit.write_text(report.junit(), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        table = Table(title=f"nodes {report.mode}")
        for column in ("node", "batch", "status", "changes", "error"):
            table.add_column(column)
        for o in report.outcomes:
            table.add_row(o.node, str(o.batch), o.status, "\n".join(o.changes[:5]), o.error[:120])
        out.print(table)
        if report.stopped:
            err.print(f"[bold]stopped:[/] {report.stopped}")
    raise typer.Exit(report.exit_code)


@app.command("rollout")
def rollout(
    nodes: NodesArg = None,
    check: Annotated[bool, typer.Option("--check", help="Only report drift (Ansible check mode).")] = False,
    serial: Annotated[int, typer.Option("--serial", min=1, help="nodes per batch after the canary")] = 1,
    canary: Annotated[int, typer.Option("--canary", min=0, help="nodes in the first batch")] = 1,
    max_fail: Annotated[int, typer.Option("--max-fail", min=0, help="failures tolerated")] = 0,
    force_window: Annotated[str | None, typer.Option(
        "--force-window", metavar="REASON",
        help="Converge outside the maintenance window (audited).")] = None,
    junit: JunitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Converge the nodes in batches, the canary first; stop at the first failure past
    --max-fail, leaving the rest untouched. Exit status: 0 done, 1 a node failed, 2 bad
    input, 3 drift found (--check), 4 refused outside the maintenance window."""
    cfg = settings()
    names = list(nodes or [])
    if check:
        report = guarded(lambda: fleet.drift(cfg, factory(cfg), names=names, serial=serial))
    else:
        report = guarded(lambda: fleet.rollout(cfg, factory(cfg), actor=actor(), names=names,
                                               serial=serial, canary=canary, max_fail=max_fail,
                                               force_reason=force_window))
    _fleet_report(report, as_json, junit)


@app.command("drift")
def drift(nodes: NodesArg = None, junit: JunitOpt = None, as_json: JsonOpt = False) -> None:
    """What a rollout would change on each node, changing nothing (for a nightly job).
    Exit status: 0 no drift, 1 a node could not be checked, 3 drift found."""
    cfg = settings()
    names = list(nodes or [])
    _fleet_report(guarded(lambda: fleet.drift(cfg, factory(cfg), names=names)), as_json, junit)
