"""How alike two texts are, word by word: a diff ratio and n-gram containment.

Texts are compared as lower-cased words (letters and digits, with inner apostrophes), so
case, spacing, line breaks and punctuation are never differences.

- `ratio(a, b)`: difflib's `SequenceMatcher` ratio over the two word lists: twice the
  words matched, in order, over the words in both (1.0 for the same words; 1.0 for two
  texts without words). Over words with autojunk off: over characters, or with autojunk
  on, a long text's common items count as junk and the ratio drops for no reason.
- `containment(text, sources, n, ignore)`: the share of `text`'s word n-grams (with
  repeats) that also occur in one of `sources` and in none of `ignore`: "how much of this
  text was taken from there". A text shorter than `n` words is compared by its
  shorter n-grams.

Only pure functions. Not here: what counts as too similar (the thresholds live with the
checks that use them, `cai.generate.gates`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from difflib import SequenceMatcher

_WORD = re.compile(r"\w+(?:'\w+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})

NGram = tuple[str, ...]


def straighten(text: str) -> str:
    """`text` with curly apostrophes (and backticks) as "'"."""
    return text.translate(_APOSTROPHES)


def words(text: str) -> list[str]:
    """The lower-cased words of `text`; curly apostrophes are straightened."""
    return _WORD.findall(straighten(text).casefold())


def ratio(a: str, b: str) -> float:
    """SequenceMatcher's ratio over the words of `a` and `b`, in [0, 1]."""
    return SequenceMatcher(None, words(a), words(b), autojunk=False).ratio()


def ngrams(tokens: list[str], n: int) -> list[NGram]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _all_ngrams(texts: Iterable[str], n: int) -> set[NGram]:
    found: set[NGram] = set()
    for text in texts:
        found.update(ngrams(words(text), n))
    return found


def containment(text: str, sources: str | Iterable[str], *, n: int = 3, ignore: Iterable[str] = ()) -> float:
    """Share of `text`'s word n-grams found in `sources` and not in `ignore`; 0.0 for a text without words."""
    tokens = words(text)
    if not tokens:
        return 0.0
    size = min(n, len(tokens))
    grams = ngrams(tokens, size)
    found = _all_ngrams([sources] if isinstance(sources, str) else sources, size)
    ignored = _all_ngrams(ignore, size)
    return sum(1 for g in grams if g in found and g not in ignored) / len(grams)
