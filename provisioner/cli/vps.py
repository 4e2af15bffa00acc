"""``provisioner vps``: the VPS hosts and the machines on them (issue 14)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, factory, guarded, table
from provisioner.pipeline.usecases import vps as vps_reads
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
