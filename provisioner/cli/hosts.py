"""``provisioner hosts``: throwaway hosts on this machine (devstack)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from provisioner.cli.common import JsonOpt, err, guarded, out
from provisioner.devstack.hosts import HostInfo, NspawnHosts
from provisioner.devstack.hosts.node import up_node

app = typer.Typer(help="Throwaway hosts on this machine", no_args_is_help=True)


@app.command()
def up(
    name: Annotated[str, typer.Argument(help="host name: [a-z][a-z0-9-]{0,30}")],
    node: Annotated[bool, typer.Option("--node", help="boot from the converged-node image")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the host as JSON")] = False,
) -> None:
    """Boot host NAME (idempotent) and wait until its sshd answers."""

    def run() -> HostInfo:
        hosts = NspawnHosts()
        if node:
            with err.status(f"booting {name} from the converged-node image"):
                return up_node(hosts, name)
        with err.status(f"booting {name}"):
            return hosts.up(name)

    info = guarded(run)
    if as_json:
        typer.echo(json.dumps(info.to_dict()))
    else:
        err.print(f"{info.name} is up at {info.address} "
                  f"(ssh -i {info.ssh_key} root@{info.address})")


@app.command()
def down(name: Annotated[str, typer.Argument(help="host name")]) -> None:
    """Throw host NAME away: processes, mounts, links, files. No error if it is gone."""
    guarded(lambda: NspawnHosts().down(name))


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """The throwaway hosts with their address and state."""
    hosts = guarded(lambda: NspawnHosts().list())
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hosts], indent=2))
        return
    table = Table("name", "address", "state", "pid", "image")
    for h in hosts:
        table.add_row(h.name, h.address, h.state, str(h.pid), h.image)
    out.print(table)
