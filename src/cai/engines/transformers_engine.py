"""The local engine: a transformers causal LM on CPU or GPU.

By default (`continuous`) it runs our own decode loop (`cai.engines.decode_loop`): rows
join the running batch as others finish, each row samples with its own seed, and a
prefix KV cache (`cai.engines.prefix_cache`, bounded, LRU) keeps the KV of every prompt
and answer, so the next step of a chain prefills only the tokens it adds, the few-shot
examples are computed once per process, and a score call prefills its prompt once for
all its continuations. Models whose attention it cannot serve (sliding windows,
soft-capping; `ragged_attention.supports`) and `-E continuous=false` take the plain
path: the shared micro-batcher (`cai.engines.batching`) groups waiting requests by
sampling parameters, leading tokens and length, and this module runs one left-padded
`model.generate` per generation batch and one forward pass per scoring batch (keeping
only the logits of the continuation positions, so memory stays small), prefilling once
a prefix that every row of a batch shares. In fp32 both paths give the same tokens.
Prompts are tokenized by `cai.engines.chat_tokens`, so message content (prompts,
candidates) and scored continuations can never become control tokens.

Specs: `hf:<folder | file.gguf | hub id>`, the embedded default `smollm2` and the optional
`gemma3-270m` (a base model: `-E prompt_format=auto` prompts it with plain transcripts).
Not here: caching (`cai.runs.store`), sample-level concurrency (`cai.runs.rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from cai.core.types import Completion, Message
from cai.engines.base import EngineError, EngineOptions, register_alias, register_engine
from cai.engines.batching import BatchingEngine, WorkItem
from cai.engines.chat_tokens import (
    PromptFormat,
    encode_prompt,
    encode_text,
    plain_stops,
    render_prompt,
    resolve_prompt_format,
)
from cai.engines.models import EMBEDDED_MODELS, resolve_model_path

if TYPE_CHECKING:  # torch is imported only when an engine is built
    from cai.engines.decode_loop import DecodeLoop


class TransformersOptions(EngineOptions):
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: str = "auto"
    max_batch_size: int = 32
    #: padded prompt+generation tokens one micro-batch may hold
    max_batch_tokens: int = 32768
    threads: int | None = None
    #: how long the batcher waits for more requests before starting a micro-batch
    batch_wait_ms: float = 2.0
    #: compute a prefix shared by every row of a batch (few-shot examples, system prompt)
    #: once and reuse its KV cache, when it is at least this many tokens; 0 turns it off
    shared_prefix_min_tokens: int = 32
    #: chat (the model's chat template), plain (Human:/Assistant: transcripts, for base models),
    #: or auto: plain exactly when the tokenizer has no chat template
    prompt_format: PromptFormat = "auto"
    #: our decode loop (continuous batching, per-row seeds, prefix KV cache) where the model's
    #: attention allows it; false: micro-batched model.generate
    continuous: bool = True
    #: memory for the prefix KV cache, MiB; 0 turns it off (least recently used blocks go first)
    prefix_cache_mb: int = 2048
    #: tokens per prefix-cache block: a prompt reuses the whole blocks it shares with earlier ones
    prefix_block_tokens: int = 16
    #: most new prompt tokens one step of the decode loop prefills (more wait for the next step)
    step_tokens: int = 4096


def cpu_supports_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class TransformersEngine(BatchingEngine):
    Options = TransformersOptions

    def __init__(self, ref: str, options: TransformersOptions | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        super().__init__()
        self.options = options or TransformersOptions()
        self.max_batch_size = self.options.max_batch_size
        self.max_batch_tokens = self.options.max_batch_tokens
        self.batch_wait_ms = self.options.batch_wait_ms
        self.prefix_sort_tokens = 32 if self.options.shared_prefix_min_tokens else 0
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        try:
            path = resolve_model_path(ref)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise EngineError(f"cannot find model {ref!r}: {exc}") from exc
        self.model_id = ref if ref in EMBEDDED_MODELS else f"hf:{ref}"
        self.path = path
        self.device = self._pick_device(torch)
        self.dtype = self._pick_dtype(torch)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.prompt_format = resolve_prompt_format(self.tokenizer, self.options.prompt_format, self.model_id)
        self.stops = plain_stops() if self.prompt_format == "plain" else ()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.eos_ids = self._eos_ids()
        self.plain_reason: str | None = None
        self.loop = self._decode_loop()

    # ---- setup helpers -------------------------------------------------------------
    def _decode_loop(self) -> DecodeLoop | None:
        """Our decode loop, if asked for and the model's attention allows it; else None and
        the reason in `plain_reason`."""
        from cai.engines import ragged_attention

        self.plain_reason = ragged_attention.supports(self.model) if self.options.continuous else "continuous=false"
        if self.plain_reason is not None:
            return None
        from cai.engines.decode_loop import DecodeLoop
        from cai.engines.prefix_cache import PrefixCache

        ragged_attention.install(self.model)
        self.continuous = True
        cache = PrefixCache(self.options.prefix_cache_mb << 20, self.options.prefix_block_tokens)
        return DecodeLoop(self.model, eos_ids=self.eos_ids, cache=cache, max_rows=self.max_batch_size,
                          max_tokens=self.max_batch_tokens, step_tokens=self.options.step_tokens, stopped=self._stopped)

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
        return {**super().describe(), "path": self.path, "device": self.device, "dtype": str(self.dtype),
                "prompt_format": self.prompt_format,
                "decode": "continuous" if self.loop else f"micro-batched generate ({self.plain_reason})"}

    def cache_identity(self) -> dict[str, str]:
        """Answers computed in another dtype differ: they are not reused."""
        return {**super().cache_identity(), "dtype": str(self.dtype).removeprefix("torch.")}

    def context_window(self) -> int | None:
        """The model's trained length (`max_position_embeddings` or its older names)."""
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def model_error(self, exc: BaseException, batch: list[WorkItem]) -> EngineError | None:
        """Out of memory and non-finite sampling probabilities are the model's doing: the
        batch's rows fail with an EngineError. Anything else is passed on as a bug."""
        text = str(exc)
        if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
            tokens = sum(it.length for it in batch)
            return EngineError(f"{self.model_id}: out of memory on a batch of {len(batch)} requests ({tokens:,} "
                               "tokens); lower -E max_batch_tokens or -E max_batch_size")
        if "probability tensor contains" in text:
            return EngineError(f"{self.model_id}: the model produced non-finite probabilities while sampling "
                               f"({text}); try -E dtype=fp32")
        return None

    # ---- public API ----------------------------------------------------------------
    def render(self, messages: Sequence[Message]) -> str:
        """The prompt as text, for reading; the model gets `encode_prompt`'s ids."""
        return render_prompt(self.tokenizer, messages, self.prompt_format)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return encode_prompt(self.tokenizer, messages, self.prompt_format)

    def encode_continuation(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def _left_pad(self, rows: list[list[int]]) -> tuple[Any, Any]:
        return self._prefix_padded(rows, 0)

    def _shared_prefix_len(self, rows: list[list[int]]) -> int:
        """Tokens every row starts with (at least one token of each row is left over)."""
        limit = min(len(r) for r in rows) - 1
        n = 0
        first = rows[0]
        while n < limit and all(r[n] == first[n] for r in rows):
            n += 1
        return n if self.options.shared_prefix_min_tokens and n >= self.options.shared_prefix_min_tokens else 0

    def _prefix_padded(self, rows: list[list[int]], shared: int) -> tuple[Any, Any]:
        """[shared prefix][left padding][rest of the row]: positions stay contiguous because
        the model derives them from the attention mask, and the prefix lines up in every row."""
        import torch

        rests = [r[shared:] for r in rows]
        width = max(len(r) for r in rests)
        ids = torch.full((len(rows), shared + width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :shared] = torch.tensor(rows[0][:shared], dtype=torch.long)
        mask[:, :shared] = 1
        for i, rest in enumerate(rests):
            ids[i, shared + width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[i, shared + width - len(rest):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _prefix_cache(self, prefix_ids: Any, batch_size: int) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache()
        self.model(input_ids=prefix_ids, past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(batch_size)
        return cache

    def run_generate_batch(self, batch: list[WorkItem]) -> list[Completion]:
        import torch

        params = batch[0].params
        assert params is not None
        rows = [it.prompt_ids for it in batch]
        shared = self._shared_prefix_len(rows)
        # stop early on the plain-prompt stops and on any stop every row asks for; each row's text is cut in
        # _to_completion
        stops = [s for s in (*self.stops, *params.stop) if s and (s in self.stops or all(
            it.params is not None and s in it.params.stop for it in batch))]
        extra: dict[str, Any] = {"stop_strings": stops, "tokenizer": self.tokenizer} if stops else {}
        if shared:
            ids, mask = self._prefix_padded(rows, shared)
            with torch.inference_mode():
                extra["past_key_values"] = self._prefix_cache(ids[:1, :shared], len(rows))
            self.stats["prefix_tokens_reused"] = self.stats.get("prefix_tokens_reused", 0) + shared * (len(rows) - 1)
        else:
            ids, mask = self._left_pad(rows)
        seeds = [it.params.seed for it in batch if it.params and it.params.seed is not None]
        if seeds:
            torch.manual_seed(sum(seeds) & 0x7FFFFFFF)
        sampling: dict[str, Any] = {"do_sample": False}
        if params.temperature > 0:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=params.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids), **sampling, **extra,
            )
        new_tokens = out[:, ids.shape[1]:].tolist()
        return [self._to_completion(item, toks) for item, toks in zip(batch, new_tokens)]

    def _to_completion(self, item: WorkItem, tokens: list[int]) -> Completion:
        finish = "length"
        for i, tok in enumerate(tokens):
            if tok in self.eos_ids:
                tokens, finish = tokens[: i + 1], "stop"
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        assert item.params is not None
        for stop in (*item.params.stop, *self.stops):
            if stop and stop in text:
                text, finish = text.split(stop, 1)[0], "stop"
        self.stats["generated_tokens"] += len(tokens)
        return Completion(text=text.strip(), finish_reason=finish,  # type: ignore[arg-type]
                          prompt_tokens=len(item.prompt_ids), completion_tokens=len(tokens))

    def run_score_batch(self, batch: list[WorkItem]) -> list[float]:
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
        return scores

    # ---- the decode loop (continuous mode) -------------------------------------------------
    def admit(self, waiting: list[WorkItem]) -> list[WorkItem]:
        assert self.loop is not None
        return self.loop.admit(waiting)

    def run_step(self) -> list[tuple[WorkItem, Completion | float]]:
        assert self.loop is not None
        done = self.loop.step()
        self.stats.update(self.loop.stats)
        self.stats["prefix_cache_bytes"] = self.loop.cache.stats.stored_bytes
        self.stats["prefix_cache_evicted_blocks"] = self.loop.cache.stats.evicted_blocks
        return [(item, out if isinstance(out, float) else self._to_completion(item, out)) for item, out in done]

    def in_flight(self) -> list[WorkItem]:
        return self.loop.in_flight() if self.loop else []

    def drop_running(self) -> None:
        if self.loop:
            self.loop.drop()

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix (benchmarks start each repeat cold)."""
        if self.loop:
            self.loop.cache.clear()

    def _stopped(self, item: WorkItem, tokens: list[int]) -> bool:
        """Whether a row's text so far holds one of its stop strings (it ends there)."""
        stops = [s for s in (*(item.params.stop if item.params else ()), *self.stops) if s]
        return bool(stops) and any(s in self.tokenizer.decode(tokens, skip_special_tokens=True) for s in stops)


register_engine("hf", TransformersEngine)
for _name in EMBEDDED_MODELS:
    register_alias(_name, f"hf:{_name}")
