"""The ops CLI: `--json` prints JSON only; bad input is a clear error with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner.cli import app

CUSTOMER = {
    "name": "Ana Novak", "address": "Slovenska cesta 1", "postal_code": "1000",
    "city": "Ljubljana", "country": "SI", "email": "ana@example.si", "phone": "+386.41123456",
}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink) -> CliRunner:
    for key in [k for k in __import__("os").environ if k.startswith("PROVISIONER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PROVISIONER_SMTP_PORT", str(smtp_sink.port))
    monkeypatch.setenv("PROVISIONER_LINE_KINDS", "")  # billing only; capabilities test themselves
    return CliRunner()


def run(cli: CliRunner, *args: str, code: int = 0) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result.stdout if code == 0 else result.stderr


def as_json(cli: CliRunner, *args: str) -> object:
    return json.loads(run(cli, *args, "--json"))


def test_a_whole_order_through_the_cli(cli: CliRunner, tmp_path: Path) -> None:
    catalog = as_json(cli, "catalog", "list")
    assert {p["code"] for p in catalog["hosting"]} == {"mega", "giga5", "giga10", "giga15"}
    mega = next(p for p in catalog["hosting"] if p["code"] == "mega")
    assert mega["upload_max_mb"] == 250 and mega["mailbox_mb"] == 1000
    path = tmp_path / "customer.json"
    path.write_text(json.dumps(CUSTOMER))
    customer = as_json(cli, "customer", "add", str(path))
    order = as_json(cli, "order", "create", "--customer", str(customer["id"]),
                    "--item", "hosting:giga5:example.si", "--item", "domain:example.si:1y")
    number = order["proforma"]["number"]
    proforma = as_json(cli, "proforma", "show", number)
    assert proforma["reference"].startswith("SI12 ")
    assert proforma["gross"] == order["proforma"]["gross"]
    plan = as_json(cli, "plan", number)
    assert plan["paid"] is False
    assert [s["kind"] for s in plan["steps"]][:1] == ["notify.proforma"]
    paid = as_json(cli, "payment", "record", "--proforma", number, "--amount",
                   proforma["gross"], "--txn", "cash-1", "--method", "cash")
    assert paid == {"status": "matched", "proforma": number, "settled": True}
    again = as_json(cli, "payment", "record", "--proforma", number, "--amount",
                    proforma["gross"], "--txn", "cash-1", "--method", "cash")
    assert again["status"] == "duplicate"
    jobs = as_json(cli, "jobs", "--order", str(order["order"]))
    assert {j["kind"] for j in jobs} == {"notify.proforma", "notify.payment", "invoice.issue",
                                        "notify.invoice"}
    services = as_json(cli, "services", "list")
    assert {s["state"] for s in services} == {"provisioning"}
    assert as_json(cli, "payments", "list", "--unmatched") == []
    assert as_json(cli, "invoices", "list") == []  # issued by a worker, none runs here


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["order", "create", "--customer", "99", "--item", "hosting:giga5:example.si"],
         "no customer"),
        (["proforma", "show", "PR-1999-000001"], "no proforma"),
        (["payment", "record", "--reference", "SI12 20260000018", "--amount", "1", "--txn", "x"],
         "check digit"),
        (["payment", "record", "--proforma", "X", "--amount", "-5", "--txn", "x"], "amount"),
        (["customer", "add", "/nonexistent.json"], "cannot read"),
    ],
)
def test_bad_input_is_a_clear_error(cli: CliRunner, args: list[str], message: str) -> None:
    assert message in run(cli, *args, code=2)


def test_hostile_customer_file_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**CUSTOMER, "email": "a@b.si\r\nBcc: all@x.si"}))
    assert "e-mail" in run(cli, "customer", "add", str(path), code=2)
