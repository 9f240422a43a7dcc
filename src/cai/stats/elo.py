"""Bradley-Terry strengths on the Elo scale, with intervals from resampling prompts.

`fit_bradley_terry` fits strengths to games (i, j, i's score; ties count half) with a weak
prior that keeps an unbeaten player finite; `elo_scale` puts them on the Elo scale (400
log10 units); `bootstrap_elo` resamples the prompts to give each player's 95% interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


#: (index of player i, index of player j, i's score in [0, 1]): one comparison
Game = tuple[int, int, float]


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
