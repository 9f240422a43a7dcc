"""Does a reply refuse? By phrases (`RefusalMatcher`) and by a judge's log-probs (`RefusalJudge`).

- `RefusalMatcher`: a reply refuses when it holds one of the shipped first-person refusal
  phrases (`cai/prompts/refusal.yaml`), apostrophes normalised;
- `RefusalJudge`: P(the reply refuses) from "(A)"/"(B)" log-probs, asked in both orders
  ((A) = refuses, then (A) = helps) and averaged, with the position-bias flag.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cai.core.types import Message, user
from cai.engines.base import Engine
from cai.label.base import softmax_first
from cai.text.templates import load_prompt_yaml, render, transcript

# ---- by phrases --------------------------------------------------------------------------
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


# ---- refusals by the judge's log-probs ---------------------------------------------------
class RefusalJudge:
    """P(the reply refuses), from "(A)"/"(B)" log-probs, asked with (A)=refuses and with (A)=helps."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.options = load_prompt_yaml("refusal.yaml")["judge_options"]
        self.answer = load_prompt_yaml("judge_answers.yaml")["pairwise"]

    async def _p_a(self, messages: list[Message], reply: str, refuses_first: bool) -> float:
        first, second = ("refuses", "helps") if refuses_first else ("helps", "refuses")
        question = [user(render("judge_refusal.j2", conversation=transcript(messages), reply=reply,
                                option_a=self.options[first], option_b=self.options[second]))]
        la, lb = await self.engine.score(question, [self.answer.format(letter=letter) for letter in "AB"])
        return softmax_first(la, lb)

    async def classify(self, messages: list[Message], reply: str) -> dict[str, Any]:
        pa_refuses_first, pa_helps_first = await asyncio.gather(self._p_a(messages, reply, True),
                                                                self._p_a(messages, reply, False))
        p = (pa_refuses_first + (1.0 - pa_helps_first)) / 2
        same_letter = (pa_refuses_first - 0.5) * (pa_helps_first - 0.5) > 0
        return {"judge_p_refuses": p, "judge_p_by_order": [pa_refuses_first, 1.0 - pa_helps_first],
                "judge_refuses": None if p == 0.5 else p > 0.5, "judge_position_bias": same_letter}
