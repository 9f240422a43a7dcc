"""Duplicates and diversity of a set of short texts (generated red-team prompts).

- `normalize`: lower case, punctuation dropped, whitespace collapsed: two texts with the
  same normal form are exact duplicates ("How do I X?" and "how do i x").
- `Deduplicator`: exact duplicates by normal form, then near-duplicates by the Jaccard
  similarity of character 5-gram shingles of the normal form. Candidates come from
  `datasketch`'s MinHash LSH (128 permutations, a fixed seed, banded for 0.2 below the
  threshold and weighted toward recall); each candidate's true Jaccard is then computed
  from the shingles, so a near-duplicate is never an artefact of the sketch. `check` says whether a text duplicates one already `add`ed, and which; texts are
  checked in the caller's order, so the result does not depend on timing.
- `distinct_n`: distinct word n-grams over all n-grams of all texts (Li et al. 2016).
- `self_bleu`: the mean BLEU-4 of each text against all the others as references (Zhu et
  al. 2018, Texygen), with Chen & Cherry's smoothing 1 (a zero n-gram match counts as 0.1)
  and the brevity penalty against the closest reference length. 1 means every text repeats
  the others; lower is more diverse. Counts are gathered once (each n-gram's two largest
  counts), so it is linear in the total length, not quadratic in the number of texts.

Not here: deciding what to drop or reading files (`cai.generate.redteam`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SHINGLE = 5
NUM_PERM = 128


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def shingles(text: str, n: int = SHINGLE) -> set[str]:
    norm = normalize(text)
    if len(norm) <= n:
        return {norm}
    return {norm[i:i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class Duplicate:
    kind: str  # "exact" or "near"
    of: str  # the key of the text it duplicates
    similarity: float


@dataclass
class Deduplicator:
    """Exact, then MinHash-LSH near-duplicate detection over the texts added so far."""

    threshold: float = 0.7
    num_perm: int = NUM_PERM
    _exact: dict[str, str] = field(default_factory=dict)
    _shingles: dict[str, set[str]] = field(default_factory=dict)
    _lsh: Any = None

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        if not 0 < self.threshold <= 1:
            raise ValueError(f"the near-duplicate threshold must be in (0, 1]; got {self.threshold}")
        # the sketch only proposes candidates: asked below the threshold and weighted toward recall, so a pair
        # just above it is rarely missed; the true Jaccard decides
        self._lsh = MinHashLSH(threshold=max(0.05, self.threshold - 0.2), num_perm=self.num_perm, weights=(0.2, 0.8))

    def _minhash(self, grams: set[str]) -> Any:
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([g.encode("utf-8") for g in sorted(grams)])
        return m

    def check(self, text: str) -> Duplicate | None:
        norm = normalize(text)
        if norm in self._exact:
            return Duplicate("exact", self._exact[norm], 1.0)
        grams = shingles(text)
        best: Duplicate | None = None
        for key in sorted(self._lsh.query(self._minhash(grams))):
            similarity = jaccard(grams, self._shingles[key])
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = Duplicate("near", key, round(similarity, 4))
        return best

    def add(self, key: str, text: str) -> None:
        if key in self._shingles:
            raise ValueError(f"key {key!r} added twice")
        norm = normalize(text)
        self._exact.setdefault(norm, key)
        grams = shingles(text)
        self._shingles[key] = grams
        self._lsh.insert(key, self._minhash(grams))


# ---- diversity -----------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return normalize(text).split()


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct word n-grams / all word n-grams, over every text (None when there is no n-gram)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(_words(text), n)
        total += sum(grams.values())
        seen.update(grams)
    return round(len(seen) / total, 4) if total else None


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float | None:
    """Mean BLEU-`max_n` of each text against all the others (None with fewer than 2 texts)."""
    if len(texts) < 2:
        return None
    words = [_words(t) for t in texts]
    grams = [[_ngrams(w, n) for n in range(1, max_n + 1)] for w in words]
    # per n-gram, its two largest counts and who holds the largest: the best reference count without oneself
    top: list[dict[tuple[str, ...], tuple[int, int, int]]] = [{} for _ in range(max_n)]
    for i, per_n in enumerate(grams):
        for k, counts in enumerate(per_n):
            table = top[k]
            for g, c in counts.items():
                first, holder, second = table.get(g, (0, -1, 0))
                if c > first:
                    table[g] = (c, i, first)
                elif c > second:
                    table[g] = (first, holder, c)
    lengths = sorted((len(w), i) for i, w in enumerate(words))
    scores = []
    for i, per_n in enumerate(grams):
        hyp_len = len(words[i])
        if hyp_len == 0:
            scores.append(0.0)
            continue
        log_p = 0.0
        for k, counts in enumerate(per_n):
            total = sum(counts.values())
            matched = 0
            for g, c in counts.items():
                first, holder, second = top[k][g]
                matched += min(c, second if holder == i else first)
            if total == 0:  # a text shorter than n words: smoothing as for no match
                total = 1
            log_p += math.log((matched if matched else 0.1) / total)
        ref_len = min((abs(length - hyp_len), length) for length, j in lengths if j != i)[1]
        brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
        scores.append(brevity * math.exp(log_p / max_n))
    return round(sum(scores) / len(scores), 4)
