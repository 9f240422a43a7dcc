"""Several judges of one kind, combined by mean probability or by vote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cai.core.errors import ConfigError
from cai.core.types import Message
from cai.engines.base import EngineError
from cai.label.base import LabelFailure, LabelsThroughStrategy, PairLabel, RankLabel


class EnsembleLabeler(LabelsThroughStrategy):
    """Several labellers of one kind; `combine` is 'mean' (probability) or 'vote'.

    One rule for every judge's failure, in `compare` and `rank` alike: a judge whose
    answer is unusable (`LabelFailure`) or whose engine gave up (`EngineError`) is
    recorded in `judge_failures` with its code and message, and the label is formed from
    the judges that answered when at least `min_judges` did; otherwise the label fails
    with code `too_few_judges`. Any other exception is a bug and propagates.

    `vote` counts one vote per judge *and order*: P(x) is the share of votes for x, and
    each per-order field is the share of that order's votes, so the stored probability
    is always the mean of its per-order fields.
    """

    def __init__(self, labelers: list[Any], combine: str = "mean", min_judges: int = 1) -> None:
        if combine not in ("mean", "vote"):
            raise ConfigError("--combine must be 'mean' or 'vote'")
        if not 1 <= min_judges <= len(labelers):
            raise ConfigError(f"--min-judges must be between 1 and the number of judges ({len(labelers)}); "
                             f"got {min_judges}")
        self.labelers, self.combine, self.min_judges = labelers, combine, min_judges
        # an ensemble labels the way its members do (every pair, or one ranking) and writes their columns
        self.name, self.strategy, self.columns = labelers[0].name, labelers[0].strategy, labelers[0].columns

    async def _answers(self, calls: list[Any]) -> tuple[list[Any], list[dict[str, str]], list[str]]:
        results = await asyncio.gather(*calls, return_exceptions=True)
        answered, failures, raw = [], [], []
        for labeler, result in zip(self.labelers, results, strict=True):
            judge = labeler.engine.model_id
            if isinstance(result, LabelFailure):
                failures.append({"judge": judge, "code": result.code, "reason": result.reason})
                raw += result.raw
            elif isinstance(result, EngineError):
                failures.append({"judge": judge, "code": result.code, "reason": str(result)})
            elif isinstance(result, BaseException):
                raise result
            else:
                answered.append(result)
        if len(answered) < self.min_judges:
            detail = "; ".join(f"{f['judge']}: {f['code']}" for f in failures)
            raise LabelFailure(f"{len(answered)} of {len(self.labelers)} judges answered, fewer than --min-judges "
                               f"{self.min_judges} ({detail})", raw, code="too_few_judges",
                               judge_failures=failures)
        return answered, failures, raw

    async def compare(self, messages: list[Message], x: str, y: str, key: Sequence[Any]) -> PairLabel:
        labels, failures, _ = await self._answers([lb.compare(messages, x, y, key) for lb in self.labelers])
        by_order: list[float | None] = []
        for slot in (0, 1):
            values = [lb.p_x_by_order[slot] for lb in labels if lb.p_x_by_order[slot] is not None]
            if self.combine == "vote":
                values = [_vote(v) for v in values]
            by_order.append(sum(values) / len(values) if values else None)
        if self.combine == "mean":
            p = sum(lb.p_x for lb in labels) / len(labels)
        else:
            present = [v for v in by_order if v is not None]
            p = sum(present) / len(present)
        direction = p > 0.5
        agreement = sum((lb.p_x > 0.5) == direction for lb in labels) / len(labels)
        biases = [lb.position_bias for lb in labels if lb.position_bias is not None]
        return PairLabel(
            p_x=p, p_x_by_order=by_order,
            position_bias=(sum(biases) > len(biases) / 2) if biases else None,
            principle_ids=sorted({pid for lb in labels for pid in lb.principle_ids}),
            judges=[j for lb in labels for j in lb.judges], raw=[r for lb in labels for r in lb.raw],
            generated_tokens=sum(lb.generated_tokens for lb in labels), agreement=agreement,
            judges_answered=len(labels), judge_failures=failures)

    async def rank(self, messages: list[Message], candidates: list[str], key: Sequence[Any]) -> RankLabel:
        labels, failures, raw = await self._answers([lb.rank(messages, candidates, key) for lb in self.labelers])
        score = [0] * len(candidates)
        for lb in labels:
            score[lb.chosen] += 1
            score[lb.rejected] -= 1
        chosen, rejected = max(range(len(score)), key=score.__getitem__), min(range(len(score)), key=score.__getitem__)
        if score[chosen] == score[rejected]:
            raise LabelFailure("rank-all ensemble: the judges cancel out", [t for lb in labels for t in lb.raw] + raw,
                               code="judges_cancel_out", judge_failures=failures)
        return RankLabel(chosen=chosen, rejected=rejected, judges=[j for lb in labels for j in lb.judges],
                         raw=[t for lb in labels for t in lb.raw], attempts=sum(lb.attempts for lb in labels),
                         shown_order=labels[0].shown_order, generated_tokens=sum(lb.generated_tokens for lb in labels),
                         agreement=sum(lb.chosen == chosen for lb in labels) / len(labels),
                         judges_answered=len(labels), judge_failures=failures)


def _vote(p: float) -> float:
    return 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
