"""`cai export`: a run's data in TRL or NeMo-Aligner formats. The library: `cai.export.export_run`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console

from cai.cli.app import app

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
