"""The `cai` command line: one Typer app, one module per command group.

Errors a user can fix (bad input, unknown model, bad constitution) print one red line
naming the file and problem, and exit with status 2; nothing else is swallowed.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from cai.cli.common import app
from cai.cli import constitution_command, export_eval_commands, rl_command, sl_command, train_commands  # noqa: F401,E402  (registers commands)

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def main() -> None:
    from cai.constitution import ConstitutionError
    from cai.data import InputError
    from cai.engines.base import EngineError

    try:
        app(standalone_mode=False)
    except (InputError, ConstitutionError, EngineError, *USER_ERRORS) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except typer.Abort:
        Console(stderr=True).print("[yellow]aborted[/]; re-run the same command to resume")
        sys.exit(130)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]; re-run the same command to resume")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


__all__ = ["app", "main"]
