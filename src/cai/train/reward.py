"""`cai train reward`: a preference model on AI labels with TRL's RewardTrainer.

`AutoModelForSequenceClassification` with one output and the pad token set. Soft labels
enter through TRL's `margin` column: the loss is -log σ(r_chosen - r_rejected - m), so a
confident AI label (margin |2p-1| near 1) asks for a larger reward gap, while a near-tie
asks only for the order. We chose the margin over sample weights because TRL supports it
natively and it keeps the Bradley-Terry loss unchanged when labels are certain.
`margin_scale` multiplies it (0 turns soft labels off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cai.train.common import (CommonTrainConfig, TrainError, finish, load_tokenizer, load_training_data, model_path,
                              peft_config, snapshot_trainable, trainer_args)


@dataclass
class RewardWrapperConfig(CommonTrainConfig):
    learning_rate: float = 1e-5
    margin_scale: float = 1.0
    center_rewards_coefficient: float | None = 0.01


def preference_columns(data: Any, keep_margin: bool) -> Any:
    columns = data["train"].column_names
    if not {"prompt", "chosen", "rejected"} <= set(columns):
        raise TrainError(f"preference data needs prompt, chosen and rejected columns; got {columns}")
    wanted = ["prompt", "chosen", "rejected"] + (["margin"] if keep_margin and "margin" in columns else [])
    return data.select_columns(wanted)


def main(config: RewardWrapperConfig) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    data = preference_columns(load_training_data(config.data, "preference"), keep_margin=config.margin_scale > 0)
    if "margin" in data["train"].column_names:
        data = data.map(lambda r: {"margin": float(r["margin"] or 0.0) * config.margin_scale})
    path = model_path(config.model)
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**trainer_args(config), max_length=config.max_length,
                        center_rewards_coefficient=config.center_rewards_coefficient)
    trainer = RewardTrainer(model=model, args=args, train_dataset=data["train"],
                            eval_dataset=data.get(config.eval_split), processing_class=tokenizer,
                            peft_config=peft_config(config, "SEQ_CLS"))
    before = snapshot_trainable(trainer.model)
    trainer.train()
    return finish(trainer, config, "reward", before, {"train_rows": len(data["train"]),
                                                       "soft_labels": "margin" in data["train"].column_names})
