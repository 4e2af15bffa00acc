"""The ops CLI: `--json` prints JSON only; bad input is a clear error with exit 2."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy import select
from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

import provisioner
from provisioner.cli import app
from provisioner.config import load_settings
from provisioner.store.db import session_factory, transaction
from provisioner.store.hosting import HostingNode
from provisioner.timeutil import utcnow

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


def paid_order(cli: CliRunner, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "customer.json"
    path.write_text(json.dumps(CUSTOMER))
    customer = as_json(cli, "customer", "add", str(path))
    order = as_json(cli, "order", "create", "--customer", str(customer["id"]),
                    "--item", "hosting:giga5:example.si")
    proforma = order["proforma"]
    paid = as_json(cli, "payment", "record", "--proforma", proforma["number"], "--amount",
                   proforma["gross"], "--txn", "cash-1", "--method", "cash")
    assert paid["settled"] is True
    return order


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
        (["sweep", "--now", "2026-13-01"], "--now must be a date"),
        (["nodes", "add", "Bad_Name", "--address", "192.0.2.10"], "node name"),
    ],
)
def test_bad_input_is_a_clear_error(cli: CliRunner, args: list[str], message: str) -> None:
    assert message in run(cli, *args, code=2)


def test_hostile_customer_file_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**CUSTOMER, "email": "a@b.si\r\nBcc: all@x.si"}))
    assert "e-mail" in run(cli, "customer", "add", str(path), code=2)


def test_sweep_runs_the_queued_steps_here_with_its_clock(cli: CliRunner, tmp_path: Path) -> None:
    paid_order(cli, tmp_path)
    assert as_json(cli, "invoices", "list") == []  # the steps wait for a worker
    today = utcnow().date().isoformat()
    assert as_json(cli, "sweep", "--now", today, "--dry-run")["dry_run"] is True
    report = as_json(cli, "sweep", "--now", today)
    assert report["today"] == today and report["dry_run"] is False
    invoices = as_json(cli, "invoices", "list")  # invoice.issue ran in this process
    assert len(invoices) == 1


def test_nodes_add_registers_a_throwaway_host(cli: CliRunner) -> None:
    row = as_json(cli, "nodes", "add", "demo-node", "--address", "192.0.2.10", "--throwaway")
    assert row["created"] is True
    as_json(cli, "nodes", "add", "real-node", "--address", "192.0.2.11")
    assert [n["name"] for n in as_json(cli, "nodes", "list")] == ["demo-node", "real-node"]
    with transaction(session_factory(load_settings().effective_database_url)) as s:
        flags = {name: flag for name, flag in s.execute(select(HostingNode.name, HostingNode.throwaway))}
    assert flags == {"demo-node": True, "real-node": False}


def test_the_command_tree(cli: CliRunner) -> None:
    root = get_command(app)
    assert isinstance(root, TyperGroup)
    assert set(root.commands) == {
        "db", "catalog", "customer", "order", "proforma", "payment", "payments", "bank",
        "invoices", "discount", "services", "hosts", "nodes", "registry-sandbox", "plan",
        "apply", "jobs", "redrive", "sweep", "quota", "serve", "worker", "beat", "demo",
    } | {"breach", "force-window"} | {"withdraw", "refunds"} | {"migration"} | {"backups"} | {
        "domains"} | {"vps"}
    assert "--keep" not in run(cli, "demo", "--help")


def _cli_imports(path: Path) -> set[str]:
    """The modules of the CLI package that ``path`` imports (at any level of the file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {".".join(n.split(".")[:3]) for n in names
            if n == "provisioner.cli" or n.startswith("provisioner.cli.")}


def test_only_the_entry_point_imports_the_cli_and_groups_share_only_common() -> None:
    package = Path(provisioner.__file__).parent
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package).as_posix()
        if where in ("cli/__init__.py", "cli/__main__.py"):  # the root and the entry point
            continue
        group = where.startswith("cli/") and where != "cli/common.py"
        assert _cli_imports(path) <= ({"provisioner.cli.common"} if group else set()), where


def test_apply_wait_in_ci_prints_no_bar_and_writes_junit_naming_what_did_not_finish(
        cli: CliRunner, tmp_path: Path) -> None:
    order = paid_order(cli, tmp_path)
    junit = tmp_path / "apply.xml"
    # no worker runs here: the invoice step cannot finish, and the wait gives up
    result = cli.invoke(app, ["apply", str(order["order"]), "--wait", "--timeout", "0.5",
                              "--junit", str(junit)])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "━" not in result.stdout and "\x1b[" not in result.stdout + result.stderr  # no bar, no colour
    suite = ET.fromstring(junit.read_text())  # noqa: S314 - the report the command just wrote
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    unfinished = [name for name, c in cases.items() if c.find("failure") is not None]
    assert any(name.endswith("/invoice.issue") for name in unfinished), cases
    assert all("not done" in (cases[n].find("failure").get("message") or "") for n in unfinished)  # type: ignore[union-attr]
    data = json.loads(run(cli, "apply", str(order["order"]), "--json"))
    assert data["order"] == order["order"]
