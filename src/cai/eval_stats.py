"""The statistics of model evaluation: win rates, Bradley-Terry / Elo, refusals, calibration.

- `win_rate`: the share of comparisons a model won, a tie counting half, with a 95%
  Wilson interval (`cai.evaluate.wilson_interval`), over the comparisons the judge
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
- `reliability_bins`: the points of a calibration (reliability) diagram.

Not here: asking a model anything (`cai.eval_models`), drawing (`cai.report`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cai.evaluate import wilson_interval
from cai.text.templates import load_prompt_yaml

if TYPE_CHECKING:
    import numpy as np

#: (index of player i, index of player j, i's score in [0, 1]): one comparison
Game = tuple[int, int, float]


def credit(p: float) -> float:
    """A soft label read as a result for the first reply: win 1, tie 0.5, loss 0."""
    return 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0


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


# ---- Bradley-Terry and Elo -----------------------------------------------------------
def _win_matrix(n_players: int, games: Sequence[Game], prior: float) -> np.ndarray:
    import numpy as np

    wins = np.full((n_players, n_players), float(prior))
    np.fill_diagonal(wins, 0.0)
    for i, j, s in games:
        if i == j:
            raise ValueError(f"a comparison of player {i} with itself")
        wins[i, j] += s
        wins[j, i] += 1.0 - s
    return wins


def fit_bradley_terry(n_players: int, games: Sequence[Game], *, prior: float = 0.5, max_iter: int = 10_000,
                      tol: float = 1e-12) -> np.ndarray:
    """Strengths pi (geometric mean 1) maximising prod over games of (pi_i / (pi_i + pi_j))^s_ij.

    A player with no wins at all and `prior=0` gets strength 0 (its Elo is -inf).
    """
    import numpy as np

    wins = _win_matrix(n_players, games, prior)
    games_between = wins + wins.T
    total_wins = wins.sum(axis=1)
    pi = np.ones(n_players)
    for _ in range(max_iter):
        denom = (games_between / (pi[:, None] + pi[None, :])).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), pi)
        positive = new[new > 0]
        if positive.size:
            new = new / math.exp(float(np.log(positive).mean()))
        if np.max(np.abs(new - pi)) < tol:
            return new
        pi = new
    return pi


def elo_scale(strengths: np.ndarray) -> np.ndarray:
    """Elo points relative to the first player: 400·log10(pi_i / pi_0)."""
    import numpy as np

    with np.errstate(divide="ignore"):
        return 400.0 * np.log10(strengths / strengths[0])


def bootstrap_elo(players: Sequence[str], games_by_prompt: Sequence[Sequence[Game]], *, samples: int = 500,
                  seed: int = 0, prior: float = 0.5) -> dict[str, Any]:
    """Elo per player (first player = 0) with 95% percentile intervals over prompts resampled."""
    import numpy as np

    k = len(players)
    flat = [g for games in games_by_prompt for g in games]
    point = elo_scale(fit_bradley_terry(k, flat, prior=prior))
    draws = np.empty((samples, k))
    rng = np.random.default_rng(seed)
    n = len(games_by_prompt)
    for b in range(samples):
        picked = rng.integers(0, n, n) if n else []
        draws[b] = elo_scale(fit_bradley_terry(k, [g for i in picked for g in games_by_prompt[i]], prior=prior))
    low, high = (np.percentile(draws, q, axis=0) if samples else point for q in (2.5, 97.5))
    return {
        "players": {p: {"elo": round(float(point[i]), 1), "ci95": [round(float(low[i]), 1), round(float(high[i]), 1)]}
                    for i, p in enumerate(players)},
        "reference": players[0], "comparisons": len(flat), "prompts": n, "bootstrap_samples": samples,
        "prior_wins_per_pair": prior,
        "denominator": f"{len(flat)} labelled comparisons on {n} prompts; intervals from {samples} resamples of the "
                       f"prompts; {players[0]} is 0 by definition",
    }


# ---- refusals ------------------------------------------------------------------------
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


@dataclass
class RefusalMatcher:
    """A reply refuses when it holds one of the shipped first-person refusal phrases."""

    pattern: re.Pattern[str]

    @classmethod
    def shipped(cls) -> RefusalMatcher:
        return _shipped_matcher()

    @classmethod
    def from_phrases(cls, phrases: Sequence[str]) -> RefusalMatcher:
        alternatives = [re.sub(r" +", r"\\s+", p.strip()) for p in phrases if p.strip()]
        return cls(re.compile(r"(?<!\w)(?:" + "|".join(f"(?:{a})" for a in alternatives) + r")(?!\w)"))

    def match(self, text: str) -> str | None:
        """The refusal phrase found in `text`, or None."""
        found = self.pattern.search(text.translate(_APOSTROPHES).lower())
        return found.group(0) if found else None


@lru_cache(maxsize=1)
def _shipped_matcher() -> RefusalMatcher:
    return RefusalMatcher.from_phrases(load_prompt_yaml("refusal.yaml")["phrases"])


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


def p_first(logp_a: float, logp_b: float) -> float:
    """P(A) from the log-probs of two answers; ValueError when either is not finite."""
    if not (math.isfinite(logp_a) and math.isfinite(logp_b)):
        raise ValueError(f"non-finite log-probs ({logp_a}, {logp_b})")
    return 1.0 / (1.0 + math.exp(logp_b - logp_a)) if logp_b - logp_a < 700 else 0.0


# ---- calibration ---------------------------------------------------------------------
def reliability_bins(confidence: Sequence[float], correct: Sequence[float], bins: int = 5) -> list[dict[str, Any]]:
    """Bins of confidence in [0.5, 1]: mean confidence, accuracy (ties half) and count per bin."""
    import numpy as np

    edges = np.linspace(0.5, 1.0, bins + 1)
    out = []
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        inside = [(c, k) for c, k in zip(confidence, correct, strict=True)
                  if lo <= c < hi or (b == bins - 1 and c == hi)]
        out.append({"low": round(float(lo), 3), "high": round(float(hi), 3), "count": len(inside),
                    "mean_confidence": round(sum(c for c, _ in inside) / len(inside), 4) if inside else None,
                    "accuracy": round(sum(k for _, k in inside) / len(inside), 4) if inside else None})
    return out


def expected_calibration_error(bins: Sequence[dict[str, Any]]) -> float | None:
    total = sum(b["count"] for b in bins)
    if not total:
        return None
    return round(sum(b["count"] * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"]) / total, 4)
