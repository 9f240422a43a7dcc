"""Typer commands derived from config dataclasses, so each option is written once.

`config_command(app, "rl", RLConfig)` decorates a function `(config, quiet) -> None`:
the command's options are the config's `option(...)` fields (`cai.core.options`), each with
its flag, help, choices and default, plus `--config FILE` (YAML with the same names,
flat or in group sections) and, unless `quiet=False`, `--quiet`. Every option is None
unless given, so that a value from `--config` is only replaced by one typed on the
command line; the defaults shown in `--help` are the config's own.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from types import NoneType, UnionType
from typing import Annotated, Any, Optional, TypeVar, Union

import typer

from cai.core.options import Options, choices_of, flag_of

C = TypeVar("C", bound=Options)

ConfigFileOpt = Annotated[Optional[str], typer.Option(
    "--config", help="YAML file of options: the same names as these options (with underscores), flat or in "
                     "sections; options given here win over the file.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _cli_type(owner: type, f: Any) -> Any:
    """The type the command line reads for field `f` (before its `parse`)."""
    if f.metadata.get("cli_type") is not None:
        return f.metadata["cli_type"]
    hint = typing.get_type_hints(owner)[f.name]
    if typing.get_origin(hint) in (Union, UnionType):  # X | None
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        hint = args[0] if len(args) == 1 else str
    if typing.get_origin(hint) is typing.Literal:
        return str
    return hint


def _parameter(owner: type, f: Any, default: Any, panel: str | None = None, *,
               argument: bool = False) -> inspect.Parameter:
    flag = flag_of(f)
    names = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
    help_text = f.metadata["help"]
    choices = choices_of(f)
    if choices:
        help_text += f" One of: {', '.join(choices)}."
    if f.metadata.get("required"):
        help_text += " [required]"
    cli_type = _cli_type(owner, f)
    if cli_type is bool and "/" not in flag:
        names[0] = f"{flag}/--no-{flag[2:]}"
    if isinstance(default, (list, tuple)):
        shown: Any = ",".join(str(v) for v in default) if default else False
    elif isinstance(default, dict):
        shown = False
    else:
        shown = False if default is None or default == "" else str(default)
    if argument:  # positional; still None unless given, so --config can fill it
        info = typer.Argument(help=f.metadata["help"], show_default=False, metavar=f.name.upper())
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[Optional[cli_type], info])
    info = typer.Option(*names, help=help_text, show_default=shown, metavar=f.metadata.get("metavar"),
                        rich_help_panel=panel)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[cli_type], info])


def config_command(app: typer.Typer, name: str, config_cls: type[C], *, quiet: bool = True,
                   arguments: tuple[str, ...] = ()) -> Callable[[Callable[[C, bool], None]], Callable[..., None]]:
    """Register `name` on `app`, its options derived from `config_cls`; the decorated function runs it.
    The options named in `arguments` are positional arguments instead, in that order, first."""
    def decorate(run: Callable[[C, bool], None]) -> Callable[..., None]:
        defaults = config_cls.defaults()
        params, seen = [], set()
        groups = config_cls.groups()
        positional: dict[str, inspect.Parameter] = {}
        for group, f in config_cls.option_fields():
            assert f.name not in seen, f"{config_cls.__name__}: option {f.name!r} appears in two groups"
            seen.add(f.name)
            owner = groups[group] if group else config_cls
            parameter = _parameter(owner, f, defaults.get(f.name), group.capitalize() if group else None,
                                   argument=f.name in arguments)
            if f.name in arguments:
                positional[f.name] = parameter
            else:
                params.append(parameter)
        assert set(positional) == set(arguments), f"{config_cls.__name__} has no option {set(arguments) - seen}"
        params = [positional[a] for a in arguments] + params
        params.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=ConfigFileOpt))
        if quiet:
            params.append(inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False,
                                            annotation=QuietOpt))

        def command(**values: Any) -> None:
            config_file = values.pop("config_file", None)
            is_quiet = bool(values.pop("quiet", False))
            run(config_cls.load(values, config_file), is_quiet)

        command.__name__ = run.__name__
        command.__doc__ = run.__doc__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name)(command)
        return command

    return decorate


def derived_option(config_cls: type[Options], name: str) -> Any:
    """One option of a config class (flat or made of groups) as a Typer parameter
    annotation, for hand-written commands; its default shown is the config's own."""
    groups = config_cls.groups()
    found = {f.name: (group, f) for group, f in config_cls.option_fields()}
    if name not in found:
        raise KeyError(f"{config_cls.__name__} has no option {name!r} (it has: {', '.join(sorted(found))})")
    group, f = found[name]
    owner = groups[group] if group else config_cls
    return _parameter(owner, f, config_cls.defaults().get(name)).annotation
