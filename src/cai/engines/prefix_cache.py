"""A token-prefix cache of KV tensors, shared by every request one engine serves.

Prompts are cut into blocks of `block_tokens` token ids. A block's key is (its parent
block's id, its tokens), so the blocks form a tree, and a lookup walks a prompt from the
root block by block: the longest cached prefix is found exactly (no hash that could
collide) in one pass. This is vLLM's automatic prefix caching (hashed full blocks) and
SGLang's radix tree, in their simplest form. Each block holds the KV of its tokens for
every layer, as a tensor whose layout the caller decides, so a prompt that extends a
cached one (the next step of a chain, the other order of a label, anything after the
few-shot examples) starts from the cache and only the rest is computed.

Memory is bounded: blocks are kept in least-recently-used order and the oldest are
dropped once their total exceeds `max_bytes`. Lookups and inserts touch a path leaf
first, so a block is never older than its children, and eviction takes leaves before
the blocks they hang from.

Only whole blocks are cached, and a match never covers a prompt's last token (its
logits are needed). Not here: where the KV lives while a sequence runs, or how it is
copied in and out (`cai.engines.decode_loop`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

#: a block's key: (parent block id, 0 for the root; the block's token ids)
BlockKey = tuple[int, tuple[int, ...]]


class Tensorlike(Protocol):
    """What a block's KV must offer: its size (a torch tensor does)."""

    def numel(self) -> int: ...

    def element_size(self) -> int: ...


@dataclass(eq=False)
class Block:
    key: BlockKey
    id: int
    kv: Tensorlike  # the caller's tensor for these tokens, every layer
    nbytes: int


@dataclass
class CacheStats:
    inserted_blocks: int = 0
    evicted_blocks: int = 0
    stored_bytes: int = 0
    stored_blocks: int = 0
    #: the most bytes ever held at once (never above `max_bytes`)
    peak_bytes: int = 0


class PrefixCache:
    def __init__(self, max_bytes: int, block_tokens: int = 16) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.max_bytes = max(0, int(max_bytes))
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[BlockKey, Block] = OrderedDict()  # least recently used first
        self._ids = itertools.count(1)
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def _key(self, parent: int, tokens: Sequence[int], index: int) -> BlockKey:
        b = self.block_tokens
        return parent, tuple(tokens[index * b:(index + 1) * b])

    def match(self, tokens: Sequence[int], limit: int | None = None) -> list[Block]:
        """The cached blocks that spell the longest prefix of `tokens`, at most `limit`
        tokens long (default: all but the last token), root first. Touches them."""
        if not self.enabled:
            return []
        limit = len(tokens) - 1 if limit is None else min(limit, len(tokens))
        found: list[Block] = []
        parent = 0
        for i in range(limit // self.block_tokens):
            block = self._blocks.get(self._key(parent, tokens, i))
            if block is None:
                break
            found.append(block)
            parent = block.id
        self._touch(found)
        return found

    def next_key(self, tokens: Sequence[int], matched: Sequence[Block]) -> BlockKey | None:
        """The key of the first block of `tokens` after `matched` (None if it is not whole):
        two prompts with the same next key would compute the same block."""
        i = len(matched)
        if (i + 1) * self.block_tokens > len(tokens):
            return None
        return self._key(matched[-1].id if matched else 0, tokens, i)

    def insert(self, tokens: Sequence[int], kv_of: Callable[[int, int], Tensorlike], upto: int | None = None) -> int:
        """Cache every whole block of `tokens[:upto]` not cached yet; `kv_of(start, end)` gives
        a block's KV (a copy the cache may keep). Room is made by evicting other blocks,
        never this prompt's own; if there is none, the rest of the prompt is not cached.
        Returns the number of new blocks."""
        if not self.enabled:
            return 0
        upto = len(tokens) if upto is None else min(upto, len(tokens))
        whole = upto // self.block_tokens
        path = self.match(tokens, upto)  # the part already cached
        parent = path[-1].id if path else 0
        added = 0
        for i in range(len(path), whole):
            kv = kv_of(i * self.block_tokens, (i + 1) * self.block_tokens)
            block = Block(key=self._key(parent, tokens, i), id=next(self._ids), kv=kv, nbytes=_nbytes(kv))
            if not self._make_room(block.nbytes, len(path)):
                break
            self._blocks[block.key] = block
            self.stats.stored_bytes += block.nbytes
            self.stats.inserted_blocks += 1
            added += 1
            path.append(block)
            parent = block.id
        self._touch(path)
        self.stats.stored_blocks = len(self._blocks)
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.stats.stored_bytes)
        return added

    def clear(self) -> None:
        self._blocks.clear()
        self.stats.stored_bytes = self.stats.stored_blocks = 0

    def _touch(self, path: list[Block]) -> None:
        for block in reversed(path):  # leaf first: each parent ends up more recent than its child
            self._blocks.move_to_end(block.key)

    def _make_room(self, nbytes: int, protected: int) -> bool:
        """Evict least recently used blocks until `nbytes` more fit; the `protected` most
        recent blocks (the path being inserted) are never taken. False if it cannot fit."""
        while self.stats.stored_bytes + nbytes > self.max_bytes and len(self._blocks) > protected:
            _, block = self._blocks.popitem(last=False)
            self.stats.stored_bytes -= block.nbytes
            self.stats.evicted_blocks += 1
        return self.stats.stored_bytes + nbytes <= self.max_bytes


def _nbytes(kv: Tensorlike) -> int:
    return int(kv.numel() * kv.element_size())
