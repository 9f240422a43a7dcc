"""`cai train sft|reward|dpo|ppo` and `cai recipe`.

Options left unset fall back to `--config FILE` (YAML with the same names), then to the
config dataclass defaults. Every command prints its report (steps, final loss, where the
model went) as JSON.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from cai.cli.common import app

train_app = typer.Typer(help="Train on CAI data with TRL (SFT, reward model, DPO, PPO-family).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

Data = Annotated[Optional[str], typer.Option(help="A cai run directory, a dataset saved by `cai export`, or a "
                                             "TRL-format JSONL.")]
Model = Annotated[Optional[str], typer.Option(help="smollm2, hf:<dir>, a folder, a GGUF or a Hub id "
                                              "(default: smollm2).")]
Out = Annotated[Optional[str], typer.Option("--out", "-o", help="Where the trained model goes.")]
Config = Annotated[Optional[str], typer.Option("--config", help="YAML file of options (same names).")]
MaxSteps = Annotated[Optional[int], typer.Option(help="Stop after N optimizer steps (default: whole epochs).")]
Epochs = Annotated[Optional[float], typer.Option(help="Epochs (default: 1).")]
LR = Annotated[Optional[float], typer.Option("--learning-rate", "--lr", help="Learning rate.")]
Batch = Annotated[Optional[int], typer.Option(help="Per-device batch size (default: 4).")]
MaxLen = Annotated[Optional[int], typer.Option(help="Max tokens per example (default: 512).")]
Lora = Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapters (merged on save) instead of "
                                              "full fine-tuning (default: full).")]
LoraR = Annotated[Optional[int], typer.Option(help="LoRA rank (default: 16).")]
LoraTargets = Annotated[Optional[str], typer.Option(help="Comma-separated LoRA target modules "
                                                    "(default: q_proj,k_proj,v_proj,o_proj).")]
Bf16 = Annotated[Optional[bool], typer.Option("--bf16/--fp32", help="Mixed precision (default: fp32).")]
Seed = Annotated[Optional[int], typer.Option(help="Seed (default: 0).")]


def _common(**kw: Any) -> dict[str, Any]:
    targets = kw.pop("lora_targets", None)
    if targets:
        kw["lora_targets"] = [t.strip() for t in targets.split(",") if t.strip()]
    return kw


def _run(main: Any, cls: type, config_file: str | None, values: dict[str, Any]) -> None:
    from cai.train.common import load_config

    report = main(load_config(cls, _common(**values), config_file))
    typer.echo(json.dumps(report, indent=2))


@train_app.command("sft")
def sft(data: Data = None, model: Model = None, out: Out = None, config: Config = None, max_steps: MaxSteps = None,
        epochs: Epochs = None, learning_rate: LR = None, batch_size: Batch = None, max_length: MaxLen = None,
        lora: Lora = None, lora_r: LoraR = None, lora_targets: LoraTargets = None, bf16: Bf16 = None,
        seed: Seed = None,
        blend: Annotated[Optional[str], typer.Option(help="FILE:RATIO helpfulness rows per CAI row.")] = None) -> None:
    """Supervised fine-tuning on SL-CAI revisions (loss on the final assistant reply only)."""
    from cai.train.sft import SFTWrapperConfig, main

    _run(main, SFTWrapperConfig, config, dict(data=data, model=model, out=out, max_steps=max_steps, epochs=epochs,
                                              learning_rate=learning_rate, batch_size=batch_size,
                                              max_length=max_length, lora=lora, lora_r=lora_r,
                                              lora_targets=lora_targets, bf16=bf16, seed=seed, blend=blend))


@train_app.command("reward")
def reward(data: Data = None, model: Model = None, out: Out = None, config: Config = None,
           max_steps: MaxSteps = None, epochs: Epochs = None, learning_rate: LR = None, batch_size: Batch = None,
           max_length: MaxLen = None, lora: Lora = None, lora_r: LoraR = None, lora_targets: LoraTargets = None,
           bf16: Bf16 = None, seed: Seed = None,
           soft_labels: Annotated[Optional[str], typer.Option(
               help="soft: fit each pair's judge probability p_chosen with the soft Bradley-Terry loss "
                    "-(p·log σ(Δr) + (1-p)·log σ(-Δr)); hard: -log σ(Δr), every pair certain; margin: TRL's "
                    "margin column, -log σ(Δr - |2p-1|·scale) (default: soft when the data has p_chosen, "
                    "else hard).")] = None,
           margin_scale: Annotated[Optional[float], typer.Option(help="Multiplies |2p-1| with --soft-labels margin "
                                                                 "(an error with any other mode) (default: 1)."
                                                                 )] = None) -> None:
    """A preference model on AI labels (soft labels by default when the data has p_chosen)."""
    from cai.train.reward import RewardWrapperConfig, main

    _run(main, RewardWrapperConfig, config, dict(data=data, model=model, out=out, max_steps=max_steps, epochs=epochs,
                                                 learning_rate=learning_rate, batch_size=batch_size,
                                                 max_length=max_length, lora=lora, lora_r=lora_r,
                                                 lora_targets=lora_targets, bf16=bf16, seed=seed,
                                                 soft_labels=soft_labels, margin_scale=margin_scale))


@train_app.command("dpo")
def dpo(data: Data = None, model: Model = None, out: Out = None, config: Config = None, max_steps: MaxSteps = None,
        epochs: Epochs = None, learning_rate: LR = None, batch_size: Batch = None, max_length: MaxLen = None,
        lora: Lora = None, lora_r: LoraR = None, lora_targets: LoraTargets = None, bf16: Bf16 = None,
        seed: Seed = None, beta: Annotated[Optional[float], typer.Option(help="DPO beta (default: 0.1).")] = None,
        min_margin: Annotated[Optional[float], typer.Option(help="Drop pairs whose label margin |2p-1| is below "
                                                            "this (counted in the report) (default: 0).")] = None,
        soft_labels: Annotated[Optional[str], typer.Option(
            help="soft: each pair's p_chosen is the target on the implicit reward, -(p·log σ(βh) + "
                 "(1-p)·log σ(-βh)) (cDPO with a per-pair ε = 1-p; needs --loss-type sigmoid); hard: TRL's "
                 "loss unchanged (default: soft when the data has p_chosen, else hard).")] = None,
        loss_type: Annotated[Optional[str], typer.Option(help="TRL's DPO loss type (default: sigmoid).")] = None,
        label_smoothing: Annotated[Optional[float], typer.Option(
            help="TRL's global ε, read only by --loss-type robust, exo_pair, aot or aot_unpaired (an error with "
                 "any other).")] = None,
        ) -> None:
    """Direct preference optimisation on AI labels (soft labels by default when the data has p_chosen)."""
    from cai.train.dpo import DPOWrapperConfig, main

    _run(main, DPOWrapperConfig, config, dict(data=data, model=model, out=out, max_steps=max_steps, epochs=epochs,
                                              learning_rate=learning_rate, batch_size=batch_size,
                                              max_length=max_length, lora=lora, lora_r=lora_r,
                                              lora_targets=lora_targets, bf16=bf16, seed=seed, beta=beta,
                                              min_margin=min_margin, soft_labels=soft_labels, loss_type=loss_type,
                                              label_smoothing=label_smoothing))


@train_app.command("ppo")
def ppo(data: Data = None, model: Model = None, out: Out = None, config: Config = None, max_steps: MaxSteps = None,
        epochs: Epochs = None, learning_rate: LR = None, batch_size: Batch = None, max_length: MaxLen = None,
        lora: Lora = None, lora_r: LoraR = None, lora_targets: LoraTargets = None, bf16: Bf16 = None,
        seed: Seed = None,
        reward_model: Annotated[Optional[str], typer.Option(help="The preference model (cai train reward).")] = None,
        algo: Annotated[Optional[str], typer.Option(help="rloo (default) or grpo; TRL 1.x has no PPOTrainer.")] = None,
        num_generations: Annotated[Optional[int], typer.Option(help="Samples per prompt (default: 2).")] = None,
        max_completion_length: Annotated[Optional[int], typer.Option(help="(default: 64)")] = None) -> None:
    """Optimise the policy against the preference model (RLOO or GRPO from TRL)."""
    from cai.train.policy import PolicyRLConfig, main

    _run(main, PolicyRLConfig, config, dict(data=data, model=model, out=out, max_steps=max_steps, epochs=epochs,
                                            learning_rate=learning_rate, batch_size=batch_size,
                                            max_length=max_length, lora=lora, lora_r=lora_r,
                                            lora_targets=lora_targets, bf16=bf16, seed=seed,
                                            reward_model=reward_model, algo=algo, num_generations=num_generations,
                                            max_completion_length=max_completion_length))


@app.command("recipe")
def recipe(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Red-team prompts.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Recipe directory (every stage resumes).")],
    model: Annotated[str, typer.Option(help="Starting model.")] = "smollm2",
    limit: Annotated[Optional[int], typer.Option(help="Prompts to use.")] = 16,
    rounds: int = 2,
    candidates: int = 2,
    max_tokens: int = 64,
    train_steps: Annotated[int, typer.Option(help="Optimizer steps per training stage.")] = 4,
    quiet: bool = False,
) -> None:
    """The whole CAI pipeline at demo scale: SL data -> SFT -> RL data from the SFT model ->
    reward model + DPO. Re-running resumes at every stage."""
    from cai.recipe import RecipeConfig, run_recipe

    run_recipe(RecipeConfig(prompts=prompts, out=out, model=model, limit=limit, rounds=rounds,
                            candidates=candidates, max_tokens=max_tokens, train_steps=train_steps),
               show_progress=not quiet)
