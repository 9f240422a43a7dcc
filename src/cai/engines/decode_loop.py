"""Our own decode loop: continuous batching over a slot KV store, with a prefix KV cache.

The transformers engine asks `admit` which waiting requests start now (on the event
loop), then runs `step` (in the engine's model thread). A step is one forward pass over every
running row's next token, plus each new request's prompt (only the part the prefix
cache lacks) and scored continuations, kept apart by `cai.engines.ragged_attention`.
Each generating row then samples with its own parameters and its own seeded generator,
so what a row samples does not depend on which rows share its steps. A row that ends
(EOS, `max_tokens`, a stop string) leaves at once and the next step's newcomers take its
place: rows join as others finish; no micro-batch drains first.

KV lives in slots, `[layers, 2, slots, kv_heads, capacity, head_dim]`; running rows hold
slots 0..n-1 (the last row moves into a leaver's slot), so decoding reads one view.
Every prompt's whole blocks go into the prefix cache once prefilled, and a finished
row's prompt and answer when it ends, so the next step of a chain, which repeats the
conversation so far, computes only what was added. A score call prefills its prompt once
and its continuations on top of it (one prefill per label); the label's other order
finds the start it shares in the cache.

Budgets: at most `max_rows` rows; rows × the longest row's prompt + max_tokens at most
`max_tokens` resident tokens; at most `step_tokens` new tokens per step (the first
request always starts). Two requests whose first uncached block is the same never start
in one step: the second waits a step and finds that block cached.

Not here: queues and futures (`cai.engines.batching`), tokenizing and building
Completions (`cai.engines.transformers_engine`).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cai.core.types import SamplingParams
from cai.engines import ragged_attention as ragged
from cai.engines.batching import WorkItem
from cai.engines.prefix_cache import Block, BlockKey, PrefixCache

#: generation: the sampled tokens (EOS included); scoring: the continuation's log-probability
Result = list[int] | float
StopCheck = Callable[[WorkItem, list[int]], bool]


@dataclass(eq=False)
class Row:
    """A generating row; the KV of its first `length` tokens is in slot `slot`."""

    item: WorkItem
    params: SamplingParams
    slot: int
    tokens: list[int]  # the prompt, then every sampled token
    prompt_len: int
    length: int
    generator: torch.Generator | None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def limit(self) -> int:
        return self.prompt_len + self.params.max_tokens


@dataclass
class Start:
    """What `admit` let in: one generation item, or one score call's items (one prompt)."""

    items: list[WorkItem]
    matched: list[Block]

    @property
    def prompt(self) -> list[int]:
        return self.items[0].prompt_ids

    @property
    def scoring(self) -> bool:
        return self.items[0].params is None

    @property
    def resident(self) -> int:
        """Tokens its slot must hold: the prompt, then what a generation may add or the
        continuations to score, stored one after another."""
        params = self.items[0].params
        extra = params.max_tokens if params is not None else sum(len(it.continuation_ids) for it in self.items)
        return len(self.prompt) + extra


class DecodeLoop:
    def __init__(self, model: Any, *, eos_ids: set[int], cache: PrefixCache, max_rows: int = 32,
                 max_tokens: int = 32768, step_tokens: int = 4096, stopped: StopCheck | None = None) -> None:
        config = model.config.get_text_config()
        self.model = model
        self.layers = config.num_hidden_layers
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.groups = config.num_attention_heads // self.kv_heads
        self.eos_ids, self.cache, self.stopped = set(eos_ids), cache, stopped
        self.max_rows, self.max_tokens, self.step_tokens = max(1, max_rows), max_tokens, max(1, step_tokens)
        self.kv: torch.Tensor | None = None
        self.rows: list[Row] = []  # rows[i].slot == i
        self.starting: list[Start] = []
        self.lock = threading.Lock()
        self.stats: dict[str, int] = {"steps": 0, "prefill_tokens": 0, "prefix_tokens_reused": 0, "decode_tokens": 0,
                                      "scored_calls": 0, "joined_running_batch": 0, "peak_rows": 0,
                                      "kv_store_bytes": 0}

    # ---- on the event loop -----------------------------------------------------------
    def in_flight(self) -> list[WorkItem]:
        return [r.item for r in self.rows] + [it for s in self.starting for it in s.items]

    def admit(self, waiting: Sequence[WorkItem]) -> list[WorkItem]:
        """Choose, oldest first, the waiting requests that start in the next step."""
        assert not self.starting, "admit() twice without a step"
        rows = len(self.rows)
        longest = max((r.limit for r in self.rows), default=0)
        new_tokens = 0
        computing: set[BlockKey] = set()
        for call in _calls(waiting):
            start = Start(call, [])
            if rows + 1 > self.max_rows or (rows and (rows + 1) * max(longest, start.resident) > self.max_tokens):
                break
            start.matched = self.cache.match(start.prompt)
            new = len(start.prompt) - len(start.matched) * self.cache.block_tokens
            new += sum(len(it.continuation_ids) for it in call)
            if self.starting and new_tokens + new > self.step_tokens:
                break
            key = self.cache.next_key(start.prompt, start.matched) if self.cache.enabled else None
            if key is not None and key in computing:
                continue  # another start computes that block now; next step it is cached
            if key is not None:
                computing.add(key)
            self.starting.append(start)
            rows, longest, new_tokens = rows + 1, max(longest, start.resident), new_tokens + new
        return [it for s in self.starting for it in s.items]

    def drop(self) -> None:
        """Forget every row (after a failed step; their callers are answered by the batcher)."""
        with self.lock:
            self.rows, self.starting = [], []

    # ---- in the model thread ---------------------------------------------------------------
    def step(self) -> list[tuple[WorkItem, Result]]:
        with self.lock, torch.inference_mode():
            starts, self.starting = self.starting, []
            if not starts and not self.rows:
                return []
            return self._step(starts)

    def _step(self, starts: list[Start]) -> list[tuple[WorkItem, Result]]:
        decoding = list(self.rows)
        n = len(decoding)
        self._reserve(n + len(starts), max([r.limit for r in decoding] + [s.resident for s in starts]))
        assert self.kv is not None
        ids = [r.tokens[-1] for r in decoding]
        pos = [r.length for r in decoding]
        keep = list(range(n))  # positions whose logits are needed
        segments: list[ragged.Segment] = []
        joining: list[tuple[Row, int]] = []  # a new row and the index of its logits in `keep`
        scoring: list[tuple[Start, int, list[int]]] = []  # a call, its prompt's logits index, each continuation's
        for slot, start in enumerate(starts, n):
            cached = len(start.matched) * self.cache.block_tokens
            self._load(slot, start.matched)
            prompt_len = len(start.prompt)
            rest = list(range(cached, prompt_len))
            segment = ragged.Segment(slot, len(ids), store_at=list(rest), base=[0] * len(rest), own=[0] * len(rest))
            ids += start.prompt[cached:]
            pos += rest
            keep.append(len(ids) - 1)
            self.stats["prefill_tokens"] += len(rest)
            self.stats["prefix_tokens_reused"] += cached
            segments.append(segment)
            if not start.scoring:
                item = start.items[0]
                assert item.params is not None
                joining.append((Row(item, item.params, slot, list(start.prompt), prompt_len, prompt_len,
                                    _generator(item.params, self.kv.device)), len(keep) - 1))
                continue
            first, children, at = len(keep) - 1, [], prompt_len
            for item in start.items:  # continuations after the prompt, each seeing the prompt and itself
                cont = item.continuation_ids
                segment.store_at += range(at, at + len(cont))
                segment.base += [prompt_len] * len(cont)
                segment.own += [at] * len(cont)
                children.append(len(keep))
                keep += range(len(ids), len(ids) + len(cont) - 1)
                ids += cont
                pos += range(prompt_len, prompt_len + len(cont))
                at += len(cont)
                self.stats["prefill_tokens"] += len(cont)
            scoring.append((start, first, children))
        device = self.kv.device
        plan = ragged.make_plan(self.kv, [r.length + 1 for r in decoding], segments, self.groups)
        with ragged.planned(plan):
            logits = self.model(input_ids=torch.tensor([ids], device=device),
                                position_ids=torch.tensor([pos], device=device), use_cache=False,
                                logits_to_keep=torch.tensor(keep, device=device)).logits[0].float()
        for row in decoding:
            row.length += 1
        sampling = [(r, i) for i, r in enumerate(decoding)] + joining
        for (row, _), token in zip(sampling, self._sample([r for r, _ in sampling], logits[[i for _, i in sampling]])):
            row.tokens.append(token)
        self.rows = decoding + [r for r, _ in joining]
        results: list[tuple[WorkItem, Result]] = [(it, s) for it, s in self._scores(scoring, logits)]
        for slot, start in enumerate(starts, n):  # what was just prefilled, for whoever asks next
            self.cache.insert(start.prompt, self._copier(slot))
        finished = [r for r in self.rows if self._finished(r)]
        for row in finished:
            self.cache.insert(row.tokens, self._copier(row.slot), upto=row.length)
            results.append((row.item, row.generated))
        self._compact([r for r in self.rows if r not in finished])
        self.stats["steps"] += 1
        self.stats["decode_tokens"] += n
        self.stats["scored_calls"] += len(scoring)
        self.stats["joined_running_batch"] += len(joining) if n else 0
        self.stats["peak_rows"] = max(self.stats["peak_rows"], n + len(starts))
        return results

    # ---- pieces ----------------------------------------------------------------------
    def _reserve(self, slots: int, capacity: int) -> None:
        """Make the store hold `slots` slots of `capacity` tokens, keeping the running rows."""
        have = self.kv
        if have is not None and have.shape[2] >= slots and have.shape[4] >= capacity:
            return
        slots, capacity = -(-slots // 8) * 8, -(-capacity // 256) * 256
        ref = next(self.model.parameters())
        kv = torch.zeros(self.layers, 2, slots, self.kv_heads, capacity, self.head_dim, dtype=ref.dtype,
                         device=ref.device)
        if have is not None and self.rows:
            keep_slots, keep_len = len(self.rows), min(have.shape[4], capacity)
            kv[:, :, :keep_slots, :, :keep_len] = have[:, :, :keep_slots, :, :keep_len]
        self.kv = None  # let the old store go before the next one is counted
        self.kv = kv
        self.stats["kv_store_bytes"] = kv.numel() * kv.element_size()

    def _load(self, slot: int, blocks: list[Block]) -> None:
        assert self.kv is not None
        size = self.cache.block_tokens
        for i, block in enumerate(blocks):
            self.kv[:, :, slot, :, i * size:(i + 1) * size] = block.kv

    def _copier(self, slot: int) -> Callable[[int, int], torch.Tensor]:
        kv = self.kv
        assert kv is not None
        return lambda begin, end: kv[:, :, slot, :, begin:end].clone()

    def _compact(self, survivors: list[Row]) -> None:
        """Move the last rows into the slots that freed up, so rows hold slots 0..n-1."""
        assert self.kv is not None
        taken = {r.slot for r in survivors}
        holes = [s for s in range(len(survivors)) if s not in taken]
        movers = [r for r in survivors if r.slot >= len(survivors)]
        for hole, row in zip(holes, movers):
            self.kv[:, :, hole, :, :row.length] = self.kv[:, :, row.slot, :, :row.length]
            row.slot = hole
        self.rows = sorted(survivors, key=lambda r: r.slot)

    def _finished(self, row: Row) -> bool:
        if row.tokens[-1] in self.eos_ids or len(row.generated) >= row.params.max_tokens:
            return True
        return self.stopped is not None and self.stopped(row.item, row.generated)

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> list[int]:
        picks = logits.argmax(-1).tolist()  # temperature 0: greedy
        hot = [i for i, row in enumerate(rows) if row.params.temperature > 0]
        if hot:
            chosen = sample_tokens(logits[hot], [rows[i].params for i in hot], [rows[i].generator for i in hot])
            for i, token in zip(hot, chosen):
                picks[i] = token
        return picks

    def _scores(self, scoring: list[tuple[Start, int, list[int]]], logits: torch.Tensor) -> list[tuple[WorkItem, float]]:
        out = []
        for start, first, children in scoring:
            head = torch.log_softmax(logits[first], dim=-1)
            for item, begin in zip(start.items, children):
                cont = item.continuation_ids
                total = head[cont[0]]
                if len(cont) > 1:
                    rest = torch.log_softmax(logits[begin:begin + len(cont) - 1], dim=-1)
                    total = total + rest.gather(-1, torch.tensor(cont[1:], device=rest.device)[:, None]).sum()
                out.append((item, float(total)))
        return out


def sample_tokens(logits: torch.Tensor, params: Sequence[SamplingParams],
                  generators: Sequence[torch.Generator | None]) -> list[int]:
    """One token per row of `logits`, at each row's temperature and within its `top_p`
    nucleus, by inverting the row's CDF at one uniform draw from the row's own generator
    (so a row's tokens depend on its seed alone)."""
    temperature = torch.tensor([p.temperature for p in params], device=logits.device)[:, None]
    probs = torch.softmax(logits / temperature, dim=-1)
    for i, p in enumerate(params):
        if p.top_p < 1:
            ordered, order = probs[i].sort(descending=True)
            outside = ordered.cumsum(-1) - ordered >= p.top_p  # the nucleus was complete before them
            probs[i] = torch.zeros_like(probs[i]).scatter_(-1, order, ordered.masked_fill(outside, 0.0))
    draws = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    cdf = probs.cumsum(dim=-1)
    chosen = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return chosen.clamp(max=logits.shape[-1] - 1).tolist()


def _generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The row's own random stream: its seed alone decides what it samples."""
    if params.temperature <= 0:
        return None
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    return torch.Generator(device=device).manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


def _calls(waiting: Sequence[WorkItem]) -> list[list[WorkItem]]:
    """Waiting items as requests, oldest first: a score call's items (one prompt) stay together."""
    calls: dict[tuple[str, int], list[WorkItem]] = {}
    for item in waiting:
        key = ("call", item.group) if item.group is not None else ("item", item.seq)
        calls.setdefault(key, []).append(item)
    return list(calls.values())
