"""Reading the user's files: UTF-8 text line by line, JSONL records, with errors that name the file and line.

Not here: what the lines mean (prompts: `cai.inputs.prompts`; constitutions, few-shot files).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cai.core.errors import CAIError


class InputError(CAIError, ValueError):
    """A prompt file cannot be read; the message names the file and the line."""


def _not_utf8(path: Path, exc: UnicodeDecodeError, line_no: int, column: int) -> InputError:
    bad = exc.object[exc.start:exc.start + 1].hex()
    return InputError(f"{path}:{line_no}: not UTF-8 text (byte 0x{bad} at column {column}); save the file as "
                      "UTF-8, e.g. iconv -f latin1 -t utf-8")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) of a UTF-8 file, decoded line by line so a
    byte that is not UTF-8 names its line."""
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc, line_no, exc.start + 1) from None


def read_user_text(path: str | Path) -> str:
    """A whole UTF-8 file (constitutions, few-shot files); not UTF-8 names the file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        seen = exc.object  # the bytes the decoder saw (without a byte-order mark)
        line_start = seen.rfind(b"\n", 0, exc.start) + 1
        raise _not_utf8(path, exc, seen.count(b"\n", 0, exc.start) + 1, exc.start - line_start + 1) from None


def read_jsonl_records(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file; the first malformed line (or one that is not an
    object) raises with file:line."""
    path = Path(path)
    rows = []
    for line_no, line in text_lines(path):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{line_no}: a line must hold a JSON object, not a {type(rec).__name__}")
            rows.append(rec)
    return rows
