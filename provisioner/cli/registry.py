"""``provisioner registry-sandbox``: the sandbox EPP registry (devstack).

    provisioner registry-sandbox [--data-dir DIR] [--host H] [--port P]   # serve (foreground)
    provisioner registry-sandbox faults --set '{"fail": {"domain:create": [2400, 1]}}'
    provisioner registry-sandbox faults --clear
    provisioner registry-sandbox domains --json

Defaults come from the settings (``registry_host``, ``registry_port``, ``registry_login``,
``registry_password``; state in ``data_dir/registry``), so the product's embedded default
talks to it with nothing configured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from provisioner.cli.common import JsonOpt, err, out, settings
from provisioner.devstack.registry import OTHER_LOGIN, OTHER_PASSWORD, make_server
from provisioner.devstack.registry.faults import Faults
from provisioner.devstack.registry.store import Store

app = typer.Typer(help="The sandbox EPP registry (tests and demo).")

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="state, TLS files, faults.json")]


def _data_dir(data_dir: Path | None) -> Path:
    return data_dir or settings().data_dir / "registry"


@app.callback(invoke_without_command=True)
def registry_sandbox(
    ctx: typer.Context,
    data_dir: DataDirOpt = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
) -> None:
    """Run the sandbox registry in the foreground (Ctrl-C stops it)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = settings()
    directory = _data_dir(data_dir)
    server, ca_file = make_server(
        directory, host or cfg.registry_host, cfg.registry_port if port is None else port,
        {cfg.registry_login: cfg.registry_password, OTHER_LOGIN: OTHER_PASSWORD},
    )
    out.print(json.dumps({"host": server.server_address[0], "port": server.server_address[1],
                          "ca_file": str(ca_file), "login": cfg.registry_login,
                          "data_dir": str(directory)}))
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def faults(
    data_dir: DataDirOpt = None,
    set_: Annotated[str | None, typer.Option("--set", help="JSON object merged into faults.json")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove every fault")] = False,
) -> None:
    """Show or change the fault switches of a (running) sandbox."""
    switches = Faults(_data_dir(data_dir) / "faults.json")
    if clear:
        switches.clear()
    if set_:
        try:
            changes: Any = json.loads(set_)
        except ValueError as exc:
            err.print(f"[red]error:[/red] --set is not JSON: {exc}")
            raise typer.Exit(2) from None
        if not isinstance(changes, dict):
            err.print("[red]error:[/red] --set must be a JSON object")
            raise typer.Exit(2)
        switches.set(**changes)
    print(json.dumps(switches.snapshot()))


@app.command()
def domains(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """The domains the sandbox holds."""
    store = Store(_data_dir(data_dir) / "registry.sqlite")
    try:
        rows = store.all("SELECT name, cl_id, state, ex_date, ns, statuses FROM domains ORDER BY name")
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "sponsor", "state", "expires", "name servers", "statuses")
    for r in rows:
        table.add_row(r["name"], r["cl_id"], r["state"], r["ex_date"][:10], ", ".join(r["ns"]),
                      ", ".join(r["statuses"]))
    out.print(table)
