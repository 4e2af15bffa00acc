"""`provisioner`: the ops command line (Typer + Rich).

This module only assembles the command tree; each group lives in its own module and
the helpers they share (settings, wiring, `--json`, error exits) in `common`.
Every list/show command takes `--json` and then prints JSON only on stdout.
Errors go to stderr with exit status 2 (caller's input) or 1 (anything else).
"""

from __future__ import annotations

import typer

from provisioner.cli import (
    backups,
    billing,
    breach,
    catalog,
    clock,
    customers,
    db,
    demo,
    domains,
    hosts,
    migration,
    nodes,
    pipeline,
    registry,
    serve,
    services,
    vps,
    withdraw,
)

app = typer.Typer(help="Provisioner: paid proformas become hosting resources.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

app.add_typer(db.app, name="db")
app.add_typer(catalog.app, name="catalog")
app.add_typer(customers.app, name="customer")  # add, show, export, erase
app.add_typer(billing.order_app, name="order")
app.add_typer(billing.proforma_app, name="proforma")
app.add_typer(billing.payment_app, name="payment")
app.add_typer(billing.payments_app, name="payments")
app.add_typer(billing.bank_app, name="bank")
app.add_typer(billing.invoices_app, name="invoices")
app.add_typer(billing.discount_app, name="discount")
app.add_typer(services.app, name="services")  # list, show, hold, release, stages
app.add_typer(hosts.app, name="hosts")
app.add_typer(nodes.app, name="nodes")
app.add_typer(breach.app, name="breach")  # open, list, close
app.add_typer(migration.app, name="migration")  # source, show, wipe
app.add_typer(backups.app, name="backups")  # host add, enroll, status, list, restore, nightly, check, drill
app.add_typer(registry.app, name="registry-sandbox")
app.add_typer(domains.app, name="domains")  # withdraw (a never-activated .si, refunded)
# Commands at the root.
app.add_typer(pipeline.app)  # plan, apply, jobs, redrive
app.add_typer(clock.app)  # sweep, quota
app.add_typer(serve.app)  # serve, worker, beat
app.add_typer(demo.app)  # demo
app.add_typer(withdraw.app)  # withdraw SERVICE [--dry-run]
app.add_typer(withdraw.refunds_app, name="refunds")  # list [--open]
app.add_typer(vps.app, name="vps")  # host add, list, show


def main() -> None:
    app()
