"""``provisioner nodes``: the shared-hosting nodes accounts are placed on."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from provisioner.cli.common import JsonOpt, err, factory, guarded, out
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingNode, add_node, node_loads

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
) -> None:
    """Register node NAME (or update its address and capacity)."""

    def run() -> tuple[dict[str, Any], bool]:
        with transaction(factory()) as s:
            node, created = add_node(s, name, address, capacity_accounts=capacity_accounts,
                                     capacity_disk_mb=capacity_disk_mb, ssh_user=ssh_user,
                                     ssh_port=ssh_port, throwaway=throwaway)
            return _row(node, 0, 0), created

    row, created = guarded(run)
    if as_json:
        typer.echo(json.dumps({**row, "created": created}))
    else:
        err.print(f"node {name} {'added' if created else 'updated'} ({address})")


def _row(node: HostingNode, accounts: int, disk_mb: int) -> dict[str, Any]:
    return {"name": node.name, "address": node.address, "ssh_user": node.ssh_user, "ssh_port": node.ssh_port,
            "state": node.state, "accounts": accounts, "capacity_accounts": node.capacity_accounts,
            "disk_mb": disk_mb, "capacity_disk_mb": node.capacity_disk_mb}


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
