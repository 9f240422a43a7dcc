"""Options written once: a dataclass field carries its default, help, flag and checks.

Every knob of every command is one `option(...)` field in one option group (a small
dataclass: `InputOptions`, `RunOptions`, `LabelerOptions`, ...). A command's config is
either a dataclass of such groups (`cai sl`, `cai rl`, `cai eval judge`), or one flat
dataclass of options (the `cai train` wrappers, in TRL's style). From that one source:

- the CLI: `cai.cli.derive` turns the fields into Typer options (`--help` shows the
  field's help, its choices and its default);
- the YAML `--config FILE`: the same names, flat (`limit: 10`) or in sections named after
  the groups (`inputs: {limit: 10}`); command-line values win over the file, the file
  over the defaults;
- validation: `choices` and `check` in the field, and a group's own `check()` for rules
  across fields. A bad value is a `ConfigError` naming the option, never an IndexError.

Library users build configs directly: `RLConfig.of(prompts=..., out=..., judges=[...])`
routes flat names to their groups.

Not here: turning fields into Typer parameters (`cai.cli.derive`).
"""

from __future__ import annotations

import codecs
import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cai.core.errors import ConfigError

C = TypeVar("C", bound="Options")


def option(default: Any = MISSING, *, help: str, flag: str | None = None, short: str | None = None,
           choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
           parse: Callable[[Any], Any] | None = None, cli_type: Any = None, required: bool = False,
           default_factory: Callable[[], Any] | None = None, metavar: str | None = None) -> Any:
    """A config field that is also a command-line option.

    `flag` defaults to `--<name-with-dashes>`. `parse` turns what a user typed (a string
    from the CLI, or a YAML value) into the field's value and raises `ValueError` with a
    message when it cannot; `cli_type` is the type the CLI reads before `parse` (default:
    the field's own type). `choices` may be a function, for registries filled at run time.
    """
    metadata = {"help": help, "flag": flag, "short": short, "choices": choices, "parse": parse,
                "cli_type": cli_type, "required": required, "metavar": metavar}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=None if default is MISSING else default, metadata=metadata)


def redefault(parent: type, name: str, default: Any) -> Any:
    """The parent's option `name` with another default (its help is written once, there)."""
    inherited = next(f for f in fields(parent) if f.name == name)
    return field(default=default, metadata=inherited.metadata)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def is_option(f: dataclasses.Field) -> bool:
    return "help" in f.metadata


@dataclass
class Options:
    """Base of every option group and flat config: validation and construction from values."""

    def __post_init__(self) -> None:
        self.validate()

    def check(self) -> None:
        """Rules across fields; groups override it and raise `ConfigError`."""

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Options):
                continue  # validated in its own __post_init__
            if not is_option(f):
                continue
            allowed = choices_of(f)
            if allowed is not None and value is not None and value not in allowed:
                raise ConfigError(f"{flag_of(f)} must be one of {', '.join(allowed)}; got {value!r}")
        self.check()

    # ---- building from values -----------------------------------------------------------
    @classmethod
    def groups(cls) -> dict[str, type[Options]]:
        """{field name: group class} for a config made of groups ({} for a flat one)."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)
                if isinstance(hints[f.name], type) and issubclass(hints[f.name], Options)}

    @classmethod
    def option_fields(cls) -> Iterator[tuple[str | None, dataclasses.Field]]:
        """(group name or None, field) for every option, in declaration order."""
        groups = cls.groups()
        for f in fields(cls):
            if f.name in groups:
                for inner in fields(groups[f.name]):
                    if is_option(inner):
                        yield f.name, inner
            elif is_option(f):
                yield None, f

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each option's default for this command, by name (a command may give a group other
        defaults through its field's default_factory, e.g. `cai eval judge`'s run options)."""
        return cls().flat()

    @classmethod
    def of(cls: type[C], **values: Any) -> C:
        """Build from flat option names (each name belongs to exactly one group)."""
        return cls.from_values(values)

    @classmethod
    def from_values(cls: type[C], values: Mapping[str, Any], source: str = "") -> C:
        """Build from flat names or group sections; unknown names are a `ConfigError`.

        Values that are strings (from the command line or a file) go through the field's
        `parse`; so do values of another type when the field has one.
        """
        where = f"{source}: " if source else ""
        groups = cls.groups()
        flat: dict[str, Any] = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key in groups and isinstance(value, Mapping):
                flat.update({k.replace("-", "_"): v for k, v in value.items()})
            else:
                flat[key] = value
        by_name = {f.name: (group, f) for group, f in cls.option_fields()}
        unknown = sorted(set(flat) - set(by_name))
        if unknown:
            raise ConfigError(f"{where}unknown option(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
        merged = {**cls.defaults(), **{k: _parsed(by_name[k][1], v, where) for k, v in flat.items()}}
        for name, (_, f) in by_name.items():
            if f.metadata.get("required") and merged.get(name) in (None, ""):
                raise ConfigError(f"{where}{flag_of(f)} is required (on the command line or in --config)")
        kwargs: dict[str, Any] = {}
        for group, group_cls in groups.items():
            kwargs[group] = group_cls(**{f.name: merged[f.name] for g, f in cls.option_fields() if g == group})
        kwargs.update({f.name: merged[f.name] for g, f in cls.option_fields() if g is None})
        return cls(**kwargs)

    @classmethod
    def load(cls: type[C], cli_values: Mapping[str, Any], config_file: str | None = None) -> C:
        """Defaults < the YAML `config_file` < `cli_values` (None means not given)."""
        values: dict[str, Any] = {}
        source = ""
        if config_file:
            source = config_file
            values.update(read_config_file(config_file, cls))
        values.update({k: v for k, v in cli_values.items() if v is not None})
        return cls.from_values(values, source)

    def flat(self) -> dict[str, Any]:
        """Every option by name (for manifests and model cards)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Options):
                out.update(value.flat())
            elif is_option(f):
                out[f.name] = value
        return out


def _parsed(f: dataclasses.Field, value: Any, where: str) -> Any:
    parse = f.metadata.get("parse")
    if parse is None or value is None:
        return value
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}{flag_of(f)}: {exc}") from None


def read_config_file(path: str, cls: type[Options]) -> dict[str, Any]:
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(file.read_text("utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option names (or sections: "
                          f"{', '.join(cls.groups()) or 'none'}) to values; got a {type(loaded).__name__}")
    return loaded


# ---- parsers shared by several options -----------------------------------------------------
def float_list(value: Any) -> list[float] | None:
    """'0.1,0.5' or [0.1, 0.5] -> [0.1, 0.5]."""
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"expected comma-separated numbers, got {value!r}")
    try:
        return [float(v) for v in items] or None
    except (TypeError, ValueError):
        raise ValueError(f"expected comma-separated numbers, got {value!r}") from None


def probability_range(value: Any) -> tuple[float, float]:
    """'lo,hi' (or [lo, hi]) with 0 <= lo <= hi <= 1."""
    bounds = float_list(value) or []
    if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1] <= 1:
        raise ValueError(f"must be 'lo,hi' with 0 <= lo <= hi <= 1; got {value!r}")
    return (bounds[0], bounds[1])


def string_list(value: Any) -> list[str]:
    """'a,b' or [a, b] -> [a, b]."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected a list of names, got {value!r}")


def escaped_list(value: Any) -> list[str]:
    """['\\n\\n', ...] from the CLI (backslash escapes read) or a YAML list (taken as written) -> [str]."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of texts, got {value!r}")
    out = [codecs.decode(v, "unicode_escape") if "\\" in v else v for v in value]
    if any(not v for v in out):
        raise ValueError("an empty stop text would stop every reply at once")
    return out


def in_unit_interval(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be between 0 and 1; got {value!r}")


def at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be at least {low}; got {value!r}")


def is_config_class(obj: Any) -> bool:
    return isinstance(obj, type) and is_dataclass(obj) and issubclass(obj, Options)
