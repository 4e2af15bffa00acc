"""``provisioner customer``: customers and their personal data (GDPR export and erasure)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from provisioner.cli.common import JsonOpt, actor, emit, factory, guarded, out, table
from provisioner.errors import InvalidInput
from provisioner.pipeline.usecases import gdpr, ops

app = typer.Typer(help="Customers.", no_args_is_help=True)


@app.command("add")
def customer_add(
    file: Path,
    brand: Annotated[str | None, typer.Option(help="The brand (company) the customer is a "
                                              "customer of: fcb (default) or iserver.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a customer from a JSON file {name, company?, vat_id?, address, postal_code, city,
    country, email, phone, lang?, brand?}; ``--brand`` wins over the file's ``brand``."""

    def run() -> dict[str, Any]:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"cannot read {file}: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"{file} must hold a JSON object")
        if brand is not None:
            data["brand"] = brand
        return ops.add_customer(factory(), data, actor())

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(
        f"customer [bold]{d['id']}[/] added: {d['name']} ({d['brand']})"))


@app.command("show")
def customer_show(customer_id: int, as_json: JsonOpt = False) -> None:
    """Show a customer (the read is audited)."""
    data = guarded(lambda: ops.show_customer(factory(), customer_id, actor()))
    emit(data, as_json, lambda d: table([d], list(d)))


@app.command("export")
def customer_export(customer_id: int) -> None:
    """Everything we hold about a customer, as JSON (RULES: export on request)."""
    data = guarded(lambda: gdpr.export_customer(factory(), customer_id, actor()))
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@app.command("erase")
def customer_erase(customer_id: int, as_json: JsonOpt = False) -> None:
    """Erase a customer's personal data; refused while a service is active. Invoices are
    kept (10 years); backups age out on their own."""
    data = guarded(lambda: gdpr.erase_customer(factory(), customer_id, actor()))
    emit(data, as_json, lambda d: out.print(d["note"]))
