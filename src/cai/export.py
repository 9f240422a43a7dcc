"""Exporting a run for trainers: TRL datasets on disk, or NeMo-Aligner's JSONL files.

- `trl`: a `datasets.DatasetDict` saved with `save_to_disk`. SL runs give TRL's
  `messages` rows; RL runs give conversational preference rows (`prompt`, `chosen`,
  `rejected`) with provenance columns. They load unchanged into SFT/DPO/Reward trainers,
  and change no loss on their own: the label confidence is `label_margin` (|2p - 1|),
  never `margin`, the column TRL's RewardTrainer silently adds to its loss, and no column
  a trainer reads (`prompt`, `chosen`, `rejected`, `messages`, `p_chosen`,
  `label_margin`) is ever null. Runs written before the rename have `margin` renamed.
- `nemo`: for RL, `<split>_comparisons.jsonl` (chosen and rejected on alternating lines,
  rendered with a chat template) and `<split>_prompts.jsonl`; for SL, NeMo's chat SFT
  JSONL (`system`, `conversations`, `mask`), which trains on the final reply only.
- Splits: each prompt goes to a split by a hash of (seed, its messages' content) alone,
  so a prompt lands in the same split in every SL and RL export of every run, and the
  pairs of one prompt never straddle splits. Small sets may leave a split empty; that is
  a warning in `export.json`, not an error.
- One schema per dataset: a column that some rows lack is filled with null (typed by
  the rows that have it) and counted in `export.json`; nothing is dropped silently.

`--blend FILE:RATIO` adds RATIO helpfulness rows per CAI row (sampled without
replacement; fewer if the file has fewer), from TRL-format rows or hh-rlhf transcripts.
A blended preference is a human's hard label: `labeler: "human"`, `p_chosen: 1.0`,
`label_margin: 1.0`, no judges.

Not done here: choosing which rows to train on (`cai train` filters) or pushing to a hub.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cai.core.errors import CAIError
from cai.core.types import Message, assistant, stable_hash
from cai.inputs.files import read_jsonl_records as _read_jsonl
from cai.inputs.prompts import parse_hh_transcript, split_hh_pair
from cai.label.registry import all_columns

# A human preference (hh-rlhf) is one annotator's hard choice: certain, and judged by no model.
HUMAN_LABEL: dict[str, Any] = {"labeler": "human", "judges": [], "principle_ids": [], "p_chosen": 1.0,
                               "label_margin": 1.0, "judge_generated_tokens": 0}
NEVER_NULL = ("prompt", "chosen", "rejected", "messages", "p_chosen", "label_margin")  # trainers read these
TRL_LOSS_COLUMNS = ("margin",)  # names TRL's trainers pick up by themselves and fold into the loss
NEMO_ROLES = {"user": "User", "assistant": "Assistant"}
HH_MARKERS = {"user": "Human", "assistant": "Assistant"}  # hh-rlhf's turn markers, for folded context


class ExportError(CAIError, ValueError):
    pass


def run_kind(run_dir: Path) -> str:
    if (run_dir / "preferences.jsonl").exists():
        return "rl"
    if (run_dir / "sft.jsonl").exists():
        return "sl"
    raise ExportError(f"{run_dir} holds neither preferences.jsonl (cai rl) nor sft.jsonl (cai sl)")


def load_run_rows(run_dir: Path) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
    """(kind, rows, column notes): rows as written, `margin` renamed, trainer columns checked."""
    kind = run_kind(run_dir)
    if kind == "sl":
        sft = _read_jsonl(run_dir / "sft.jsonl")
        ids = [r["id"] for r in _read_jsonl(run_dir / "sl.jsonl")] if (run_dir / "sl.jsonl").exists() else []
        if len(ids) != len(sft):  # sl.jsonl and sft.jsonl are written together, row for row
            ids = [None] * len(sft)
        return kind, [{"messages": r["messages"], "id": i, "origin": "cai"} for r, i in zip(sft, ids)], {}
    notes = {"margin_renamed_to_label_margin": 0, "margin_dropped_beside_label_margin": 0,
             "label_margin_derived_from_p_chosen": 0}
    rows = []
    for n, rec in enumerate(_read_jsonl(run_dir / "preferences.jsonl"), 1):
        row = {**rec, "origin": "cai"}
        if "margin" in row:  # runs written before the rename
            key = "margin_dropped_beside_label_margin" if "label_margin" in row else "margin_renamed_to_label_margin"
            row.setdefault("label_margin", row["margin"])
            row.pop("margin")
            notes[key] += 1
        if row.get("p_chosen") is None:
            raise ExportError(f"{run_dir / 'preferences.jsonl'}: row {n} has no p_chosen; trainers read it, "
                              "so cai export will not write it empty")
        if row.get("label_margin") is None:
            row["label_margin"] = abs(2 * row["p_chosen"] - 1)
            notes["label_margin_derived_from_p_chosen"] += 1
        rows.append(row)
    return kind, rows, {k: v for k, v in notes.items() if v}


def _blend_row(kind: str, rec: dict[str, Any], source: str) -> dict[str, Any]:
    """A helpfulness row in TRL format, from TRL rows or hh-rlhf transcripts."""
    if kind == "sl":
        if "messages" in rec:
            messages = rec["messages"]
        elif isinstance(rec.get("chosen"), str):
            try:
                messages = parse_hh_transcript(rec["chosen"])
            except ValueError as exc:
                raise ExportError(f"{source}: {exc}") from exc
        elif "prompt" in rec and "completion" in rec:
            messages = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["completion"]}]
        else:
            raise ExportError(f"{source}: need 'messages', 'prompt'+'completion' or an hh-rlhf 'chosen' transcript")
        return {"messages": messages, "id": source, "origin": "blend"}
    if isinstance(rec.get("chosen"), str) and isinstance(rec.get("rejected"), str):
        try:
            prompt, chosen, rejected = split_hh_pair(rec["chosen"], rec["rejected"])
        except ValueError as exc:
            raise ExportError(f"{source}: {exc}") from exc
        rec = {"prompt": prompt, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)]}
    if not all(k in rec for k in ("prompt", "chosen", "rejected")):
        raise ExportError(f"{source}: need 'prompt', 'chosen', 'rejected' (TRL) or hh-rlhf transcripts")
    # every column a labeller writes (each labeller declares its own), so a blended row has them all
    provenance = dict.fromkeys(all_columns())
    return {**provenance, **HUMAN_LABEL, "id": source, "prompt": rec["prompt"], "chosen": rec["chosen"],
            "rejected": rec["rejected"], "origin": "blend"}


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
            row = _blend_row(kind, pool[i], f"{path.name}:{i + 1}")
            row["origin"] = f"blend:{path.name}"
            rows.append(row)
        added[str(path)] = len(picked)
    return added


def one_schema(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Give every row the same columns, in place; return the columns, and what was filled or dropped."""
    dropped = {name: sum(1 for r in rows if name in r) for name in TRL_LOSS_COLUMNS}
    for r in rows:
        for name in TRL_LOSS_COLUMNS:
            r.pop(name, None)
    names = list(dict.fromkeys(k for r in rows for k in r))
    filled: dict[str, int] = {}
    for i, r in enumerate(rows):
        missing = [k for k in names if k not in r]
        for k in missing:
            filled[k] = filled.get(k, 0) + 1
        rows[i] = {k: r.get(k) for k in names}
    for name in (n for n in NEVER_NULL if n in names):
        empty = [r for r in rows if r[name] is None]
        if empty:
            raise ExportError(f"{len(empty)} row(s) have no {name!r} (first: origin {empty[0].get('origin')}, "
                              f"id {empty[0].get('id')}); trainers read it, so cai export will not write it empty")
    return {"names": names, "filled_with_null": filled, "json_encoded": _encode_mixed(rows, names),
            "dropped": {k: v for k, v in dropped.items() if v}}


def _encode_mixed(rows: list[dict[str, Any]], names: list[str]) -> dict[str, int]:
    """Provenance columns whose values share no Arrow type become JSON text (nulls stay null), losslessly.

    (`datasets`' own `Json` type would read a string such as "3" back as the number 3.)
    """
    import pyarrow as pa

    encoded: dict[str, int] = {}
    for name in names:
        try:
            pa.array([r[name] for r in rows])
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            if name in NEVER_NULL:
                raise ExportError(f"column {name!r} mixes value types across rows ({exc}); are some rows "
                                  "plain text and others chat messages?") from exc
        for r in rows:
            if r[name] is not None:
                r[name] = json.dumps(r[name], ensure_ascii=False)
        encoded[name] = sum(1 for r in rows if r[name] is not None)
    return encoded


def prompt_key(row: dict[str, Any]) -> str:
    """The prompt's content id: a hash of its messages' roles and text, nothing user-supplied."""
    messages = row["prompt"] if "prompt" in row else row["messages"][:-1]
    return stable_hash([[m["role"], m["content"]] for m in messages])


def split_of(key: str, split: dict[str, float], seed: int) -> str:
    """The split a prompt belongs to: a uniform number from hash(seed, key) on the cumulative fractions."""
    u = int(stable_hash([seed, key])[:15], 16) / 16 ** 15
    names = [name for name in split if split[name] > 0]
    total, edge = sum(split[name] for name in names), 0.0
    for name in names:
        edge += split[name] / total
        if u < edge:
            return name
    return names[-1]  # u within rounding of 1.0


def split_rows(rows: list[dict[str, Any]], split: dict[str, float], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Rows by split, each prompt placed by its content alone, so pairs of one prompt never straddle."""
    if not split or sum(split.values()) <= 0 or any(v < 0 for v in split.values()):
        raise ExportError(f"bad split {split}: fractions must be >= 0 and add up to more than 0")
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in split}
    for r in rows:
        out[split_of(prompt_key(r), split, seed)].append(r)
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
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    kind, rows, notes = load_run_rows(run_path)
    if not rows:
        raise ExportError(f"{run_path}: no rows to export (see its failures.jsonl)")
    added = blend_rows(kind, rows, [parse_blend(b) for b in blends], seed)
    columns = {**one_schema(rows), **notes}
    fractions = parse_split(split)
    splits = split_rows(rows, fractions, seed)
    out_path.mkdir(parents=True, exist_ok=True)
    FORMATS[fmt](kind, splits, out_path, chat_template_model)
    prompts = {name: len({prompt_key(r) for r in part}) for name, part in splits.items()}
    warnings = [f"split {name!r} (asked {fractions[name]:g}) got 0 of {sum(prompts.values())} prompts: each prompt's "
                "split follows from its content alone, so a small set can leave a split empty"
                for name in splits if fractions[name] > 0 and not splits[name]]
    report = {"kind": kind, "format": fmt, "out": str(out_path), "rows": {k: len(v) for k, v in splits.items()},
              "prompts": prompts, "split_by": f"hash of (seed {seed}, prompt messages)", "blended": added,
              "columns": columns, "warnings": warnings}
    (out_path / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _write_trl(kind: str, splits: dict[str, list[dict[str, Any]]], out: Path, model: str) -> None:
    """A DatasetDict on disk; SL and RL rows alike (TRL reads both shapes)."""
    from datasets import Dataset, DatasetDict

    names = [name for name, part in splits.items() if part]
    whole = Dataset.from_list([r for name in names for r in splits[name]])
    parts, start = {}, 0
    for name in names:  # one Dataset, cut into splits, so every split has the same features
        parts[name] = whole.select(range(start, start + len(splits[name])))
        start += len(splits[name])
    DatasetDict(parts).save_to_disk(str(out))


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


def nemo_sft_record(messages: list[Message], where: str = "row") -> dict[str, Any]:
    """NeMo's chat SFT record for `messages`, trained on the final assistant reply only.

    NeMo's GPTSFTChatDataset computes no loss on turn 0 or on turns from the `mask` role,
    and a loss on every other turn; it has no per-turn flag. So everything before the
    final reply is folded into the one User turn (as an hh-rlhf style transcript when it
    holds earlier assistant turns), and the final reply is the only Assistant turn.
    """
    turns = [m for m in messages if m["role"] != "system"]
    odd = sorted({m["role"] for m in turns} - set(NEMO_ROLES))
    if odd or len(turns) < 2 or turns[-1]["role"] != "assistant":
        raise ExportError(f"{where}: a NeMo SFT row needs user/assistant turns ending in an assistant reply"
                          + (f"; got roles {odd}" if odd else ""))
    context = turns[:-1]
    if len(context) == 1 and context[0]["role"] == "user":
        user = context[0]["content"]
    else:
        user = "\n\n".join(f"{HH_MARKERS[m['role']]}: {m['content']}" for m in context)
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    return {"system": system, "conversations": [{"from": "User", "value": user},
                                                {"from": "Assistant", "value": turns[-1]["content"]}], "mask": "User"}


def _write_nemo_sl(splits: dict[str, list[dict[str, Any]]], out: Path, model: str) -> None:
    for name, rows in splits.items():
        with (out / f"{name}_sft.jsonl").open("w") as fh:
            for r in rows:
                record = nemo_sft_record(r["messages"], f"{r['origin']} row {r['id']}")
                fh.write(json.dumps(record) + "\n")


def _write_nemo(kind: str, splits: dict[str, list[dict[str, Any]]], out: Path, model: str) -> None:
    (_write_nemo_rl if kind == "rl" else _write_nemo_sl)(splits, out, model)


#: --format name -> writer(kind "sl"|"rl", rows by split, out folder, chat-template model); adding
#: a format is a writer and one entry here
Writer = Callable[[str, dict[str, list[dict[str, Any]]], Path, str], None]
FORMATS: dict[str, Writer] = {"trl": _write_trl, "nemo": _write_nemo}
