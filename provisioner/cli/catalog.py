"""``provisioner catalog``: products and prices."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import typer

from provisioner.cli.common import JsonOpt, emit, table
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.pipeline.usecases.ops import jsonable

app = typer.Typer(help="Products and prices.", no_args_is_help=True)


@app.command("list")
def catalog_list(as_json: JsonOpt = False) -> None:
    """Hosting plans with their limits, VPS plans, domain and TLS prices."""
    data = jsonable({
        "hosting": [asdict(p) for p in DEFAULT_CATALOG.hosting.values()],
        "vps": [asdict(p) for p in DEFAULT_CATALOG.vps.values()],
        "domains": [asdict(t) for t in DEFAULT_CATALOG.tlds.values()],
        "tls": [asdict(t) for t in DEFAULT_CATALOG.tls.values()],
        "backup": [asdict(DEFAULT_CATALOG.backup)],  # the downloadable backup (issue 17 item 9)
    })

    def render(d: dict[str, Any]) -> None:
        table(d["hosting"], ["code", "name", "price_year", "disk_mb", "mailbox_mb",
                             "upload_max_mb", "database_max_mb", "cpu_percent", "memory_mb"],
              "Shared hosting")
        table(d["vps"], ["code", "name", "price_month", "vcpus", "memory_mb", "disk_gb"], "VPS")
        table(d["domains"], ["tld", "register_price", "renew_price", "transfer_price",
                             "first_year_promo_price"], "Domains")
        table(d["tls"], ["code", "name", "price_year", "wildcard"], "TLS")
        table(d["backup"], ["code", "name", "price_month"], "Backup (beside a hosting line)")

    emit(data, as_json, render)
