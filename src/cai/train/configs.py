"""The options of `cai train sft|reward|dpo|ppo`: one dataclass each, in TRL's style.

Kept apart from the trainers so that the CLI can list every option (and `--help` can
run) without importing torch or TRL. Shared options live in `CommonTrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cai.core.options import option, redefault
from cai.train.common import CommonTrainConfig

#: --soft-labels values; checked when the data is read (`cai.train.labels.resolve_mode`), where
#: the message can say what a retired mode did
REWARD_MODES = ("soft", "hard", "margin")
DPO_MODES = ("soft", "hard")


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


@dataclass
class PolicyRLConfig(CommonTrainConfig):
    reward_model: str = option("", help="The preference model (cai train reward).")
    algo: str = option("rloo", choices=("rloo", "grpo"), help="TRL's RLOO or GRPO trainer (TRL 1.x has no "
                                                              "PPOTrainer).")
    learning_rate: float = redefault(CommonTrainConfig, "learning_rate", 1e-6)
    num_generations: int = option(2, help="Samples per prompt.")
    max_completion_length: int = option(64, help="Max new tokens per sample.")
    beta: float = option(0.05, help="KL penalty against the starting policy.")
    temperature: float = option(0.9, help="Sampling temperature.")
