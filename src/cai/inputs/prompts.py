"""Reading prompts: JSONL, CSV, Parquet, a saved Hugging Face dataset, hh-rlhf transcripts.

`read_prompts` streams `PromptRow`s (one conversation ending in a user turn, with a
stable id) and `BadRow`s (where, and what is wrong). The caller decides whether a bad
row stops the run or is recorded as a failure; nothing is dropped here.

hh-rlhf transcripts (`\\n\\nHuman: ...\\n\\nAssistant: ...`) are split only on those
turn markers, never on `": "` (which would cut prompts that contain a colon). Either the
first human turn or the whole context up to the last human turn becomes the prompt.

Row ids: an `id` column if the file has one, else a hash of the conversation (with a
`-2`, `-3` suffix for repeats), so ids survive edits elsewhere in the file.

Every user file is read as UTF-8 (a leading byte-order mark is dropped) through
`text_lines` / `read_user_text`, so one that is not says so with its file and line,
never with a bare `UnicodeDecodeError`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from cai.core.options import Options, at_least, option
from cai.core.types import Message, stable_hash
from cai.inputs.files import InputError, text_lines

HHMode = Literal["first", "context"]
AUTO_FIELDS = ("prompt", "question", "instruction", "messages", "chosen")
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


@dataclass
class PromptRow:
    id: str
    messages: list[Message]
    source: str  # "file:line"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class BadRow:
    source: str
    reason: str


def parse_hh_transcript(text: str) -> list[Message]:
    """`\\n\\nHuman: a\\n\\nAssistant: b` -> [{'role': 'user', ...}, {'role': 'assistant', ...}]."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first 'Human:' turn")
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if not messages:
        raise ValueError("no 'Human:' / 'Assistant:' turns found")
    return messages


def split_hh_pair(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Two hh-rlhf transcripts that differ only in the last assistant turn ->
    (shared conversation, chosen reply, rejected reply); ValueError otherwise."""
    good, bad = parse_hh_transcript(chosen), parse_hh_transcript(rejected)
    if good[:-1] != bad[:-1] or good[-1]["role"] != "assistant" or bad[-1]["role"] != "assistant":
        raise ValueError("chosen and rejected differ before the last assistant turn")
    return good[:-1], good[-1]["content"], bad[-1]["content"]


def is_hh_transcript(value: Any) -> bool:
    return isinstance(value, str) and bool(re.match(r"\s*(\n\n)?Human:", value)) and "\n\nAssistant:" in value


def to_prompt_messages(value: Any, hh_mode: HHMode) -> list[Message]:
    """Any supported prompt value -> a conversation that ends with a user turn."""
    if isinstance(value, str):
        if is_hh_transcript(value):
            messages = parse_hh_transcript(value)
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if hh_mode == "first":
                return [messages[users[0]]]
            return messages[: users[-1] + 1]
        if not value.strip():
            raise ValueError("the prompt is empty")
        return [{"role": "user", "content": value.strip()}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in value]
        while messages and messages[-1]["role"] != "user":
            messages.pop()
        if not messages:
            raise ValueError("the messages contain no user turn")
        if hh_mode == "first":
            return [next(m for m in messages if m["role"] == "user")]
        return messages
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
    """(source, record-or-BadRow) for every row of a supported file or saved dataset."""
    suffix = path.suffix.lower()
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise InputError(f"{path}: a folder must be a dataset written by datasets' save_to_disk ({exc})") from exc
        if isinstance(ds, DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        for i, rec in enumerate(ds):
            yield f"{path}:row {i + 1}", rec
    elif suffix in (".jsonl", ".json", ".ndjson"):
        for line_no, line in text_lines(path):
            if not line.strip():
                continue
            source = f"{path}:{line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                yield source, BadRow(source, f"malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            yield source, rec if isinstance(rec, dict) else BadRow(source, "a line must hold a JSON object")
    elif suffix == ".csv":
        reader = csv.DictReader(line for _, line in text_lines(path))
        for rec in reader:
            yield f"{path}:{reader.line_num}", rec
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
        index = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                index += 1
                yield f"{path}:row {index}", rec
    else:
        raise InputError(f"{path}: unsupported prompt file type {suffix!r} (use .jsonl, .csv, .parquet "
                         "or a folder written by datasets' save_to_disk)")


def read_prompts(path: str | Path, *, prompt_field: str = "auto", hh_mode: HHMode = "first",
                 limit: int | None = None) -> Iterator[PromptRow | BadRow]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    seen: dict[str, int] = {}
    produced = 0
    for source, rec in _records(path):
        if limit is not None and produced >= limit:
            return
        produced += 1
        if isinstance(rec, BadRow):
            yield rec
            continue
        name = _pick_field(rec, prompt_field)
        if name is None:
            wanted = prompt_field if prompt_field != "auto" else " or ".join(AUTO_FIELDS)
            yield BadRow(source, f"missing field {wanted!r} (columns: {sorted(rec)}); choose one with --prompt-field")
            continue
        try:
            messages = to_prompt_messages(rec[name], hh_mode)
        except ValueError as exc:
            yield BadRow(source, f"field {name!r}: {exc}")
            continue
        if not messages[-1]["content"].strip():
            yield BadRow(source, f"field {name!r}: the prompt is empty")
            continue
        row_id = str(rec["id"]) if rec.get("id") not in (None, "") else "p-" + stable_hash(messages)[:12]
        seen[row_id] = seen.get(row_id, 0) + 1
        if seen[row_id] > 1:
            row_id = f"{row_id}-{seen[row_id]}"
        extra = {k: v for k, v in rec.items() if k not in (name, "id") and _jsonable(v)}
        yield PromptRow(id=row_id, messages=messages, source=source, extra=extra)


def _pick_field(rec: dict[str, Any], prompt_field: str) -> str | None:
    if prompt_field != "auto":
        return prompt_field if rec.get(prompt_field) is not None else None
    return next((f for f in AUTO_FIELDS if rec.get(f) is not None), None)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def sample_prompts_path() -> Path:
    """The small set of red-team prompts shipped for the demo (written for this project)."""
    from importlib import resources

    return Path(str(resources.files("cai") / "samples" / "sample_prompts.jsonl"))


OnBadInput = Literal["error", "skip"]


def check_input(rows: Iterable[PromptRow | BadRow]) -> int:
    """First pass for on_bad_input='error': raise on the first bad row, else count rows."""
    count = 0
    for row in rows:
        if isinstance(row, BadRow):
            raise InputError(f"{row.source}: {row.reason}")
        count += 1
    return count


def shipped_sample(name: str) -> str:
    return str(resources.files("cai") / "samples" / name)


def limit_option() -> Any:
    return option(None, help="Read at most this many rows.")


def on_bad_input_option() -> Any:
    return option("error", choices=("error", "skip"),
                  help="'error': stop before any model call on the first bad row (file:line and reason); 'skip': "
                       "record bad rows in failures.jsonl and go on.")


@dataclass
class InputOptions(Options):
    """Where a job's prompts come from, and what to do with a bad row."""

    prompts: str = option(required=True, flag="--prompts", short="-p",
                          help="Prompt file: .jsonl, .csv, .parquet, or a folder saved by datasets; hh-rlhf "
                               "transcripts are understood.")
    prompt_field: str = option("auto", help="Column holding the prompt; 'auto' tries prompt, question, "
                                            "instruction, messages, then an hh-rlhf 'chosen' transcript.")
    hh_mode: HHMode = option("first", choices=("first", "context"),
                             help="For multi-turn inputs: 'first' human turn only, or the whole 'context' up to "
                                  "the last human turn.")
    limit: int | None = limit_option()
    on_bad_input: OnBadInput = on_bad_input_option()

    def check(self) -> None:
        if self.limit is not None:
            at_least("--limit", self.limit, 1)

    def rows(self) -> Iterable:
        return read_prompts(self.prompts, prompt_field=self.prompt_field, hh_mode=self.hh_mode, limit=self.limit)
