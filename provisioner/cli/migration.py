"""``provisioner migration``: the free migration's source (the old provider's access).

``source SERVICE FILE.json`` gives what the customer's intake form would (the same
checks; the file is read once, never echoed, and with ``--remove`` deleted once sealed),
``show SERVICE`` the state without secrets, ``wipe SERVICE`` ends it (audited).
``survey SERVICE`` measures the old provider read-only (the ``migration.survey`` step's
work, now), ``override SERVICE --reason`` lets an over-the-cap migration go on (audited).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, factory, guarded, out, settings, wired
from provisioner.domain.migration_survey import human
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.migration import sources, survey
from provisioner.pipeline.capabilities.migration.intake import from_json
from provisioner.pipeline.engine.ports import need
from provisioner.pipeline.outbox import KEY_FILE, Outbox
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


@app.command("survey")
def migration_survey(service_id: int, as_json: JsonOpt = False) -> None:
    """Measure the old provider of migration SERVICE now (read-only) against the caps."""

    def run() -> dict[str, Any]:
        cfg = settings()
        p = wired(cfg, enqueue=lambda key: None)
        box = Outbox(p.factory, p.adapters.mailer, cfg.mail_from, key_file=cfg.effective_key_dir / KEY_FILE)
        outcome = survey.survey(p.factory, cfg, need(p.adapters.old_provider, "the old provider adapter"),
                                service_id, actor=actor(), now=utcnow(), box=box)
        return {"service": service_id, "state": outcome.state, **outcome.report}

    data = guarded(run)

    def render(d: dict[str, Any]) -> None:
        out.print(f"migration service {service_id}: {d['state']} "
                  f"({'fits' if d['fits'] else 'does not fit'} the caps)")
        out.print(f"data: {human(d['total_bytes'])} of {human(d['cap_bytes'])}; projected copy "
                  f"{d['projected_seconds'] / 60:.1f} min of {d['cap_seconds'] / 60:.0f} min")
        for part in d["parts"]:
            out.print(f"  {part['name']}: {human(part['bytes'])}, {part['items']} item(s), "
                      f"{part['seconds']:.1f} s")
        for title, key in (("does not fit", "blocking"), ("not copied", "excluded"), ("warning", "warnings")):
            for line in d[key]:
                out.print(f"{title}: {line}", markup=False)

    emit(data, as_json, render)


@app.command("override")
def migration_override(
    service_id: int,
    reason: Annotated[str, typer.Option(help="Why the migration goes on over the cap (recorded).")],
    as_json: JsonOpt = False,
) -> None:
    """Let migration SERVICE go on although its survey found it over the cap (audited)."""
    data = guarded(lambda: survey.override(factory(), service_id, reason, actor=actor(), now=utcnow()))
    emit(data, as_json,
         lambda d: out.print(f"migration service {service_id}: override recorded ({d['state']})"))
