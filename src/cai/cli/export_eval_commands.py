"""`cai export` and `cai eval`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cai.cli.common import (ConcurrencyOpt, ConstitutionOpt, CotFewShotOpt, EngineOptionOpt, JudgePrinciplesOpt,
                            LimitOpt, MaxFailureRateOpt, OnBadOpt, QuietOpt, SeedOpt, app)
from cai.cli.rl_command import JudgeOpt, LabelerOpt, parse_floats

eval_app = typer.Typer(help="Evaluate judges and models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@app.command("export")
def export(
    run: Annotated[str, typer.Argument(help="A run directory from cai sl or cai rl.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write the export.")],
    format: Annotated[str, typer.Option("--format", "-f", help="trl: a DatasetDict saved to disk; nemo: "
                                        "NeMo-Aligner JSONL files.")] = "trl",
    split: Annotated[str, typer.Option(help="Split fractions, e.g. train=0.9,test=0.1. Each prompt's split follows "
                                       "from --seed and its content alone, so it is the same in every export.")
                     ] = "train=0.9,test=0.1",
    blend: Annotated[Optional[list[str]], typer.Option(help="FILE:RATIO helpfulness rows per CAI row; "
                                                       "repeatable. TRL rows or hh-rlhf transcripts.")] = None,
    chat_template_model: Annotated[str, typer.Option(help="Model whose chat template renders NeMo "
                                                     "files.")] = "smollm2",
    seed: SeedOpt = 0,
) -> None:
    """Export a run's data for trainers (TRL or NeMo-Aligner formats)."""
    from cai.export import export_run

    report = export_run(run, format, out, split=split, seed=seed, blends=blend or [],
                        chat_template_model=chat_template_model)
    typer.echo(json.dumps(report, indent=2))
    for warning in report["warnings"]:
        Console(stderr=True).print(f"[yellow]warning:[/] {warning}", highlight=False)


@eval_app.command("judge")
def eval_judge(
    pairs: Annotated[str, typer.Option(help="hh-rlhf style JSONL (chosen/rejected transcripts) or TRL "
                                       "preference rows.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory (resumable).")] = "runs/eval-judge",
    judge: JudgeOpt = None,
    labeler: LabelerOpt = "pairwise",
    constitution: ConstitutionOpt = "default",
    judge_principles: JudgePrinciplesOpt = None,
    cot_few_shot: CotFewShotOpt = "default",
    both_orders: bool = True,
    principles_per_label: int = 1,
    clamp: str = "0.4,0.6",
    combine: str = "mean",
    min_judges: Annotated[int, typer.Option(help="Ensembles: a label needs at least this many judges to "
                                            "answer.")] = 1,
    judge_max_tokens: int = 192,
    rank_retries: int = 2,
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    on_bad_input: OnBadOpt = "error",
    concurrency: ConcurrencyOpt = 64,
    engine_option: EngineOptionOpt = None,
    max_failure_rate: MaxFailureRateOpt = 0.5,
    quiet: QuietOpt = False,
) -> None:
    """How often an AI labeller agrees with human harmlessness labels."""
    from cai.engines.base import parse_option_pairs
    from cai.evaluate import JudgeEvalConfig, run_judge_eval

    bounds = parse_floats(clamp, "--clamp") or []
    if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1] <= 1:
        raise typer.BadParameter("--clamp must be 'lo,hi' with 0 <= lo <= hi <= 1")
    config = JudgeEvalConfig(pairs=pairs, out=out, judges=judge or ["smollm2"], labeler=labeler,
                             constitution=constitution, judge_principles=judge_principles,
                             cot_few_shot=cot_few_shot, both_orders=both_orders,
                             principles_per_label=principles_per_label, clamp=(bounds[0], bounds[1]), combine=combine,
                             min_judges=min_judges,
                             judge_max_tokens=judge_max_tokens, rank_retries=rank_retries, seed=seed, limit=limit,
                             on_bad_input=on_bad_input, concurrency=concurrency,
                             engine_options=parse_option_pairs(engine_option or []),
                             max_failure_rate=max_failure_rate)
    result = run_judge_eval(config, show_progress=not quiet)
    table = Table(title=f"judge accuracy vs human labels ({labeler}, {', '.join(config.judges)})", show_header=False)
    for key, value in result.summary["report"].items():
        table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)
