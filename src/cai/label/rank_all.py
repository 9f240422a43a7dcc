"""NeMo-Aligner's rank-all labeller: the whole constitution, all K candidates shuffled, one JSON answer.

The judge sees every candidate at once (shuffled with a seeded order, so position is not
preference), and answers `{"most_aligned": i, "least_aligned": j}`; an unparsable answer is
retried (at temperature 0.7) up to `max_retries` times, then fails with `unparsable`. The
two it names make one certain preference (`RankOnce`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from cai.core.types import Message, Request, SamplingParams, derive_seed, system, user
from cai.engines.base import Engine
from cai.inputs.constitution import Constitution
from cai.label.base import (
    COMMON_COLUMNS,
    LabelFailure,
    LabelsThroughStrategy,
    RankLabel,
    RankOnce,
    is_plain,
    text_message,
)
from cai.text.parsing import first_json_object
from cai.text.templates import load_prompt_yaml, render, transcript


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
