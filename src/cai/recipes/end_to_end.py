"""`cai recipe`: the whole Constitutional AI pipeline at demo scale, in one command.

  1. sl      SL-CAI critique/revision data from the starting model      -> <out>/sl
  2. sft     SFT on the revisions                                        -> <out>/models/sft
  3. rl      candidates from the SFT model, labelled by the starting model -> <out>/rl
  4. reward  a preference model on the AI labels                         -> <out>/models/pm
  5. dpo     DPO of the SFT model on the AI labels                       -> <out>/models/dpo
  6. rlaif   (--rlaif) direct RLAIF of the SFT model: GRPO with the judge's
             expected rating as the reward (`cai train policy --reward judge-score`) -> <out>/models/rlaif
  7. judge-check  the evaluation judge on shipped human-labelled hh-rlhf pairs -> <out>/judge-check
  8. eval    `cai eval models` of start, sft, dpo (and rlaif) on the recipe's red-team
             prompts (held in: they trained the models) and the shipped helpful and
             benign sets, judged by --eval-judge                          -> <out>/eval

Data stages resume through their stores; a training stage is skipped when its
`train_report.json` exists. The run ends with the model-comparison table (Elo with
intervals, refusal rates), one verdict line per stage against the starting model with the
judge's agreement with human labels beside it, a summary table of every stage and an HTML
report (`<out>/report.html`, `cai report`) whose Elo figure plots the stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cai.core.errors import ConfigError
from cai.core.options import Options, at_least, option
from cai.generate.gates import POLICIES

#: the human-labelled pairs the evaluation judge is checked on (hh-rlhf, MIT; see samples/LICENSE-hh-rlhf.txt)
HUMAN_PAIRS = "hh_rlhf_harmless_100.jsonl"


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
    #: a 135M model's revisions often copy its critique: the recipe resamples them, then keeps what
    #: still fails a gate flagged (counted in sl/summary.json) rather than train on nothing
    revision_attempts: int = option(3, help="Resample a revision that fails the quality gates up to this many "
                                            "times (cai sl --revision-attempts).")
    gates: str = option("keep", choices=tuple(POLICIES),
                        help="cai sl --gates: 'keep' (the recipe's default at demo scale) keeps revisions that fail a "
                             "gate, flagged; 'default' fails rows whose revision copies its critique.")
    #: at demo scale (--max-tokens 64) many final revisions are cut off; the recipe keeps
    #: them (flagged `truncated` in sl.jsonl) rather than train on nothing
    keep_truncated: bool = option(True, help="Keep final revisions cut off at --max-tokens (flagged) rather than "
                                             "train on nothing at demo scale.")
    evaluate: bool = option(True, help="End with `cai eval models` of the starting, SFT and DPO models (and the "
                                       "direct-RLAIF one with --rlaif): Elo, verdicts and refusal rates.")
    eval_judge: str | None = option(None, help="The evaluation judge (default: --model); it may differ from the "
                                               "judge that labelled the training data.")
    eval_limit: int = option(8, help="Prompts per evaluation set: the recipe's red-team prompts (held in), the "
                                     "shipped helpful and benign-but-sensitive prompts.")
    judge_check_pairs: int = option(100, help="Shipped human-labelled hh-rlhf pairs (up to 100) on which the "
                                              "evaluation judge's agreement with humans is measured; 0 skips it.")
    rlaif: bool = option(False, help="Also train a direct-RLAIF model from the SFT model (GRPO, the judge's "
                                     "expected rating as the reward, judged by --model) and evaluate it.")

    def check(self) -> None:
        at_least("--eval-limit", self.eval_limit, 1)
        at_least("--judge-check-pairs", self.judge_check_pairs, 0)
        if self.judge_check_pairs > 100:
            raise ConfigError(f"--judge-check-pairs: 100 pairs ship with cai; got {self.judge_check_pairs}")


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
                         keep_truncated=config.keep_truncated, revision_attempts=config.revision_attempts,
                         gates=config.gates),
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
    models = {"start": config.model, "sft": f"hf:{sft_out}"}
    if pairs:
        models["dpo"] = f"hf:{root / 'models' / 'dpo'}"
    if config.rlaif:
        rlaif_out = root / "models" / "rlaif"
        rep = _train(rlaif_out, lambda: _rlaif(config, root, sft_out, rlaif_out, steps))
        models["rlaif"] = f"hf:{rlaif_out}"
        reward = rep.get("reward") or {}
        stages["rlaif"] = (f"{rep['steps']} GRPO steps against the judge's expected rating: mean reward "
                           f"{reward.get('reward_mean_first')} -> {reward.get('reward_mean_last')}, "
                           f"{reward.get('judge_calls')} judge calls")
    if config.evaluate:
        stages.update(_evaluate(config, root, models, show_progress, console))
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


def _rlaif(config: RecipeConfig, root: Path, sft_out: Path, out: Path, steps: dict[str, Any]) -> dict[str, Any]:
    """Direct RLAIF of the SFT model on the RL run's prompts, judged by the starting model."""
    from cai.train import policy
    from cai.train.configs import PolicyRLConfig

    return policy.main(PolicyRLConfig(data=str(root / "rl"), model=str(sft_out), out=str(out), reward="judge-score",
                                      judge=config.model, algo="grpo", num_generations=2,
                                      max_completion_length=config.max_tokens, **steps))


def _evaluate(config: RecipeConfig, root: Path, models: dict[str, str], show_progress: bool,
              console: Console) -> dict[str, str]:
    """The judge's agreement with human labels, then `cai eval models` of every stage's model."""
    from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
    from cai.evaluate.models import ModelsEvalConfig, run_models_eval
    from cai.inputs.prompts import shipped_sample
    from cai.report.eval_sections import comparison_table

    judge = config.eval_judge or config.model
    stages: dict[str, str] = {}
    agreement = "none"
    if config.judge_check_pairs:
        check = run_judge_eval(JudgeEvalConfig.of(pairs=shipped_sample(HUMAN_PAIRS), out=str(root / "judge-check"),
                                                  judges=[judge], limit=config.judge_check_pairs,
                                                  constitution="eval-harmless", seed=config.seed),
                               show_progress=show_progress, console=console)
        rep = check.summary["report"]
        agreement = str(root / "judge-check")
        low, high = rep["accuracy_ci95"]
        stages["judge-check"] = (f"{judge} agrees with human labels {rep['accuracy']:.2f} [{low:.2f}, {high:.2f}] of "
                                 f"{rep['pairs_asked']} hh-rlhf pairs")
    result = run_models_eval(ModelsEvalConfig.of(
        prompts=config.prompts, out=str(root / "eval"), models=[f"{n}={spec}" for n, spec in models.items()],
        judge=judge, limit=config.eval_limit, max_tokens=config.max_tokens, seed=config.seed,
        judge_agreement=agreement), show_progress=show_progress, console=console)
    report = json.loads((result.run.path / "report.json").read_text())
    headers, rows = comparison_table(report)
    table = Table(title="Models compared (Elo relative to start, 95% intervals; refusal rates)")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*[str(c) for c in row])
    console.print(table)
    for verdict in report.get("verdicts", []):
        stages[f"verdict: {verdict['model']}"] = verdict["line"]
    red_team = (report.get("harmlessness") or {}).get("prompts", 0)
    stages["eval"] = f"{len(models)} models ({', '.join(models)}) on {red_team} red-team prompts; {result.run.path}"
    return stages

