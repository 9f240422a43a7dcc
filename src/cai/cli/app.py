"""The `cai` Typer app every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cai",
    help="Constitutional AI: turn a written constitution into alignment data and aligned models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
