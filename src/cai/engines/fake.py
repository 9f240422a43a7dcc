"""A scripted engine for unit tests, registered through the same path as real ones.

`fake:<script>` looks the script up in `SCRIPTS`. A script is a `FakeScript`: a function
from a request to its completion text, and optionally a function that scores a
continuation. Tests register their own with `register_script`, then build the engine
with `load_engine("fake:<name>")`. Every call is recorded in `engine.calls` so tests can
assert what was asked, in what order, and how often.

Not for anything but tests: it knows nothing about language.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cai.core.types import Completion, Message, Request
from cai.engines.base import Engine, EngineError, EngineOptions, register_engine

Responder = Callable[[Request, int], str]  # (request, sample index) -> text
Scorer = Callable[[Sequence[Message], str], float]


@dataclass
class FakeScript:
    respond: Responder
    score: Scorer | None = None


def _echo(request: Request, k: int) -> str:
    return f"echo {k}: {request.messages[-1]['content'][:80]}"


SCRIPTS: dict[str, FakeScript] = {"echo": FakeScript(_echo, lambda msgs, cont: -float(len(cont)))}


def register_script(name: str, script: FakeScript) -> None:
    SCRIPTS[name] = script


class FakeOptions(EngineOptions):
    fail_every: int = 0  # raise on every Nth generate call (tests of failure handling)
    #: seconds each request (a generate request, or a score call) keeps the engine busy, one
    #: request at a time, like a model that is the bottleneck (scaling tests); 0: no wait
    serial_latency_s: float = 0.0


class FakeEngine(Engine):
    Options = FakeOptions

    def __init__(self, name: str, options: FakeOptions | None = None) -> None:
        if name not in SCRIPTS:
            raise EngineError(f"no fake script named {name!r}; registered: {sorted(SCRIPTS)}")
        self.script = SCRIPTS[name]
        self.options = options or FakeOptions()
        self.model_id = f"fake:{name}"
        self.calls: list[tuple[str, object]] = []
        self.batch_sizes: list[int] = []
        self._busy_until = 0.0

    async def _occupy(self, requests: int) -> None:
        """Wait `serial_latency_s` per request, after every request queued before these."""
        now = time.monotonic()
        self._busy_until = max(now, self._busy_until) + self.options.serial_latency_s * requests
        await asyncio.sleep(self._busy_until - now if self.options.serial_latency_s else 0)

    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        await self._occupy(len(requests))
        self.batch_sizes.append(len(requests))
        out = []
        for request in requests:
            self.calls.append(("generate", request))
            if self.options.fail_every and len(self.calls) % self.options.fail_every == 0:
                raise EngineError("scripted failure")
            texts = [self.script.respond(request, k) for k in range(request.params.n)]
            prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
            out.append([self._complete(t, request.params.max_tokens, prompt_tokens) for t in texts])
        return out

    @staticmethod
    def _complete(text: str, max_tokens: int, prompt_tokens: int) -> Completion:
        """A word is a token: a reply longer than `max_tokens` words is cut, finish 'length'."""
        words = text.split()
        if len(words) > max_tokens:
            return Completion(" ".join(words[:max_tokens]), "length", prompt_tokens, max_tokens)
        return Completion(text, "stop", prompt_tokens, len(words))

    async def token_ids(self, text: str) -> list[int]:
        """A fake tokenizer: each word, each run of punctuation, each space and each digit is a
        token (so "10" is two tokens, as in many real tokenizers)."""
        return [zlib.crc32(t.encode()) for t in re.findall(r"\d|[^\W\d]+|\s|[^\w\s]+", text)]

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        await self._occupy(1)
        self.calls.append(("score", (list(messages), list(continuations))))
        if self.script.score is None:
            raise EngineError(f"fake script {self.model_id} cannot score")
        return [self.script.score(messages, c) for c in continuations]


register_engine("fake", FakeEngine)
