"""Limits on the real embedded model: a prompt longer than its 8,192-token context window
fails its row with `context_overflow` before any compute (it once ran for 10 minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cai.core.types import Request, SamplingParams
from cai.engines import load_engine
from cai.engines.base import ContextOverflow
from tests.conftest import read_jsonl, write_jsonl

pytestmark = pytest.mark.slow

LONG = " ".join(f"word{i}" for i in range(2700))  # about 12,400 tokens for SmolLM2's tokenizer


async def test_the_embedded_model_refuses_a_prompt_over_its_window_before_computing() -> None:
    engine = load_engine("smollm2", {"dtype": "fp32"})
    assert engine.context_window() == 8192
    started = time.perf_counter()
    with pytest.raises(ContextOverflow, match="context window of 8,192") as caught:
        await engine.generate([Request.of([{"role": "user", "content": LONG}], SamplingParams(max_tokens=16))])
    assert time.perf_counter() - started < 5
    assert caught.value.code == "context_overflow"
    assert engine.stats["batches"] == 0
    await engine.aclose()


def test_cai_sl_records_the_long_prompt_as_a_failure_and_finishes_the_rest(tmp_path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "long", "prompt": LONG},
                                                  {"id": "short", "prompt": "How do I pick a lock?"}])
    out = tmp_path / "run"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cai.cli", "sl", "--prompts", str(prompts), "--out", str(out),
                           "--rounds", "1", "--few-shot", "none", "--max-tokens", "16", "--keep-truncated", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = {f["id"]: f for f in read_jsonl(out / "failures.jsonl")}
    assert failures["long"]["code"] == "context_overflow", failures
    assert "context window of 8,192" in failures["long"]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_read"] == 2 and summary["failure_reasons"].get("engine: context_overflow") == 1
    print(f"cai sl with a 12.5k-token prompt and a short one: {elapsed:.1f} s")
