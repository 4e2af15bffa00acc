"""``provisioner hosts``: throwaway hosts on this machine (mounted by cli.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from provisioner.devstack.hosts import NspawnHosts
from provisioner.errors import InvalidInput, ProvisionerError

app = typer.Typer(help="Throwaway hosts on this machine", no_args_is_help=True)
_err = Console(stderr=True)


def _hosts() -> NspawnHosts:

    return NspawnHosts()


def _fail(exc: ProvisionerError) -> typer.Exit:
    _err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2 if isinstance(exc, InvalidInput) else 1)


@app.command()
def up(
    name: Annotated[str, typer.Argument(help="host name: [a-z][a-z0-9-]{0,30}")],
    node: Annotated[bool, typer.Option("--node", help="boot from the converged-node image")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the host as JSON")] = False,
) -> None:
    """Boot host NAME (idempotent) and wait until its sshd answers."""
    hosts = _hosts()
    try:
        if node:
            from provisioner.devstack.hosts.node import up_node

            with _err.status(f"booting {name} from the converged-node image"):
                info = up_node(hosts, name)
        else:
            with _err.status(f"booting {name}"):
                info = hosts.up(name)
    except ProvisionerError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(info.to_dict()))
    else:
        _err.print(f"{info.name} is up at {info.address} "
                   f"(ssh -i {info.ssh_key} root@{info.address})")


@app.command()
def down(name: Annotated[str, typer.Argument(help="host name")]) -> None:
    """Throw host NAME away: processes, mounts, links, files. No error if it is gone."""
    try:
        _hosts().down(name)
    except ProvisionerError as exc:
        raise _fail(exc) from exc


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable JSON only")] = False,
) -> None:
    """The throwaway hosts with their address and state."""
    try:
        hosts = _hosts().list()
    except ProvisionerError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hosts], indent=2))
        return
    table = Table("name", "address", "state", "pid", "image")
    for h in hosts:
        table.add_row(h.name, h.address, h.state, str(h.pid), h.image)
    Console().print(table)


if __name__ == "__main__":
    app()
