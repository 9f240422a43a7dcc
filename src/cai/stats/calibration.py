"""How well confidence matches accuracy.

- `reliability_bins` and `expected_calibration_error`: the bins of a reliability diagram
  and their labels-weighted gap (report figures);
- `label_calibration_error`: the top-label ECE of soft labels against human choices
  (`cai eval judge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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


def label_calibration_error(probabilities: list[float], bins: int = 10) -> float | None:
    """Top-label ECE of soft labels against human choices.

    `probabilities` are P(the human's choice is better), one per labelled pair. A label's
    confidence is max(p, 1 - p) and it is right when p > 0.5 (half right at exactly 0.5);
    the labels fall in `bins` equal bins of confidence over [0.5, 1], and ECE is the
    labels-weighted mean gap |accuracy - mean confidence| of the bins. None for no labels.
    """
    if not probabilities:
        return None
    grouped: dict[int, list[tuple[float, float]]] = {}
    for p in probabilities:
        confidence = max(p, 1.0 - p)
        credit = 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
        grouped.setdefault(min(bins - 1, int((confidence - 0.5) * 2 * bins)), []).append((confidence, credit))
    gap = sum(abs(sum(c for _, c in group) - sum(conf for conf, _ in group)) for group in grouped.values())
    return gap / len(probabilities)
