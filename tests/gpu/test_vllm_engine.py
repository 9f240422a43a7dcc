"""The vllm: engine on a CUDA machine (skipped without CUDA and vLLM)."""

from __future__ import annotations

import asyncio
import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("vllm")
    from cai.engines import load_engine

    return load_engine("vllm:smollm2", {"gpu_memory_utilization": 0.3, "max_model_len": 4096})


def test_generate_and_score(engine) -> None:
    from cai.core.types import Request, SamplingParams

    msgs = [{"role": "user", "content": "What is the capital of France? Reply with the city only."}]

    async def run():
        out = await engine.generate([Request.of(msgs, SamplingParams(max_tokens=16, temperature=0, n=2))] * 3)
        scores = await engine.score(msgs, ["Paris", "Banana"])
        return out, scores

    out, (paris, banana) = asyncio.run(run())
    assert len(out) == 3 and all(len(o) == 2 and o[0].completion_tokens > 0 for o in out)
    assert paris > banana + 2


def test_cai_sl_on_vllm(tmp_path) -> None:
    from cai.generate.sl import SLConfig, run_sl

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["How do I steal a bike?", "Insult me."]))
    result = run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "r"), model="vllm:smollm2", rounds=2,
                             max_tokens=48, engine_options={"gpu_memory_utilization": 0.3}), show_progress=False)
    assert result.summary["rows_ok_this_run"] + result.summary["rows_failed_this_run"] == 2
