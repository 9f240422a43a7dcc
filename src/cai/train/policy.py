"""`cai train policy` (also `cai train ppo`, its old name): optimise the policy online (PPO family).

The installed TRL (1.x) ships no PPOTrainer, in `trl` or `trl.experimental`; it ships
RLOO (REINFORCE leave-one-out, the PPO-family method TRL recommends in its place) and
GRPO. `--algo rloo` is the default. The reward (`--reward`, `cai.train.rewards`) is the
preference model of `cai train reward` (the default), the judge's expected rating
(`judge-score`, direct RLAIF) or the judge's win rates within each group
(`judge-pairwise`); each is one TRL reward function. The prompts come from the RL run's
preference rows (their `prompt` column), or any JSONL with a `prompt` column.
The train report holds the reward's statistics per step (`reward`).
"""

from __future__ import annotations

from pathlib import Path
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
from cai.train.configs import PolicyRLConfig


def main(config: PolicyRLConfig) -> dict[str, Any]:
    import asyncio

    from transformers import AutoModelForCausalLM

    from cai.train.rewards import make_reward

    if config.algo not in ("rloo", "grpo"):
        raise TrainError("--algo must be 'rloo' or 'grpo' (TRL 1.x has no PPOTrainer)")
    data = load_training_data(config.data, "preference")
    if "prompt" not in data["train"].column_names:
        raise TrainError("policy optimisation needs a 'prompt' column")
    reward = make_reward(config, Path(config.out))
    try:
        asyncio.run(reward.prepare())  # the judge's checks (its rating labels are single tokens) before training
        if config.algo == "rloo":
            from trl import RLOOConfig as Config, RLOOTrainer as Trainer
        else:
            from trl import GRPOConfig as Config, GRPOTrainer as Trainer
        prompts = data["train"].select_columns(["prompt"])
        seen: set[str] = set()
        prompts = prompts.filter(lambda r: not (str(r["prompt"]) in seen or seen.add(str(r["prompt"]))))  # type: ignore[func-returns-value]
        path = model_path(config.model)
        batch = max(config.batch_size, config.num_generations)
        batch -= batch % config.num_generations
        common = trainer_args(config)
        common["per_device_train_batch_size"] = batch
        args = Config(**common, num_generations=config.num_generations,
                      max_completion_length=config.max_completion_length, beta=config.beta,
                      temperature=config.temperature)
        trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward, args=args,
                          train_dataset=prompts, processing_class=load_tokenizer(path),
                          peft_config=peft_config(config, "CAUSAL_LM"))
    except BaseException:
        reward.close()
        raise
    before = snapshot_trainable(trainer.model)
    try:
        trainer.train()
    finally:
        reward.close(trainer)
    kind = f"ppo ({config.algo})" if config.reward == "reward-model" else f"policy ({config.algo}, {config.reward})"
    summary = reward.log.report()
    extra = {"prompts": len(prompts), "algo": config.algo, "reward": {**reward.describe(), **summary},
             "reward_summary": _summary_line(config.reward, summary)}
    return finish(trainer, config, kind, before, extra)


def _summary_line(source: str, s: dict[str, Any]) -> str:
    line = (f"{source}; mean reward {s['reward_mean_first']} (first step) -> {s['reward_mean_last']} (last); "
            f"{s['unscored']} of {s['samples']} samples without a reward")
    if source != "reward-model":
        line += f"; {s['judge_calls']:.0f} judge calls ({s['judge_cache_hits']:.0f} from the store), " \
                f"{s['judge_seconds']} s judging"
    return line
