"""``provisioner migration``: the free migration's source (the old provider's access).

``source SERVICE FILE.json`` gives what the customer's intake form would (the same
checks; the file is read once, never echoed, and with ``--remove`` deleted once sealed),
``show SERVICE`` the state without secrets, ``wipe SERVICE`` ends it (audited).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, factory, guarded, out, settings
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.migration import sources
from provisioner.pipeline.capabilities.migration.intake import from_json
from provisioner.timeutil import utcnow

app = typer.Typer(help="Free migrations from the customer's old provider.", no_args_is_help=True)
MAX_FILE_BYTES = 256 * 1024


def _read(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # the position only: the file's text (passwords) is never echoed
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidInput(f"{path} is not UTF-8 JSON{where}") from None
    return from_json(data)


@app.command("source")
def migration_source(
    service_id: int,
    file: Path,
    remove: Annotated[bool, typer.Option("--remove", help="Delete FILE once sealed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Seal the old provider's access for migration SERVICE from FILE.json."""

    def run() -> dict[str, Any]:
        cfg = settings()
        summary = sources.record_source(factory(cfg), cfg, service_id, _read(file), actor(), utcnow())
        if remove:
            file.unlink(missing_ok=True)
        return summary

    data = guarded(run)
    emit(
        data,
        as_json,
        lambda d: out.print(
            f"migration service {service_id}: source sealed ("
            f"{', '.join(k for k in ('files', 'database') if k in d)}"
            f"{', ' if d.get('mailboxes') else ''}{len(d.get('mailboxes', []))} mailbox(es))"
            + "".join(f"\nwarning: {w}" for w in d.get("warnings", []))
        ),
    )


@app.command("show")
def migration_show(service_id: int, as_json: JsonOpt = False) -> None:
    """The migration's state, its source (no secret), its link, and whether it was used."""
    data = guarded(lambda: sources.show(factory(), service_id, utcnow()))

    def render(d: dict[str, Any]) -> None:
        for key in (
            "service",
            "domain",
            "hosting_service",
            "state",
            "charge_gross",
            "sealed",
            "source_at",
            "source_by",
            "wiped_at",
            "wipe_reason",
            "migration_used_at",
        ):
            out.print(f"{key}: {d[key]}")
        link = d["link"]
        out.print(f"link: {'none' if link is None else link['state'] + ' until ' + link['expires_at']}")
        out.print(f"source: {json.dumps(d['source'], ensure_ascii=False)}")

    emit(data, as_json, render)


@app.command("wipe")
def migration_wipe(
    service_id: int,
    reason: Annotated[str, typer.Option(help="done, failed, abandoned or ops.")] = "ops",
    as_json: JsonOpt = False,
) -> None:
    """Blank the sealed source of migration SERVICE now (audited)."""
    data = guarded(
        lambda: {
            "wiped": sources.wipe_source(factory(), service_id, reason=reason, actor=actor(), now=utcnow())
        }
    )
    emit(
        data,
        as_json,
        lambda d: out.print(
            f"migration service {service_id}: {'wiped' if d['wiped'] else 'nothing left to wipe'}"
        ),
    )
