"""The d-RLAIF judge: one reply rated under one principle, the expected score from log-probs.

Direct RLAIF (Lee et al. 2023) asks the judge to rate a single reply and takes the reward
from the probabilities of the score tokens, so no text is generated. `RatingJudge.rate`
makes one scoring call per reply: the answer's stem alone ("The rating is: ") and the stem
followed by each label of the scale (1-9, `prompts/rating.yaml`). From those log-probs:

- P(v) = P(label v | stem), normalised over the scale's labels: `probabilities`;
- `expected` = sum(v * P(v)), the reward;
- `scale_mass` = sum over labels of P(label | stem), before normalising: how much of the
  judge's next-token probability fell on the scale at all. Low mass means the judge is not
  answering the question, whatever `expected` says.

Every label must be exactly one token after the stem in the judge's own tokenizer, or
P(v) would be a product over several tokens and the labels would not be comparable.
`check()` verifies it through `Engine.token_ids` and picks the first answer form of
`rating.yaml` that passes; a judge that fails every form, or an engine that cannot say how
it tokenizes, is a `RatingScaleError` before any reply is rated.

The conversation and the reply are fenced like every judge prompt (`prompts/fence.j2`):
each line of the reply is quoted, so a reply that writes "The rating is: 9" or a fake end
of the question writes it inside the quote. Control-token strings stay text in the
engines (`cai.engines.chat_tokens`).

Not here: which principle a caller samples (it passes the `key`), retries, caching and
failure accounting (`cai.train.rewards`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cai.core.errors import ConfigError
from cai.core.types import Message, user
from cai.engines.base import Engine, EngineError
from cai.inputs.constitution import Constitution, ConstitutionError, Principle
from cai.label.base import LabelFailure, is_plain, text_message
from cai.text.templates import load_prompt_yaml, render, transcript


class RatingScaleError(ConfigError):
    """The judge cannot rate on the scale: a label is not one token, or its tokenizer is unknown."""


@dataclass(frozen=True)
class AnswerForm:
    stem: str
    label: str  # a format string with {label}

    def continuation(self, label: str) -> str:
        return self.stem + self.label.format(label=label)


@dataclass
class Rating:
    expected: float
    probabilities: list[float]
    scale_mass: float
    principle_id: str
    values: list[int] = field(default_factory=list)


class RatingJudge:
    """Rates one reply on the shipped 1-9 scale under one principle of `constitution`."""

    def __init__(self, engine: Engine, constitution: Constitution, *, seed: int = 0) -> None:
        if not constitution.judge_principles:
            raise ConstitutionError(f"constitution {constitution.name!r} has no judge principles; a rating judge "
                                    "needs them (add them with --judge-principles FILE)")
        spec = load_prompt_yaml("rating.yaml")
        self.engine, self.constitution, self.seed = engine, constitution, seed
        self.plain = is_plain(engine)
        self.labels: list[str] = [str(v) for v in spec["scale"]]
        self.values = [int(v) for v in self.labels]
        self.forms = [AnswerForm(f["stem"], f["label"]) for f in spec["forms"]["plain" if self.plain else "chat"]]
        self.form: AnswerForm | None = None

    async def check(self) -> AnswerForm:
        """The first answer form whose every label is one token after its stem (kept for every rating)."""
        tried = []
        for form in self.forms:
            try:
                stem = await self.engine.token_ids(form.stem)
            except EngineError as exc:
                raise RatingScaleError(f"judge {self.engine.model_id}: cannot check that the rating labels are single "
                                       f"tokens: {exc}. Use a judge whose tokenizer cai can read (smollm2, hf:, "
                                       "vllm:, or openai: with -E tokenizer=...)") from exc
            counts = []
            for label in self.labels:
                ids = await self.engine.token_ids(form.continuation(label))
                counts.append(len(ids) - len(stem) if ids[:len(stem)] == stem else None)
            if all(c == 1 for c in counts):
                self.form = form
                return form
            bad = [f"{form.continuation(lab)!r}: {'stem re-tokenized' if c is None else f'{c} tokens'}"
                   for lab, c in zip(self.labels, counts, strict=True) if c != 1]
            tried.append(f"after {form.stem!r}, " + "; ".join(bad[:4]))
        raise RatingScaleError(
            f"judge {self.engine.model_id}: the rating labels {', '.join(self.labels)} are not each one token after "
            f"the answer stem in its tokenizer ({' | '.join(tried)}); the expected score needs one token per label. "
            "Use another judge, or edit the scale and stems in cai/prompts/rating.yaml")

    def principle(self, *key: object) -> Principle:
        """The principle a rating is asked under, sampled by (seed, key): the same key, the same principle."""
        return self.constitution.sample_judge(1, self.seed, "rating", *key)[0]

    def question(self, messages: list[Message], reply: str, principle: Principle) -> list[Message]:
        low, high = self.values[0], self.values[-1]
        values = dict(conversation=transcript(messages), reply=reply, principle=principle.judge, low=low, high=high,
                      middle=(low + high) // 2)
        if self.plain:
            return [text_message(render("judge_rating_plain.j2", **values))]
        return [user(render("judge_rating.j2", **values))]

    async def rate(self, messages: list[Message], reply: str, principle: Principle) -> Rating:
        """One scoring call: the stem alone and the stem + each label."""
        form = self.form or await self.check()
        continuations = [form.stem] + [form.continuation(label) for label in self.labels]
        scores = await self.engine.score(self.question(messages, reply, principle), continuations)
        if not all(math.isfinite(s) for s in scores):
            raise LabelFailure(f"the judge returned non-finite log-probs {scores}", code="nonfinite_score")
        return expected_rating(scores[0], scores[1:], self.values, principle.id)


def expected_rating(stem_logp: float, label_logps: list[float], values: list[int], principle_id: str) -> Rating:
    """P(v) over the labels, sum(v * P(v)), and the mass the labels had after the stem."""
    top = max(label_logps)
    log_total = top + math.log(sum(math.exp(lp - top) for lp in label_logps))
    probabilities = [math.exp(lp - log_total) for lp in label_logps]
    expected = sum(v * p for v, p in zip(values, probabilities, strict=True))
    mass = min(1.0, math.exp(log_total - stem_logp))
    return Rating(expected=expected, probabilities=probabilities, scale_mass=mass, principle_id=principle_id,
                  values=list(values))
