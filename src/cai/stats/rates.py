"""The statistics of model evaluation: win rates, Bradley-Terry / Elo, refusals, calibration.

- `win_rate`: the share of comparisons a model won, a tie counting half, with a 95%
  Wilson interval (`cai.stats.rates.wilson_interval`), over the comparisons the judge
  labelled; the comparisons it could not label are counted beside it (`failures`,
  `coverage`), never folded in silently.
- `fit_bradley_terry`: maximum-likelihood Bradley-Terry strengths from soft outcomes
  (a judge's probability that one reply beats the other counts as that fraction of a
  win), by Hunter's (2004) MM iteration. `prior` adds that many virtual wins each way
  to every pair, so a model that won everything still gets a finite strength.
  `elo_scale` reports them as Elo points relative to the first model (400·log10 of the
  strength ratio), and `bootstrap_elo` adds percentile intervals from resampling
  *prompts* (a prompt's comparisons move together, as they are not independent).
- `RefusalMatcher`: the phrase matcher (`cai/prompts/refusal.yaml`), and `agreement`
  between two classifiers (share and Cohen's kappa, with the count they both decided).
- `p_first`: P(first option) from two log-probs, the judge's soft answer.
- `mcnemar_exact`: the exact (binomial) McNemar test of two classifiers on the same items.
- `reliability_bins`: the points of a calibration (reliability) diagram.

Not here: asking a model anything (`cai.evaluate.models`), drawing (`cai.report`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def credit(p: float | None) -> float | None:
    """A soft label read as a result for the first reply: win 1, tie 0.5, loss 0 (None: no label)."""
    return None if p is None else 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0


def _share(part: float, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def win_rate(credits: Sequence[float], failures: int = 0) -> dict[str, Any]:
    """Win rate over labelled comparisons (ties half) with its Wilson interval and every count."""
    n = len(credits)
    won = sum(credits)
    wins = sum(1 for c in credits if c == 1.0)
    ties = sum(1 for c in credits if c == 0.5)
    asked = n + failures
    return {
        "win_rate": _share(won, n),
        "ci95": [round(v, 4) for v in wilson_interval(won, n)] if n else None,
        "wins": wins, "ties": ties, "losses": n - wins - ties,
        "labelled": n, "failures": failures, "asked": asked, "coverage": _share(n, asked),
        "denominator": f"{n} comparisons labelled, ties counted half; {failures} of {asked} asked could not be "
                       "labelled and are not counted",
    }


def rate(part: int, whole: int, failures: int = 0, what: str = "") -> dict[str, Any]:
    """A plain share with a Wilson interval, its denominator and what fell outside it."""
    return {"rate": _share(part, whole), "ci95": [round(v, 4) for v in wilson_interval(part, whole)] if whole
            else None, "count": part, "of": whole, "failures": failures,
            "denominator": f"{part} of {whole} {what}".strip() + (f"; {failures} not classified" if failures else "")}


def agreement(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """How often two yes/no classifiers agree, with Cohen's kappa (None when undefined)."""
    n = len(pairs)
    if not n:
        return {"agreement": None, "kappa": None, "both_decided": 0}
    same = sum(1 for a, b in pairs if a == b)
    pa, pb = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    kappa = None if chance == 1 else round((same / n - chance) / (1 - chance), 4)
    return {"agreement": round(same / n, 4), "kappa": kappa, "both_decided": n,
            "denominator": f"{same} of {n} replies that both classifiers decided"}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired yes/no outcomes: `b` pairs where only the first was
    right, `c` where only the second was. Under no difference each discordant pair is a fair coin, so
    p = P(a Binomial(b + c, 1/2) at least as far from the middle as min(b, c)), capped at 1; 1 with no
    discordant pair."""
    if b < 0 or c < 0:
        raise ValueError(f"counts must be non-negative, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
