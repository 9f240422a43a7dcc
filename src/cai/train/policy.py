"""`cai train ppo`: optimise the policy against the preference model (PPO family).

The installed TRL (1.x) ships no PPOTrainer, in `trl` or `trl.experimental`; it ships
RLOO (REINFORCE leave-one-out, the PPO-family method TRL recommends in its place) and
GRPO. Both take our reward model as `reward_funcs`. `--algo rloo` is the default.
The prompts come from the RL run's preference rows (their `prompt` column).
"""

from __future__ import annotations

from typing import Any

from cai.train.common import (
    CommonTrainConfig,
    TrainError,
    finish,
    load_tokenizer,
    load_training_data,
    model_path,
    peft_config,
    snapshot_trainable,
    trainer_args,
)
from cai.train.configs import PolicyRLConfig


def main(config: PolicyRLConfig) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if config.algo not in ("rloo", "grpo"):
        raise TrainError("--algo must be 'rloo' or 'grpo' (TRL 1.x has no PPOTrainer)")
    if not config.reward_model:
        raise TrainError("--reward-model is required (train one with `cai train reward`)")
    if config.algo == "rloo":
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    data = load_training_data(config.data, "preference")
    if "prompt" not in data["train"].column_names:
        raise TrainError("policy optimisation needs a 'prompt' column")
    prompts = data["train"].select_columns(["prompt"])
    seen: set[str] = set()
    prompts = prompts.filter(lambda r: not (str(r["prompt"]) in seen or seen.add(str(r["prompt"]))))  # type: ignore[func-returns-value]
    path, rm_path = model_path(config.model), model_path(config.reward_model)
    reward_tok = load_tokenizer(rm_path)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    reward_model.config.pad_token_id = reward_tok.pad_token_id
    batch = max(config.batch_size, config.num_generations)
    batch -= batch % config.num_generations
    common = trainer_args(config)
    common["per_device_train_batch_size"] = batch
    args = Config(**common, num_generations=config.num_generations, max_completion_length=config.max_completion_length,
                  beta=config.beta, temperature=config.temperature)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward_model, args=args,
                      train_dataset=prompts, processing_class=load_tokenizer(path),
                      reward_processing_classes=reward_tok, peft_config=peft_config(config, "CAUSAL_LM"))
    before = snapshot_trainable(trainer.model)
    trainer.train()
    return finish(trainer, config, f"ppo ({config.algo})", before, {"prompts": len(prompts), "algo": config.algo})
