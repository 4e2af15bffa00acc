"""Orders and money: ``provisioner order | proforma | payment | payments | bank | invoices |
discount``. A payment that settles a proforma queues its order's plan for the workers."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, factory, guarded, out, table, wired
from provisioner.domain.billing import DiscountCode
from provisioner.domain.money import parse_amount
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases import ops, reads
from provisioner.pipeline.usecases.payments import record_manual_payment

order_app = typer.Typer(help="Orders.", no_args_is_help=True)
proforma_app = typer.Typer(help="Proformas (predračuni).", no_args_is_help=True)
payment_app = typer.Typer(help="Record a payment by hand.", no_args_is_help=True)
payments_app = typer.Typer(help="Payments received.", no_args_is_help=True)
bank_app = typer.Typer(help="Bank statements (ISO 20022 camt.053).", no_args_is_help=True)
invoices_app = typer.Typer(help="Invoices (računi).", no_args_is_help=True)
discount_app = typer.Typer(help="Discount codes.", no_args_is_help=True)


def _print_proforma(p: dict[str, Any]) -> None:
    issuer = p.get("issuer") or {}
    table(p["lines"], ["position", "description", "unit_gross", "discount", "net", "vat",
                       "gross"], f"Proforma {p['number']} ({p['state']})")
    if issuer:
        out.print(f"issued by {issuer['name']}, {issuer['address']}, VAT ID {issuer['vat_id']}")
    out.print(f"net {p['net']} EUR + VAT 22 % {p['vat']} EUR = [bold]{p['gross']} EUR[/]")
    out.print(f"due {p['due_date']}, payment reference [bold]{p['reference']}[/]"
              + (f", pay to {issuer['recipient']}, IBAN {issuer['iban']}" if issuer else ""))
    if p.get("paper_invoice"):
        out.print("the invoice will be posted (paper invoice)")


# -- orders, proformas ---------------------------------------------------------------------
@order_app.command("create")
def order_create(
    customer: Annotated[int, typer.Option(help="Customer id.")],
    item: Annotated[list[str], typer.Option(help="hosting:giga5:example.si, "
                                            "domain:example.si:1y, tls:example.si, ...; "
                                            "paper-invoice: the invoice is posted too")],
    discount: Annotated[str | None, typer.Option(help="One discount code.")] = None,
    brand: Annotated[str | None, typer.Option(help="Brand (fcb, iserver); default and only "
                                              "allowed value: the customer's.")] = None,
    paper_invoice: Annotated[bool, typer.Option("--paper-invoice", help="Post the invoice "
                                                "too (the brand's fee + VAT on the proforma); "
                                                "same as --item paper-invoice.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an order and its proforma; the proforma is e-mailed to the customer."""

    def run() -> dict[str, Any]:
        p = wired()
        result = ops.create_order(p.factory, customer, item, discount, brand, actor(),
                                  paper_invoice=paper_invoice)
        p.runner.dispatch(result["order"])
        return result

    data = guarded(run)

    def render(d: dict[str, Any]) -> None:
        out.print(f"order [bold]{d['order']}[/] created")
        _print_proforma(d["proforma"])

    emit(data, as_json, render)


@order_app.command("show")
def order_show(order: str, as_json: JsonOpt = False) -> None:
    """An order with its proformas, services and steps (the read is audited)."""

    def run() -> dict[str, Any]:
        p = wired()
        return ops.show_order(p.factory, order, actor(), planned=p.planner.planned_kinds())

    data = guarded(run)

    def render(d: dict[str, Any]) -> None:
        out.print(f"order {d['id']}: {d['status']} (refund flag: {d['refund_flag']})")
        table(d["services"], ["id", "kind", "product", "name", "state", "expires_on", "detail"])
        table(d["steps"], ["key", "state", "attempts", "last_error"])

    emit(data, as_json, render)


@proforma_app.command("list")
def proforma_list(
    state: Annotated[str | None, typer.Option(help="Only proformas in this state (open, paid, ...).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Proformas, newest first (the read is audited)."""
    data = guarded(lambda: reads.proformas(factory(), actor(), state, limit))
    emit(data, as_json, lambda d: table(d, ["number", "order", "customer", "state", "issued_on",
                                            "due_date", "gross"]))


@proforma_app.command("show")
def proforma_show(number: str, as_json: JsonOpt = False) -> None:
    """Lines, VAT, total, due date and payment reference (SI12)."""
    data = guarded(lambda: ops.show_proforma(factory(), number))
    emit(data, as_json, _print_proforma)


# -- payments ------------------------------------------------------------------------------
@payment_app.command("record")
def payment_record(
    amount: Annotated[str, typer.Option(help="Amount, e.g. 12.34")],
    txn: Annotated[str, typer.Option(help="The payment's transaction id.")],
    proforma: Annotated[str | None, typer.Option(help="Proforma number.")] = None,
    reference: Annotated[str | None, typer.Option(help="Payment reference (SI12/SI00/RF).")] = None,
    method: Annotated[str, typer.Option(help="bank, card, paypal, moneta, cash")] = "bank",
    currency: Annotated[str, typer.Option()] = "EUR",
    as_json: JsonOpt = False,
) -> None:
    """Record a payment by hand; it is matched like any other."""

    def run() -> dict[str, Any]:
        if not proforma and not reference:
            raise InvalidInput("name the --proforma or the payment --reference")
        p = wired()
        result = record_manual_payment(
            p.factory, p.planner, proforma_number=proforma, reference=reference,
            amount=parse_amount(amount), currency=currency, method=method, txn=txn, actor=actor(),
        )
        if result.settled and result.order_id is not None:
            p.runner.dispatch(result.order_id)
        return {"status": result.status, "proforma": result.proforma, "settled": result.settled}

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(
        f"payment recorded: {d['status']}" + (" (proforma paid)" if d["settled"] else "")))


@payments_app.command("list")
def payments_list(
    unmatched: Annotated[bool, typer.Option("--unmatched", help="Only payments that need ops: "
                                            "underpaid, overpaid, unknown reference, wrong "
                                            "currency, paid twice, reversals.")] = False,
    lapsed: Annotated[bool, typer.Option("--lapsed", help="Only payments that arrived for "
                                         "orders that had lapsed unpaid.")] = False,
    as_json: JsonOpt = False,
) -> None:
    data = guarded(lambda: reads.payments(factory(), actor(), unmatched, lapsed=lapsed))
    emit(data, as_json, lambda d: table(d, ["id", "provider", "txn_id", "kind", "amount",
                                            "currency", "proforma", "status", "detail"]))


@bank_app.command("import")
def bank_import(file: Path, as_json: JsonOpt = False) -> None:
    """Import an ISO 20022 camt.053 statement; credits are matched by reference and amount."""

    def run() -> dict[str, Any]:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read {file}: {exc}") from exc
        p = wired()
        summary = ops.import_statement(p.factory, data, actor(), p.planner,
                                       account_iban=p.settings.bank_accounts)
        for order_id in summary.pop("_settled_orders"):
            p.runner.dispatch(order_id)
        return summary

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(
        f"{d['entries']} entries: {d['outcomes']}; {d['settled']} proforma(s) paid"))


@invoices_app.command("list")
def invoices_list(
    to_post: Annotated[bool, typer.Option("--to-post", help="Only paper invoices not yet "
                                          "posted (`invoices posted NUMBER` once sent).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Invoices, per brand and number; ``post`` says which are to be posted on paper."""
    data = guarded(lambda: reads.invoices(factory(), actor(), to_post=to_post))
    emit(data, as_json, lambda d: table(d, ["number", "issuer", "proforma", "customer",
                                            "issued_at", "net", "vat", "gross", "post"]))


@invoices_app.command("posted")
def invoices_posted(number: str, as_json: JsonOpt = False) -> None:
    """Record that the paper copy of invoice NUMBER was posted (audited)."""
    data = guarded(lambda: ops.mark_posted(factory(), number, actor()))
    emit(data, as_json, lambda d: out.print(f"invoice {d['number']} posted"))


# -- discount codes ------------------------------------------------------------------------
@discount_app.command("add")
def discount_add(
    code: str,
    percent: Annotated[str | None, typer.Option()] = None,
    amount: Annotated[str | None, typer.Option()] = None,
    renewals: Annotated[bool, typer.Option("--renewals", help="Also valid on renewals.")] = False,
    first_year: Annotated[bool, typer.Option("--first-year", help="A first-year promo.")] = False,
    valid_until: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
) -> None:
    def run() -> dict[str, Any]:
        try:
            until = date.fromisoformat(valid_until) if valid_until else None
            pct = Decimal(percent) if percent else None
            amt = Decimal(amount) if amount else None
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        dc = DiscountCode(code=code, percent=pct, amount=amt, valid_on_renewals=renewals,
                          first_year_promo=first_year, valid_until=until)
        return ops.add_discount(factory(), dc, actor())

    data = guarded(run)
    out.print(f"discount code {data['code']} added")
