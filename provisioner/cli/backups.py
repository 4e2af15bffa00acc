"""``provisioner backups``: the backup hosts, each node's restic repository on one, and
the accounts' snapshots (list, restore onto the same or another node), and the jobs the
beat runs (nightly, check, drill) by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from provisioner.cli.common import JsonOpt, emit, err, factory, guarded, out, table, wired
from provisioner.domain.backups import validate_check_subset, validate_snapshot_id
from provisioner.domain.policy import get_brand
from provisioner.pipeline.usecases import backups as usecase
from provisioner.store import backups as store
from provisioner.store.db import transaction
from provisioner.timeutil import utcnow

app = typer.Typer(help="Backups in restic repositories on a separate backup host", no_args_is_help=True)
host_app = typer.Typer(help="Backup hosts (a NAS or a server; one SFTP account per node)",
                       no_args_is_help=True)
app.add_typer(host_app, name="host")


def _progress(as_json: bool) -> Progress:
    """Rich progress on a terminal only: no bars for CI, scripts or ``--json``."""
    return Progress(console=err, transient=True, disable=as_json or not err.is_terminal)


@host_app.command("add")
def host_add(
    name: Annotated[str, typer.Argument(help="backup host name: [a-z][a-z0-9-]{0,62}")],
    address: Annotated[str, typer.Option("--address", help="host name or IP nodes reach it at")],
    known_hosts: Annotated[Path, typer.Option(
        "--known-hosts", help="file with the host's SSH host key lines (ssh-keyscan output, "
        "checked by every node; never trusted on first use)")],
    port: Annotated[int, typer.Option("--port", help="its SSH port")] = 22,
    root: Annotated[str, typer.Option("--root", help="where the repositories live on it")] = "/srv/restic",
    country: Annotated[str | None, typer.Option("--country", help="ISO 3166 alpha-2 (residency)")] = None,
    throwaway: Annotated[bool, typer.Option(
        "--throwaway", help="Only for a throwaway host of this machine (`provisioner hosts up`).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register backup host NAME (or update it)."""

    def run() -> dict[str, Any]:
        text = store.read_known_hosts_file(known_hosts)
        with transaction(factory()) as s:
            host, created = store.add_host(s, name, address, text, port=port, root=root,
                                           throwaway=throwaway, country=country, now=utcnow())
            return {"name": host.name, "address": host.address, "port": host.ssh_port,
                    "root": host.root, "country": host.country, "created": created}

    row = guarded(run)
    emit(row, as_json, lambda r: err.print(f"backup host {r['name']} {'added' if r['created'] else 'updated'}"
                                           f" ({r['address']})"))


@app.command("enroll")
def enroll(
    node: Annotated[str, typer.Argument(help="the hosting node")],
    host: Annotated[str, typer.Option("--host", help="the backup host (`backups host add`)")],
    as_json: JsonOpt = False,
) -> None:
    """Give NODE a restic repository on HOST: a new password (sealed here, 0600 on the
    node), the node's converge with its backup settings, the node's own SFTP key let into
    its chrooted account on HOST, ``restic init``. Safe to run again."""
    p = wired(enqueue=lambda _k: None)
    with _progress(as_json) as progress:
        progress.add_task(f"enrolling {node} on {host}", total=None)
        data = guarded(lambda: usecase.enroll_node(p.factory, p.adapters.backups, p.backup_fernet(), node,
                                                   host, get_brand(p.settings.brand), utcnow(),
                                                   p.settings.maintenance_timezone))
    emit(data, as_json, lambda d: out.print(f"{d['node']} backs up to {d['repository']}"
                                            f"{' (created)' if d['initialised'] else ''}"))


@app.command("status")
def status_cmd(as_json: JsonOpt = False) -> None:
    """The backup hosts, the repositories, and the last outcome of each job per node."""
    p = wired(enqueue=lambda _k: None)
    data = guarded(lambda: usecase.status(p.factory))

    def render(d: dict[str, Any]) -> None:
        table(d["hosts"], ["name", "address", "port", "root", "country"], title="backup hosts")
        table(d["repositories"], ["node", "host", "user", "repository"], title="repositories")
        table(d["checks"], ["node", "kind", "ok", "last_at", "last_ok_at", "failing_since"], title="jobs")

    emit(data, as_json, render)


@app.command("list")
def list_cmd(
    service: Annotated[int, typer.Argument(help="the service id")],
    as_json: JsonOpt = False,
) -> None:
    """The service's snapshots (id, date, tags, size), oldest first."""
    p = wired(enqueue=lambda _k: None)
    with _progress(as_json) as progress:
        progress.add_task(f"reading the snapshots of service {service}", total=None)
        records = guarded(lambda: usecase.list_backups(p.factory, p.adapters.backups, service))
    data = [r.as_dict() for r in records]
    emit(data, as_json, lambda rows: table(
        [{**r, "tags": ",".join(r["tags"])} for r in rows],
        ["short_id", "created_at", "tags", "size", "hostname"], title=f"snapshots of service {service}"))


@app.command("restore")
def restore_cmd(
    service: Annotated[int, typer.Argument(help="the service id")],
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="snapshot id (hex); default "
                                                 "the newest")] = None,
    to: Annotated[str | None, typer.Option("--to", help="restore onto this node (the account "
                                           "must exist there); default its own node")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore the service's account (files, mail, database) from a snapshot."""
    if snapshot is not None:
        guarded(lambda: validate_snapshot_id(snapshot))
    p = wired(enqueue=lambda _k: None)
    with _progress(as_json) as progress:
        task = progress.add_task(f"restore of service {service}", total=None)

        def say(msg: str) -> None:
            progress.update(task, description=msg)

        data = guarded(lambda: usecase.restore_service(p.factory, p.adapters.backups, p.backup_fernet(),
                                                       service, snapshot, to, progress=say))
    emit(data, as_json, lambda d: out.print(
        f"restored {d['snapshot']['short_id']} of {d['account']} onto {d['node']}: "
        f"{', '.join(d['restored'])} ({d['verified_files']} files verified)"))


@app.command("nightly")
def nightly_cmd(
    force: Annotated[bool, typer.Option("--force", help="run now, outside the maintenance window "
                                        "too, and again for nodes done tonight")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Each node's nightly backup run (the beat runs it hourly inside the window)."""
    p = wired(enqueue=lambda _k: None)
    data = guarded(lambda: p.backups_nightly(force=force))
    emit(data, as_json, lambda d: out.print(d))
    if data["failed"]:
        raise typer.Exit(1)


@app.command("check")
def check_cmd(
    subset: Annotated[str | None, typer.Option("--subset", help="restic check --read-data-subset: "
                                               "n/t or p% (default: the setting)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """``restic check --read-data-subset`` of every repository (weekly in the beat)."""
    if subset is not None:
        guarded(lambda: validate_check_subset(subset))
    p = wired(enqueue=lambda _k: None)
    data = guarded(lambda: p.backups_check(subset=subset))
    emit(data, as_json, lambda d: out.print(d))
    if data["failed"]:
        raise typer.Exit(1)


@app.command("drill")
def drill_cmd(as_json: JsonOpt = False) -> None:
    """A restore drill per repository: a random account restored to a scratch directory
    and compared with its snapshot's file list (weekly in the beat)."""
    p = wired(enqueue=lambda _k: None)
    data = guarded(lambda: p.backups_drill())
    emit(data, as_json, lambda d: out.print(d))
    if data["failed"]:
        raise typer.Exit(1)

