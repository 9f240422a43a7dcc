"""What every `cai train` wrapper shares: data, models, LoRA, hardware, and outputs.

- Data: `--data` may be a run directory (`sft.jsonl` / `preferences.jsonl`), a dataset
  saved by `cai export` or `datasets`, or any TRL-format JSONL.
- Models: `smollm2`, `hf:<dir>`, a plain folder, a GGUF, or a Hub id (via
  `cai.engines.models.resolve_model_path`, which converts GGUF once).
- Outputs in `--out`: the model and tokenizer (LoRA adapters merged, so `hf:<out>` works
  everywhere), `training_log.jsonl`, `loss.png`, and a model card `README.md` with the
  data, the constitution hash, which labels were trained on (reward and DPO: soft, hard
  or margin, and how many rows had a p_chosen) and the hyper-parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cai.core.errors import CAIError
from cai.core.options import Options, option, string_list

C = TypeVar("C", bound=Options)


class TrainError(CAIError, ValueError):
    pass


@dataclass
class CommonTrainConfig(Options):
    """Options every `cai train` command shares; each wrapper adds its own (TRL's style)."""

    data: str = option("", required=True, help="A cai run directory, a dataset saved by `cai export`, or a "
                                               "TRL-format JSONL.")
    model: str = option("smollm2", help="smollm2, hf:<dir>, a folder, a GGUF or a Hub id.")
    out: str = option("", required=True, short="-o", help="Where the trained model goes.")
    max_steps: int = option(-1, help="Stop after N optimizer steps (-1: whole epochs).")
    epochs: float = option(1.0, help="Epochs.")
    learning_rate: float = option(5e-5, flag="--learning-rate", short="--lr", help="Learning rate.")
    batch_size: int = option(4, help="Per-device batch size.")
    gradient_accumulation_steps: int = option(1, help="Batches per optimizer step.")
    max_length: int = option(512, help="Max tokens per example.")
    seed: int = option(0, help="Seed.")
    bf16: bool = option(False, flag="--bf16/--fp32", help="Mixed precision (bf16) or fp32. On a CPU without "
                                                          "bf16 instructions --bf16 is emulated and about 10x slower.")
    gradient_checkpointing: bool = option(
        True, flag="--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations in the backward pass: less memory, about a quarter slower (TRL's default). "
             "Small models on a CPU train faster without it.")
    lora: bool = option(False, flag="--lora/--full", help="LoRA adapters (merged on save) instead of full "
                                                          "fine-tuning.")
    lora_r: int = option(16, help="LoRA rank.")
    lora_alpha: int = option(32, help="LoRA alpha.")
    lora_dropout: float = option(0.05, help="LoRA dropout.")
    lora_targets: list[str] = option(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                     parse=string_list, cli_type=str, metavar="MODULES",
                                     help="Comma-separated LoRA target modules.")
    eval_split: str = option("test", help="Split to evaluate on, when the data has it.")
    logging_steps: int = option(1, help="Log the loss every N steps.")


def load_config(cls: type[C], overrides: dict[str, Any], config_file: str | None = None) -> C:
    """Dataclass defaults < YAML `--config` < explicit command-line values (None: not given)."""
    return cls.load(overrides, config_file)


# ---- data ----------------------------------------------------------------------------
def training_data_source(ref: str, kind: str) -> Path:
    """Where the rows for `kind` ('sft' or 'preference') are: a saved dataset folder, a run
    directory's file or a JSONL file. Imports nothing heavy, so a wrong path is an error
    before torch and TRL load."""
    path = Path(ref)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        return path
    if path.is_dir():
        name = "sft.jsonl" if kind == "sft" else "preferences.jsonl"
        if not (path / name).exists():
            raise TrainError(f"{path} has no {name} (is it a cai {'sl' if kind == 'sft' else 'rl'} run?)")
        return path / name
    if not path.exists():
        raise TrainError(f"training data {ref} does not exist")
    return path


def load_training_data(ref: str, kind: str) -> Any:
    """A DatasetDict with at least 'train'. kind is 'sft' or 'preference'."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = training_data_source(ref, kind)
    if path.is_dir():
        ds = load_from_disk(str(path))
        return ds if isinstance(ds, DatasetDict) else DatasetDict({"train": ds})
    from cai.inputs.files import read_jsonl_records

    rows = read_jsonl_records(path)
    if not rows:
        raise TrainError(f"{path} has no rows to train on")
    return DatasetDict({"train": Dataset.from_list(rows)})


def model_path(ref: str) -> str:
    from cai.engines.models import resolve_model_path

    return resolve_model_path(ref[3:] if ref.startswith("hf:") else ref)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def peft_config(config: CommonTrainConfig, task_type: str) -> Any:
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), task_type=task_type)


def trainer_args(config: CommonTrainConfig) -> dict[str, Any]:
    """Arguments shared by every TRL config class."""
    import torch

    return dict(output_dir=str(Path(config.out) / "checkpoints"), max_steps=config.max_steps,
                num_train_epochs=config.epochs, learning_rate=config.learning_rate,
                per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
                gradient_accumulation_steps=config.gradient_accumulation_steps, seed=config.seed,
                bf16=config.bf16, gradient_checkpointing=config.gradient_checkpointing,
                use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no",
                logging_steps=config.logging_steps)


# ---- outputs -------------------------------------------------------------------------
def snapshot_trainable(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def changed_parameters(before: dict[str, Any], model: Any) -> int:
    import torch

    now = dict(model.named_parameters())
    return sum(1 for n, p in before.items() if n in now and not torch.equal(p, now[n].detach()))


def finish(trainer: Any, config: CommonTrainConfig, kind: str, before: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Save the model (LoRA merged), the log, the loss plot and the model card."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    changed = changed_parameters(before, model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    trainer.processing_class.save_pretrained(out)
    log = trainer.state.log_history
    (out / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    losses = [(r["step"], r["loss"]) for r in log if "loss" in r]
    plot_losses(losses, out / "loss.png", f"cai train {kind}")
    report = {"kind": kind, "out": str(out), "steps": trainer.state.global_step,
              "final_loss": losses[-1][1] if losses else None,
              "losses_finite": all(math.isfinite(v) for _, v in losses) if losses else False,
              "trainable_tensors_changed": changed, **extra}
    (out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_model_card(out, kind, config, report)
    return report


def plot_losses(losses: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _data_provenance(data: str) -> dict[str, Any]:
    path = Path(data)
    for candidate in (path / "manifest.json", path.parent / "manifest.json"):
        if candidate.exists():
            manifest = json.loads(candidate.read_text("utf-8"))
            return {"run": str(candidate.parent), "command": manifest.get("command"),
                    "constitution": manifest.get("constitution")}
    return {"run": None, "constitution": None}


def write_model_card(out: Path, kind: str, config: CommonTrainConfig, report: dict[str, Any]) -> None:
    prov = _data_provenance(config.data)
    constitution = prov.get("constitution") or {}
    lines = [
        f"# {out.name}", "",
        f"Trained with `cai train {kind}` (constitutional-ai) from `{config.model}`.", "",
        "## Data", "",
        f"- data: `{config.data}`" + (f" (a `cai {prov['command']}` run)" if prov.get("command") else ""),
        f"- constitution: {constitution.get('name', 'unknown')} (hash `{constitution.get('hash', 'unknown')}`)",
        *([f"- labels: {report['labels']}"] if report.get("labels") else []),
        *([f"- reward: {report['reward_summary']}"] if report.get("reward_summary") else []), "",
        "## Result", "",
        f"- steps: {report['steps']}, final loss: {report['final_loss']}", "",
        "## Hyper-parameters", "", "```yaml", yaml.safe_dump(config.flat(), sort_keys=True).strip(), "```", "",
        f"Load it anywhere in cai with `hf:{out}`.", "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
