"""The `cai` command line: one Typer app, one module per command group.

Errors a user can fix (`cai.core.errors.CAIError`: bad input, bad options, unknown model, bad
constitution, a run directory in use...) print one red line naming the file and problem
and exit with their status: 2, or 3 when a run stopped on its failure budget. A missing
file (`FileNotFoundError`, whose message names it) is treated the same way. Click's usage
errors keep click's own message. Everything else is a bug and is not caught: Python
prints the traceback and the exit status is 1. Ctrl-C exits with 130 and says how to
resume.

The top layer: it may import anything; nothing in cai imports it.
"""

from __future__ import annotations

import shlex
import sys

import typer
from rich.console import Console
from rich.markup import escape

from cai.cli.app import app
# each module registers its commands on `app`; this is the list of them, in --help's order
from cai.cli import (  # noqa: F401
    sl_command, rl_command, export_command, eval_commands, report_command, train_commands, recipe_command,
    constitution_command, redteam_command,
)

#: click's usage errors (bad option, bad value); typer >= 0.24 ships its own copy of click
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    from cai.core.errors import CAIError

    try:
        # outside standalone mode typer *returns* an exit code: 130 for Ctrl-C in a command
        code = app(standalone_mode=False)
    except (CAIError, FileNotFoundError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C elsewhere (click turns it into Abort)
        code = 130
    except ClickException as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    if code == 130:
        resume = escape(shlex.join(["cai", *sys.argv[1:]]))
        Console(stderr=True).print(f"[yellow]interrupted[/]; finished work is kept. To resume, run:\n{resume}",
                                   highlight=False, soft_wrap=True)
    if isinstance(code, int) and code:
        sys.exit(code)


__all__ = ["app", "main"]
