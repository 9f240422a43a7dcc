"""AI preference labellers: pairwise log-prob, chain-of-thought, rank-all, ensembles.

Pairwise labellers answer `compare(messages, x, y, key)` with a `PairLabel` whose
`p_x` is the probability that reply `x` is better. Bookkeeping is by *position*: in the
order (x, y) the judge's P(A) is P(x better); in the swapped order (y, x) its P(A) is
P(y better), so P(x better) = 1 - P(A). Getting this mapping wrong silently flips labels
(open-instruct's bug), which is why it lives in exactly one function, `_p_x`.

- `PairwiseLabeler`: the CAI paper's multiple-choice prompt with one principle sampled
  per comparison; P(A) = softmax over the log-probs of "(A)" / "(B)" (no generation).
  `principles_per_label` averages over several sampled principles; `both_orders` asks
  (A, B) and (B, A) and averages (RLAIF's position-bias fix).
- `cot=True`: the judge reasons first (few-shot), then "(A)"/"(B)" are scored after its
  own reasoning; probabilities are clamped (default [0.4, 0.6], the paper's finding).
- `RankAllLabeler`: NeMo-Aligner's variant: the whole constitution in one system prompt,
  all K candidates *shuffled*, and a JSON answer naming the most and least aligned.
- `EnsembleLabeler`: several judges; mean probability or majority vote, with agreement.

**Debiasing** (`debias`, `cai.debias`): pairwise and CoT labels can divide the judge's prior
for the letter (A) out of each P(A) (contextual or batch calibration) before the orders
are averaged; the position-bias flag is taken on the calibrated values.

**Plain prompts.** A judge engine whose `prompt_format` is "plain" (a base model with no
chat template) gets each question as one block of text in the paper's style, ending in the
answer's first words ("The answer is:"), from the `*_plain` templates; the scored
continuations are then the letters themselves (`judge_answers_plain.yaml`).

Each class says how it labels a set of candidates (`strategy`, from `cai.labeling`) and
which columns it writes; the bottom of this file registers the `--labeler` names.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cai.constitution import Constitution, ConstitutionError, Principle
from cai.debias import CONTENT_FREE, DEBIAS_METHODS, RunningPrior, calibrate
from cai.engines.base import Engine, EngineError
from cai.engines.chat_tokens import TEXT_ROLE
from cai.errors import ConfigError
from cai.few_shot import CotFewShot, load_cot_few_shot
from cai.labeling import COMMON_COLUMNS, AllPairs, LabelerOptions, LabelsThroughStrategy, RankOnce, register_labeler
from cai.parsing import first_json_object
from cai.prompting import load_prompt_yaml, render, transcript
from cai.types import Message, Request, SamplingParams, assistant, derive_seed, system, user


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


def _p_x(p_option_a: float, x_shown_first: bool) -> float:
    """Map the judge's P(A) back to P(x is better)."""
    return p_option_a if x_shown_first else 1.0 - p_option_a


def _same_position(p_a_first_order: float, p_a_second_order: float) -> bool:
    return (p_a_first_order > 0.5 and p_a_second_order > 0.5) or (p_a_first_order < 0.5 and p_a_second_order < 0.5)


def text_message(content: str) -> Message:
    """A message that a plain prompt writes as it stands (`cai.engines.chat_tokens.TEXT_ROLE`)."""
    return {"role": TEXT_ROLE, "content": content}


def is_plain(engine: Engine) -> bool:
    return getattr(engine, "prompt_format", "chat") == "plain"


class PairwiseLabeler(LabelsThroughStrategy):
    strategy = AllPairs()

    def __init__(self, engine: Engine, constitution: Constitution, *, principles_per_label: int = 1,
                 both_orders: bool = True, seed: int = 0, cot: bool = False,
                 clamp: tuple[float, float] | None = (0.4, 0.6), cot_max_tokens: int = 192,
                 cot_few_shot: str | CotFewShot = "default", debias: str = "none") -> None:
        if debias not in DEBIAS_METHODS:
            raise ConfigError(f"--debias must be one of {', '.join(DEBIAS_METHODS)}; got {debias!r}")
        if not constitution.judge_principles:
            raise ConstitutionError(f"constitution {constitution.name!r} has no judge principles; RL labels need them "
                             "(add them with --judge-principles FILE, e.g. a list of judge questions)")
        self.engine, self.constitution = engine, constitution
        self.m, self.both_orders, self.seed, self.cot = principles_per_label, both_orders, seed, cot
        self.clamp = clamp if cot else None
        self.cot_params = SamplingParams(max_tokens=cot_max_tokens, temperature=0.0)
        self.plain = is_plain(engine)
        self.answers = load_prompt_yaml("judge_answers_plain.yaml" if self.plain else "judge_answers.yaml")
        self.name = "cot" if cot else "pairwise"
        # CoT examples: "default" (shipped), "none", our YAML or Anthropic's CoT file (cai.few_shot)
        self.cot_few_shot = load_cot_few_shot(cot_few_shot) if isinstance(cot_few_shot, str) else cot_few_shot
        self.cot_prefix = self._cot_prefix() if cot else []
        self.debias = debias
        self.batch_prior = RunningPrior()
        self._content_free: dict[str, asyncio.Future[float]] = {}

    def _cot_prefix(self) -> list[Message]:
        """The few-shot turns before every CoT question: rendered once, identical each time
        (with plain prompts, one block of text: each example's question, reasoning and answer)."""
        messages: list[Message] = []
        template = "judge_cot_plain.j2" if self.plain else "judge_cot.j2"
        for ex in self.cot_few_shot.examples:
            question = render(template, conversation=ex["conversation"], principle=ex["principle"],
                              option_a=ex["option_a"], option_b=ex["option_b"])
            answer = ex["reasoning"] + self.answers["cot"].format(letter=ex["answer"])
            messages += [text_message(f"{question} {answer}")] if self.plain else [user(question), assistant(answer)]
        return messages

    def _question(self, values: dict[str, str]) -> list[Message]:
        """The judge's prompt for one order: chat turns, or one block of text for plain prompts."""
        if self.plain:
            template = "judge_cot_plain.j2" if self.cot else "judge_pairwise_plain.j2"
            shown = "\n\n".join([m["content"] for m in self.cot_prefix] + [render(template, **values)])
            return [text_message(shown)]
        return self.cot_prefix + [user(render("judge_cot.j2" if self.cot else "judge_pairwise.j2", **values))]

    async def _p_option_a(self, messages: list[Message], principle: Principle, a: str, b: str,
                          seed: int) -> tuple[float, str, int]:
        """The judge's P(A) for one order (before calibration and clamping), plus its reasoning
        text and generated tokens."""
        values = dict(conversation=transcript(messages), principle=principle.judge, option_a=a, option_b=b)
        question = self._question(values)
        if not self.cot:
            la, lb = await self.engine.score(question, [self.answers["pairwise"].format(letter=L) for L in "AB"])
            return softmax_first(la, lb), "", 0
        stop = tuple(self.answers["cot_stop"]) if self.plain else ()
        params = SamplingParams(**{**self.cot_params.to_dict(), "seed": seed, "stop": stop})
        out = (await self.engine.generate([Request.of(question, params)]))[0][0]
        # a plain prompt ends with "...:", so the reasoning starts after a space
        reasoning = (" " if self.plain else "") + _cut_before_answer(out.text)
        la, lb = await self.engine.score(question, [reasoning + self.answers["cot"].format(letter=L) for L in "AB"])
        return softmax_first(la, lb), out.text, out.completion_tokens

    async def _prior(self, principle: Principle) -> float | None:
        """The judge's prior P(A) to divide out (`cai.debias`), or None."""
        if self.debias == "batch":
            return self.batch_prior.prior()
        if self.debias != "contextual":
            return None
        if principle.id not in self._content_free:  # asked once per principle, shared by every label
            self._content_free[principle.id] = asyncio.ensure_future(self._content_free_p_a(principle))
        asked = self._content_free[principle.id]
        try:
            return await asked
        except Exception:
            if self._content_free.get(principle.id) is asked:  # a failure is not kept: the next label asks again
                del self._content_free[principle.id]
            raise

    async def _content_free_p_a(self, principle: Principle) -> float:
        answers = await asyncio.gather(*[
            self._p_option_a([user(blank)], principle, blank, blank, seed=derive_seed(self.seed, "content-free",
                                                                                      principle.id, blank))
            for blank in CONTENT_FREE])
        return sum(p for p, _, _ in answers) / len(answers)

    def _final(self, p_a: float, prior: float | None) -> float:
        p = calibrate(p_a, prior)
        if self.clamp:
            p = min(max(p, self.clamp[0]), self.clamp[1])
        return p

    async def compare(self, messages: list[Message], x: str, y: str, key: Sequence[Any]) -> PairLabel:
        principles = self.constitution.sample_judge(self.m, self.seed, *key)
        if self.both_orders:
            orders = [True, False]
        else:  # one order, chosen by a seeded coin so x is not always shown first
            orders = [random.Random(derive_seed(self.seed, *key, "order")).random() < 0.5]
        p_a: dict[bool, list[float]] = {True: [], False: []}
        raw, tokens = [], 0
        jobs = [(p, first) for p in principles for first in orders]
        results = await asyncio.gather(*[
            self._p_option_a(messages, p, *((x, y) if first else (y, x)),
                             seed=derive_seed(self.seed, *key, p.id, first)) for p, first in jobs])
        priors = await asyncio.gather(*[self._prior(p) for p, _ in jobs])
        for (_, first), (pa, text, n), prior in zip(jobs, results, priors):
            p_a[first].append(self._final(pa, prior))
            raw += [text] if text else []
            tokens += n
        for pa, _, _ in results:  # the batch prior learns from what the judge answered, never from itself
            self.batch_prior.add(pa)
        by_order: list[float | None] = [None, None]
        for slot, first in ((0, True), (1, False)):
            if p_a[first]:
                by_order[slot] = _p_x(sum(p_a[first]) / len(p_a[first]), x_shown_first=first)
        present = [p for p in by_order if p is not None]
        bias = None
        if p_a[True] and p_a[False]:
            bias = _same_position(sum(p_a[True]) / len(p_a[True]), sum(p_a[False]) / len(p_a[False]))
        return PairLabel(p_x=sum(present) / len(present), p_x_by_order=by_order, position_bias=bias,
                         principle_ids=[p.id for p in principles], judges=[self.engine.model_id],
                         raw=raw, generated_tokens=tokens)


_ANSWER_MARKER = re.compile(r"(?:so\s+)?the\s+answer\s+is|answer\s*:", re.IGNORECASE)


def _cut_before_answer(text: str) -> str:
    """Drop the judge's own final answer so both letters can be scored after the reasoning.

    Cuts at the *last* answer marker: reasoning may use the phrase earlier ("the answer
    is not obvious because..."), and only the final one is the judge's verdict.
    """
    markers = list(_ANSWER_MARKER.finditer(text))
    return (text[:markers[-1].start()] if markers else text).rstrip()


class RankAllLabeler(LabelsThroughStrategy):
    name = "rank-all"
    strategy = RankOnce()
    columns = (*COMMON_COLUMNS, "judge_attempts", "shown_order")

    def __init__(self, engine: Engine, constitution: Constitution, *, seed: int = 0, max_retries: int = 2,
                 max_tokens: int = 64) -> None:
        self.engine, self.constitution, self.seed = engine, constitution, seed
        self.max_retries, self.max_tokens = max_retries, max_tokens
        self.texts = [p.judge for p in constitution.judge_principles] or [p.critique for p in constitution.principles]
        self.system = render("judge_rank_system.j2", name=constitution.name, principles=self.texts)
        # plain prompts (base models): one block of text ending in the JSON answer's opening words
        self.plain = load_prompt_yaml("judge_answers_plain.yaml") if is_plain(engine) else None

    def _question(self, conversation: str, shown: list[str]) -> tuple[list[Message], str, tuple[str, ...]]:
        """(prompt, the answer's opening words the judge completes, stops)."""
        if self.plain is None:
            return ([system(self.system), user(render("judge_rank_user.j2", conversation=conversation,
                                                      candidates=shown))], "", ())
        stem = self.plain["rank_stem"]
        text = render("judge_rank_plain.j2", name=self.constitution.name, principles=self.texts,
                      conversation=conversation, candidates=shown, stem=stem)
        return [text_message(text)], stem, tuple(self.plain["rank_stop"])

    async def rank(self, messages: list[Message], candidates: list[str], key: Sequence[Any]) -> RankLabel:
        k = len(candidates)
        order = random.Random(derive_seed(self.seed, *key, "shuffle")).sample(range(k), k)
        question, stem, stop = self._question(transcript(messages), [candidates[i] for i in order])
        raw, tokens, problem = [], 0, ""
        for attempt in range(1 + self.max_retries):
            params = SamplingParams(max_tokens=self.max_tokens, temperature=0.0 if attempt == 0 else 0.7,
                                    seed=derive_seed(self.seed, *key, "rank", attempt), stop=stop)
            out = (await self.engine.generate([Request.of(question, params)]))[0][0]
            answer = f"{stem} {out.text}" if stem else out.text
            raw.append(answer)
            tokens += out.completion_tokens
            picked, problem = parse_rank_answer(answer, k)
            if picked:
                most, least = picked
                return RankLabel(chosen=order[most - 1], rejected=order[least - 1], judges=[self.engine.model_id],
                                 raw=raw, attempts=attempt + 1, shown_order=order, generated_tokens=tokens)
        raise LabelFailure(f"rank-all: no usable answer after {1 + self.max_retries} tries ({problem})", raw, tokens)


def parse_rank_answer(text: str, k: int) -> tuple[tuple[int, int] | None, str]:
    """((most, least) as 1-based shown positions, '') or (None, why not)."""
    obj = first_json_object(text, ("most_aligned", "least_aligned"))
    if obj is None:
        return None, "no JSON object with most_aligned and least_aligned"
    try:
        most, least = int(obj["most_aligned"]), int(obj["least_aligned"])
    except (TypeError, ValueError):
        return None, f"non-integer answer {obj}"
    if not (1 <= most <= k and 1 <= least <= k):
        return None, f"answer {obj} is outside 1..{k}"
    if most == least:
        return None, f"the same reply is both most and least aligned ({most})"
    return (most, least), ""


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


# ---- registration: `--labeler NAME` -> a labeller for one judge engine ----------------------------
def _pairwise(options: LabelerOptions, engine: Engine, constitution: Constitution, seed: int) -> PairwiseLabeler:
    return PairwiseLabeler(engine, constitution, principles_per_label=options.principles_per_label,
                           both_orders=options.both_orders, seed=seed, debias=options.debias)


def _cot(options: LabelerOptions, engine: Engine, constitution: Constitution, seed: int) -> PairwiseLabeler:
    return PairwiseLabeler(engine, constitution, principles_per_label=options.principles_per_label,
                           both_orders=options.both_orders, seed=seed, cot=True, clamp=options.clamp,
                           cot_max_tokens=options.judge_max_tokens, cot_few_shot=options.cot_few_shot,
                           debias=options.debias)


def _rank_all(options: LabelerOptions, engine: Engine, constitution: Constitution, seed: int) -> RankAllLabeler:
    return RankAllLabeler(engine, constitution, seed=seed, max_retries=options.rank_retries,
                          max_tokens=options.judge_max_tokens)


register_labeler("pairwise", _pairwise)
register_labeler("cot", _cot)
register_labeler("rank-all", _rank_all, columns=RankAllLabeler.columns)
