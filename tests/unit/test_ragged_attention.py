"""The decode loop's attention, without a model: decoding rows, prompt segments and scored
continuations laid out in one flat step must each get exactly the attention they would get
alone (checked against torch's own attention on each row's keys), and their keys must
land in their slots."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cai.engines import ragged_attention as ragged

KV_HEADS, GROUPS, DIM = 2, 3, 8
HEADS = KV_HEADS * GROUPS


class Layer:
    layer_idx = 0


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """q [heads, n, dim] against k, v [kv_heads, m, dim], visible [n, m] -> [n, heads, dim]."""
    k, v = k.repeat_interleave(GROUPS, 0), v.repeat_interleave(GROUPS, 0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible).transpose(0, 1)


def test_every_row_attends_to_its_own_slot_only_and_continuations_never_see_each_other() -> None:
    torch.manual_seed(0)
    kv = torch.zeros(1, 2, 6, KV_HEADS, 32, DIM)
    history = {0: 5, 1: 9}  # decoding rows: slot -> tokens already stored
    for slot, n in history.items():
        kv[0, :, slot, :, :n] = torch.randn(2, KV_HEADS, n, DIM)
    kv[0, :, 3, :, :4] = torch.randn(2, KV_HEADS, 4, DIM)  # a prompt whose first 4 tokens came from the cache
    # flat step: 2 decode tokens; slot 2: a 7-token prompt; slot 3: 3 more prompt tokens after 4 cached,
    # then two scored continuations (2 and 3 tokens) stored after it
    plain = ragged.Segment(2, start=2, store_at=list(range(7)), base=[0] * 7, own=[0] * 7)
    tree = ragged.Segment(3, start=9, store_at=[4, 5, 6, 7, 8, 9, 10, 11], base=[0, 0, 0, 7, 7, 7, 7, 7],
                          own=[0, 0, 0, 7, 7, 9, 9, 9])
    total = 2 + 7 + 8
    query, key, value = torch.randn(1, HEADS, total, DIM), torch.randn(1, KV_HEADS, total, DIM), \
        torch.randn(1, KV_HEADS, total, DIM)
    plan = ragged.make_plan(kv, [history[0] + 1, history[1] + 1], [plain, tree], GROUPS, max_waste=1.0)
    assert len(plan.groups) == 2  # no padding allowed: the two segments attend apart
    with ragged.planned(plan):
        out, _ = ragged._attention(Layer(), query, key, value, None)

    keys, values = kv[0, 0], kv[0, 1]
    for r in (0, 1):  # each decoding row: its history plus its new token, nothing else
        n = history[r] + 1
        assert torch.equal(keys[r, :, n - 1], key[0, :, r])
        want = reference(query[0, :, r:r + 1], keys[r, :, :n], values[r, :, :n], torch.ones(1, n, dtype=torch.bool))
        assert torch.allclose(out[0, r:r + 1], want, atol=1e-5)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    want = reference(query[0, :, 2:9], key[0, :, 2:9], value[0, :, 2:9], causal)
    assert torch.allclose(out[0, 2:9], want, atol=1e-5)
    # the tree: prompt tokens are causal over 7 positions; continuation 1 sees the prompt and itself;
    # continuation 2 sees the prompt and itself, not continuation 1
    k3, v3 = keys[3, :, :12], values[3, :, :12]
    visible = torch.zeros(8, 12, dtype=torch.bool)
    for i, (at, base, own) in enumerate(zip(tree.store_at, tree.base, tree.own)):
        visible[i, :base] = True
        visible[i, own:at + 1] = True
    want = reference(query[0, :, 9:17], k3, v3, visible)
    assert torch.allclose(out[0, 9:17], want, atol=1e-5)
    assert torch.equal(keys[3, :, 4:12], key[0, :, 9:17])


def test_segments_of_similar_size_share_one_padded_product_and_give_the_same_answers() -> None:
    torch.manual_seed(1)
    kv = torch.zeros(1, 2, 4, KV_HEADS, 16, DIM)
    segments = [ragged.Segment(s, start=5 * s, store_at=list(range(5)), base=[0] * 5, own=[0] * 5) for s in range(3)]
    segments[2] = ragged.Segment(2, start=10, store_at=list(range(4)), base=[0] * 4, own=[0] * 4)  # one shorter
    total = 14
    query, key, value = torch.randn(1, HEADS, total, DIM), torch.randn(1, KV_HEADS, total, DIM), \
        torch.randn(1, KV_HEADS, total, DIM)
    together = ragged.make_plan(kv.clone(), [], segments, GROUPS, max_waste=2.0)
    apart = ragged.make_plan(kv.clone(), [], segments, GROUPS, max_waste=1.0)
    assert len(together.groups) == 1 and len(apart.groups) == 2
    outs = []
    for plan in (together, apart):
        with ragged.planned(plan):
            outs.append(ragged._attention(Layer(), query, key, value, None)[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.isfinite(outs[0]).all()


def test_outside_a_step_the_attention_is_plain_sdpa() -> None:
    torch.manual_seed(2)

    class Module(Layer):
        num_key_value_groups = GROUPS
        is_causal = True

    query, key, value = torch.randn(1, HEADS, 4, DIM), torch.randn(1, KV_HEADS, 4, DIM), torch.randn(1, KV_HEADS, 4, DIM)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    want, _ = sdpa_attention_forward(Module(), query, key, value, None)
    got, _ = ragged._attention(Module(), query, key, value, None)
    assert torch.equal(got, want)


def test_the_attention_on_strided_slot_views_matches_a_float32_reference_in_every_dtype() -> None:
    """`_attend` reads keys and values as views into the slot store (capacity-strided) with
    an additive -inf mask for rows of different lengths; in fp32, bf16 and fp16 it gives the
    written-out float32 softmax(q k^T * scale + mask) v."""
    from cai.engines.ragged_attention import _attend, _bias

    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 9, 30, 47, 12])
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)):
        kv = torch.randn(2, 8, 3, 64, 16, generator=gen).to(dtype)  # [k/v, slots, kv heads, capacity, head dim]
        q = torch.randn(5, 3, 6, 16, generator=gen).to(dtype)
        bias = _bias((lengths[:, None] > torch.arange(47)[None, :])[:, None, None, :], dtype)
        k, v = kv[0, :5, :, :47], kv[1, :5, :, :47]
        scores = (q.float() @ k.float().transpose(-1, -2)) * 0.25 + bias.float()
        expected = torch.softmax(scores, dim=-1) @ v.float()
        got = _attend(q, k, v, bias, 0.25)
        assert got.dtype == dtype
        assert torch.allclose(got.float(), expected, atol=tolerance, rtol=tolerance), dtype
        assert torch.allclose(got[0].float(), v[0, :, :1].float().expand(3, 6, 16), atol=tolerance)  # sees key 0 only
