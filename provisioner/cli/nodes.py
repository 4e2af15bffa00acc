"""``provisioner nodes``: the shared-hosting nodes accounts are placed on (mounted by cli.py)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from provisioner.errors import InvalidInput, ProvisionerError

app = typer.Typer(help="Shared-hosting nodes (placement targets)", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)


def _factory() -> Any:
    from provisioner.cli import factory

    return factory()


def _fail(exc: ProvisionerError) -> typer.Exit:
    _err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2 if isinstance(exc, InvalidInput) else 1)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="node name: [a-z][a-z0-9-]{0,62}")],
    address: Annotated[str, typer.Option("--address", help="host name or IP the node is reached at")],
    capacity_accounts: Annotated[int, typer.Option("--capacity-accounts", help="most accounts")] = 500,
    capacity_disk_mb: Annotated[int, typer.Option("--capacity-disk-mb", help="disk MB")] = 1_000_000,
    ssh_user: Annotated[str, typer.Option("--ssh-user")] = "root",
    ssh_port: Annotated[int, typer.Option("--ssh-port")] = 22,
    as_json: Annotated[bool, typer.Option("--json", help="print the node as JSON")] = False,
) -> None:
    """Register node NAME (or update its address and capacity)."""
    from provisioner.store.db import transaction
    from provisioner.store.hosting import add_node

    try:
        with transaction(_factory()) as s:
            node, created = add_node(s, name, address, capacity_accounts=capacity_accounts,
                                     capacity_disk_mb=capacity_disk_mb, ssh_user=ssh_user, ssh_port=ssh_port)
            row = _row(node, 0, 0)
    except ProvisionerError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps({**row, "created": created}))
    else:
        _err.print(f"node {name} {'added' if created else 'updated'} ({address})")


def _row(node: Any, accounts: int, disk_mb: int) -> dict[str, Any]:
    return {"name": node.name, "address": node.address, "ssh_user": node.ssh_user, "ssh_port": node.ssh_port,
            "state": node.state, "accounts": accounts, "capacity_accounts": node.capacity_accounts,
            "disk_mb": disk_mb, "capacity_disk_mb": node.capacity_disk_mb}


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="JSON only")] = False) -> None:
    """Every registered node with its load."""
    from provisioner.store.db import transaction
    from provisioner.store.hosting import node_loads

    with transaction(_factory()) as s:
        rows = [_row(node, load.accounts, load.disk_mb) for node, load in node_loads(s)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("name", "address", "state", "accounts", "disk MB")
    for r in rows:
        table.add_row(r["name"], r["address"], r["state"], f"{r['accounts']}/{r['capacity_accounts']}",
                      f"{r['disk_mb']}/{r['capacity_disk_mb']}")
    _out.print(table)
