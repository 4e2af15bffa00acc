"""``provisioner demo``: the main job on embedded defaults, end to end."""

from __future__ import annotations

import typer

from provisioner.cli.common import follow, out
from provisioner.devstack.demo import run_demo

app = typer.Typer()  # its command sits at the root: demo


@app.command("demo")
def demo() -> None:
    """The main job on embedded defaults, end to end."""
    raise typer.Exit(run_demo(out, follow))
