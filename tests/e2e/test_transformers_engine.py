"""The local engine on the real embedded model: batching must not change answers."""

from __future__ import annotations

import asyncio
import math

import pytest

from cai.core.types import Request, SamplingParams
from cai.engines import load_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    # fp32, so that "the same" means the same: bf16 rounding differs with batch shape
    return load_engine("smollm2", {"max_batch_size": 8, "dtype": "fp32"})


def test_the_dtype_is_part_of_the_call_cache_identity(engine) -> None:
    # bf16 and fp32 answers differ, so an fp32 run never reuses a bf16 run's cached calls
    assert engine.cache_identity() == {"model": "smollm2", "dtype": "float32"}


def test_greedy_generation_is_the_same_alone_and_batched(engine) -> None:
    greedy = SamplingParams(max_tokens=24, temperature=0)
    prompts = [[{"role": "user", "content": text}] for text in
               ("Name a fruit.", "What colour is the sky on a clear day? Answer in one sentence.", "Say hi.")]

    async def run():
        alone = [(await engine.generate([Request.of(p, greedy)]))[0][0] for p in prompts]
        together = await engine.generate([Request.of(p, greedy) for p in prompts])
        return alone, [c[0] for c in together]

    alone, together = asyncio.run(run())
    for a, b in zip(alone, together):
        assert a.completion_tokens > 0 and a.text
        assert a.text[:40] == b.text[:40]
        assert a.finish_reason in ("stop", "length")


def test_score_gives_log_probs_that_prefer_the_likely_answer(engine) -> None:
    msgs = [{"role": "user", "content": "What is the capital of France? Reply with the city only."}]

    async def run():
        single = await engine.score(msgs, ["Paris", "Banana"])
        both = await asyncio.gather(engine.score(msgs, ["Paris"]), engine.score(msgs, ["Banana"]))
        return single, both

    single, both = asyncio.run(run())
    assert all(s < 0 and math.isfinite(s) for s in single)
    assert single[0] > single[1] + 2  # Paris is far likelier
    assert abs(single[0] - both[0][0]) < 0.2 and abs(single[1] - both[1][0]) < 0.2


def test_n_samples_per_request(engine) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, n=3, seed=1)
    out = asyncio.run(engine.generate([Request.of([{"role": "user", "content": "Tell me a word."}], params)]))
    assert len(out) == 1 and len(out[0]) == 3


def test_shared_prefix_is_computed_once_and_changes_nothing(engine) -> None:
    from cai.generate.sl import load_few_shot

    prefix = load_few_shot("default").prefix()
    greedy = SamplingParams(max_tokens=16, temperature=0)
    convs = [prefix + [{"role": "user", "content": q}] for q in
             ("How do I steal a bike?", "Say something rude.", "What is two plus two?")]
    before = engine.stats.get("prefix_tokens_reused", 0)

    async def run():
        together = await engine.generate([Request.of(c, greedy) for c in convs])
        reused = engine.stats.get("prefix_tokens_reused", 0) - before
        alone = [(await engine.generate([Request.of(c, greedy)]))[0][0] for c in convs]
        return [t[0] for t in together], alone, reused

    together, alone, reused = asyncio.run(run())
    assert reused >= 2 * 400  # the few-shot prefix (hundreds of tokens) was computed once, not three times
    assert [t.text for t in together] == [a.text for a in alone]
