"""The options of `cai train sft|reward|dpo|policy` (`ppo` is the old name of `policy`): one dataclass each, in TRL's style.

Kept apart from the trainers so that the CLI can list every option (and `--help` can
run) without importing torch or TRL. Shared options live in `CommonTrainConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cai.core.errors import ConfigError
from cai.core.options import at_least, in_unit_interval, option, redefault
from cai.engines.base import EngineError, parse_option_pairs
from cai.train.common import CommonTrainConfig

#: --soft-labels values; checked when the data is read (`cai.train.labels.resolve_mode`), where
#: the message can say what a retired mode did
REWARD_MODES = ("soft", "hard", "margin")
DPO_MODES = ("soft", "hard")
#: --reward values of `cai train policy` (`cai.train.rewards` builds each)
REWARD_SOURCES = ("reward-model", "judge-score", "judge-pairwise")


@dataclass
class SFTWrapperConfig(CommonTrainConfig):
    learning_rate: float = redefault(CommonTrainConfig, "learning_rate", 2e-5)
    blend: str | None = option(None, help="FILE:RATIO helpfulness rows per CAI row.")


@dataclass
class RewardWrapperConfig(CommonTrainConfig):
    learning_rate: float = redefault(CommonTrainConfig, "learning_rate", 1e-5)
    soft_labels: str | None = option(
        None,
        help="soft: fit each pair's judge probability p_chosen with the soft Bradley-Terry loss -(p·log σ(Δr) + "
             "(1-p)·log σ(-Δr)); hard: -log σ(Δr), every pair certain; margin: TRL's margin column, "
             "-log σ(Δr - |2p-1|·scale). Default: soft when the data has p_chosen, else hard.")
    margin_scale: float | None = option(None, help="Multiplies |2p-1| with --soft-labels margin (an error with "
                                                   "any other mode); default 1.")
    center_rewards_coefficient: float | None = option(0.01, help="TRL's penalty pulling rewards towards zero.")


@dataclass
class DPOWrapperConfig(CommonTrainConfig):
    learning_rate: float = redefault(CommonTrainConfig, "learning_rate", 5e-7)
    beta: float = option(0.1, help="DPO beta.")
    min_margin: float = option(0.0, help="Drop pairs whose label margin |2p-1| is below this (counted in the "
                                         "report).")
    soft_labels: str | None = option(
        None,
        help="soft: each pair's p_chosen is the target on the implicit reward, -(p·log σ(βh) + (1-p)·log σ(-βh)) "
             "(cDPO with a per-pair ε = 1-p; needs --loss-type sigmoid); hard: TRL's loss unchanged. Default: "
             "soft when the data has p_chosen, else hard.")
    loss_type: str = option("sigmoid", help="TRL's DPO loss type; soft labels need sigmoid.")
    label_smoothing: float | None = option(
        None, help="TRL's global ε, read only by --loss-type robust, exo_pair, aot or aot_unpaired (an error with "
                   "any other).")


def engine_option_pairs(value: Any) -> dict[str, Any]:
    """['k=v', ...] from the CLI, or a YAML mapping, -> {k: parsed v}."""
    if isinstance(value, Mapping):
        return dict(value)
    try:
        return parse_option_pairs(list(value))
    except EngineError as exc:
        raise ValueError(str(exc)) from None


@dataclass
class PolicyRLConfig(CommonTrainConfig):
    reward: str = option("reward-model", choices=REWARD_SOURCES,
                         help="What rewards a sample. reward-model: the preference model of --reward-model (cai train "
                              "reward); judge-score: direct RLAIF, the judge rates each sample 1-9 under a sampled "
                              "principle and the reward is the expected rating from the score tokens' log-probs (one "
                              "scoring call per sample, no text generated); judge-pairwise: the judge compares the "
                              "samples of a prompt in both orders and the reward is each one's mean win probability.")
    reward_model: str = option("", help="The preference model (cai train reward), for --reward reward-model.")
    judge: str | None = option(None, help="Judge model spec for --reward judge-score|judge-pairwise (default smollm2): "
                                          "smollm2, hf:<dir>, openai:<model>@<url>, vllm:<model>, ray:<spec>; it may "
                                          "differ from the policy and run on its own server.")
    judge_options: dict[str, Any] = option(
        flag="--judge-option", default_factory=dict, parse=engine_option_pairs, cli_type=list[str],
        metavar="KEY=VALUE", help="Judge engine option key=value, repeatable (e.g. --judge-option dtype=fp32).")
    constitution: str = option("default", help="The constitution whose judge principles the judge uses (a shipped "
                                                "name or a file).")
    judge_retries: int = option(2, help="Retries of a judge call that failed; after them the sample's reward is None "
                                        "(left out of its group's baseline), never 0 or a neutral score.")
    max_judge_failure_rate: float = option(
        0.1, help="Stop training with an error when more than this share of the samples scored so far got no reward "
                  "(a failed judge call), judged once 16 samples have been scored. 1 never stops.")
    algo: str = option("rloo", choices=("rloo", "grpo"), help="TRL's RLOO or GRPO trainer (TRL 1.x has no "
                                                              "PPOTrainer).")
    learning_rate: float = redefault(CommonTrainConfig, "learning_rate", 1e-6)
    num_generations: int = option(2, help="Samples per prompt.")
    max_completion_length: int = option(64, help="Max new tokens per sample.")
    beta: float = option(0.05, help="KL penalty against the starting policy.")
    temperature: float = option(0.9, help="Sampling temperature.")

    def check(self) -> None:
        in_unit_interval("--max-judge-failure-rate", self.max_judge_failure_rate)
        at_least("--judge-retries", self.judge_retries, 0)
        if self.reward == "reward-model":
            given = [flag for flag, value in (("--judge", self.judge), ("--judge-option", self.judge_options))
                     if value]
            if given:
                raise ConfigError(f"{', '.join(given)} is used only with --reward judge-score or judge-pairwise; "
                                  "with --reward reward-model the trainer would ignore it")
        elif self.reward_model:
            raise ConfigError(f"--reward-model is used only with --reward reward-model; --reward {self.reward} "
                              "would ignore it")
        if self.reward == "judge-pairwise" and self.num_generations < 2:
            raise ConfigError("--reward judge-pairwise compares the samples of a prompt: --num-generations must be "
                              "at least 2")
