"""`cai sl`: SL-CAI critique-and-revision data."""

from __future__ import annotations

from typing import Annotated

import typer

from cai.cli.common import (ConcurrencyOpt, ConstitutionOpt, EngineOptionOpt, HHModeOpt, JudgePrinciplesOpt, LimitOpt,
                            MaxFailureRateOpt, OnBadOpt, OutOpt, PromptFieldOpt, PromptsOpt, QuietOpt, SeedOpt, app,
                            check_choice)


@app.command("sl")
def sl(
    prompts: PromptsOpt,
    out: OutOpt,
    model: Annotated[str, typer.Option(help="Model spec: smollm2 (embedded), hf:<folder|gguf|hub id>, "
                                       "openai:<model>@<base_url>, vllm:<folder|hub id>.")] = "smollm2",
    constitution: ConstitutionOpt = "default",
    judge_principles: JudgePrinciplesOpt = None,
    rounds: Annotated[int, typer.Option(help="Critique/revision rounds; the paper used 4.")] = 4,
    few_shot: Annotated[str, typer.Option(help="'default' (shipped examples), 'none', our YAML, or Anthropic's "
                                          "CritiqueRevisionFewShotPrompts.json shape.")] = "default",
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per answer, critique and revision.")] = 256,
    temperature: float = 0.7,
    top_p: float = 1.0,
    keep_truncated: Annotated[bool, typer.Option(
        help="Keep a final revision cut off at --max-tokens (flagged truncated: true) instead of recording it "
             "as a failure with code 'truncated'.")] = False,
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
    """Red-team prompts -> answer -> R x (critique under a sampled principle -> revision).

    Writes sl.jsonl (full trace), sft.jsonl (TRL messages format: prompt -> final
    revision), failures.jsonl, summary.json and manifest.json into --out.
    """
    from cai.engines.base import parse_option_pairs
    from cai.sl import SLConfig, run_sl

    check_choice("--hh-mode", hh_mode, ("first", "context"))
    check_choice("--on-bad-input", on_bad_input, ("error", "skip"))
    config = SLConfig(prompts=prompts, out=out, model=model, constitution=constitution,
                      judge_principles=judge_principles, few_shot=few_shot,
                      rounds=rounds, seed=seed, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                      keep_truncated=keep_truncated,
                      prompt_field=prompt_field, hh_mode=hh_mode, limit=limit, on_bad_input=on_bad_input,
                      concurrency=concurrency, engine_options=parse_option_pairs(engine_option or []),
                      max_failure_rate=max_failure_rate)
    run_sl(config, show_progress=not quiet)
