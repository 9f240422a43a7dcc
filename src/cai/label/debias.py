"""Debiasing a judge's P(A) beyond asking both orders: contextual and batch calibration.

A judge's P(A) mixes what it thinks of the two replies with a prior for the *letter*:
small judges prefer one position whatever the replies say. Asking both orders and
averaging (`--both-orders`) cancels a prior that is the same in both orders; calibration
estimates the prior and divides it out of each answer, so it also works with one order
and leaves both-order labels less lopsided. Both methods here rescale P(A) and P(B) by
the prior and renormalise (`calibrate`), which is subtracting the prior's log-odds from
the answer's:

- `contextual` (contextual calibration, Zhao et al. 2021): the prior is the judge's P(A)
  on *content-free* questions: the same prompt with the conversation and both replies
  replaced by "N/A", by nothing, and by "[MASK]" (`CONTENT_FREE`), averaged; one prior per
  principle (and per judge), asked once and cached like any call.
- `batch` (batch calibration, Zhou et al. 2024): the prior is the mean P(A) over a batch of
  the judge's own answers on real pairs. Labels are made as a stream, so the batch is the
  answers this judge gave before the label at hand in this run (`RunningPrior`): the first
  `BATCH_WARMUP` answers are left uncalibrated, and a label's prior depends on which labels
  finished before it (with `--concurrency` above 1, on timing too).

`none` leaves P(A) as the judge gave it. With both orders, one prior shared by the two
orders can never change which reply a label prefers (P(x) > 0.5 exactly when the judge's
P(A) was higher with x first, calibrated or not): there calibration moves only confidence
(`p_chosen`, margins, what `--min-margin` keeps) and the position-bias flag. With one
order it can change the choice. Measured on human labels (BENCHMARKS.md, "Debiasing"):
with both orders no method changed accuracy and `none` had the lowest calibration error,
so `none` is the default; with one order `contextual` had the lowest.

Not here: asking the judge (`cai.label.pairwise`), the measurement (`cai eval judge`).
"""

from __future__ import annotations

from dataclasses import dataclass

DEBIAS_METHODS: tuple[str, ...] = ("none", "contextual", "batch")

#: content-free stand-ins for the conversation and both replies (contextual calibration)
CONTENT_FREE: tuple[str, ...] = ("N/A", "", "[MASK]")

#: answers a batch prior needs before it calibrates anything
BATCH_WARMUP = 16

_EDGE = 1e-6  # a prior of exactly 0 or 1 would divide by zero


def calibrate(p_a: float, prior: float | None) -> float:
    """P(A) with the prior divided out: P(A)/prior against P(B)/(1 - prior), renormalised.

    A prior of 0.5 (or None) changes nothing; P(A) = prior gives 0.5. Written without
    log-odds so that P(A) of exactly 0 or 1 stays exact.
    """
    if prior is None:
        return p_a
    q = min(max(prior, _EDGE), 1.0 - _EDGE)
    a, b = p_a * (1.0 - q), (1.0 - p_a) * q
    return a / (a + b) if a + b > 0 else 0.5


@dataclass
class RunningPrior:
    """Batch calibration's prior for one judge: the mean of the P(A)s it has given so far."""

    warmup: int = BATCH_WARMUP
    total: float = 0.0
    count: int = 0

    def prior(self) -> float | None:
        """The mean P(A) so far, or None (no calibration) before `warmup` answers."""
        return self.total / self.count if self.count >= self.warmup else None

    def add(self, p_a: float) -> None:
        self.total += p_a
        self.count += 1


