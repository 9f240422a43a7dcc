"""`vllm:<folder | file.gguf | hub id | smollm2>`: in-process vLLM for GPU machines.

vLLM does its own continuous batching, so the shared micro-batcher hands it large,
mixed batches (each request keeps its own sampling parameters) and prefix caching is on:
the constitution and few-shot prefix, identical byte for byte across requests, is
computed once. Prompts go in as token ids from `cai.engines.chat_tokens`, so message
content can never become a control token. Scoring uses vLLM's prompt log-probs.
Optional: `pip install 'constitutional-ai[vllm]'` on a CUDA machine; the import is
guarded with that message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cai.core.types import Completion, Message
from cai.engines.base import EngineError, EngineOptions, register_engine
from cai.engines.batching import BatchingEngine, WorkItem
from cai.engines.chat_tokens import check_tokenizer, encode_chat, encode_text
from cai.engines.models import resolve_model_path


class VLLMOptions(EngineOptions):
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = True
    #: "dummy" loads random weights of the right shape: for throughput tests only
    load_format: str = "auto"
    tokenizer: str | None = None
    max_batch_size: int = 1024
    seed: int = 0


class VLLMEngine(BatchingEngine):
    Options = VLLMOptions
    group_by_params = False  # vLLM takes one SamplingParams per request
    max_batch_tokens = 1 << 30

    def __init__(self, ref: str, options: VLLMOptions | None = None) -> None:
        super().__init__()
        self.options = options or VLLMOptions()
        self.max_batch_size = self.options.max_batch_size
        try:
            import vllm
        except ImportError as exc:
            raise EngineError("the vllm: engine needs vLLM on a CUDA machine: pip install "
                              "'constitutional-ai[vllm]' (or use hf: / openai: engines)") from exc
        self._vllm = vllm
        path = resolve_model_path(ref)
        tokenizer = resolve_model_path(self.options.tokenizer) if self.options.tokenizer else path
        self.model_id = f"vllm:{ref}"
        self.path = path
        self.llm = vllm.LLM(model=path, tokenizer=tokenizer, dtype=self.options.dtype,
                            gpu_memory_utilization=self.options.gpu_memory_utilization,
                            max_model_len=self.options.max_model_len, seed=self.options.seed,
                            tensor_parallel_size=self.options.tensor_parallel_size,
                            enable_prefix_caching=self.options.enable_prefix_caching,
                            load_format=self.options.load_format)
        self.tokenizer = self.llm.get_tokenizer()
        check_tokenizer(self.tokenizer, self.model_id)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "load_format": self.options.load_format}

    def cache_identity(self) -> dict[str, str]:
        """Another dtype, or weights not loaded from the checkpoint, give other answers."""
        config = getattr(self.llm, "model_config", None) or getattr(self.llm.llm_engine, "model_config", None)
        identity = {**super().cache_identity(), "dtype": str(getattr(config, "dtype", self.options.dtype))}
        if self.options.load_format != "auto":
            identity["load_format"] = str(self.options.load_format)
        return identity

    def context_window(self) -> int | None:
        """vLLM's `max_model_len`, so a too-long prompt fails its row before vLLM refuses it."""
        config = getattr(self.llm, "model_config", None) or getattr(self.llm.llm_engine, "model_config", None)
        return getattr(config, "max_model_len", None)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def encode_continuation(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def run_generate_batch(self, batch: list[WorkItem]) -> list[Completion]:
        params = []
        for item in batch:
            p = item.params
            assert p is not None
            params.append(self._vllm.SamplingParams(n=1, temperature=p.temperature, top_p=p.top_p,
                                                    max_tokens=p.max_tokens, seed=p.seed, stop=list(p.stop) or None))
        outs = self.llm.generate([{"prompt_token_ids": it.prompt_ids} for it in batch], params, use_tqdm=False)
        completions = []
        for item, out in zip(batch, outs):
            best = out.outputs[0]
            self.stats["generated_tokens"] += len(best.token_ids)
            completions.append(Completion(text=best.text.strip(),
                                          finish_reason="length" if best.finish_reason == "length" else "stop",
                                          prompt_tokens=len(item.prompt_ids), completion_tokens=len(best.token_ids)))
        return completions

    def run_score_batch(self, batch: list[WorkItem]) -> list[float]:
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outs = self.llm.generate([{"prompt_token_ids": it.prompt_ids + it.continuation_ids} for it in batch],
                                 params, use_tqdm=False)
        scores = []
        for item, out in zip(batch, outs):
            start = len(item.prompt_ids)
            positions = out.prompt_logprobs[start:start + len(item.continuation_ids)]
            scores.append(sum(float(pos[tok].logprob) for pos, tok in zip(positions, item.continuation_ids)))
        return scores


register_engine("vllm", VLLMEngine)
