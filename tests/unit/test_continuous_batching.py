"""The batcher's continuous mode, on a model-free engine: requests join the running batch
while others are still decoding, each result comes back the step it is ready, and a
failed step answers every caller in the running batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from cai.core.types import Completion, Message, Request, SamplingParams
from cai.engines.base import EngineError
from cai.engines.batching import BatchingEngine, WorkItem


class StepEngine(BatchingEngine):
    """Each generation row needs `max_tokens` steps; a score call ends the step it starts."""

    continuous = True

    def __init__(self, max_rows: int = 4) -> None:
        super().__init__()
        self.model_id = "steps"
        self.max_rows = max_rows
        self.rows: dict[int, tuple[WorkItem, int]] = {}  # id -> (item, steps left)
        self.starting: list[WorkItem] = []
        self.step_no = 0
        self.log: list[tuple[int, str, int]] = []  # (step, "join"/"done", prompt length)
        self.fail_at: int | None = None

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return [1] * len(messages[-1]["content"].split())

    def encode_continuation(self, text: str) -> list[int]:
        return [2] * len(text.split())

    def run_generate_batch(self, batch: list[WorkItem]) -> list[Completion]:
        raise AssertionError("continuous mode never runs whole batches")

    run_score_batch = run_generate_batch  # type: ignore[assignment]

    def admit(self, waiting: list[WorkItem]) -> list[WorkItem]:
        room = self.max_rows - len(self.rows)
        self.starting = waiting[:room]
        return self.starting

    def run_step(self) -> list[tuple[WorkItem, Any]]:
        time.sleep(0.005)  # a step takes a while, as a model's does
        self.step_no += 1
        if self.fail_at == self.step_no:
            raise RuntimeError("out of memory in step")
        for item in self.starting:
            self.rows[id(item)] = (item, item.params.max_tokens if item.params else 1)
            self.log.append((self.step_no, "join", len(item.prompt_ids)))
        self.starting = []
        done = []
        for key, (item, left) in list(self.rows.items()):
            if left == 1:
                del self.rows[key]
                self.log.append((self.step_no, "done", len(item.prompt_ids)))
                done.append((item, -1.0 if item.params is None else
                             Completion("x", "stop", len(item.prompt_ids), item.params.max_tokens)))
            else:
                self.rows[key] = (item, left - 1)
        return done

    def in_flight(self) -> list[WorkItem]:
        return [item for item, _ in self.rows.values()] + self.starting

    def drop_running(self) -> None:
        self.rows, self.starting = {}, []

    def model_error(self, exc: BaseException, batch: list[WorkItem]) -> EngineError | None:
        return EngineError(f"out of memory with {len(batch)} rows") if "out of memory" in str(exc) else None


def ask(words: int, steps: int) -> Request:
    return Request.of([{"role": "user", "content": " ".join(["w"] * words)}], SamplingParams(max_tokens=steps))


async def test_a_short_request_joins_a_running_batch_and_leaves_before_the_long_one() -> None:
    engine = StepEngine()
    long = asyncio.ensure_future(engine.generate([ask(9, 40)]))
    while engine.step_no < 3:  # the long row is decoding
        await asyncio.sleep(0.001)
    short = await engine.generate([ask(2, 2)])
    assert not long.done() and short[0][0].completion_tokens == 2
    await long
    joins = {length: step for step, what, length in engine.log if what == "join"}
    dones = {length: step for step, what, length in engine.log if what == "done"}
    assert joins[2] > joins[9] and dones[2] < dones[9]  # joined mid-way, finished first
    assert dones[2] - joins[2] == 1  # answered the step it was ready, not when the batch drained


async def test_score_calls_and_generation_share_the_steps() -> None:
    engine = StepEngine()
    gen, scores = await asyncio.gather(engine.generate([ask(3, 4)]), engine.score(
        [{"role": "user", "content": "q"}], ["a", "b c"]))
    assert scores == [-1.0, -1.0] and gen[0][0].text == "x"
    assert engine.step_no <= 5


async def test_a_failed_step_answers_every_caller_in_the_running_batch_and_the_engine_goes_on() -> None:
    engine = StepEngine()
    engine.fail_at = 2
    both = await asyncio.gather(engine.generate([ask(3, 5)]), engine.generate([ask(4, 5)]), return_exceptions=True)
    assert all(isinstance(r, EngineError) and "out of memory with 2 rows" in str(r) for r in both)
    assert (await engine.generate([ask(3, 2)]))[0][0].completion_tokens == 2  # nothing left over


async def test_a_bug_in_a_step_stays_a_bug() -> None:
    engine = StepEngine()

    def broken() -> list[tuple[WorkItem, Any]]:
        raise KeyError("our bug")

    engine.run_step = broken  # type: ignore[method-assign]
    with pytest.raises(KeyError):
        await asyncio.wait_for(engine.generate([ask(3, 2)]), timeout=5)


async def test_closing_fails_queued_and_running_requests() -> None:
    engine = StepEngine(max_rows=1)
    engine.batch_wait_ms = 0
    running = asyncio.ensure_future(engine.generate([ask(3, 10_000)]))
    queued = asyncio.ensure_future(engine.generate([ask(4, 3)]))
    while engine.step_no < 2:
        await asyncio.sleep(0.001)
    await engine.aclose()
    for waiter in (running, queued):
        with pytest.raises(EngineError, match="closed"):
            await asyncio.wait_for(waiter, timeout=5)
    assert engine.in_flight() == []  # nothing left to step if the engine is used again


# ---- per-row sampling ----------------------------------------------------------------------
def test_every_step_runs_in_one_model_thread_across_event_loops() -> None:
    """PyTorch's intra-op (OpenMP) pool belongs to the thread that calls it: steps handed to
    whichever executor thread is free each build their own pool, whose spinning workers then
    compete for the cores (the decode loop ran 16-23% slower that way). So every step of an
    engine, in every event loop, runs in the same OS thread."""
    import threading

    engine = StepEngine(max_rows=2)
    threads: set[int] = set()
    step = engine.run_step

    def recorded() -> list[tuple[WorkItem, Any]]:
        threads.add(threading.get_ident())
        return step()

    engine.run_step = recorded  # type: ignore[method-assign]

    async def burst() -> None:
        async def other_work() -> None:  # keeps the default executor's threads busy meanwhile
            for _ in range(10):
                await asyncio.to_thread(time.sleep, 0.002)

        await asyncio.gather(engine.generate([ask(3, 4), ask(2, 6), ask(5, 3), ask(1, 5)]), other_work(), other_work())

    for _ in range(3):  # a new event loop (and a new default executor) each time
        asyncio.run(burst())
    assert engine.step_no >= 10
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_a_row_draws_from_its_own_seed_whatever_rows_share_the_step() -> None:
    import torch

    from cai.engines.decode_loop import sample_tokens

    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(4)]

    def draw(rows: list[int], steps: int = 20) -> dict[int, list[int]]:
        gens = {r: torch.Generator().manual_seed(r) for r in rows}
        out: dict[int, list[int]] = {r: [] for r in rows}
        for _ in range(steps):
            picks = sample_tokens(logits[rows], [params[r] for r in rows], [gens[r] for r in rows])
            for r, token in zip(rows, picks):
                out[r].append(token)
        return out

    together, alone = draw([0, 1, 2, 3]), draw([2])
    assert together[2] == alone[2] and together[0] != together[1]


def test_sampling_follows_the_temperature_and_stays_inside_the_nucleus() -> None:
    import torch

    from cai.engines.decode_loop import sample_tokens

    logits = torch.tensor([[2.0, 2.0, -1.0, -30.0]]).repeat(2000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(2000)]
    picks = sample_tokens(logits, [SamplingParams(temperature=1.0)] * 2000, gens)
    share = [picks.count(t) / 2000 for t in range(4)]
    expected = torch.softmax(logits[0], -1).tolist()
    assert all(abs(s - e) < 0.04 for s, e in zip(share, expected)) and share[3] == 0
    nucleus = sample_tokens(logits, [SamplingParams(temperature=1.0, top_p=0.9)] * 2000, gens)
    assert set(nucleus) == {0, 1}  # tokens 0 and 1 already hold 0.9 of the mass
