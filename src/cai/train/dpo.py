"""`cai train dpo`: DPO on AI preference labels with TRL's DPOTrainer.

Soft labels can enter two ways: `--min-margin` drops low-confidence pairs (counted in the
report), and `--soft-labels smoothing` turns the judge's average uncertainty into
conservative DPO (cDPO) label smoothing, ε = 1 - mean(p_chosen), capped at 0.5.
An explicit `--label-smoothing` wins over both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cai.train.common import (CommonTrainConfig, TrainError, finish, load_tokenizer, load_training_data, model_path,
                              peft_config, snapshot_trainable, trainer_args)
from cai.train.reward import preference_columns


@dataclass
class DPOWrapperConfig(CommonTrainConfig):
    learning_rate: float = 5e-7
    beta: float = 0.1
    min_margin: float = 0.0
    soft_labels: str = "none"  # or "smoothing"
    label_smoothing: float | None = None


def smoothing_from_labels(p_chosen: list[float | None]) -> float:
    known = [p for p in p_chosen if p is not None]
    return 0.0 if not known else min(0.5, max(0.0, 1.0 - sum(known) / len(known)))


def main(config: DPOWrapperConfig) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    if config.soft_labels not in ("none", "smoothing"):
        raise TrainError("--soft-labels must be 'none' or 'smoothing'")
    data = load_training_data(config.data, "preference")
    before_filter = len(data["train"])
    if config.min_margin > 0:
        if "margin" not in data["train"].column_names:
            raise TrainError("--min-margin needs a 'margin' column (cai rl writes one)")
        data = data.filter(lambda r: r["margin"] is None or r["margin"] >= config.min_margin)
    filtered = before_filter - len(data["train"])
    if len(data["train"]) == 0:
        raise TrainError(f"no pairs left after --min-margin {config.min_margin} ({filtered} filtered)")
    smoothing = config.label_smoothing
    if smoothing is None and config.soft_labels == "smoothing" and "p_chosen" in data["train"].column_names:
        smoothing = smoothing_from_labels(data["train"]["p_chosen"])
    data = preference_columns(data, keep_margin=False)
    path = model_path(config.model)
    args = DPOConfig(**trainer_args(config), beta=config.beta, max_length=config.max_length,
                     label_smoothing=smoothing or 0.0)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=data["train"],
                         eval_dataset=data.get(config.eval_split), processing_class=load_tokenizer(path),
                         peft_config=peft_config(config, "CAUSAL_LM"))
    before = snapshot_trainable(trainer.model)
    trainer.train()
    return finish(trainer, config, "dpo", before, {"train_rows": len(data["train"]), "pairs_filtered": filtered,
                                                    "label_smoothing": smoothing or 0.0})
