"""The `cai` command line: one Typer app, one module per command group.

Errors a user can fix (bad input, unknown model, bad constitution) print one red line
naming the file and problem, and exit with status 2; nothing else is swallowed.
"""

from __future__ import annotations

import shlex
import sys

import typer
from rich.console import Console
from rich.markup import escape

from cai.cli.common import app
from cai.cli import constitution_command, export_eval_commands, rl_command, sl_command, train_commands  # noqa: F401,E402  (registers commands)

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def main() -> None:
    from cai.constitution import ConstitutionError
    from cai.data import InputError
    from cai.engines.base import EngineError
    from cai.store import StoreError

    try:
        # outside standalone mode typer *returns* an exit code: 130 for Ctrl-C in a command
        code = app(standalone_mode=False)
    except (InputError, ConstitutionError, EngineError, StoreError, *USER_ERRORS) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C elsewhere (click turns it into Abort)
        code = 130
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if code == 130:
        resume = escape(shlex.join(["cai", *sys.argv[1:]]))
        Console(stderr=True).print(f"[yellow]interrupted[/]; finished work is kept. To resume, run:\n{resume}",
                                   highlight=False, soft_wrap=True)
    if isinstance(code, int) and code:
        sys.exit(code)


__all__ = ["app", "main"]
