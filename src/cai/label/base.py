"""The value types and protocol every labeller shares; imports no labeller.

A labeller answers one question: given a conversation and its candidate replies, which
pairs does it prefer, and how strongly? `Labeler.label(messages, candidates, key)`
returns one `Judgement` per preference it formed (or per label that failed), each
naming its two candidates by their index. How it gets there is its own business:

- `AllPairs`: compare every pair of distinct candidates (the paper's pairwise labels,
  CoT labels);
- `RankOnce`: one answer naming the most and least aligned of all K (NeMo's rank-all),
  turned into a certain preference between those two.

A labeller also owns its output: `provenance(judgement, x_wins)` is the row of columns
it writes beside each preference (TRL's format keeps them as extra columns), and
`columns` names them, so an export knows every column without a list of its own.
A pair's answer is a `PairLabel` (`p_x`: the probability that reply x is better), a
ranking's a `RankLabel`; an unusable answer raises `LabelFailure` with a stable code.

Not here: any labeller (`pairwise`, `rank_all`, `ensemble`) or the registry (`registry`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cai.core.types import Message
from cai.engines.base import Engine
from cai.engines.chat_tokens import TEXT_ROLE


class LabelFailure(Exception):
    """A judge's answer cannot be used: a stable `code`, a message (`reason`), the raw text.

    Codes: `unparsable` (rank-all JSON), `nonfinite_score` (a NaN/inf log-prob),
    `too_few_judges` (an ensemble below `min_judges`), `judges_cancel_out`,
    `engine_error` (one judge's engine gave up; only inside ensembles).
    """

    def __init__(self, reason: str, raw: list[str] | None = None, generated_tokens: int = 0, *,
                 code: str = "unparsable", judge_failures: list[dict[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.raw, self.generated_tokens, self.code = reason, raw or [], generated_tokens, code
        self.judge_failures = judge_failures or []
        #: the principles the failed label was asked under, where the labeller knows them (per-principle figures)
        self.principle_ids: list[str] = []


@dataclass
class PairLabel:
    p_x: float
    p_x_by_order: list[float | None]  # [order (x, y), order (y, x)]
    position_bias: bool | None
    principle_ids: list[str]
    judges: list[str]
    raw: list[str] = field(default_factory=list)
    generated_tokens: int = 0
    agreement: float | None = None
    judges_answered: int = 1
    judge_failures: list[dict[str, str]] = field(default_factory=list)
    #: the labeller's own provenance columns (rank-all: judge_attempts, shown_order)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankLabel:
    chosen: int
    rejected: int
    judges: list[str]
    raw: list[str]
    attempts: int
    shown_order: list[int]
    generated_tokens: int = 0
    agreement: float | None = None
    judges_answered: int = 1
    judge_failures: list[dict[str, str]] = field(default_factory=list)


def softmax_first(logp_a: float, logp_b: float) -> float:
    """P(A) from two log-probs, stable for any finite gap (no overflow past ~709).

    A non-finite log-prob (NaN, or -inf from a broken engine) raises a `LabelFailure`
    instead of turning into a NaN label that would read as a preference for (B).
    """
    if not (math.isfinite(logp_a) and math.isfinite(logp_b)):
        raise LabelFailure(f"the judge returned non-finite log-probs ({logp_a}, {logp_b})", code="nonfinite_score")
    log_total = max(logp_a, logp_b) + math.log1p(math.exp(-abs(logp_a - logp_b)))  # logaddexp
    return math.exp(logp_a - log_total)


def text_message(content: str) -> Message:
    """A message that a plain prompt writes as it stands (`cai.engines.chat_tokens.TEXT_ROLE`)."""
    return {"role": TEXT_ROLE, "content": content}


def is_plain(engine: Engine) -> bool:
    return getattr(engine, "prompt_format", "chat") == "plain"


# ---- the protocol ----------------------------------------------------------------------------
@dataclass
class Judgement:
    """One label between candidates `x` and `y` (their indices): a `PairLabel`, or why there is none."""

    x: int
    y: int
    label: PairLabel | None = None
    failure: LabelFailure | None = None


#: columns every labeller writes on a preference row (`pair_provenance`)
COMMON_COLUMNS: tuple[str, ...] = (
    "labeler", "judges", "principle_ids", "p_chosen", "p_chosen_order_ab", "p_chosen_order_ba", "label_margin",
    "position_bias", "judge_agreement", "judges_answered", "judge_failures", "judge_raw", "chosen_index",
    "rejected_index", "judge_generated_tokens")


class Labeler(Protocol):
    name: str
    #: the provenance columns this labeller writes (`COMMON_COLUMNS` plus its own)
    columns: tuple[str, ...]

    async def label(self, messages: list[Message], candidates: Sequence[tuple[int, str]],
                    key: tuple[Any, ...]) -> list[Judgement]: ...

    def provenance(self, judgement: Judgement, x_wins: bool) -> dict[str, Any]: ...


class Strategy(Protocol):
    async def __call__(self, labeler: Any, messages: list[Message], candidates: Sequence[tuple[int, str]],
                       key: tuple[Any, ...]) -> list[Judgement]: ...


class AllPairs:
    """Compare every pair of candidates; one pair's failure never loses the others."""

    async def __call__(self, labeler: Any, messages: list[Message], candidates: Sequence[tuple[int, str]],
                       key: tuple[Any, ...]) -> list[Judgement]:

        pairs = list(itertools.combinations(candidates, 2))
        results = await asyncio.gather(*[labeler.compare(messages, a, b, (*key, i, j)) for (i, a), (j, b) in pairs],
                                       return_exceptions=True)
        out = []
        for ((i, _), (j, _)), result in zip(pairs, results, strict=True):
            if isinstance(result, LabelFailure):
                out.append(Judgement(i, j, failure=result))
            elif isinstance(result, BaseException):
                raise result
            else:
                out.append(Judgement(i, j, label=result))
        return out


class RankOnce:
    """One ranking of all candidates; its most and least aligned make a certain preference."""

    async def __call__(self, labeler: Any, messages: list[Message], candidates: Sequence[tuple[int, str]],
                       key: tuple[Any, ...]) -> list[Judgement]:

        ids = [i for i, _ in candidates]
        try:
            ranked = await labeler.rank(messages, [text for _, text in candidates], key)
        except LabelFailure as exc:
            return [Judgement(-1, -1, failure=exc)]
        label = PairLabel(p_x=1.0, p_x_by_order=[None, None], position_bias=None, principle_ids=[],
                          judges=ranked.judges, raw=ranked.raw, generated_tokens=ranked.generated_tokens,
                          agreement=ranked.agreement, judges_answered=ranked.judges_answered,
                          judge_failures=ranked.judge_failures,
                          extra={"judge_attempts": ranked.attempts, "shown_order": [ids[p] for p in ranked.shown_order]})
        return [Judgement(ids[ranked.chosen], ids[ranked.rejected], label=label)]


def pair_provenance(name: str, judgement: Judgement, x_wins: bool) -> dict[str, Any]:
    """The columns beside a preference, with probabilities re-expressed for the chosen reply.

    `label_margin` = |2p - 1| is named so that TRL's RewardTrainer, which silently uses any
    column called `margin` in its loss, does not pick it up.
    """
    label = judgement.label
    assert label is not None

    def for_chosen(p: float | None) -> float | None:
        return None if p is None else (p if x_wins else 1.0 - p)

    p = for_chosen(label.p_x)
    assert p is not None
    return {"labeler": name, "judges": label.judges, "principle_ids": label.principle_ids,
            "p_chosen": p, "p_chosen_order_ab": for_chosen(label.p_x_by_order[0]),
            "p_chosen_order_ba": for_chosen(label.p_x_by_order[1]), "label_margin": abs(2 * p - 1),
            "position_bias": label.position_bias, "judge_agreement": label.agreement,
            "judges_answered": label.judges_answered, "judge_failures": label.judge_failures,
            "judge_raw": label.raw, "chosen_index": judgement.x if x_wins else judgement.y,
            "rejected_index": judgement.y if x_wins else judgement.x,
            "judge_generated_tokens": label.generated_tokens, **label.extra}


class LabelsThroughStrategy:
    """`label` and `provenance` for a labeller with a `strategy` (every shipped one)."""

    name: str
    strategy: Strategy
    columns: tuple[str, ...] = COMMON_COLUMNS

    async def label(self, messages: list[Message], candidates: Sequence[tuple[int, str]],
                    key: tuple[Any, ...]) -> list[Judgement]:
        return await self.strategy(self, messages, candidates, key)

    def provenance(self, judgement: Judgement, x_wins: bool) -> dict[str, Any]:
        return pair_provenance(self.name, judgement, x_wins)
