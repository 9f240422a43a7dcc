"""What every labeller shares: its options, the `Labeler` protocol, the registry, provenance.

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

Adding a labeller is a class (with `label`, or a `strategy`, and `columns`) plus one
`register_labeler` call (in cai, or in another package through an entry point in the
group `cai.labelers`); `cai rl`, `cai eval judge` and the exporter ask it, never its
name. Several `--judge` options make an `EnsembleLabeler` of the chosen kind.

**Failing fast.** `make_labeler` hands each labeller its judge engine behind a
`WatchedJudge`: when the judge's first `FAIL_FAST_CALLS` calls all failed the same way
(the same `EngineError` code: no log-probs from a server, prompts over the context
window, ...), the run stops with one `JudgeUnusable` error naming the judge, the failure
and what to do, instead of recording the same failure on every row. A judge that has
answered once is never stopped this way (the failure budget still counts its failures).
A model without a chat template is refused even earlier, when its engine is built,
unless it is prompted with plain transcripts (`-E prompt_format=plain`, or `auto`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cai.debias import DEBIAS_METHODS
from cai.engines.base import Engine, EngineError
from cai.errors import CAIError, ConfigError
from cai.options import Options, at_least, option, probability_range, string_list
from cai.types import Completion, Message, Request

if TYPE_CHECKING:
    from cai.constitution import Constitution
    from cai.judges import LabelFailure, PairLabel


# ---- options ---------------------------------------------------------------------------------
def labeler_names() -> tuple[str, ...]:
    _load_builtin_labelers()
    return tuple(_REGISTRY)


@dataclass
class LabelerOptions(Options):
    """How preferences are labelled: the judges, the labeller and its knobs."""

    judges: list[str] = option(flag="--judge", default_factory=lambda: ["smollm2"], parse=string_list,
                               help="Judge model spec; repeat for an ensemble.")
    labeler: str = option("pairwise", choices=labeler_names,
                          help="pairwise: the paper's (A)/(B) log-prob soft labels; cot: reasoning first, "
                               "probabilities clamped; rank-all: NeMo-style most/least aligned of all K as JSON.")
    cot_few_shot: str = option("default", help="CoT labeller examples: 'default' (shipped), 'none', our YAML, or "
                                               "Anthropic's RLMadisonPrecogFewShotPrompts.json shape.")
    both_orders: bool = option(True, help="Ask (A,B) and (B,A) and average, against position bias.")
    debias: str = option("none", choices=DEBIAS_METHODS,
                         help="Pairwise and CoT: divide the judge's prior for the letter (A) out of each P(A), "
                              "before the orders are averaged. contextual: the prior is P(A) on a content-free "
                              "question per principle (replies 'N/A'); batch: the mean P(A) of the judge's "
                              "earlier answers in this run; none: as the judge answered (the default: with both "
                              "orders calibration cannot change a label's choice, and measured it did not improve "
                              "calibration; with --no-both-orders, contextual measured best).")
    principles_per_label: int = option(1, help="Average each label over M sampled principles.")
    clamp: tuple[float, float] = option((0.4, 0.6), parse=probability_range, cli_type=str, metavar="LO,HI",
                                        help="CoT probability clamp 'lo,hi' (0 <= lo <= hi <= 1).")
    combine: str = option("mean", choices=("mean", "vote"), help="Ensemble of judges: 'mean' probability or "
                                                                 "'vote'.")
    min_judges: int = option(1, help="Ensembles: a label needs at least this many judges to answer; each judge's "
                                     "failure is recorded with its reason.")
    judge_max_tokens: int = option(192, help="Max tokens of CoT reasoning / rank-all answers.")
    rank_retries: int = option(2, help="Rank-all: retries after an unparsable answer.")

    def check(self) -> None:
        if not self.judges:
            raise ConfigError("give at least one --judge")
        at_least("--principles-per-label", self.principles_per_label, 1)
        at_least("--judge-max-tokens", self.judge_max_tokens, 1)
        at_least("--rank-retries", self.rank_retries, 0)
        if self.min_judges != 1 and not 1 <= self.min_judges <= len(self.judges):
            raise ConfigError(f"--min-judges {self.min_judges} needs an ensemble of at least that many judges: "
                              f"give that many --judge options (got {len(self.judges)})")
        if self.cot_few_shot != "default" and self.labeler != "cot":
            raise ConfigError(f"--cot-few-shot is used only by --labeler cot, not {self.labeler}")
        if self.debias != "none" and self.labeler == "rank-all":
            raise ConfigError("--debias calibrates P(A) of pairwise and cot labels; rank-all has no P(A)")


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
        from cai.judges import LabelFailure

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
        from cai.judges import LabelFailure, PairLabel

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


# ---- the registry ----------------------------------------------------------------------------
#: name -> factory(options, one judge engine, constitution, seed) -> a labeller using that judge
LabelerFactory = Callable[[LabelerOptions, "Engine", "Constitution", int], Labeler]
_REGISTRY: dict[str, tuple[LabelerFactory, tuple[str, ...]]] = {}


def register_labeler(name: str, factory: LabelerFactory, columns: tuple[str, ...] = COMMON_COLUMNS) -> None:
    """Make `--labeler NAME` build labellers with `factory`; `columns` are the ones it writes."""
    _REGISTRY[name] = (factory, columns)


def all_columns() -> tuple[str, ...]:
    """Every provenance column any registered labeller writes, in a stable order."""
    _load_builtin_labelers()
    seen: dict[str, None] = {}
    for _, columns in _REGISTRY.values():
        seen.update(dict.fromkeys(columns))
    return tuple(seen)


def make_labeler(options: LabelerOptions, engines: list[Engine], constitution: Constitution,
                 seed: int = 0) -> Labeler:
    """One labeller per judge engine; several make an ensemble (`--combine`, `--min-judges`)."""
    from cai.judges import EnsembleLabeler

    _load_builtin_labelers()
    if options.labeler not in _REGISTRY:
        raise ConfigError(f"--labeler must be one of {', '.join(_REGISTRY)}; got {options.labeler!r}")
    factory, _ = _REGISTRY[options.labeler]
    made = [factory(options, WatchedJudge(engine), constitution, seed) for engine in engines]
    if len(made) == 1:
        if options.min_judges != 1:
            raise ConfigError(f"--min-judges {options.min_judges} needs an ensemble: give that many --judge "
                              "options")
        return made[0]
    return EnsembleLabeler(made, combine=options.combine, min_judges=options.min_judges)


# ---- failing fast on a judge that cannot work ----------------------------------------------------
#: a judge whose first this many calls all failed with the same code stops the run
FAIL_FAST_CALLS = 8

_HINTS = {
    "context_overflow": "its prompts do not fit its context window: use a judge with a longer one, or shorter "
                        "conversations and replies (--max-tokens)",
    "engine_error": "check the judge's spec, engine options and server; log-prob labels (pairwise, cot) need "
                    "/completions with echo and logprobs from an openai: server, --labeler rank-all only chat",
}


class JudgeUnusable(CAIError):
    """A judge failed the same way on each of its first calls; the run stops instead of
    recording that failure on every row."""


class WatchedJudge(Engine):
    """A judge engine that stops the run when its first `after` calls all fail the same way.

    Only the first `after` finished calls are judged: if they all raised an `EngineError`
    with one code, that call and every later one raise `JudgeUnusable`; if any answered,
    or they failed in different ways, the watch ends and failures are row failures as usual.
    """

    def __init__(self, engine: Engine, after: int = FAIL_FAST_CALLS) -> None:
        self.inner, self.after = engine, after
        self.model_id = engine.model_id
        self.prompt_format = getattr(engine, "prompt_format", "chat")
        self.failures: list[EngineError] = []
        self.watching = True
        self.stopped: JudgeUnusable | None = None

    def context_window(self) -> int | None:
        return self.inner.context_window()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def cache_identity(self) -> dict[str, str]:
        return self.inner.cache_identity()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        return await self._watched(self.inner.generate(requests))

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        return await self._watched(self.inner.score(messages, continuations))

    async def _watched(self, call: Any) -> Any:
        if self.stopped is not None:
            call.close()
            raise self.stopped
        try:
            result = await call
        except EngineError as exc:
            self._failed(exc)
            raise
        self.watching = False
        return result

    def _failed(self, exc: EngineError) -> None:
        if not self.watching:
            return
        self.failures.append(exc)
        if len(self.failures) < self.after:
            return
        self.watching = False
        codes = {f.code for f in self.failures}
        if len(codes) == 1:
            code = codes.pop()
            hint = _HINTS.get(code, "see the message")
            self.stopped = JudgeUnusable(
                f"judge {self.model_id} cannot work: its first {len(self.failures)} calls all failed with "
                f"{code} (e.g. {str(exc)[:300]}); {hint}. The run stopped here; fix this and re-run the same "
                "command (finished rows are kept)")
            raise self.stopped from exc


_PLUGINS_LOADED = False


def _load_builtin_labelers() -> None:
    """The shipped labellers, then plugins: an entry point in the group `cai.labelers` names a
    module (importing it calls `register_labeler`) or a function to call, as for engines."""
    global _PLUGINS_LOADED
    import cai.judges  # noqa: F401  (registers pairwise, cot and rank-all)

    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from cai.plugins import load_plugins

    load_plugins("cai.labelers", "labeller", ConfigError)
