"""The local engine: a transformers causal LM on CPU or GPU, fed by micro-batches.

Callers `await generate(...)`/`await score(...)` from many concurrent sample chains.
Each call only enqueues work items and waits on futures; one background task takes
whatever is queued, groups it by sampling parameters and prompt length, and runs one
`model.generate` (or one forward pass for scoring) per micro-batch in a worker thread,
so the event loop keeps collecting new requests while the model runs. Nothing is ever
generated one prompt at a time unless only one prompt is waiting.

Specs: `hf:<folder | file.gguf | hub id>` and the embedded default `smollm2`.
Not here: caching (`cai.store`), sample-level concurrency (`cai.pipeline`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cai.engines.base import Engine, EngineError, EngineOptions, register_alias, register_engine
from cai.engines.models import EMBEDDED_NAME, resolve_model_path
from cai.types import Completion, Message, Request, SamplingParams


class TransformersOptions(EngineOptions):
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: str = "auto"
    max_batch_size: int = 32
    #: padded prompt+generation tokens one micro-batch may hold
    max_batch_tokens: int = 32768
    threads: int | None = None
    #: how long the batcher waits for more requests before starting a micro-batch
    batch_wait_ms: float = 2.0


@dataclass
class _Item:
    prompt_ids: list[int]
    future: asyncio.Future
    params: SamplingParams | None = None  # generation items
    continuation_ids: list[int] = field(default_factory=list)  # score items
    seq: int = 0

    @property
    def group_key(self) -> tuple:
        p = self.params
        return ("gen", p.temperature, p.top_p, p.max_tokens) if p else ("score",)


def cpu_supports_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class TransformersEngine(Engine):
    Options = TransformersOptions

    def __init__(self, ref: str, options: TransformersOptions | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.options = options or TransformersOptions()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        try:
            path = resolve_model_path(ref)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise EngineError(f"cannot find model {ref!r}: {exc}") from exc
        self.model_id = ref if ref == EMBEDDED_NAME else f"hf:{ref}"
        self.path = path
        self.device = self._pick_device(torch)
        self.dtype = self._pick_dtype(torch)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.eos_ids = self._eos_ids()
        self._queue: list[_Item] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._seq = itertools.count()
        self.stats = {"batches": 0, "generated_tokens": 0, "busy_s": 0.0}

    # ---- setup helpers -------------------------------------------------------------
    def _pick_device(self, torch: Any) -> str:
        if self.options.device != "auto":
            return self.options.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _pick_dtype(self, torch: Any) -> Any:
        choice = self.options.dtype
        if choice == "auto":
            if self.device.startswith("cuda"):
                choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                choice = "bf16" if cpu_supports_bf16() else "fp32"
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return {i for i in ids if i is not None}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "device": self.device, "dtype": str(self.dtype)}

    # ---- public API ----------------------------------------------------------------
    def render(self, messages: Sequence[Message]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        loop = asyncio.get_running_loop()
        futures: list[list[asyncio.Future]] = []
        for request in requests:
            ids = self.encode_prompt(request.messages)
            per_request = []
            for k in range(request.params.n):
                fut = loop.create_future()
                params = request.params
                if params.seed is not None:
                    params = SamplingParams(**{**params.to_dict(), "n": 1, "seed": params.seed + k,
                                               "stop": tuple(params.stop)})
                self._enqueue(_Item(prompt_ids=ids, future=fut, params=params))
                per_request.append(fut)
            futures.append(per_request)
        return [list(await asyncio.gather(*fs)) for fs in futures]

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        loop = asyncio.get_running_loop()
        prompt_ids = self.encode_prompt(messages)
        futures = []
        for text in continuations:
            cont = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not cont:
                raise EngineError("cannot score an empty continuation")
            fut = loop.create_future()
            self._enqueue(_Item(prompt_ids=prompt_ids, future=fut, continuation_ids=cont))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    # ---- batching ------------------------------------------------------------------
    def _enqueue(self, item: _Item) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (e.g. a second asyncio.run): start afresh
            self._loop, self._wake, self._worker, self._queue = loop, asyncio.Event(), None, []
        item.seq = next(self._seq)
        self._queue.append(item)
        assert self._wake is not None
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run_worker())

    async def _run_worker(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.options.batch_wait_ms / 1000)
            while self._queue:
                batch = self._take_batch()
                runner = self._run_score_batch if batch[0].params is None else self._run_generate_batch
                started = time.perf_counter()
                try:
                    results = await asyncio.to_thread(runner, batch)
                except Exception as exc:  # noqa: BLE001 - handed to every waiter
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                finally:
                    self.stats["busy_s"] += time.perf_counter() - started
                for item, result in zip(batch, results):
                    if not item.future.done():
                        item.future.set_result(result)

    def _take_batch(self) -> list[_Item]:
        """The oldest item's group, length-sorted, a window around the oldest item."""
        oldest = min(self._queue, key=lambda it: it.seq)
        group = sorted((it for it in self._queue if it.group_key == oldest.group_key),
                       key=lambda it: len(it.prompt_ids) + len(it.continuation_ids))
        size = self._batch_size_for(group, oldest)
        start = max(0, min(group.index(oldest) - size // 2, len(group) - size))
        batch = group[start:start + size]
        chosen = {id(it) for it in batch}
        self._queue = [it for it in self._queue if id(it) not in chosen]
        return batch

    def _batch_size_for(self, group: list[_Item], oldest: _Item) -> int:
        extra = oldest.params.max_tokens if oldest.params else 0
        longest = max(len(it.prompt_ids) + len(it.continuation_ids) for it in group) + extra
        by_tokens = max(1, self.options.max_batch_tokens // max(1, longest))
        return max(1, min(self.options.max_batch_size, by_tokens, len(group)))

    def _left_pad(self, rows: list[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _run_generate_batch(self, batch: list[_Item]) -> list[Completion]:
        import torch

        params = batch[0].params
        assert params is not None
        ids, mask = self._left_pad([it.prompt_ids for it in batch])
        seeds = [it.params.seed for it in batch if it.params and it.params.seed is not None]
        if seeds:
            torch.manual_seed(sum(seeds) & 0x7FFFFFFF)
        sampling: dict[str, Any] = {"do_sample": False}
        if params.temperature > 0:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=params.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids), **sampling,
            )
        new_tokens = out[:, ids.shape[1]:].tolist()
        self.stats["batches"] += 1
        return [self._to_completion(item, toks) for item, toks in zip(batch, new_tokens)]

    def _to_completion(self, item: _Item, tokens: list[int]) -> Completion:
        finish = "length"
        for i, tok in enumerate(tokens):
            if tok in self.eos_ids:
                tokens, finish = tokens[: i + 1], "stop"
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        assert item.params is not None
        for stop in item.params.stop:
            if stop and stop in text:
                text, finish = text.split(stop, 1)[0], "stop"
        self.stats["generated_tokens"] += len(tokens)
        return Completion(text=text.strip(), finish_reason=finish,  # type: ignore[arg-type]
                          prompt_tokens=len(item.prompt_ids), completion_tokens=len(tokens))

    def _run_score_batch(self, batch: list[_Item]) -> list[float]:
        import torch

        rows = [it.prompt_ids + it.continuation_ids for it in batch]
        ids, mask = self._left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(it.continuation_ids) for it in batch) + 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=keep).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        scores = []
        for i, item in enumerate(batch):
            n = len(item.continuation_ids)
            # logits at position t predict token t+1; the last `keep` positions end the row
            preds = logprobs[i, keep - 1 - n: keep - 1]
            target = torch.tensor(item.continuation_ids, device=preds.device)
            scores.append(float(preds.gather(-1, target[:, None]).sum()))
        self.stats["batches"] += 1
        return scores


register_engine("hf", TransformersEngine)
register_alias(EMBEDDED_NAME, f"hf:{EMBEDDED_NAME}")
