"""``provisioner withdraw SERVICE [--dry-run]`` and ``provisioner refunds list``: a
customer's withdrawal from a new order, refunded by the brand's policy with a credit
note (issue 17, item 3; `provisioner.pipeline.usecases.withdrawal`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provisioner.cli.common import (
    JsonOpt,
    RequestDayOpt,
    actor,
    emit,
    factory,
    guarded,
    out,
    parse_day,
    table,
    wired,
)
from provisioner.pipeline.usecases import withdrawal

app = typer.Typer()  # `withdraw` sits at the root
refunds_app = typer.Typer(help="Refunds of withdrawals: card refunds and ops tasks.")


@app.command("withdraw")
def withdraw_cmd(
    service: int,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the refund it comes to; "
                                          "touch nothing.")] = False,
    now: RequestDayOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw from a service: refund per the brand's policy, a credit note against its
    invoice, the service terminated through the staged deletion. Refused (exit 2) when
    the policy does not allow it or it was done before."""
    day = guarded(lambda: parse_day(now))

    def run() -> dict[str, Any]:
        if dry_run:
            return withdrawal.withdraw(factory(), service, today=day, actor=actor(), dry_run=True)
        p = wired()
        data = withdrawal.withdraw(p.factory, service, today=day, actor=actor())
        data["queued"] = len(p.runner.dispatch(int(data["order"])))
        return data

    data = guarded(run)

    def render(d: dict[str, Any]) -> None:
        verdict = "allowed" if d["allowed"] else "refused"
        out.print(f"service {d['service']} ({d['name']}, {d['brand']}): {verdict}: {d['reason']}")
        out.print(f"paid {d['paid']} EUR, fee {d['fee']} EUR, migration {d['migration_charge']} EUR "
                  f"-> refund {d['refund']} EUR by {d['refund_method']}")
        if "credit_note" in d:
            out.print(f"credit note {d['credit_note']} issued against invoice {d['invoice']}; "
                      "the refund and the staged deletion are queued")

    emit(data, as_json, render)


@refunds_app.command("list")
def refunds_list(
    open_only: Annotated[bool, typer.Option("--open", help="Only refunds still to be made "
                                            "(pending, or ops tasks).")] = False,
    as_json: JsonOpt = False,
) -> None:
    data = guarded(lambda: withdrawal.list_refunds(factory(), open_only))
    emit(data, as_json, lambda d: table(d, ["id", "credit_note", "service", "method", "amount",
                                            "state", "provider_ref", "payer_iban", "detail"]))
