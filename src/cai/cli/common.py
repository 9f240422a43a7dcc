"""Options shared by several commands, defined once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="cai",
    help="Constitutional AI: turn a written constitution into alignment data and aligned models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PromptsOpt = Annotated[str, typer.Option("--prompts", "-p", help="Prompt file: .jsonl, .csv, .parquet, or a "
                                         "folder saved by datasets; hh-rlhf transcripts are understood.")]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Run directory. Re-running on the same directory resumes.")]
ConstitutionOpt = Annotated[str, typer.Option(help="Shipped name (default) or a file: our YAML, Anthropic's "
                                              "CritiqueRevisionInstructions JSON, a list of principles (.txt/.json), "
                                              "or a YAML naming sl_principles and judge_principles files.")]
JudgePrinciplesOpt = Annotated[Optional[str], typer.Option(
    help="A second file whose judge questions replace the constitution's, e.g. Anthropic's RL principle list "
         "(RLMadisonInstructions.json) beside --constitution CritiqueRevisionInstructions.json; one hash covers "
         "both.")]
CotFewShotOpt = Annotated[str, typer.Option(help="CoT labeller examples: 'default' (shipped), 'none', our YAML, or "
                                            "Anthropic's RLMadisonPrecogFewShotPrompts.json shape.")]
PromptFieldOpt = Annotated[str, typer.Option(help="Column holding the prompt; 'auto' tries prompt, question, "
                                             "instruction, messages, then an hh-rlhf 'chosen' transcript.")]
HHModeOpt = Annotated[str, typer.Option(help="For multi-turn inputs: 'first' human turn only, or the whole "
                                        "'context' up to the last human turn.")]
LimitOpt = Annotated[Optional[int], typer.Option(help="Read at most this many rows.")]
OnBadOpt = Annotated[str, typer.Option(help="'error': stop before any model call on the first bad row (file:line "
                                       "and reason); 'skip': record bad rows in failures.jsonl and go on.")]
SeedOpt = Annotated[int, typer.Option(help="Seeds principle sampling and generation.")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Rows processed at once (their requests are batched together).")]
EngineOptionOpt = Annotated[Optional[list[str]], typer.Option("--engine-option", "-E",
                                                              help="Engine option key=value, repeatable "
                                                                   "(e.g. -E max_batch_size=16 -E dtype=fp32).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
MaxFailureRateOpt = Annotated[float, typer.Option(
    help="Stop early (exit status 3, everything finished kept) when more than this share of the rows finished in "
         "this run failed, judged once 20 rows have finished; bad input rows do not count. 1 never stops.")]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value
