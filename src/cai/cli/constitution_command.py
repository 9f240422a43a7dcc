"""`cai constitution`: inspect a constitution as cai will use it (`show`, `list`), import a Markdown one (`import`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cai.cli.app import app
from cai.cli.derive import derived_option
from cai.inputs.constitution import ConstitutionOptions
from cai.inputs.markdown_constitution import HARD_HEADING

JudgePrinciplesOpt = derived_option(ConstitutionOptions, "judge_principles")
constitution_app = typer.Typer(help="Inspect constitutions, and import Markdown ones.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")


@constitution_app.command("show")
def show(ref: Annotated[str, typer.Argument(help="Shipped name or file.")] = "default",
         judge_principles: JudgePrinciplesOpt = None) -> None:
    """List the principles of a constitution, with its hash (over every part)."""
    from cai.inputs.constitution import load_constitution

    from pathlib import Path

    from cai.inputs.constitution import source_status

    c = load_constitution(ref, judge_principles=judge_principles)
    table = Table(title=f"{c.name} ({c.source}) hash {c.hash}")
    authored = any(p.section or p.priority is not None or p.hard for p in c.principles)
    columns = (("priority", "hard") if authored else ()) + ("id", "critique", "revision", "judge")
    for column in columns:
        table.add_column(column, overflow="fold")
    for p in c.principles:
        own = (str(p.priority) if p.priority is not None else "", "yes" if p.hard else "") if authored else ()
        table.add_row(*own, p.id, p.critique, p.revision, p.judge)
    console = Console()
    console.print(table)
    hard = sum(p.hard for p in c.principles)
    console.print(f"{len(c.principles)} principles ({len(c.sl_principles)} with critique and revision requests, "
                  f"{len(c.judge_principles)} with judge questions, {hard} hard constraints)", highlight=False)
    status = source_status(c, Path(ref).parent if Path(ref).is_file() else None)
    if status:
        console.print(status, highlight=False, soft_wrap=True)
    skipped = c.meta.get("skipped") or []
    if skipped:
        counts: dict[str, int] = {}
        for item in skipped:
            counts[item["code"]] = counts.get(item["code"], 0) + 1
        console.print("left out of the Markdown: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                      highlight=False, soft_wrap=True)


@constitution_app.command("import")
def import_markdown(
    markdown: Annotated[str, typer.Argument(help="A Markdown constitution: prose under headings, with lists.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="The YAML to write (default: beside the "
                                                                    "Markdown, same name, .yaml).")] = None,
    templates: Annotated[Optional[str], typer.Option(
        help="Your copy of src/cai/prompts/principle_from_markdown.yaml: how each principle becomes critique, "
             "revision and judge requests.")] = None,
    exclude_section: Annotated[Optional[list[str]], typer.Option(
        help="A heading whose section (subsections included) holds no principles, e.g. 'Introduction'; "
             "repeatable.")] = None,
    hard_heading: Annotated[str, typer.Option(help="Regular expression for the headings of hard-constraint "
                                                   "sections.")] = HARD_HEADING,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Turn a Markdown constitution into our YAML: one principle per list item or paragraph,
    section order kept as priority, hard constraints as principles of their own, the
    Markdown's sha256 pinned. Prints what became of every block."""
    import os
    from pathlib import Path

    from cai.core.errors import ConfigError
    from cai.inputs.constitution import constitution_yaml, markdown_constitution
    from cai.inputs.files import read_user_text

    source = Path(markdown)
    if not source.is_file():
        raise ConfigError(f"{markdown}: no such file")
    target = Path(out) if out else source.with_suffix(".yaml")
    if target.resolve() == source.resolve():
        raise ConfigError(f"--out {target} is the Markdown itself")
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; give --force to overwrite it, or another --out")
    c = markdown_constitution(read_user_text(source), str(source), templates=templates,
                              hard_heading=hard_heading, exclude_sections=tuple(exclude_section or ()))
    # the pinned path is relative to the YAML, so the pair can move together
    c.meta["imported_from"]["path"] = os.path.relpath(source.resolve(), target.resolve().parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(constitution_yaml(c), encoding="utf-8")
    console = Console()
    by_priority: dict[int | None, list[str]] = {}
    for p in c.principles:
        by_priority.setdefault(p.priority, []).append(p.id)
    table = Table(title=f"{c.name}: {len(c.principles)} principles from {source}")
    for column in ("priority", "section", "principles", "hard constraints"):
        table.add_column(column, overflow="fold")
    for priority, ids in by_priority.items():
        first = c.by_id(ids[0])
        table.add_row(str(priority), first.section.split(" > ")[0] or "(preamble)", str(len(ids)),
                      str(sum(c.by_id(i).hard for i in ids)))
    console.print(table)
    skipped = c.meta.get("skipped") or []
    for item in skipped:
        console.print(f"left out: {source}:{item['line']} [{item['code']}] {item['text']}", highlight=False,
                      markup=False, soft_wrap=True)
    console.print(f"wrote {target} (hash {c.hash}; {len(skipped)} blocks left out, listed above)", highlight=False)


@constitution_app.command("list")
def list_shipped() -> None:
    """Names of the constitutions shipped with cai."""
    from cai.inputs.constitution import shipped_constitutions

    for name in shipped_constitutions():
        typer.echo(name)
