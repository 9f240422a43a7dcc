"""The local engine: a transformers causal LM on CPU or GPU, fed by micro-batches.

The shared micro-batcher (`cai.engines.batching`) groups waiting requests by sampling
parameters, leading tokens and length; this module runs one left-padded
`model.generate` per generation batch and one forward pass per scoring batch (keeping
only the logits of the continuation positions, so memory stays small). A prefix that
every row of a batch shares (few-shot examples, a system prompt) is prefilled once and
its KV cache reused by all rows. Nothing is generated one prompt at a time unless only
one prompt is waiting. Prompts are tokenized by `cai.engines.chat_tokens`, so message
content (prompts, candidates) and scored continuations can never become control tokens.

Specs: `hf:<folder | file.gguf | hub id>` and the embedded default `smollm2`.
Not here: caching (`cai.store`), sample-level concurrency (`cai.pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from cai.engines.base import EngineError, EngineOptions, register_alias, register_engine
from cai.engines.batching import BatchingEngine, WorkItem
from cai.engines.chat_tokens import check_tokenizer, encode_chat, encode_text, render_chat
from cai.engines.models import EMBEDDED_NAME, resolve_model_path
from cai.types import Completion, Message


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
        self.model_id = ref if ref == EMBEDDED_NAME else f"hf:{ref}"
        self.path = path
        self.device = self._pick_device(torch)
        self.dtype = self._pick_dtype(torch)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        check_tokenizer(self.tokenizer, self.model_id)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.eos_ids = self._eos_ids()

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
        return render_chat(self.tokenizer, messages)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

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
        extra: dict[str, Any] = {}
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
        for stop in item.params.stop:
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


register_engine("hf", TransformersEngine)
register_alias(EMBEDDED_NAME, f"hf:{EMBEDDED_NAME}")
