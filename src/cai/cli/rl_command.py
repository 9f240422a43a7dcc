"""`cai rl`: candidates + AI preference labels under the constitution."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cai.cli.common import (ConcurrencyOpt, ConstitutionOpt, CotFewShotOpt, EngineOptionOpt, HHModeOpt,
                            JudgePrinciplesOpt, LimitOpt, MaxFailureRateOpt, OnBadOpt, OutOpt, PromptFieldOpt,
                            PromptsOpt, QuietOpt, SeedOpt, app, check_choice)

LabelerOpt = Annotated[str, typer.Option(help="pairwise: the paper's (A)/(B) log-prob soft labels; cot: reasoning "
                                         "first, probabilities clamped; rank-all: NeMo-style most/least aligned "
                                         "of all K as JSON.")]
JudgeOpt = Annotated[Optional[list[str]], typer.Option("--judge", help="Judge model spec; repeat for an ensemble.")]


def parse_floats(text: str | None, name: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from exc


@app.command("rl")
def rl(
    prompts: PromptsOpt,
    out: OutOpt,
    policy: Annotated[str, typer.Option(help="Model spec that writes the candidates.")] = "smollm2",
    judge: JudgeOpt = None,
    labeler: LabelerOpt = "pairwise",
    constitution: ConstitutionOpt = "default",
    judge_principles: JudgePrinciplesOpt = None,
    cot_few_shot: CotFewShotOpt = "default",
    candidates: Annotated[int, typer.Option(help="K candidates per prompt, sampled at --temperature.")] = 2,
    temperature: float = 0.8,
    temperatures: Annotated[Optional[str], typer.Option(
        help="A temperature sweep instead, one candidate each, e.g. 0.01,0.51,1.01,1.51 (NeMo).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per candidate.")] = 256,
    pairs: Annotated[str, typer.Option(help="For K>2: 'all' labelled pairs, or 'best-worst' after a round of "
                                       "all pairs.")] = "all",
    both_orders: Annotated[bool, typer.Option(help="Ask (A,B) and (B,A) and average, against position "
                                              "bias.")] = True,
    principles_per_label: Annotated[int, typer.Option(help="Average each label over M sampled "
                                                      "principles.")] = 1,
    clamp: Annotated[str, typer.Option(help="CoT probability clamp 'lo,hi'.")] = "0.4,0.6",
    combine: Annotated[str, typer.Option(help="Ensemble of judges: 'mean' probability or 'vote'.")] = "mean",
    min_judges: Annotated[int, typer.Option(help="Ensembles: a label needs at least this many judges to answer; "
                                            "each judge's failure is recorded with its reason.")] = 1,
    min_margin: Annotated[float, typer.Option(help="Drop pairs with |2p-1| below this (kept in failures.jsonl "
                                              "with code below_min_margin): near coin flips are not preferences. "
                                              "0 keeps every labelled pair.")] = 0.1,
    judge_max_tokens: Annotated[int, typer.Option(help="Max tokens of CoT reasoning / rank-all answers.")] = 192,
    rank_retries: Annotated[int, typer.Option(help="Rank-all: retries after an unparsable answer.")] = 2,
    seed: SeedOpt = 0,
    prompt_field: PromptFieldOpt = "auto",
    hh_mode: HHModeOpt = "first",
    limit: LimitOpt = None,
    on_bad_input: OnBadOpt = "error",
    concurrency: ConcurrencyOpt = 64,
    engine_option: EngineOptionOpt = None,
    max_failure_rate: MaxFailureRateOpt = 0.5,
    quiet: QuietOpt = False,
) -> None:
    """Sample K candidates per prompt and label preferences with an AI judge.

    Writes candidates.jsonl, preferences.jsonl (TRL conversational preference format
    with provenance: labeler, judges, principle ids, p_chosen per order, margin,
    position-bias flag, raw judge text), failures.jsonl, summary.json, manifest.json.
    """
    from cai.engines.base import parse_option_pairs
    from cai.rl import LABELERS, RLConfig, run_rl

    check_choice("--labeler", labeler, LABELERS)
    check_choice("--pairs", pairs, ("all", "best-worst"))
    check_choice("--combine", combine, ("mean", "vote"))
    check_choice("--hh-mode", hh_mode, ("first", "context"))
    check_choice("--on-bad-input", on_bad_input, ("error", "skip"))
    bounds = parse_floats(clamp, "--clamp") or []
    if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1] <= 1:
        raise typer.BadParameter("--clamp must be 'lo,hi' with 0 <= lo <= hi <= 1")
    config = RLConfig(prompts=prompts, out=out, policy=policy, judges=judge or ["smollm2"], labeler=labeler,
                      constitution=constitution, judge_principles=judge_principles, cot_few_shot=cot_few_shot,
                      candidates=candidates, temperature=temperature,
                      temperatures=parse_floats(temperatures, "--temperatures"), max_tokens=max_tokens, pairs=pairs,
                      both_orders=both_orders, principles_per_label=principles_per_label,
                      clamp=(bounds[0], bounds[1]), combine=combine, min_judges=min_judges, min_margin=min_margin,
                      judge_max_tokens=judge_max_tokens, rank_retries=rank_retries, seed=seed,
                      prompt_field=prompt_field, hh_mode=hh_mode, limit=limit, on_bad_input=on_bad_input,
                      concurrency=concurrency, engine_options=parse_option_pairs(engine_option or []),
                      max_failure_rate=max_failure_rate)
    run_rl(config, show_progress=not quiet)
