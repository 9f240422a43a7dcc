"""Turning raw model text into clean values, or a reason why it cannot be used.

Only pure functions live here: cleaning revisions, spotting degenerate text, and pulling
the first valid JSON object out of noisy judge output. Prompt building lives with the
templates (`cai.text.templates`); the raw text always stays in the trace next to the result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@lru_cache(maxsize=1)
def _wrappers() -> list[re.Pattern[str]]:
    text = (resources.files("cai") / "prompts" / "revision_wrappers.yaml").read_text("utf-8")
    return [re.compile(p, re.IGNORECASE) for p in yaml.safe_load(text)]


_QUOTES = [('"', '"'), ("“", "”"), ("'", "'")]


def cleanup_revision(text: str) -> str:
    """Strip lead-ins like 'Sure, here is a revised response:' and wrapping quotes."""
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        for pattern in _wrappers():
            new = pattern.sub("", text, count=1).lstrip()
            if new != text:
                text, changed = new, True
    for left, right in _QUOTES:
        if len(text) > 2 and text.startswith(left) and text.endswith(right) and text.count(left) <= 2:
            text = text[1:-1].strip()
    return text


@dataclass(frozen=True)
class Defect:
    """Why a text cannot be used: a stable `code` for counting, a `message` for people."""

    code: str
    message: str


def find_defect(text: str, *, forbidden_copies: tuple[str, ...] = ()) -> Defect | None:
    """Why `text` must not become training data, or None when it is usable."""
    stripped = text.strip()
    if not stripped:
        return Defect("empty", "empty")
    if not re.search(r"\w", stripped):
        return Defect("no_words", "no words")
    words = stripped.lower().split()
    if len(words) >= 12 and len(set(words)) / len(words) < 0.25:
        return Defect("repetitive", "repetitive (fewer than 25% distinct words)")
    if _repeated_ngram_share(words, 4) > 0.5:
        return Defect("repetitive", "repetitive (one phrase makes up over half the text)")
    for other in forbidden_copies:
        if other and stripped.lower() == other.strip().lower():
            return Defect("copies_request", "copies the request instead of answering it")
    return None


def degenerate_reason(text: str, *, forbidden_copies: tuple[str, ...] = ()) -> str | None:
    """The message of `find_defect`, or None when the text is usable."""
    defect = find_defect(text, forbidden_copies=forbidden_copies)
    return defect.message if defect else None


def _repeated_ngram_share(words: list[str], n: int) -> float:
    if len(words) < 3 * n:
        return 0.0
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
    top = max(counts.values())
    return top * n / len(words) if top > 2 else 0.0


def first_json_object(text: str, required_keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The first JSON object in `text` that has all `required_keys`, or None.

    Scans every `{` and decodes from there with a real JSON decoder, so braces or fake
    JSON inside quoted candidate text cannot stretch a match (unlike taking the text from
    the first `{` to the last `}`).
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and all(k in obj for k in required_keys):
            return obj
    return None
