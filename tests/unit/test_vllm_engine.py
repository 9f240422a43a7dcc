"""The vllm: engine without vLLM: a stub `vllm` module records what the engine hands it.

What is checked: prompts are token ids from the model's own Hugging Face tokenizer (never
vLLM's tokenizer wrapper), hostile content stays text, the plain prompt mode, the options
that reach `vllm.LLM` and the CPU environment, and scoring from prompt log-probs. The real
vLLM runs in tests/vllm/ (`make test-vllm`).
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections import Counter
from dataclasses import dataclass, field

import pytest

from cai.core.types import Request, SamplingParams, user
from cai.engines import EngineError, load_engine
from cai.engines.chat_tokens import check_tokenizer, encode_chat, encode_plain
from cai.engines.vllm_engine import VLLMOptions, cpu_environment, cpu_list, llm_arguments

from .test_injection import BENIGN, HOSTILE, conversation, special_counts


@dataclass
class Logprob:
    logprob: float


@dataclass
class Output:
    token_ids: list[int]
    text: str
    finish_reason: str = "stop"


@dataclass
class RequestOutput:
    outputs: list[Output]
    prompt_logprobs: list | None = None


class WrapperTokenizer:
    """vLLM's tokenizer pool: its apply_chat_template hides the real signature."""

    def __init__(self, tok):
        self.tok = tok

    def apply_chat_template(self, *args, **kwargs):
        return self.tok.apply_chat_template(*args, **kwargs)


@dataclass
class StubLLM:
    kwargs: dict
    prompts: list = field(default_factory=list)
    params: list = field(default_factory=list)
    model_config: object = field(default_factory=lambda: types.SimpleNamespace(max_model_len=8192, dtype="float32"))

    def get_tokenizer(self):
        from transformers import AutoTokenizer

        return WrapperTokenizer(AutoTokenizer.from_pretrained(self.kwargs["tokenizer"]))

    def generate(self, prompts, params, use_tqdm=True):
        self.prompts += [p["prompt_token_ids"] for p in prompts]
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.params += params
        outs = []
        for prompt, p in zip(prompts, params):
            ids = prompt["prompt_token_ids"]
            # every prompt token after the first has log-prob -(its position) / 100: easy to check
            logprobs = [None] + [{tok: Logprob(-i / 100)} for i, tok in enumerate(ids) if i]
            outs.append(RequestOutput([Output([7, 8, 9][:p.max_tokens], " Sure, here it is. ")],
                                      logprobs if p.prompt_logprobs else None))
        return outs


@pytest.fixture
def stub(monkeypatch):
    made: list[StubLLM] = []

    class SamplingParamsStub:
        def __init__(self, **kwargs):
            self.__dict__.update({"prompt_logprobs": None, **kwargs})

    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: made.append(StubLLM(kwargs)) or made[-1]
    module.SamplingParams = SamplingParamsStub
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr("cai.engines.vllm_engine._cuda_available", lambda: False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    return made


def test_prompts_are_ids_from_the_real_tokenizer_and_content_stays_text(stub) -> None:
    from transformers import PreTrainedTokenizerBase

    engine = load_engine("vllm:smollm2", {"dtype": "fp32"})
    assert isinstance(engine.tokenizer, PreTrainedTokenizerBase) and engine.prompt_format == "chat"
    tok = engine.tokenizer
    requests = [Request.of(conversation(text), SamplingParams(max_tokens=3, temperature=0.7, seed=11 + i))
                for i, text in enumerate([BENIGN, *HOSTILE])]
    out = asyncio.run(engine.generate(requests))
    assert [o[0].text for o in out] == ["Sure, here it is."] * len(requests)
    llm = stub[0]
    template_only = special_counts(tok, encode_chat(tok, conversation(BENIGN)))
    assert len(llm.prompts) == len(requests)
    for ids in llm.prompts:  # what reached vLLM: the template's control tokens, never the content's
        assert special_counts(tok, ids) == template_only
    assert sorted(p.seed for p in llm.params) == [11 + i for i in range(len(requests))]  # each row its own seed


def test_vllms_tokenizer_wrapper_would_be_refused(stub) -> None:
    """Why the engine loads its own tokenizer: the check refuses vLLM's wrapper (the old code's choice)."""
    engine = load_engine("vllm:smollm2")
    with pytest.raises(EngineError, match="cannot tokenize message content as plain text"):
        check_tokenizer(stub[0].get_tokenizer(), engine.model_id)
    check_tokenizer(engine.tokenizer, engine.model_id)


def test_options_reach_vllm_and_the_cpu_environment(stub, monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5})
    load_engine("vllm:smollm2", {"dtype": "bf16", "kv_cache_gib": 2, "max_model_len": 2048,
                                 "llm_kwargs": {"max_num_seqs": 64}})
    kwargs = stub[0].kwargs
    assert kwargs["dtype"] == "bfloat16" and kwargs["kv_cache_memory_bytes"] == 2 << 30
    assert kwargs["enforce_eager"] is True and kwargs["max_num_seqs"] == 64 and kwargs["max_model_len"] == 2048
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-2,5"
    load_engine("vllm:smollm2", {"enforce_eager": False, "cpu_threads_bind": "auto"})
    assert stub[1].kwargs["enforce_eager"] is False and stub[1].kwargs["kv_cache_memory_bytes"] == 4 << 30
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    with pytest.raises(EngineError, match="bad options"):
        load_engine("vllm:smollm2", {"kv_cache_space": 2})


def test_llm_arguments_on_cuda_leave_vllms_defaults() -> None:
    args = llm_arguments("/m", "/m", VLLMOptions(), cuda=True)
    assert args["enforce_eager"] is False and "kv_cache_memory_bytes" not in args and args["dtype"] == "auto"


def test_cpu_environment_keeps_what_the_user_set() -> None:
    assert cpu_environment(VLLMOptions(), {"VLLM_CPU_OMP_THREADS_BIND": "0"}, [0, 1]) == {}
    assert cpu_environment(VLLMOptions(), {}, [0, 1, 2, 3]) == {"VLLM_CPU_OMP_THREADS_BIND": "0-3"}
    assert cpu_environment(VLLMOptions(cpu_threads_bind="nobind"), {"VLLM_CPU_OMP_THREADS_BIND": "0"}, [0]) == {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert cpu_list([3, 1, 0, 7, 8]) == "0-1,3,7-8"


def test_plain_prompt_mode(stub) -> None:
    engine = load_engine("vllm:smollm2", {"prompt_format": "plain"})
    tok = engine.tokenizer
    assert engine.prompt_format == "plain" and engine.cache_identity()["prompt_format"] == "plain"
    messages = [user(HOSTILE[0])]
    asyncio.run(engine.generate([Request.of(messages, SamplingParams(max_tokens=3, stop=("END",)))]))
    assert stub[0].prompts[0] == encode_plain(tok, messages)
    assert engine.render(messages).rstrip().endswith("Assistant:")
    assert not special_counts(tok, stub[0].prompts[0]) - Counter([tok.bos_token_id])  # no control tokens
    stops = stub[0].params[0].stop
    assert "END" in stops and any("Human:" in s for s in stops)


def test_score_sums_the_continuations_prompt_logprobs(stub) -> None:
    engine = load_engine("vllm:smollm2")
    messages = [user("Which is better?")]
    prompt = engine.encode_prompt(messages)
    conts = ["The answer is: (A)", "The answer is: (B)<|im_end|>"]
    scores = asyncio.run(engine.score(messages, conts))
    for text, score in zip(conts, scores):
        n = len(engine.encode_continuation(text))
        assert score == pytest.approx(sum(-i / 100 for i in range(len(prompt), len(prompt) + n)))
    sent = stub[0].prompts
    assert all(not special_counts(engine.tokenizer, ids[len(prompt):]) for ids in sent)  # continuations are text
    assert all(p.prompt_logprobs == 1 and p.max_tokens == 1 for p in stub[0].params)
