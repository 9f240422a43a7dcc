"""Exporting a run for trainers: TRL datasets on disk, or NeMo-Aligner's JSONL files.

- `trl`: a `datasets.DatasetDict` saved with `save_to_disk`, split by a seeded shuffle
  of *prompt ids* (every pair of one prompt lands in the same split). SL runs give TRL's
  `messages` rows; RL runs give conversational preference rows (`prompt`, `chosen`,
  `rejected`) with provenance columns. They load unchanged into SFT/DPO/Reward trainers.
- `nemo`: for RL, `<split>_comparisons.jsonl` (chosen and rejected on alternating lines,
  rendered with a chat template) and `<split>_prompts.jsonl`; for SL, NeMo's chat SFT
  JSONL (`system`, `conversations`, `mask`).

`--blend FILE:RATIO` adds RATIO helpfulness rows per CAI row (sampled without
replacement; fewer if the file has fewer), from TRL-format rows or hh-rlhf transcripts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cai.data import parse_hh_transcript, read_jsonl_records as _read_jsonl, split_hh_pair
from cai.types import assistant, stable_hash

PROVENANCE_DEFAULTS: dict[str, Any] = {
    "id": None, "labeler": None, "judges": None, "principle_ids": None, "p_chosen": None,
    "p_chosen_order_ab": None, "p_chosen_order_ba": None, "margin": None, "position_bias": None,
    "judge_agreement": None, "judge_raw": None, "chosen_index": None, "rejected_index": None,
    "judge_generated_tokens": None,
}


class ExportError(ValueError):
    pass


def run_kind(run_dir: Path) -> str:
    if (run_dir / "preferences.jsonl").exists():
        return "rl"
    if (run_dir / "sft.jsonl").exists():
        return "sl"
    raise ExportError(f"{run_dir} holds neither preferences.jsonl (cai rl) nor sft.jsonl (cai sl)")


def load_run_rows(run_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    kind = run_kind(run_dir)
    if kind == "rl":
        rows = [{**PROVENANCE_DEFAULTS, **r, "origin": "cai"} for r in _read_jsonl(run_dir / "preferences.jsonl")]
        for r in rows:  # keep only the columns every row shares, so the dataset has one schema
            for extra in [k for k in r if k not in PROVENANCE_DEFAULTS and k not in ("prompt", "chosen", "rejected",
                                                                                      "origin")]:
                r.pop(extra)
        return kind, rows
    sft = _read_jsonl(run_dir / "sft.jsonl")
    ids = [r["id"] for r in _read_jsonl(run_dir / "sl.jsonl")] if (run_dir / "sl.jsonl").exists() else []
    if len(ids) != len(sft):  # sl.jsonl and sft.jsonl are written together, row for row
        ids = [None] * len(sft)
    return kind, [{"messages": r["messages"], "id": i, "origin": "cai"} for r, i in zip(sft, ids)]


def _blend_row(kind: str, rec: dict[str, Any], source: str) -> dict[str, Any]:
    """A helpfulness row in TRL format, from TRL rows or hh-rlhf transcripts."""
    if kind == "sl":
        if "messages" in rec:
            messages = rec["messages"]
        elif isinstance(rec.get("chosen"), str):
            messages = parse_hh_transcript(rec["chosen"])
        elif "prompt" in rec and "completion" in rec:
            messages = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["completion"]}]
        else:
            raise ExportError(f"{source}: need 'messages', 'prompt'+'completion' or an hh-rlhf 'chosen' transcript")
        return {"messages": messages, "id": None, "origin": "blend"}
    if isinstance(rec.get("chosen"), str) and isinstance(rec.get("rejected"), str):
        try:
            prompt, chosen, rejected = split_hh_pair(rec["chosen"], rec["rejected"])
        except ValueError as exc:
            raise ExportError(f"{source}: {exc}") from exc
        rec = {"prompt": prompt, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)]}
    if not all(k in rec for k in ("prompt", "chosen", "rejected")):
        raise ExportError(f"{source}: need 'prompt', 'chosen', 'rejected' (TRL) or hh-rlhf transcripts")
    return {**PROVENANCE_DEFAULTS, "prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"],
            "origin": "blend"}


def blend_rows(kind: str, rows: list[dict[str, Any]], blends: Iterable[tuple[str, float]], seed: int) -> dict[str, int]:
    added: dict[str, int] = {}
    for path_text, ratio in blends:
        path = Path(path_text)
        if not path.exists():
            raise ExportError(f"blend file {path} does not exist")
        wanted = int(round(ratio * sum(1 for r in rows if r["origin"] == "cai")))
        pool = _read_jsonl(path)
        picked = random.Random(seed).sample(range(len(pool)), min(wanted, len(pool)))
        for i in picked:
            row = _blend_row(kind, pool[i], f"{path}:{i + 1}")
            row["origin"] = f"blend:{path.name}"
            rows.append(row)
        added[str(path)] = len(picked)
    return added


def split_rows(rows: list[dict[str, Any]], split: dict[str, float], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Seeded split by prompt, so pairs of one prompt never straddle splits."""
    total = sum(split.values())
    if total <= 0 or any(v < 0 for v in split.values()):
        raise ExportError(f"bad split {split}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(stable_hash(r.get("prompt") or r["messages"][:-1]), []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    names = [name for name in split if split[name] > 0]
    counts = {name: int(split[name] / total * len(keys)) for name in names}
    if len(keys) >= len(names):  # every split asked for gets at least one prompt
        for name in names:
            counts[name] = max(1, counts[name])
    while sum(counts.values()) > len(keys):
        counts[max(counts, key=counts.__getitem__)] -= 1
    counts[names[0]] += len(keys) - sum(counts.values())  # remainders go to the first split
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in split}
    start = 0
    for name in names:
        for key in keys[start:start + counts[name]]:
            out[name].extend(groups[key])
        start += counts[name]
    return out


def parse_split(text: str) -> dict[str, float]:
    try:
        parts = dict(item.split("=", 1) for item in text.split(",") if item.strip())
        return {k.strip(): float(v) for k, v in parts.items()}
    except ValueError as exc:
        raise ExportError(f"--split must look like train=0.9,test=0.1; got {text!r}") from exc


def parse_blend(text: str) -> tuple[str, float]:
    path, sep, ratio = text.rpartition(":")
    try:
        return (path, float(ratio)) if sep and path else (text, 1.0)
    except ValueError as exc:
        raise ExportError(f"--blend must look like FILE:RATIO; got {text!r}") from exc


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, split: str = "train=0.9,test=0.1", seed: int = 0,
               blends: Iterable[str] = (), chat_template_model: str = "smollm2") -> dict[str, Any]:
    run_path, out_path = Path(run_dir), Path(out)
    kind, rows = load_run_rows(run_path)
    if not rows:
        raise ExportError(f"{run_path}: no rows to export (see its failures.jsonl)")
    added = blend_rows(kind, rows, [parse_blend(b) for b in blends], seed)
    splits = split_rows(rows, parse_split(split), seed)
    if fmt == "trl":
        from datasets import Dataset, DatasetDict

        DatasetDict({name: Dataset.from_list(part) for name, part in splits.items() if part}).save_to_disk(str(out_path))
    elif fmt == "nemo":
        out_path.mkdir(parents=True, exist_ok=True)
        (_write_nemo_rl if kind == "rl" else _write_nemo_sl)(splits, out_path, chat_template_model)
    else:
        raise ExportError(f"--format must be trl or nemo; got {fmt!r}")
    report = {"kind": kind, "format": fmt, "out": str(out_path), "rows": {k: len(v) for k, v in splits.items()},
              "blended": added}
    (out_path / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _write_nemo_rl(splits: dict[str, list[dict[str, Any]]], out: Path, model: str) -> None:
    from transformers import AutoTokenizer

    from cai.engines.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model))
    for name, rows in splits.items():
        with (out / f"{name}_comparisons.jsonl").open("w") as comp, (out / f"{name}_prompts.jsonl").open("w") as pr:
            for r in rows:
                prompt = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
                for side in ("chosen", "rejected"):  # alternating lines: chosen, then its rejected
                    comp.write(json.dumps({"text": prompt + r[side][-1]["content"] + tokenizer.eos_token}) + "\n")
                pr.write(json.dumps({"text": prompt}) + "\n")


def _write_nemo_sl(splits: dict[str, list[dict[str, Any]]], out: Path, model: str) -> None:
    names = {"user": "User", "assistant": "Assistant"}
    for name, rows in splits.items():
        with (out / f"{name}_sft.jsonl").open("w") as fh:
            for r in rows:
                system = " ".join(m["content"] for m in r["messages"] if m["role"] == "system")
                turns = [{"from": names[m["role"]], "value": m["content"]} for m in r["messages"] if m["role"] in names]
                fh.write(json.dumps({"system": system, "conversations": turns, "mask": "User"}) + "\n")
