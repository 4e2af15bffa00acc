"""`provisioner`: the ops command line (Typer + Rich).

Every list/show command takes `--json` and then prints JSON only on stdout.
Errors go to stderr with exit status 2 (caller's input) or 1 (anything else).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from provisioner.config import Settings, load_settings
from provisioner.errors import InvalidInput, ProvisionerError

app = typer.Typer(help="Provisioner: paid proformas become hosting resources.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
catalog_app = typer.Typer(help="Products and prices.", no_args_is_help=True)
customer_app = typer.Typer(help="Customers.", no_args_is_help=True)
order_app = typer.Typer(help="Orders.", no_args_is_help=True)
proforma_app = typer.Typer(help="Proformas (predračuni).", no_args_is_help=True)
payment_app = typer.Typer(help="Record a payment by hand.", no_args_is_help=True)
payments_app = typer.Typer(help="Payments received.", no_args_is_help=True)
bank_app = typer.Typer(help="Bank statements (ISO 20022 camt.053).", no_args_is_help=True)
invoices_app = typer.Typer(help="Invoices (računi).", no_args_is_help=True)
services_app = typer.Typer(help="Services.", no_args_is_help=True)
discount_app = typer.Typer(help="Discount codes.", no_args_is_help=True)
for sub, name in [
    (db_app, "db"), (catalog_app, "catalog"), (customer_app, "customer"), (order_app, "order"),
    (proforma_app, "proforma"), (payment_app, "payment"), (payments_app, "payments"),
    (bank_app, "bank"), (invoices_app, "invoices"), (services_app, "services"),
    (discount_app, "discount"),
]:
    app.add_typer(sub, name=name)

from provisioner.cli.hosts import app as hosts_app  # noqa: E402 - after the app exists
from provisioner.cli.nodes import app as nodes_app  # noqa: E402
from provisioner.cli.registry import app as registry_app  # noqa: E402

app.add_typer(hosts_app, name="hosts")
app.add_typer(nodes_app, name="nodes")
app.add_typer(registry_app, name="registry-sandbox")

out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
T = TypeVar("T")


def actor() -> str:
    return f"cli:{getpass.getuser()}"


def settings() -> Settings:
    return load_settings()


def factory(cfg: Settings | None = None) -> Any:
    from provisioner.pipeline import capabilities
    from provisioner.store.db import is_sqlite, session_factory, upgrade

    cfg = cfg or settings()
    capabilities.configure(cfg.line_kinds)
    url = cfg.effective_database_url
    if is_sqlite(url):  # the embedded default needs nothing configured: keep it migrated
        upgrade(url)
    return session_factory(url)


def guarded(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except InvalidInput as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except ProvisionerError as exc:
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        render(data)


def table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in columns])
    out.print(t)


def _enqueue(cfg: Settings) -> Callable[[str], None]:
    from provisioner.tasks import make_celery

    celery = make_celery(cfg)
    return lambda key: celery.send_task("provisioner.run_step", args=(key,))


# -- db, catalog --------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations."""
    from provisioner.store.db import upgrade

    cfg = settings()
    guarded(lambda: upgrade(cfg.effective_database_url))
    out.print("database is at the newest schema")


@catalog_app.command("list")
def catalog_list(as_json: JsonOpt = False) -> None:
    """Hosting plans with their limits, VPS plans, domain and TLS prices."""
    from dataclasses import asdict

    from provisioner.domain.catalog import DEFAULT_CATALOG
    from provisioner.pipeline.usecases.ops import jsonable

    data = jsonable({
        "hosting": [asdict(p) for p in DEFAULT_CATALOG.hosting.values()],
        "vps": [asdict(p) for p in DEFAULT_CATALOG.vps.values()],
        "domains": [asdict(t) for t in DEFAULT_CATALOG.tlds.values()],
        "tls": [asdict(t) for t in DEFAULT_CATALOG.tls.values()],
    })

    def render(d: dict[str, Any]) -> None:
        table(d["hosting"], ["code", "name", "price_year", "disk_mb", "mailbox_mb",
                             "upload_max_mb", "database_max_mb", "cpu_percent", "memory_mb"],
              "Shared hosting")
        table(d["vps"], ["code", "name", "price_month", "vcpus", "memory_mb", "disk_gb"], "VPS")
        table(d["domains"], ["tld", "register_price", "renew_price", "transfer_price",
                             "first_year_promo_price"], "Domains")
        table(d["tls"], ["code", "name", "price_year", "wildcard"], "TLS")

    emit(data, as_json, render)


# -- customers, orders, proformas ----------------------------------------------
@customer_app.command("add")
def customer_add(file: Path, as_json: JsonOpt = False) -> None:
    """Add a customer from a JSON file {name, company?, vat_id?, address, postal_code, city,
    country, email, phone, lang?}."""
    from provisioner.pipeline.usecases import ops

    def run() -> dict[str, Any]:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"cannot read {file}: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"{file} must hold a JSON object")
        return ops.add_customer(factory(), data, actor())

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(f"customer [bold]{d['id']}[/] added: {d['name']}"))


@customer_app.command("show")
def customer_show(customer_id: int, as_json: JsonOpt = False) -> None:
    """Show a customer (the read is audited)."""
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.show_customer(factory(), customer_id, actor()))
    emit(data, as_json, lambda d: table([d], list(d)))


def _print_proforma(p: dict[str, Any]) -> None:
    table(p["lines"], ["position", "description", "unit_gross", "discount", "net", "vat",
                       "gross"], f"Proforma {p['number']} ({p['state']})")
    out.print(f"net {p['net']} EUR + VAT 22 % {p['vat']} EUR = [bold]{p['gross']} EUR[/]")
    out.print(f"due {p['due_date']}, payment reference [bold]{p['reference']}[/]")


@order_app.command("create")
def order_create(
    customer: Annotated[int, typer.Option(help="Customer id.")],
    item: Annotated[list[str], typer.Option(help="hosting:giga5:example.si, "
                                            "domain:example.si:1y, tls:example.si, ...")],
    discount: Annotated[str | None, typer.Option(help="One discount code.")] = None,
    brand: Annotated[str | None, typer.Option(help="Brand policy (fcb, iserver).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an order and its proforma; the proforma is e-mailed to the customer."""
    from provisioner.pipeline.usecases import ops
    from provisioner.pipeline.engine.runner import Runner

    cfg = settings()

    def run() -> dict[str, Any]:
        f = factory(cfg)
        result = ops.create_order(f, customer, item, discount, brand or cfg.brand, actor())
        Runner(cfg, f, _enqueue(cfg)).dispatch(result["order"])
        return result

    data = guarded(run)

    def render(d: dict[str, Any]) -> None:
        out.print(f"order [bold]{d['order']}[/] created")
        _print_proforma(d["proforma"])

    emit(data, as_json, render)


@order_app.command("show")
def order_show(order: str, as_json: JsonOpt = False) -> None:
    """An order with its proformas, services and steps (the read is audited)."""
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.show_order(factory(), order, actor()))

    def render(d: dict[str, Any]) -> None:
        out.print(f"order {d['id']}: {d['status']} (refund flag: {d['refund_flag']})")
        table(d["services"], ["id", "kind", "product", "name", "state", "expires_on", "detail"])
        table(d["steps"], ["key", "state", "attempts", "last_error"])

    emit(data, as_json, render)


@proforma_app.command("show")
def proforma_show(number: str, as_json: JsonOpt = False) -> None:
    """Lines, VAT, total, due date and payment reference (SI12)."""
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.show_proforma(factory(), number))
    emit(data, as_json, _print_proforma)


# -- payments -------------------------------------------------------------------
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
    from provisioner.domain.money import parse_amount
    from provisioner.pipeline.usecases.payments import record_manual_payment
    from provisioner.pipeline.engine.runner import Runner

    cfg = settings()

    def run() -> dict[str, Any]:
        if not proforma and not reference:
            raise InvalidInput("name the --proforma or the payment --reference")
        f = factory(cfg)
        result = record_manual_payment(
            f, proforma_number=proforma, reference=reference, amount=parse_amount(amount),
            currency=currency, method=method, txn=txn, actor=actor(),
        )
        if result.settled and result.order_id is not None:
            Runner(cfg, f, _enqueue(cfg)).dispatch(result.order_id)
        return {"status": result.status, "proforma": result.proforma, "settled": result.settled}

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(
        f"payment recorded: {d['status']}" + (" (proforma paid)" if d["settled"] else "")))


@payments_app.command("list")
def payments_list(
    unmatched: Annotated[bool, typer.Option("--unmatched", help="Only payments that need ops: "
                                            "underpaid, overpaid, unknown reference, wrong "
                                            "currency, paid twice, reversals.")] = False,
    as_json: JsonOpt = False,
) -> None:
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.list_payments(factory(), unmatched))
    emit(data, as_json, lambda d: table(d, ["id", "provider", "txn_id", "kind", "amount",
                                            "currency", "proforma", "status", "detail"]))


@bank_app.command("import")
def bank_import(file: Path, as_json: JsonOpt = False) -> None:
    """Import an ISO 20022 camt.053 statement; credits are matched by reference and amount."""
    from provisioner.pipeline.usecases import ops
    from provisioner.pipeline.engine.runner import Runner

    cfg = settings()

    def run() -> dict[str, Any]:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read {file}: {exc}") from exc
        f = factory(cfg)
        summary = ops.import_statement(f, data, actor())
        runner = Runner(cfg, f, _enqueue(cfg))
        for order_id in summary.pop("_settled_orders"):
            runner.dispatch(order_id)
        return summary

    data = guarded(run)
    emit(data, as_json, lambda d: out.print(
        f"{d['entries']} entries: {d['outcomes']}; {d['settled']} proforma(s) paid"))


@invoices_app.command("list")
def invoices_list(as_json: JsonOpt = False) -> None:
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.list_invoices(factory()))
    emit(data, as_json, lambda d: table(d, ["number", "proforma", "customer", "issued_at",
                                            "net", "vat", "gross"]))


@discount_app.command("add")
def discount_add(
    code: str,
    percent: Annotated[str | None, typer.Option()] = None,
    amount: Annotated[str | None, typer.Option()] = None,
    renewals: Annotated[bool, typer.Option("--renewals", help="Also valid on renewals.")] = False,
    first_year: Annotated[bool, typer.Option("--first-year", help="A first-year promo.")] = False,
    valid_until: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
) -> None:
    from provisioner.domain.billing import DiscountCode
    from provisioner.pipeline.usecases import ops

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


# -- pipeline --------------------------------------------------------------------
@app.command("plan")
def plan_cmd(order: str, as_json: JsonOpt = False) -> None:
    """The steps of an order, nothing touched."""
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.plan_order(factory(), order))
    emit(data, as_json, lambda d: table(d["steps"], ["key", "kind", "deps", "state"],
                                        f"Plan of order {d['order']} (paid: {d['paid']})"))


@app.command("apply")
def apply_cmd(
    order: str,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the steps to the end.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
) -> None:
    """Run an order's ready steps (through Celery)."""
    from provisioner.pipeline.usecases import ops
    from provisioner.pipeline.usecases.orders import find_order
    from provisioner.pipeline.engine.runner import Runner
    from provisioner.store.db import transaction

    cfg = settings()
    f = guarded(lambda: factory(cfg))

    def resolve() -> int:
        with transaction(f) as s:
            return find_order(s, order).id

    order_id = guarded(resolve)
    runner = Runner(cfg, f, _enqueue(cfg))
    queued = runner.dispatch(order_id)
    out.print(f"order {order_id}: {len(queued)} step(s) queued")
    if not wait:
        return
    status = follow(f, order_id, timeout, runner.redrive)
    if status.get("failed"):
        err.print(f"[bold red]{status['failed']} step(s) failed[/]: see `provisioner jobs "
                  f"--order {order_id} --failed`")
        raise typer.Exit(1)
    if status.get("done", 0) != sum(status.values()):
        err.print("[bold red]timed out[/] before every step finished")
        raise typer.Exit(1)
    out.print("[bold green]all steps done[/]")
    del ops


def follow(f: Any, order_id: int, timeout: float, redrive: Callable[[], Any] | None = None,
           console: Console | None = None) -> dict[str, int]:
    """A Rich progress bar over the order's steps until all are done or one failed."""
    from provisioner.pipeline.usecases import ops

    deadline = time.monotonic() + timeout
    last_redrive = 0.0
    counts = ops.order_progress(f, order_id)
    with Progress(TextColumn("[bold]order {task.fields[order]}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps {task.fields[note]}"),
                  TimeElapsedColumn(), console=console or out) as progress:
        task = progress.add_task("steps", total=sum(counts.values()), order=order_id, note="")
        while True:
            counts = ops.order_progress(f, order_id)
            total = sum(counts.values())
            progress.update(task, total=total, completed=counts.get("done", 0),
                            note=", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                                           if k != "done"))
            if counts.get("failed") or (total and counts.get("done", 0) == total):
                return counts
            if time.monotonic() > deadline:
                return counts
            if redrive is not None and time.monotonic() - last_redrive > 5:
                redrive()
                last_redrive = time.monotonic()
            time.sleep(0.2)


@app.command("jobs")
def jobs_cmd(
    order: Annotated[str | None, typer.Option(help="Only this order.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only failed steps.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Steps in the journal."""
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.list_jobs(factory(), order, failed))
    emit(data, as_json, lambda d: table(d, ["key", "state", "attempts", "updated_at",
                                            "last_error"]))


@app.command("redrive")
def redrive_cmd() -> None:
    """Re-enqueue steps whose worker died or whose message was lost (beat runs this)."""
    from provisioner import bootstrap as wiring

    cfg = settings()
    factory(cfg)
    result = guarded(lambda: wiring.redrive(cfg, _enqueue(cfg)))
    out.print(result)


@services_app.command("list")
def services_list(as_json: JsonOpt = False) -> None:
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.list_services(factory()))
    emit(data, as_json, lambda d: table(d, ["id", "order", "kind", "product", "name", "state",
                                            "expires_on", "detail"]))


@services_app.command("show")
def services_show(service_id: int, as_json: JsonOpt = False) -> None:
    from provisioner.pipeline.usecases import ops

    data = guarded(lambda: ops.show_service(factory(), service_id, actor()))
    emit(data, as_json, lambda d: table([d], ["id", "kind", "product", "name", "state",
                                              "expires_on", "detail"]))


@services_app.command("hold")
def services_hold(service_id: int,
                  reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
                  as_json: JsonOpt = False) -> None:
    """Stop a service's clock: no shutdown and no deletion until it is released."""
    from provisioner.pipeline.capabilities import lifecycle as clock

    data = guarded(lambda: clock.hold(factory(), service_id, reason, actor()))
    emit(data, as_json, lambda d: out.print(f"service {service_id} is on hold ({d['reason']}); "
                                            f"{d['withdrawn']} pending clock step(s) withdrawn"))


@services_app.command("release")
def services_release(service_id: int, as_json: JsonOpt = False) -> None:
    """Start a held service's clock again; the next sweep catches up."""
    from provisioner.pipeline.capabilities import lifecycle as clock

    data = guarded(lambda: clock.release(factory(), service_id, actor()))
    emit(data, as_json, lambda d: out.print(f"service {service_id}: clock running"))


@services_app.command("stages")
def services_stages(service_id: int, as_json: JsonOpt = False) -> None:
    """What the shutdown and deletion stages of a service did (paths, backups, sizes)."""
    from provisioner.pipeline.capabilities import lifecycle as clock

    data = guarded(lambda: clock.stage_records(factory(), service_id))
    emit(data, as_json, lambda d: table(
        [{**r, "manifest": json.dumps(r["manifest"], default=str)[:200]} for r in d],
        ["stage", "term_expiry", "due_on", "done_on", "manifest"]))


# -- the clock -----------------------------------------------------------------
@app.command("sweep")
def sweep_cmd(
    now: Annotated[str | None, typer.Option("--now", help="The day to sweep (YYYY-MM-DD); "
                                            "default today.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what is due; touch "
                                          "nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Renewal proformas, reminders, shutdowns and staged deletion that are due.

    The steps it writes are run here, with the clock at --now (the beat's daily sweep
    hands them to the workers instead)."""
    from rich.progress import Progress

    from provisioner.pipeline.capabilities import lifecycle as clock


    from provisioner import bootstrap as wiring

    cfg = settings()
    f = factory(cfg)
    day = guarded(lambda: clock.parse_day(now))
    with Progress(console=err, transient=True, disable=as_json) as progress:
        task = progress.add_task(f"sweep {day}", total=None)
        if dry_run:
            report = guarded(lambda: clock.sweep(f, day, dry_run=True,
                                                 progress=lambda n: progress.advance(task, n)))
        else:
            runner = wiring.runner(cfg, lambda key: None)
            runner.now = clock.now_at(day)
            report = guarded(lambda: clock.run_day(f, runner, day))
    data = report.as_dict()

    def render(d: dict[str, Any]) -> None:
        table([{**a, "service": a["service_id"]} for a in d["actions"]],
              ["service", "event", "due_on", "detail"],
              title=f"sweep {d['today']}{' (dry run)' if d['dry_run'] else ''}")
        out.print(f"looked at {d['looked_at']} service(s); {d['counts'] or 'nothing due'}")

    emit(data, as_json, render)


@app.command("quota")
def quota_cmd(as_json: JsonOpt = False) -> None:
    """Read every node's usage: warn accounts over their quota, and stop the free backups
    of those still over it after the grace days (the beat runs this daily)."""
    from provisioner.pipeline.capabilities import quota

    cfg = settings()
    factory(cfg)
    data = guarded(lambda: quota.scheduled_check(cfg))
    emit(data, as_json, lambda d: out.print(d))


# -- customers' data (GDPR) ------------------------------------------------------
@customer_app.command("export")
def customer_export(customer_id: int) -> None:
    """Everything we hold about a customer, as JSON (RULES: export on request)."""
    from provisioner.pipeline.usecases import gdpr

    data = guarded(lambda: gdpr.export_customer(factory(), customer_id, actor()))
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@customer_app.command("erase")
def customer_erase(customer_id: int, as_json: JsonOpt = False) -> None:
    """Erase a customer's personal data; refused while a service is active. Invoices are
    kept (10 years); backups age out on their own."""
    from provisioner.pipeline.usecases import gdpr

    data = guarded(lambda: gdpr.erase_customer(factory(), customer_id, actor()))
    emit(data, as_json, lambda d: out.print(d["note"]))


# -- processes -----------------------------------------------------------------
@app.command("serve")
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """The HTTP API (uvicorn)."""
    import uvicorn

    factory()
    uvicorn.run("provisioner.api.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info")


@app.command("worker")
def worker(
    concurrency: int = 2,
    beat: Annotated[bool, typer.Option("--beat", help="Run the beat (re-drive) too.")] = False,
) -> None:
    """A Celery worker."""
    factory()
    argv = [sys.executable, "-m", "celery", "-A", "provisioner.tasks", "worker",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "-Q", "provisioner"]
    if beat:
        argv.append("-B")
    os.execv(sys.executable, argv)


@app.command("beat")
def beat() -> None:
    """Celery beat: the periodic re-drive."""
    factory()
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "provisioner.tasks", "beat",
                              "--loglevel", "INFO"])


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo's data dir.")] = True,
) -> None:
    """The main job on embedded defaults, end to end."""
    from provisioner.devstack.demo import run_demo

    code = run_demo(out)
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
