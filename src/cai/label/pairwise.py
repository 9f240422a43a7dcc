"""The paper's pairwise labeller: (A)/(B) log-prob soft labels, and chain-of-thought labels.

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

NeMo's rank-all labeller is in `rank_all`, ensembles of judges in `ensemble`.

**Debiasing** (`debias`, `cai.label.debias`): pairwise and CoT labels can divide the judge's prior
for the letter (A) out of each P(A) (contextual or batch calibration) before the orders
are averaged; the position-bias flag is taken on the calibrated values.

**Plain prompts.** A judge engine whose `prompt_format` is "plain" (a base model with no
chat template) gets each question as one block of text in the paper's style, ending in the
answer's first words ("The answer is:"), from the `*_plain` templates; the scored
continuations are then the letters themselves (`judge_answers_plain.yaml`).

The labeller says how it labels a set of candidates (`strategy`, from `cai.label.base`) and
which columns it writes; `cai.label.registry` registers the `--labeler` names.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from typing import Any

from cai.core.errors import ConfigError
from cai.core.types import Message, Request, SamplingParams, assistant, derive_seed, user
from cai.engines.base import Engine
from cai.inputs.constitution import Constitution, ConstitutionError, Principle
from cai.inputs.few_shot import CotFewShot, load_cot_few_shot
from cai.label.base import (
    AllPairs,
    LabelFailure,
    LabelsThroughStrategy,
    PairLabel,
    is_plain,
    softmax_first,
    text_message,
)
from cai.label.debias import CONTENT_FREE, DEBIAS_METHODS, RunningPrior, calibrate
from cai.text.templates import load_prompt_yaml, render, transcript


def _p_x(p_option_a: float, x_shown_first: bool) -> float:
    """Map the judge's P(A) back to P(x is better)."""
    return p_option_a if x_shown_first else 1.0 - p_option_a


def _same_position(p_a_first_order: float, p_a_second_order: float) -> bool:
    return (p_a_first_order > 0.5 and p_a_second_order > 0.5) or (p_a_first_order < 0.5 and p_a_second_order < 0.5)


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
        # CoT examples: "default" (shipped), "none", our YAML or Anthropic's CoT file (cai.inputs.few_shot)
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
        """The judge's prior P(A) to divide out (`cai.label.debias`), or None."""
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
        try:
            results = await asyncio.gather(*[
                self._p_option_a(messages, p, *((x, y) if first else (y, x)),
                                 seed=derive_seed(self.seed, *key, p.id, first)) for p, first in jobs])
            priors = await asyncio.gather(*[self._prior(p) for p, _ in jobs])
        except LabelFailure as exc:  # per-principle figures count a failure against its principles
            exc.principle_ids = [p.id for p in principles]
            raise
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








