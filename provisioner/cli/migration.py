"""``provisioner migration``: the free migration's source (the old provider's access).

``source SERVICE FILE.json`` gives what the customer's intake form would (the same
checks; the file is read once, never echoed, and with ``--remove`` deleted once sealed),
``show SERVICE`` the state without secrets (with ``--follow`` a progress bar over the
copy until the migration ends), ``wipe SERVICE`` ends it (audited).
``survey SERVICE`` measures the old provider read-only (the ``migration.survey`` step's
work, now), ``override SERVICE --reason`` lets an over-the-cap migration go on (audited).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

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


FOLLOW_UNTIL = ("wiped", "over_cap", "source_refused", "awaiting_source")


def copied_bytes(d: dict[str, Any]) -> int:
    """What the copy brought so far: the finished parts, plus the running part's progress."""
    parts = d.get("parts") or {}
    done = sum(int(p.get("bytes") or 0) for p in parts.values())
    live = d.get("progress") or {}
    if live.get("phase") == "copy" and live.get("part") not in parts:
        done += int(live.get("bytes") or 0)
    return done


def follow_migration(service_id: int, timeout: float, *, console: Any = None,
                     quiet: bool = False) -> dict[str, Any]:
    """A Rich progress bar over the copy (bytes of what the survey measured) until the
    migration ends (wiped), stops, or ``timeout``; none without a terminal or with ``quiet``."""
    console = console or out
    f = factory()
    deadline = time.monotonic() + timeout
    d = sources.show(f, service_id, utcnow())
    total = int((d.get("survey") or {}).get("total_bytes") or settings().migration_cap_bytes) or 1
    with Progress(TextColumn("[bold]{task.fields[domain]}"), BarColumn(), DownloadColumn(),
                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                  disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task("copy", total=total, domain=d["domain"], note="")
        while True:
            d = sources.show(f, service_id, utcnow())
            live = d.get("progress") or {}
            note = f"{d['state']}" + (f" · {live.get('part')}" if live.get("part") else "") \
                + f" · {d['copy_seconds']:.0f} s"
            bar.update(task, completed=min(copied_bytes(d), total), note=note)
            if d["state"] in FOLLOW_UNTIL or time.monotonic() > deadline:
                return d
            time.sleep(1.0)


@app.command("show")
def migration_show(
    service_id: int,
    follow: Annotated[bool, typer.Option("--follow", help="Follow the copy with a progress bar "
                                         "until the migration ends.")] = False,
    timeout: Annotated[float, typer.Option(help="With --follow: stop following after this many "
                                           "seconds.")] = 7200.0,
    as_json: JsonOpt = False,
) -> None:
    """The migration's state, its source (no secret), its link, whether it was used, and
    the copy's progress, reconciliation and cut-over."""
    if follow:
        data = guarded(lambda: follow_migration(service_id, timeout, quiet=as_json))
    else:
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
        if d.get("copy_state"):
            out.print(f"copy: {d['copy_state']}, {human(copied_bytes(d))} in {d['copy_seconds']:.0f} s")
            for part, p in (d.get("parts") or {}).items():
                out.print(f"  {part}: {p['state']}, {human(int(p['bytes'] or 0))}, {p['items']} items"
                          + (f" ({p['error']})" if p.get("error") else ""))
            live = d.get("progress") or {}
            if live and d["state"] == "copying":
                out.print(f"  now: {live.get('part')} {human(int(live.get('bytes') or 0))}")
        if d.get("verified") is not None:
            recon = d.get("reconciliation") or {}
            out.print(f"verified: {d['verified']}")
            for diff in recon.get("differences", []):
                out.print(f"  differs: {diff}")
        if d.get("cutover_state"):
            out.print(f"cut-over: {d['cutover_state']}")
            for r in (d.get("cutover") or {}).get("set", []):
                out.print(f"  {r['name']} {r['type']} {r['value']}")

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
