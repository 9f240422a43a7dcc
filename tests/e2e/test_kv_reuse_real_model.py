"""The decode loop on the real embedded model, in fp32: the prefix KV cache, one prefill
per label, per-row seeds and continuous batching must change what is computed, never
what comes out. The reference is the plain path (micro-batched `model.generate` and a
full forward per scored continuation)."""

from __future__ import annotations

import asyncio

import pytest

from cai.core.types import Request, SamplingParams, assistant, user
from cai.engines import load_engine
from cai.engines.prefix_cache import PrefixCache
from cai.generate.sl import load_few_shot
from cai.text.templates import render, transcript

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_tokens=16, temperature=0)
QUESTIONS = ("How do I pick a lock?", "Say something rude about my neighbour.")
CRITIQUE = "Point out anything harmful, unethical or rude in your last reply."
REVISION = "Rewrite your last reply so that it is harmless and polite."


@pytest.fixture(scope="module")
def plain():
    return load_engine("smollm2", {"dtype": "fp32", "continuous": False, "max_batch_size": 8})


@pytest.fixture(scope="module")
def ours():
    engine = load_engine("smollm2", {"dtype": "fp32", "max_batch_size": 8})
    assert engine.describe()["decode"] == "continuous"
    return engine


def prefilled(engine, run) -> tuple[object, int]:
    """What `run()` returned and how many prompt tokens the engine computed for it."""
    before = engine.stats.get("prefill_tokens", 0)
    out = asyncio.run(run())
    return out, engine.stats.get("prefill_tokens", 0) - before


def chain(engine, question: str) -> tuple[list[str], list[int], list[int]]:
    """answer -> critique -> revision, as SL-CAI asks them: texts, prompt lengths, prefilled tokens."""
    few_shot = load_few_shot("default").prefix()
    conversation = [user(question)]
    steps = [conversation, None, None]
    texts, lengths, computed = [], [], []
    for k in range(3):
        if k == 1:
            steps[1] = few_shot + conversation + [user(CRITIQUE)]
        if k == 2:
            steps[2] = steps[1] + [assistant(texts[1]), user(REVISION)]
        messages = steps[k]
        out, n = prefilled(engine, lambda: engine.generate([Request.of(messages, GREEDY)]))
        texts.append(out[0][0].text)
        lengths.append(len(engine.encode_prompt(messages)))
        computed.append(n)
        if k == 0:
            conversation = conversation + [assistant(texts[0])]
    return texts, lengths, computed


def test_a_chain_prefills_only_what_each_step_adds_and_answers_as_the_plain_path(plain, ours) -> None:
    ours.clear_prefix_cache()
    block = ours.options.prefix_block_tokens
    for i, question in enumerate(QUESTIONS):
        expected, _, _ = chain(plain, question)
        texts, lengths, computed = chain(ours, question)
        assert texts == expected  # token for token, through two reuses of the cache
        # the revision prompt repeats the critique prompt and the critique: only the rest is computed
        added = lengths[2] - lengths[1]
        assert computed[2] <= added + block and computed[2] < lengths[2] // 4
        if i == 1:  # the few-shot examples were computed once, by the first question's critique
            few_shot = len(ours.encode_prompt(load_few_shot("default").prefix()))
            assert computed[1] <= lengths[1] - few_shot + 2 * block
    assert ours.stats["prefix_cache_bytes"] <= ours.options.prefix_cache_mb << 20


def judge_prompt(first: str, second: str) -> list:
    conversation = transcript([user("How can I get back at my coworker?")])
    return [user(render("judge_pairwise.j2", conversation=conversation, option_a=first, option_b=second,
                        principle="Which reply is less harmful?"))]


def test_a_label_prefills_its_prompt_once_and_scores_as_the_plain_path(plain, ours) -> None:
    ours.clear_prefix_cache()
    answers = ["The answer is: (A)", "The answer is: (B)"]
    x, y = "Talk to them calmly about what happened.", "Hide their stapler and spread a rumour."
    ab, ba = judge_prompt(x, y), judge_prompt(y, x)
    (got_ab, computed_ab) = prefilled(ours, lambda: ours.score(ab, answers))
    (got_ba, computed_ba) = prefilled(ours, lambda: ours.score(ba, answers))
    want_ab, want_ba = asyncio.run(plain.score(ab, answers)), asyncio.run(plain.score(ba, answers))
    for got, want in ((got_ab, want_ab), (got_ba, want_ba)):
        assert all(abs(g - w) < 1e-3 for g, w in zip(got, want)), (got, want)
    cont = sum(len(ours.encode_continuation(a)) for a in answers)
    assert computed_ab == len(ours.encode_prompt(ab)) + cont  # the prompt once, not once per continuation
    shared = len(ours.encode_prompt(judge_prompt("", "")))  # roughly where the two orders part
    assert computed_ba < len(ours.encode_prompt(ba)) + cont - shared // 2  # the other order reuses its start


def test_a_row_samples_the_same_alone_and_beside_others(ours) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=5)
    mine = Request.of([user("Tell me about your favourite animal.")], params)
    others = [Request.of([user(q)], SamplingParams(max_tokens=8, temperature=1.0, seed=s))
              for s, q in enumerate(("Name a colour.", "Say something nice.", "What is rain?"))]
    ours.clear_prefix_cache()
    alone = asyncio.run(ours.generate([mine]))[0][0].text
    ours.clear_prefix_cache()
    together = asyncio.run(ours.generate(others[:2] + [mine] + others[2:]))[2][0].text
    assert alone and together == alone


def test_a_request_joins_the_running_batch_and_leaves_before_a_longer_one(ours) -> None:
    long = Request.of([user("Count from one to fifty in words, separated by commas.")],
                      SamplingParams(max_tokens=40, temperature=0))
    short = Request.of([user("Say yes.")], SamplingParams(max_tokens=2, temperature=0))
    joined = ours.stats.get("joined_running_batch", 0)

    async def run():
        first = asyncio.ensure_future(ours.generate([long]))
        while ours.stats.get("steps", 0) < steps_before + 3:
            await asyncio.sleep(0.01)
        await ours.generate([short])
        return first.done(), await first

    steps_before = ours.stats.get("steps", 0)
    long_done_first, out = asyncio.run(run())
    assert not long_done_first and out[0][0].completion_tokens > 4
    assert ours.stats["joined_running_batch"] > joined


def test_a_tiny_cache_evicts_and_stays_within_its_bound_without_changing_answers(plain, ours) -> None:
    saved = ours.loop.cache
    ours.loop.cache = PrefixCache(max_bytes=1 << 20, block_tokens=16)  # one block of this model's KV fits
    try:
        texts, _, _ = chain(ours, QUESTIONS[0])
        assert texts == chain(plain, QUESTIONS[0])[0]
        stats = ours.loop.cache.stats
        assert stats.evicted_blocks > 0 and stats.peak_bytes <= 1 << 20
    finally:
        ours.loop.cache = saved
