"""`cai train sft`: supervised fine-tuning on SL-CAI revisions with TRL's SFTTrainer.

Rows in TRL's `messages` format become prompt-completion rows (everything before the
final assistant turn is the prompt), so the loss falls on the assistant's final reply
only (TRL's completion-only loss). Chat templates need no `{% generation %}` markers.
"""

from __future__ import annotations

from typing import Any

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
from cai.train.configs import SFTWrapperConfig


def to_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise TrainError("every SFT row must end with an assistant message")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def main(config: SFTWrapperConfig) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    data = load_training_data(config.data, "sft")
    if config.blend:
        data = _blend(data, config)
    columns = data["train"].column_names
    if "messages" in columns:
        data = data.map(to_prompt_completion, remove_columns=columns)
    elif not {"prompt", "completion"} <= set(columns):
        raise TrainError(f"SFT data needs a 'messages' or 'prompt'+'completion' column; got {columns}")
    else:
        data = data.select_columns(["prompt", "completion"])
    path = model_path(config.model)
    tokenizer = load_tokenizer(path)
    args = SFTConfig(**trainer_args(config), max_length=config.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=data["train"],
                         eval_dataset=data.get(config.eval_split), processing_class=tokenizer,
                         peft_config=peft_config(config, "CAUSAL_LM"))
    before = snapshot_trainable(trainer.model)
    trainer.train()
    return finish(trainer, config, "sft", before, {"train_rows": len(data["train"])})


def _blend(data: Any, config: SFTWrapperConfig) -> Any:
    from datasets import Dataset, concatenate_datasets

    from cai.export import blend_rows, parse_blend

    rows = [{"messages": r["messages"], "origin": "cai"} for r in data["train"]]
    blend_rows("sl", rows, [parse_blend(config.blend or "")], config.seed)
    extra = Dataset.from_list([{"messages": r["messages"]} for r in rows if r["origin"] != "cai"])
    data["train"] = concatenate_datasets([data["train"].select_columns(["messages"]), extra]).shuffle(seed=config.seed)
    return data
