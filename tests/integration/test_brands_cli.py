"""Brands and the paper invoice through the CLI (issue 17 items 1 and 12): `customer add
--brand`, an order of the customer's brand (another brand refused), `--paper-invoice`,
`invoices list --to-post` and `invoices posted`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from provisioner.domain.policy import ISERVER
from provisioner.timeutil import utcnow
from tests.helpers import CUSTOMER
from tests.integration.test_cli import as_json, cli, run

__all__ = ["cli"]  # the fixture, shared with test_cli


def test_an_iserver_customer_with_a_paper_invoice_through_the_cli(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "customer.json"
    path.write_text(json.dumps(CUSTOMER))
    customer = as_json(cli, "customer", "add", str(path), "--brand", "iserver")
    assert customer["brand"] == "iserver"
    cid = str(customer["id"])
    assert "customer of iSERVER" in run(cli, "order", "create", "--customer", cid, "--item",
                                        "hosting:mega:a.si", "--brand", "fcb", code=2)
    order = as_json(cli, "order", "create", "--customer", cid, "--item", "hosting:mega:a.si",
                    "--paper-invoice")
    proforma = order["proforma"]
    year = utcnow().year
    assert proforma["number"] == f"IS-PR-{year}-000001" and proforma["paper_invoice"] is True
    assert proforma["issuer"]["iban"] == ISERVER.iban
    assert proforma["lines"][-1]["gross"] == "6.10"
    shown = run(cli, "proforma", "show", proforma["number"])
    assert ISERVER.name in shown and ISERVER.iban in shown
    paid = as_json(cli, "payment", "record", "--proforma", proforma["number"], "--amount",
                   proforma["gross"], "--txn", "cash-1", "--method", "cash")
    assert paid["settled"] is True
    as_json(cli, "sweep", "--now", utcnow().date().isoformat())  # runs invoice.issue here
    (invoice,) = as_json(cli, "invoices", "list", "--to-post")
    assert invoice["number"] == f"IS-{year}-000001" and invoice["issuer"] == ISERVER.name
    assert invoice["post"] == "to post"
    assert as_json(cli, "invoices", "posted", invoice["number"])["posted"] is True
    assert as_json(cli, "invoices", "list", "--to-post") == []
    assert as_json(cli, "invoices", "list")[0]["post"] == "posted"
    exported = json.loads(run(cli, "customer", "export", cid))
    assert exported["customer"]["brand"] == "iserver"
