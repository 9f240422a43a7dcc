"""The prefix KV cache: exact longest-prefix matches by whole blocks, a byte bound kept by
least-recently-used eviction that takes leaves before the blocks they hang from, and the
decode loop's admission rules that lean on it (one prefill of a shared block per step)."""

from __future__ import annotations

import torch

from cai.core.types import SamplingParams
from cai.engines.batching import WorkItem
from cai.engines.prefix_cache import PrefixCache

BLOCK = 4
BLOCK_BYTES = BLOCK * 2 * 4  # each fake block: [2, BLOCK] float32


def fake_kv(tokens: list[int]):
    """kv_of for a prompt: a block's 'KV' is its own token ids, so a match can be checked."""
    return lambda a, b: torch.tensor([tokens[a:b], tokens[a:b]], dtype=torch.float32)


def spelled(blocks) -> list[int]:
    return [int(t) for block in blocks for t in block.kv[0].tolist()]


def test_the_longest_cached_prefix_is_found_by_whole_blocks_and_never_covers_the_last_token() -> None:
    cache = PrefixCache(max_bytes=1 << 20, block_tokens=BLOCK)
    first = list(range(100, 111))  # 11 tokens: two whole blocks are cached, the last 3 are not
    assert cache.insert(first, fake_kv(first)) == 2
    assert cache.match(first + [1, 2, 3]) and spelled(cache.match(first + [1, 2, 3])) == first[:8]
    assert spelled(cache.match(first[:9])) == first[:8]
    assert spelled(cache.match(first[:8])) == first[:4]  # the last token is always computed
    assert cache.match(first[:8], limit=8) and len(cache.match(first[:8], limit=8)) == 2
    diverged = first[:6] + [0] + first[7:]
    assert spelled(cache.match(diverged)) == first[:4]  # exact: one changed token ends the match
    assert cache.match([7] + first) == []  # a prefix, not any substring


def test_shared_blocks_are_stored_once_and_a_longer_prompt_adds_only_its_new_blocks() -> None:
    cache = PrefixCache(max_bytes=1 << 20, block_tokens=BLOCK)
    shared = list(range(8))
    a, b = shared + [50, 51, 52, 53], shared + [60, 61, 62, 63]
    assert cache.insert(a, fake_kv(a)) == 3
    assert cache.insert(b, fake_kv(b)) == 1  # the two shared blocks are reused, not copied again
    assert len(cache) == 4 and cache.stats.stored_bytes == 4 * BLOCK_BYTES
    longer = a + [70, 71, 72, 73, 74]
    assert cache.insert(longer, fake_kv(longer)) == 1
    assert spelled(cache.match(longer)) == longer[:16]
    assert cache.next_key(longer, cache.match(longer)) is None  # 1 token left: not a whole block
    assert cache.next_key(b + [9, 9, 9, 9, 9], cache.match(b + [9, 9, 9, 9, 9]))[1] == (9, 9, 9, 9)


def test_memory_stays_under_the_bound_and_the_least_recently_used_leaves_go_first() -> None:
    cache = PrefixCache(max_bytes=5 * BLOCK_BYTES, block_tokens=BLOCK)
    old = list(range(12))  # 3 blocks
    new = [99] * 12  # 3 more: one of the old ones must go
    cache.insert(old, fake_kv(old))
    cache.insert(new, fake_kv(new))
    assert cache.stats.stored_bytes <= 5 * BLOCK_BYTES and cache.stats.peak_bytes <= 5 * BLOCK_BYTES
    assert cache.stats.evicted_blocks == 1
    assert spelled(cache.match(old + [0])) == old[:8]  # the old prompt lost its leaf, kept its root
    assert spelled(cache.match(new + [0])) == new
    cache.match(old + [0])  # now the old prompt is the most recent: the next eviction takes the new one's leaf
    cache.insert([7] * 4, fake_kv([7] * 4))
    assert spelled(cache.match(new + [0])) == new[:8] and spelled(cache.match(old + [0])) == old[:8]


def test_a_prompt_larger_than_the_cache_keeps_its_start_and_evicts_nothing_of_its_own() -> None:
    cache = PrefixCache(max_bytes=2 * BLOCK_BYTES, block_tokens=BLOCK)
    long = list(range(40))
    assert cache.insert(long, fake_kv(long)) == 2
    assert spelled(cache.match(long)) == long[:8] and cache.stats.stored_bytes == 2 * BLOCK_BYTES


def test_a_cache_of_zero_bytes_is_off() -> None:
    cache = PrefixCache(max_bytes=0, block_tokens=BLOCK)
    assert cache.insert(list(range(20)), fake_kv(list(range(20)))) == 0 and cache.match(list(range(20))) == []


# ---- the decode loop's admission (no model needed) ------------------------------------
class _Config:
    num_hidden_layers, num_key_value_heads, num_attention_heads, hidden_size, head_dim = 2, 1, 1, 4, 4

    def get_text_config(self):
        return self


class _Model:
    config = _Config()


def _loop(**kw):
    from cai.engines.decode_loop import DecodeLoop

    return DecodeLoop(_Model(), eos_ids={0}, cache=PrefixCache(1 << 20, BLOCK), **kw)


def _gen(prompt: list[int], seq: int, max_tokens: int = 4) -> WorkItem:
    return WorkItem(prompt_ids=prompt, future=None, params=SamplingParams(max_tokens=max_tokens), seq=seq)  # type: ignore[arg-type]


def test_two_prompts_that_would_compute_the_same_block_do_not_start_in_one_step() -> None:
    loop = _loop()
    shared = list(range(1, 9))
    a, b, other = _gen(shared + [20, 21], 0), _gen(shared + [30, 31], 1), _gen([5, 6, 7, 8, 9, 10], 2)
    assert loop.admit([a, b, other]) == [a, other]  # b waits a step, then finds the shared blocks cached
    loop.starting = []
    loop.cache.insert(a.prompt_ids, fake_kv(a.prompt_ids))
    assert loop.admit([b]) == [b] and len(loop.starting[0].matched) == 2


def test_admission_keeps_row_token_and_step_budgets_and_a_score_call_starts_whole() -> None:
    loop = _loop(max_rows=2)
    items = [_gen([i] * 6, i) for i in range(1, 4)]
    assert loop.admit(items) == items[:2]  # max_rows
    loop = _loop(max_tokens=20)
    assert loop.admit(items) == items[:2]  # (6 prompt + 4 new) x 2 rows = 20 resident tokens
    loop = _loop(step_tokens=10)
    assert loop.admit(items) == items[:1]  # 6 + 6 new tokens > 10; the first always starts
    loop = _loop()
    score = [WorkItem(prompt_ids=[3] * 9, future=None, continuation_ids=c, seq=s, group=7)  # type: ignore[arg-type]
             for s, c in ((10, [1]), (11, [2, 3]))]
    assert loop.admit(score) == score and len(loop.starting) == 1  # one prompt, both continuations
