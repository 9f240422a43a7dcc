"""`cai export` and `cai eval`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cai.cli.common import app
from cai.cli.derive import config_command
from cai.evaluate import JudgeEvalConfig

eval_app = typer.Typer(help="Evaluate judges and models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@app.command("export")
def export(
    run: Annotated[str, typer.Argument(help="A run directory from cai sl or cai rl.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write the export.")],
    format: Annotated[str, typer.Option("--format", "-f", help="trl: a DatasetDict saved to disk; nemo: "
                                        "NeMo-Aligner JSONL files (cai.export.FORMATS lists them).")] = "trl",
    split: Annotated[str, typer.Option(help="Split fractions, e.g. train=0.9,test=0.1. Each prompt's split follows "
                                       "from --seed and its content alone, so it is the same in every export.")
                     ] = "train=0.9,test=0.1",
    blend: Annotated[Optional[list[str]], typer.Option(help="FILE:RATIO helpfulness rows per CAI row; "
                                                       "repeatable. TRL rows or hh-rlhf transcripts.")] = None,
    chat_template_model: Annotated[str, typer.Option(help="Model whose chat template renders NeMo "
                                                     "files.")] = "smollm2",
    seed: Annotated[int, typer.Option(help="Seeds the split.")] = 0,
) -> None:
    """Export a run's data for trainers (TRL or NeMo-Aligner formats)."""
    from cai.export import export_run

    report = export_run(run, format, out, split=split, seed=seed, blends=blend or [],
                        chat_template_model=chat_template_model)
    typer.echo(json.dumps(report, indent=2))
    for warning in report["warnings"]:
        Console(stderr=True).print(f"[yellow]warning:[/] {warning}", highlight=False)


@config_command(eval_app, "judge", JudgeEvalConfig)
def eval_judge(config: JudgeEvalConfig, quiet: bool) -> None:
    """How often an AI labeller agrees with human harmlessness labels."""
    from cai.evaluate import run_judge_eval

    result = run_judge_eval(config, show_progress=not quiet)
    labeling = config.labeling
    table = Table(title=f"judge accuracy vs human labels ({labeling.labeler}, {', '.join(labeling.judges)})",
                  show_header=False)
    for key, value in result.summary["report"].items():
        table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)
