"""``provisioner db``: the database schema."""

from __future__ import annotations

import typer

from provisioner.cli.common import guarded, out, settings
from provisioner.store.db import upgrade

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations."""
    cfg = settings()
    guarded(lambda: upgrade(cfg.effective_database_url))
    out.print("database is at the newest schema")
