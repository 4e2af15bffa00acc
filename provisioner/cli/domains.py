"""``provisioner domains withdraw SERVICE [--now DATE] [--check]``: a .si registration
never activated (no name servers), withdrawn within the brand's window: deleted at the
registry (which refunds it), the service cancelled and the refund flagged (issue 17,
item 4; `provisioner.pipeline.capabilities.domains.withdraw_registration`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, RequestDayOpt, actor, emit, guarded, out, parse_day, wired
from provisioner.pipeline.capabilities import domains
from provisioner.pipeline.engine.ports import need

app = typer.Typer(help="Domains at the registry.")


@app.command("withdraw")
def withdraw_cmd(
    service: int,
    check: Annotated[bool, typer.Option("--check", help="Only say whether it may be "
                                        "withdrawn; touch nothing.")] = False,
    now: RequestDayOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw a never-activated .si registration with a refund (refused with the reason
    when it has name servers, is past the window or is not a .si)."""
    day = guarded(lambda: parse_day(now))

    def run() -> dict[str, Any]:
        p = wired()
        client = need(p.adapters.registry, "a domain registry (settings registry_*)")
        try:
            if check:
                verdict = domains.withdrawable(p.factory, client, service, day)
                return {"service": service, "allowed": verdict.allowed, "reason": verdict.reason,
                        "last_day": verdict.last_day.isoformat() if verdict.last_day else None}
            return domains.withdraw_registration(p.factory, client, service, day, actor())
        finally:
            client.close()

    data = guarded(run)

    def render(d: dict[str, Any]) -> None:
        if "allowed" in d:
            out.print(f"service {d['service']}: {'allowed' if d['allowed'] else 'refused'}: "
                      f"{d['reason']}")
        else:
            out.print(f"service {d['service']} ({d['name']}): "
                      f"{'withdrawn, refund due' if d['withdrawn'] else d.get('note', '')}")

    emit(data, as_json, render)
