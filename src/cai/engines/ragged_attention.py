"""Attention over rows of different lengths in one forward pass, for our decode loop.

A step of `cai.engines.decode_loop` runs one forward over a flat sequence of tokens from
many rows: first one new token for each decoding row, then segments (the part of a
prompt the prefix cache did not hold, and after it any continuations to score).
Positions come in as `position_ids`, so rotary embeddings are right for every row.
Attention is what must not mix rows, and that is this module: an attention function
registered with transformers' `AttentionInterface` under `cai_ragged` that, layer by
layer,

- writes every new token's key and value into its row's slot of the loop's KV store
  (`[layers, 2, slots, kv_heads, capacity, head_dim]`), in one indexed write, and
- attends each row's queries to that row's slot only: decoding rows in one batched
  product over their slots with a length mask; segments batched in groups of similar
  size (padding kept under about twice the real work), each token seeing slot positions
  `< base` and `own..itself`. A prompt token has base 0 and own 0 (plain causal); a
  scored continuation, stored after its prompt and after the continuations before it,
  has base = the prompt's length and own = its own first position, so it sees the
  prompt and itself and never a sibling: one segment scores a prompt's continuations as
  a small tree.

Grouped-query attention is computed by folding each KV head's query heads into the query
length, so keys are never repeated. The attention itself is torch's fused
`scaled_dot_product_attention` on the slot views with an additive mask. It was 1.03x
(fp32) and 1.09x (bf16) the written-out form (two matmuls and a float32 softmax) on the
decode-loop benchmark (BENCHMARKS.md, issue 23). Outside a step (no plan set in this
thread) both the attention and its mask are exactly `sdpa`'s, so `model.generate` is
unchanged.

Not here: what goes into a step, sampling, the prefix cache (`cai.engines.decode_loop`).
Only plain causal attention is served: a model with sliding windows, soft-capping or
attention sinks is refused by `supports()`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

NAME = "cai_ragged"


@dataclass
class Segment:
    """New tokens of one slot, `start`.. in the step's flat sequence, one entry per token."""

    slot: int
    start: int
    store_at: list[int]  # the slot position its key and value are written to
    base: list[int]  # it sees slot positions < base ...
    own: list[int]  # ... and own..store_at

    @property
    def width(self) -> int:
        return max(self.store_at) + 1


@dataclass
class SegmentGroup:
    """Segments attended together, padded to `queries` tokens and `width` keys each."""

    slots: torch.Tensor  # long [S]
    query_index: torch.Tensor  # long [S, queries]: flat index of each query (padding repeats one)
    valid: torch.Tensor  # bool [S, queries]
    width: int
    bias: torch.Tensor  # [S, 1, groups * queries, width]: 0 where a query may look, -inf elsewhere


@dataclass
class StepPlan:
    kv: torch.Tensor  # [layers, 2, slots, kv_heads, capacity, head_dim]
    write_slots: torch.Tensor  # long [tokens]: where every token of the step is stored
    write_pos: torch.Tensor  # long [tokens]
    #: rows in slots 0..decode_rows-1 each add one token (the step's first tokens)
    decode_rows: int
    decode_bias: torch.Tensor | None  # [decode_rows, 1, 1, decode_width]
    decode_width: int
    groups: list[SegmentGroup]


_PLAN: contextvars.ContextVar[StepPlan | None] = contextvars.ContextVar("cai_ragged_plan", default=None)


@contextlib.contextmanager
def planned(plan: StepPlan) -> Iterator[None]:
    """Run the model's forward passes inside this block with `plan`."""
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def make_plan(kv: torch.Tensor, decode_lengths: Sequence[int], segments: Sequence[Segment], heads_per_kv: int,
              max_waste: float = 2.0) -> StepPlan:
    """The step's tensors: decoding row r (slot r) adds its token at position
    decode_lengths[r] - 1; `segments` follow in the flat sequence, in order."""
    device, dtype = kv.device, kv.dtype
    n = len(decode_lengths)
    slots = list(range(n)) + [s.slot for s in segments for _ in s.store_at]
    positions = [length - 1 for length in decode_lengths] + [p for s in segments for p in s.store_at]
    width = max(decode_lengths, default=0)
    decode_bias = None
    if n:
        seen = torch.tensor(decode_lengths, device=device)[:, None] > torch.arange(width, device=device)[None, :]
        decode_bias = _bias(seen[:, None, None, :], dtype)
    return StepPlan(kv=kv, write_slots=torch.tensor(slots, device=device),
                    write_pos=torch.tensor(positions, device=device), decode_rows=n, decode_bias=decode_bias,
                    decode_width=width,
                    groups=[_group(g, heads_per_kv, dtype, device) for g in _by_size(segments, max_waste)])


def _by_size(segments: Sequence[Segment], max_waste: float) -> list[list[Segment]]:
    """Segments in groups whose padded size stays within `max_waste` times their real size."""
    groups: list[list[Segment]] = []
    for seg in sorted(segments, key=lambda s: (len(s.store_at), s.width)):
        group = groups[-1] if groups else None
        if group:
            trial = group + [seg]
            padded = len(trial) * max(len(s.store_at) for s in trial) * max(s.width for s in trial)
            if padded <= max_waste * sum(len(s.store_at) * s.width for s in trial):
                group.append(seg)
                continue
        groups.append([seg])
    return groups


def _group(segments: list[Segment], heads_per_kv: int, dtype: torch.dtype, device: torch.device) -> SegmentGroup:
    queries = max(len(s.store_at) for s in segments)
    width = max(s.width for s in segments)
    index, valid, base, own, self_ = [], [], [], [], []
    for s in segments:
        pad = queries - len(s.store_at)
        index.append([s.start + i for i in range(len(s.store_at))] + [s.start] * pad)
        valid.append([True] * len(s.store_at) + [False] * pad)
        base.append(s.base + [1] * pad)  # a padding query sees position 0, so its softmax is defined
        own.append(s.own + [width] * pad)
        self_.append(s.store_at + [0] * pad)
    key = torch.arange(width, device=device)[None, None, :]
    b, o, me = (torch.tensor(x, device=device)[:, :, None] for x in (base, own, self_))
    seen = (key < b) | ((key >= o) & (key <= me))  # [S, queries, width]
    bias = _bias(seen.repeat(1, heads_per_kv, 1)[:, None], dtype)  # folded heads: [S, 1, groups*queries, width]
    return SegmentGroup(slots=torch.tensor([s.slot for s in segments], device=device),
                        query_index=torch.tensor(index, device=device), valid=torch.tensor(valid, device=device),
                        width=width, bias=bias)


def _bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def supports(model: Any) -> str | None:
    """Why the ragged path cannot serve `model` (None if it can)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(model, "_supports_sdpa", False) is False:
        return "the model does not support sdpa attention"
    if config._attn_implementation not in ("sdpa", NAME):
        return f"the model uses {config._attn_implementation!r} attention"
    if getattr(config, "is_encoder_decoder", False):
        return "the model is an encoder-decoder"
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "the model has layers that are not full attention (sliding windows)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "the model soft-caps attention logits"
    return None


def install(model: Any) -> None:
    """Register the attention and switch `model` to it (still plain sdpa outside a step)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, _mask)
    model.set_attn_implementation(NAME)


def _mask(*args: Any, **kwargs: Any) -> Any:
    if _PLAN.get() is not None:
        return None  # rows are kept apart by the attention itself
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


_UNSUPPORTED = ("sliding_window", "softcap", "s_aux", "sinks")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
    plan = _PLAN.get()
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"{NAME} attention does not support {name}")
    _, heads, total, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    keys, values = plan.kv[module.layer_idx, 0], plan.kv[module.layer_idx, 1]
    keys[plan.write_slots, :, plan.write_pos] = key[0].transpose(0, 1)
    values[plan.write_slots, :, plan.write_pos] = value[0].transpose(0, 1)
    out = query.new_empty(1, total, heads, dim)
    n = plan.decode_rows
    if n:
        q = query[0, :, :n].transpose(0, 1).reshape(n, kv_heads, groups, dim)
        width = plan.decode_width
        o = _attend(q, keys[:n, :, :width], values[:n, :, :width], plan.decode_bias, scale)
        out[0, :n] = o.reshape(n, heads, dim)
    for group in plan.groups:
        count, queries = group.query_index.shape
        q = query[0][:, group.query_index]  # [heads, S, queries, dim]
        q = q.transpose(0, 1).reshape(count, kv_heads, groups * queries, dim)
        o = _attend(q, keys[group.slots, :, :group.width], values[group.slots, :, :group.width], group.bias, scale)
        o = o.reshape(count, heads, queries, dim).transpose(1, 2)  # [S, queries, heads, dim]
        out[0, group.query_index[group.valid]] = o[group.valid]
    return out, None
