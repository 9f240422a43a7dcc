"""The micro-batcher shared by in-process engines (transformers, vLLM).

Callers `await generate(...)` / `await score(...)` from many concurrent sample chains.
Each call only tokenizes, enqueues work items and waits on futures. One background task
per event loop takes whatever is queued: the oldest item's group (same kind of work and,
where the backend needs it, the same sampling parameters), sorted by length, a window
around the oldest item so nothing starves; it runs that micro-batch in the engine's model
thread, so the event loop keeps collecting requests while the model runs.

All model work of an engine (batches, decode steps, dropping a running batch) runs in one
OS thread of its own, the same in every event loop. PyTorch's intra-op (OpenMP) thread
pool belongs to the thread that calls it: steps handed to whichever executor thread is
free each build a pool of their own, whose idle workers spin and compete for the cores.
That cost the decode loop 16-23% on a 2-core machine (BENCHMARKS.md, issue 23).

Every request is checked against the model's context window (`Engine.context_window`)
right after tokenizing: one that would not fit (prompt plus `max_tokens`, or prompt plus
scored continuation) raises `ContextOverflow` and nothing of that call is queued.

A subclass that runs its own decode loop sets `continuous` and provides `admit` (which
waiting items start now) and `run_step` (one step of the running batch, in the worker
thread, returning the items it finished): the worker then admits newcomers before every
step, so requests join the running batch as others leave instead of waiting for a whole
micro-batch to drain, and each result is handed back the step it is ready.

Every waiting caller gets an answer: a batch's exception goes to each of its callers as
it was raised (a subclass's `model_error` may turn a model-caused one, such as running out
of memory, into an `EngineError`; a bug stays a bug); in continuous mode a failed step
fails every request in the running batch the same way. A runner that returns the wrong
number of results fails the whole batch, and `aclose` (or a worker that dies) fails
every request still queued or running with an `EngineError`.

Subclasses provide tokenization and the two batch runners (or the continuous pair);
nothing here knows a model.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import functools
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cai.core.types import Completion, Message, Request, SamplingParams
from cai.engines.base import ContextOverflow, Engine, EngineError


@dataclass
class WorkItem:
    prompt_ids: list[int]
    future: asyncio.Future
    params: SamplingParams | None = None  # generation items
    continuation_ids: list[int] = field(default_factory=list)  # score items
    seq: int = 0
    #: the score call this item belongs to (its items share one prompt), None for generation
    group: int | None = None

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.continuation_ids)


class BatchingEngine(Engine):
    #: group generation items by sampling parameters (transformers needs it; vLLM does not)
    group_by_params: bool = True
    max_batch_size: int = 32
    max_batch_tokens: int = 32768
    batch_wait_ms: float = 2.0
    #: sort waiting items by their first N tokens before their length, so a batch tends to
    #: hold rows with one shared prefix (transformers reuses its KV cache); 0 = length only
    prefix_sort_tokens: int = 0
    #: run `admit` + `run_step` (a continuous decode loop) instead of whole micro-batches
    continuous: bool = False

    def __init__(self) -> None:
        self._queue: list[WorkItem] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._running: list[WorkItem] = []  # the batch in the model thread now
        self._seq = itertools.count()
        self._calls = itertools.count()
        self.stats: dict[str, Any] = {"batches": 0, "generated_tokens": 0, "busy_s": 0.0}
        self._model_thread: ThreadPoolExecutor | None = None  # started on first use

    async def in_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the engine's one model thread (see the module docstring), with the
        caller's context variables, as `asyncio.to_thread` would."""
        if self._model_thread is None:
            self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cai-model-{id(self):x}")
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, call)

    # ---- what subclasses provide -----------------------------------------------------
    @abc.abstractmethod
    def encode_prompt(self, messages: Sequence[Message]) -> list[int]: ...

    @abc.abstractmethod
    def encode_continuation(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def run_generate_batch(self, batch: list[WorkItem]) -> list[Completion]: ...

    @abc.abstractmethod
    def run_score_batch(self, batch: list[WorkItem]) -> list[float]: ...

    def admit(self, waiting: list[WorkItem]) -> list[WorkItem]:
        """Continuous mode: which of the waiting items (oldest first) start in the next step."""
        raise NotImplementedError

    def run_step(self) -> list[tuple[WorkItem, Any]]:
        """Continuous mode, in the model thread: one step of the running batch; returns each
        item it finished with its result."""
        raise NotImplementedError

    def in_flight(self) -> list[WorkItem]:
        """Continuous mode: the items admitted and not finished yet."""
        return []

    def drop_running(self) -> None:
        """Continuous mode: forget the running batch (its callers are answered here)."""

    def model_error(self, exc: BaseException, batch: list[WorkItem]) -> EngineError | None:
        """The `EngineError` to hand the batch's callers when `exc` was the model's doing
        (out of memory, non-finite probabilities); None passes `exc` on unchanged."""
        return None

    def _check_fits(self, prompt_tokens: int, extra_tokens: int, what: str) -> None:
        window = self.context_window()
        if window is not None and prompt_tokens + extra_tokens > window:
            raise ContextOverflow(f"{self.model_id}: the prompt is {prompt_tokens:,} tokens + {extra_tokens:,} {what}, "
                                  f"more than the model's context window of {window:,} tokens; not run")

    # ---- the engine interface --------------------------------------------------------
    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        loop = asyncio.get_running_loop()
        encoded = [self.encode_prompt(request.messages) for request in requests]
        for ids, request in zip(encoded, requests, strict=True):  # all checked before any is queued
            self._check_fits(len(ids), request.params.max_tokens, "new tokens (--max-tokens)")
        futures: list[list[asyncio.Future]] = []
        for ids, request in zip(encoded, requests, strict=True):
            per_request = []
            for k in range(request.params.n):
                params = request.params
                seed = None if params.seed is None else params.seed + k
                one = SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature,
                                     top_p=params.top_p, n=1, seed=seed, stop=params.stop)
                fut = loop.create_future()
                self._enqueue(WorkItem(prompt_ids=ids, future=fut, params=one))
                per_request.append(fut)
            futures.append(per_request)
        return [list(await asyncio.gather(*fs)) for fs in futures]

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        loop = asyncio.get_running_loop()
        prompt_ids = self.encode_prompt(messages)
        encoded = [self.encode_continuation(text) for text in continuations]
        for cont in encoded:
            if not cont:
                raise EngineError("cannot score an empty continuation")
            self._check_fits(len(prompt_ids), len(cont), "scored continuation tokens")
        futures = []
        group = next(self._calls)
        for cont in encoded:
            fut = loop.create_future()
            self._enqueue(WorkItem(prompt_ids=prompt_ids, future=fut, continuation_ids=cont, group=group))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def token_ids(self, text: str) -> list[int]:
        return self.encode_continuation(text)

    async def aclose(self) -> None:
        """Stop the worker; every request still queued or running fails with an EngineError."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done() and self._loop is asyncio.get_running_loop():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        self._fail_waiting(EngineError(f"{self.model_id}: the engine was closed before this request was answered"))
        if self.continuous:  # after a step still running in its thread, if one is
            await self.in_model_thread(self.drop_running)

    def _fail_waiting(self, error: BaseException, items: list[WorkItem] | None = None) -> None:
        """Hand `error` to every caller still waiting (on `items`, else on everything queued)."""
        if items is None:
            items, self._queue = self._queue + self._running, []
        for item in items:
            if not item.future.done() and not item.future.get_loop().is_closed():
                item.future.set_exception(error)

    # ---- batching --------------------------------------------------------------------
    def _group_key(self, item: WorkItem) -> tuple:
        p = item.params
        if p is None:
            return ("score",)
        return ("gen", p.temperature, p.top_p, p.max_tokens) if self.group_by_params else ("gen",)

    def _enqueue(self, item: WorkItem) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (e.g. a second asyncio.run): start afresh
            self._loop, self._wake, self._worker, self._queue, self._running = loop, asyncio.Event(), None, [], []
            if self.continuous:
                self.drop_running()
        item.seq = next(self._seq)
        self._queue.append(item)
        assert self._wake is not None
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run_worker())

    async def _run_worker(self) -> None:
        assert self._wake is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(self.batch_wait_ms / 1000)
                if self.continuous:
                    await self._run_continuous()
                while self._queue and not self.continuous:
                    await self._run_batch(self._take_batch())
        except asyncio.CancelledError:  # aclose(): its callers are failed there
            raise
        except BaseException as exc:  # the worker itself broke: nobody may wait forever
            self._fail_waiting(exc)
            raise

    async def _run_batch(self, batch: list[WorkItem]) -> None:
        runner = self.run_score_batch if batch[0].params is None else self.run_generate_batch
        started = time.perf_counter()
        self._running = batch  # until answered; if aclose() cancels us meanwhile, it fails these
        try:
            results = await self.in_model_thread(runner, batch)
            answers = list(zip(batch, results, strict=True))  # a wrong count fails the batch, never hangs it
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
            self._running = []
            self._fail_waiting(self.model_error(exc, batch) or exc, batch)
            return
        finally:
            self.stats["busy_s"] += time.perf_counter() - started
        self._running = []
        self.stats["batches"] += 1
        for item, result in answers:
            if not item.future.done():
                item.future.set_result(result)

    async def _run_continuous(self) -> None:
        """Step the running batch until nothing is queued or running, admitting before each step."""
        while self._queue or self.in_flight():
            if self._queue:
                chosen = {id(it) for it in self.admit(self._queue)}
                self._queue = [it for it in self._queue if id(it) not in chosen]
            self._running = self.in_flight()  # if aclose() cancels us meanwhile, it fails these
            started = time.perf_counter()
            try:
                finished = await self.in_model_thread(self.run_step)
            except Exception as exc:  # noqa: BLE001 - handed to every caller in the running batch
                failed, self._running = self._running, []
                self.drop_running()
                self._fail_waiting(self.model_error(exc, failed) or exc, failed)
                continue
            finally:
                self.stats["busy_s"] += time.perf_counter() - started
            self.stats["batches"] += 1
            self._running = self.in_flight()
            for item, result in finished:
                if not item.future.done():
                    item.future.set_result(result)
            if finished:  # let the callers just answered send their next requests before the next step
                await asyncio.sleep(self.batch_wait_ms / 1000)

    def _take_batch(self) -> list[WorkItem]:
        oldest = min(self._queue, key=lambda it: it.seq)
        key = self._group_key(oldest)
        n = self.prefix_sort_tokens
        group = sorted((it for it in self._queue if self._group_key(it) == key),
                       key=lambda it: (it.prompt_ids[:n], it.length))
        extra = max((it.params.max_tokens for it in group if it.params), default=0)
        longest = max(it.length for it in group) + extra
        size = max(1, min(self.max_batch_size, self.max_batch_tokens // max(1, longest), len(group)))
        start = max(0, min(group.index(oldest) - size // 2, len(group) - size))
        batch = group[start:start + size]
        chosen = {id(it) for it in batch}
        self._queue = [it for it in self._queue if id(it) not in chosen]
        return batch
