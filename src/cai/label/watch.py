"""A judge engine that stops the run when it cannot work at all.

`make_labeler` hands each labeller its judge engine behind a `WatchedJudge`: when the
judge's first `FAIL_FAST_CALLS` calls all failed the same way (the same `EngineError`
code: no log-probs from a server, prompts over the context window, ...), the run stops
with one `JudgeUnusable` error naming the judge, the failure and what to do, instead of
recording the same failure on every row. A judge that has answered once is never stopped
this way (the failure budget still counts its failures). A model without a chat template
is refused even earlier, when its engine is built, unless it is prompted with plain
transcripts (`-E prompt_format=plain`, or `auto`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cai.core.errors import CAIError
from cai.core.types import Completion, Message, Request
from cai.engines.base import Engine, EngineError

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

    async def token_ids(self, text: str) -> list[int]:
        return await self.inner.token_ids(text)

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
