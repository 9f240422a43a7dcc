"""`cai recipe`: the whole Constitutional AI pipeline at demo scale, in one command.

  1. sl      SL-CAI critique/revision data from the starting model      -> <out>/sl
  2. sft     SFT on the revisions                                        -> <out>/models/sft
  3. rl      candidates from the SFT model, labelled by the starting model -> <out>/rl
  4. reward  a preference model on the AI labels                         -> <out>/models/pm
  5. dpo     DPO of the SFT model on the AI labels                       -> <out>/models/dpo

Data stages resume through their stores; a training stage is skipped when its
`train_report.json` exists. A summary table of every stage and an HTML report
(`<out>/report.html`, `cai report`) end the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cai.core.options import Options, option


@dataclass
class RecipeConfig(Options):
    prompts: str = option(required=True, flag="--prompts", short="-p", help="Red-team prompts.")
    out: str = option(required=True, short="-o", help="Recipe directory (every stage resumes).")
    model: str = option("smollm2", help="Starting model.")
    limit: int | None = option(16, help="Prompts to use.")
    rounds: int = option(2, help="Critique/revision rounds.")
    candidates: int = option(2, help="Candidates per prompt for the RL data.")
    max_tokens: int = option(64, help="Max new tokens per generated reply.")
    train_steps: int = option(4, help="Optimizer steps per training stage.")
    seed: int = option(0, help="Seeds every stage.")
    #: `cai rl` drops pairs with |2p - 1| < 0.1 by default, to keep near coin flips out of
    #: exports a hard-label trainer might read. The recipe trains on soft labels, where such
    #: a pair carries almost no weight, and its demo-scale judge is a 135M model whose
    #: labels are nearly all below 0.1, so it keeps every labelled pair.
    min_margin: float = option(0.0, help="Drop RL pairs with |2p-1| below this (the recipe trains on soft "
                                         "labels, so it keeps them all by default).")
    #: at demo scale (--max-tokens 64) many final revisions are cut off; the recipe keeps
    #: them (flagged `truncated` in sl.jsonl) rather than train on nothing
    keep_truncated: bool = option(True, help="Keep final revisions cut off at --max-tokens (flagged) rather than "
                                             "train on nothing at demo scale.")


def _train(out: Path, make: Any) -> dict[str, Any]:
    report_file = out / "train_report.json"
    if report_file.exists():
        return {**json.loads(report_file.read_text()), "resumed": True}
    return make()


def run_recipe(config: RecipeConfig, *, show_progress: bool = True) -> dict[str, Any]:
    from cai.generate.rl import RLConfig, run_rl
    from cai.generate.sl import SLConfig, run_sl
    from cai.train import dpo, reward, sft

    root = Path(config.out)
    console = Console(stderr=True)
    stages: dict[str, Any] = {}
    sl = run_sl(SLConfig.of(prompts=config.prompts, out=str(root / "sl"), model=config.model, rounds=config.rounds,
                         max_tokens=config.max_tokens, limit=config.limit, seed=config.seed,
                         keep_truncated=config.keep_truncated),
                show_progress=show_progress, console=console)
    stages["sl"] = f"{sl.summary['files'].get('sft.jsonl', 0)} SFT rows, {sl.summary['files']['failures.jsonl']} failures"
    # demo scale: a small model, a few steps; recomputing activations would only slow it down
    steps = dict(max_steps=config.train_steps, batch_size=2, max_length=384, seed=config.seed,
                 gradient_checkpointing=False)
    sft_out = root / "models" / "sft"
    rep = _train(sft_out, lambda: sft.main(sft.SFTWrapperConfig(data=str(root / "sl"), model=config.model,
                                                                       out=str(sft_out), **steps)))
    stages["sft"] = f"{rep['steps']} steps, final loss {rep['final_loss']}"
    rl = run_rl(RLConfig.of(prompts=config.prompts, out=str(root / "rl"), policy=f"hf:{sft_out}", judges=[config.model],
                         candidates=config.candidates, max_tokens=config.max_tokens, limit=config.limit,
                         seed=config.seed, min_margin=config.min_margin), show_progress=show_progress, console=console)
    pairs = rl.summary["files"].get("preferences.jsonl", 0)
    stages["rl"] = f"{pairs} preference pairs, position-bias rate {rl.summary.get('position_bias_rate')}"
    if pairs == 0:
        stages["reward"] = stages["dpo"] = "skipped: no preference pairs (see rl/failures.jsonl)"
    else:
        pm_out, dpo_out = root / "models" / "pm", root / "models" / "dpo"
        rep = _train(pm_out, lambda: reward.main(reward.RewardWrapperConfig(
            data=str(root / "rl"), model=config.model, out=str(pm_out), **steps)))
        stages["reward"] = f"{rep['steps']} steps, final loss {rep['final_loss']}"
        rep = _train(dpo_out, lambda: dpo.main(dpo.DPOWrapperConfig(
            data=str(root / "rl"), model=str(sft_out), out=str(dpo_out), **steps)))
        stages["dpo"] = f"{rep['steps']} steps, final loss {rep['final_loss']}"
    from cai.report import ReportConfig, build_report

    built = build_report(ReportConfig(paths=[str(root)], out=str(root / "report.html")))
    stages["report"] = f"{built.path} ({built.figures} figures)"
    table = Table(title=f"cai recipe → {root}")
    table.add_column("stage")
    table.add_column("result")
    for name, result in stages.items():
        table.add_row(name, str(result))
    console.print(table)
    (root / "recipe_summary.json").write_text(json.dumps(stages, indent=2) + "\n")
    return stages
