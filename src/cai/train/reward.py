"""`cai train reward`: a preference model on AI labels with TRL's RewardTrainer.

`AutoModelForSequenceClassification` with one output and the pad token set; its new score
head is initialised under `--seed`, so the same data and seed give the same model.

How the label enters the loss (`--soft-labels`, see labels.py for the default):
- `soft`: `SoftRewardTrainer`, TRL's RewardTrainer with only the loss replaced by the soft
  Bradley-Terry cross-entropy -[p·log σ(Δr) + (1-p)·log σ(-Δr)], Δr = r_chosen - r_rejected
  and p the row's `p_chosen`. Its optimum is the reward gap logit(p), as in the CAI paper.
- `hard`: TRL unchanged, -log σ(Δr); every pair counts as certain.
- `margin`: TRL's own margin column, -log σ(Δr - m) with m = |2p - 1| × `--margin-scale`:
  confident labels ask for a larger gap, but a p = 0.51 label still trains at full strength.
TRL's reward-centering term (`center_rewards_coefficient`) is added in every mode.
"""

from __future__ import annotations

from typing import Any

from trl import RewardTrainer

from cai.train.common import (
    TrainError,
    finish,
    load_tokenizer,
    load_training_data,
    model_path,
    peft_config,
    snapshot_trainable,
    trainer_args,
)
from cai.train.configs import (
    REWARD_MODES as MODES,  # noqa: E402
    RewardWrapperConfig,
)
from cai.train.labels import prepare_preferences
from cai.train.soft_loss import P_COLUMN, KeepsPChosen, soft_bradley_terry_loss


class SoftRewardTrainer(KeepsPChosen, RewardTrainer):
    """RewardTrainer whose loss is the soft Bradley-Terry cross-entropy on each row's p_chosen."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        p = inputs.pop(P_COLUMN)
        # TRL runs the model and logs its metrics (accuracy, reward gap); only its loss is replaced
        _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        rewards_chosen, rewards_rejected = outputs.logits.squeeze(-1).chunk(2)
        loss = soft_bradley_terry_loss(rewards_chosen - rewards_rejected, p).mean()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * ((rewards_chosen + rewards_rejected) ** 2).mean()
        return (loss, outputs) if return_outputs else loss


def check_options(config: RewardWrapperConfig) -> None:
    if config.margin_scale is not None and config.soft_labels != "margin":
        raise TrainError("--margin-scale is used only with --soft-labels margin "
                         f"(got --soft-labels {config.soft_labels or 'default'}); drop it or choose margin")
    if config.margin_scale is not None and config.margin_scale < 0:
        raise TrainError(f"--margin-scale must be >= 0; got {config.margin_scale}")


def main(config: RewardWrapperConfig) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig

    check_options(config)
    prepared = prepare_preferences(load_training_data(config.data, "preference"), config.data, config.soft_labels,
                                   MODES, margin_scale=1.0 if config.margin_scale is None else config.margin_scale)
    data = prepared.data
    path = model_path(config.model)
    tokenizer = load_tokenizer(path)
    set_seed(config.seed)  # the score head is new: initialise it reproducibly
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**trainer_args(config), max_length=config.max_length,
                        center_rewards_coefficient=config.center_rewards_coefficient)
    trainer_cls = SoftRewardTrainer if prepared.mode == "soft" else RewardTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=data["train"],
                          eval_dataset=data.get(config.eval_split), processing_class=tokenizer,
                          peft_config=peft_config(config, "SEQ_CLS"))
    before = snapshot_trainable(trainer.model)
    trainer.train()
    extra = prepared.report()
    if prepared.mode == "margin":
        extra["margin_scale"] = 1.0 if config.margin_scale is None else config.margin_scale
    return finish(trainer, config, "reward", before, extra)
