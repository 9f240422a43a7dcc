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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cai.errors import CAIError


class TrainError(CAIError, ValueError):
    pass


@dataclass
class CommonTrainConfig:
    data: str = ""
    model: str = "smollm2"
    out: str = ""
    max_steps: int = -1
    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    seed: int = 0
    bf16: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    eval_split: str = "test"
    logging_steps: int = 1


def load_config(cls: type, overrides: dict[str, Any], config_file: str | None = None) -> Any:
    """Dataclass defaults < YAML `--config` < explicit command-line values."""
    values: dict[str, Any] = {}
    if config_file:
        loaded = yaml.safe_load(Path(config_file).read_text("utf-8")) or {}
        if not isinstance(loaded, dict):
            raise TrainError(f"{config_file}: a config file must be a mapping of option names to values")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainError(f"unknown option(s) {unknown} for {cls.__name__}")
    config = cls(**values)
    if not config.data or not config.out:
        raise TrainError("--data and --out are required (on the command line or in --config)")
    return config


# ---- data ----------------------------------------------------------------------------
def load_training_data(ref: str, kind: str) -> Any:
    """A DatasetDict with at least 'train'. kind is 'sft' or 'preference'."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(ref)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        ds = load_from_disk(str(path))
        return ds if isinstance(ds, DatasetDict) else DatasetDict({"train": ds})
    if path.is_dir():
        name = "sft.jsonl" if kind == "sft" else "preferences.jsonl"
        if not (path / name).exists():
            raise TrainError(f"{path} has no {name} (is it a cai {'sl' if kind == 'sft' else 'rl'} run?)")
        path = path / name
    if not path.exists():
        raise TrainError(f"training data {ref} does not exist")
    from cai.data import read_jsonl_records

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
                bf16=config.bf16, use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no",
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
        *([f"- labels: {report['labels']}"] if report.get("labels") else []), "",
        "## Result", "",
        f"- steps: {report['steps']}, final loss: {report['final_loss']}", "",
        "## Hyper-parameters", "", "```yaml", yaml.safe_dump(asdict(config), sort_keys=True).strip(), "```", "",
        f"Load it anywhere in cai with `hf:{out}`.", "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
