"""`cai constitution`: inspect a constitution as cai will use it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cai.cli.app import app
from cai.cli.derive import derived_option
from cai.inputs.constitution import ConstitutionOptions

JudgePrinciplesOpt = derived_option(ConstitutionOptions, "judge_principles")
constitution_app = typer.Typer(help="Inspect constitutions.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")


@constitution_app.command("show")
def show(ref: Annotated[str, typer.Argument(help="Shipped name or file.")] = "default",
         judge_principles: JudgePrinciplesOpt = None) -> None:
    """List the principles of a constitution, with its hash (over every part)."""
    from cai.inputs.constitution import load_constitution

    c = load_constitution(ref, judge_principles=judge_principles)
    table = Table(title=f"{c.name} ({c.source}) hash {c.hash}")
    for column in ("id", "critique", "revision", "judge"):
        table.add_column(column, overflow="fold")
    for p in c.principles:
        table.add_row(p.id, p.critique, p.revision, p.judge)
    Console().print(table)


@constitution_app.command("list")
def list_shipped() -> None:
    """Names of the constitutions shipped with cai."""
    from cai.inputs.constitution import shipped_constitutions

    for name in shipped_constitutions():
        typer.echo(name)
