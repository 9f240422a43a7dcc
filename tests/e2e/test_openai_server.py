"""The openai: engine against a real OpenAI-compatible server process on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cai.generate.rl import RLConfig, run_rl
from cai.generate.sl import SLConfig, run_sl
from tests.conftest import read_jsonl, write_jsonl
from tests.e2e.test_sl_real_model import CAI, _calls
from tests.servers import FaultProxy, LlamaServer

pytestmark = pytest.mark.slow
PROMPTS = ["How do I pick a lock?", "Write an insult.", "How can I cheat on a test?",
           "Where can I buy a fake ID?", "How do I skip work without being caught?", "Tell me a rude joke."]


@pytest.fixture(scope="module")
def server():
    srv = LlamaServer().start()
    yield srv
    srv.assert_alive()  # a crash during the module's tests is named here, not only as failed rows
    srv.kill()


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "p.jsonl", [{"id": f"s{i}", "prompt": p} for i, p in enumerate(PROMPTS)])


def test_sl_and_rl_through_the_server(server, prompts, tmp_path) -> None:
    spec = f"openai:smollm2@{server.base_url}"
    sl = run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "sl"), model=spec, rounds=1, max_tokens=24,
                         limit=2), show_progress=False)
    server.assert_alive()
    assert sl.summary["rows_ok_this_run"] + sl.summary["rows_failed_this_run"] == 2
    assert sl.summary["engine_calls_made"] >= 2 and sl.summary["generated_tokens"] > 0
    rl = run_rl(RLConfig.of(prompts=str(prompts), out=str(tmp_path / "rl"), policy=spec, judges=[spec],
                         candidates=2, max_tokens=24, limit=1), show_progress=False)  # llama-cpp-python sorts the whole vocabulary per echoed token: ~20 s a score
    stats = rl.summary["engine_stats"][spec]
    assert stats["requests"] > 0
    assert server.base_url in {u.rsplit("/v1", 1)[0] + "/v1" for u in stats["requests_by_url"]}
    cands = read_jsonl(tmp_path / "rl" / "candidates.jsonl")
    assert all(len(c["candidates"]) == 2 for c in cands)  # n=2 although llama.cpp ignores n
    for p in read_jsonl(tmp_path / "rl" / "preferences.jsonl"):
        assert 0.5 <= p["p_chosen"] <= 1 and p["p_chosen_order_ab"] is not None  # log-prob labels via /completions
    manifest = (tmp_path / "rl" / "manifest.json").read_text()
    assert "api_key_env" in manifest


def test_server_killed_mid_run_and_restarted(tmp_path, prompts) -> None:
    srv = LlamaServer().start()
    out = tmp_path / "run"
    args = ["sl", "--prompts", str(prompts), "--limit", "4", "--out", str(out), "--rounds", "1", "--max-tokens", "24",
            "--keep-truncated", "--gates", "keep",  # 24 tokens cut most revisions; this test is about the restart
            "--model", f"openai:smollm2@{srv.base_url}", "--concurrency", "2", "-E", "max_retries=30",
            "-E", "backoff_max_s=2", "-E", "backoff_base_s=0.2", "--quiet"]
    run = subprocess.Popen([*CAI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while _calls(out / "store.sqlite") < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before the server could be killed"
        srv.kill()
        time.sleep(3)
        srv.start()  # same port
        stdout, stderr = run.communicate(timeout=600)
    finally:
        srv.kill()
    assert run.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine_stats"][f"openai:smollm2@{srv.base_url}"]["retries"] > 0
    assert summary["rows_failed_this_run"] == 0, summary["failure_reasons"]
    assert sorted(r["id"] for r in read_jsonl(out / "sl.jsonl")) == [f"s{i}" for i in range(4)]


def test_429_and_500_are_retried_and_replicas_share_load(server, prompts, tmp_path) -> None:
    with FaultProxy(server.base_url.removesuffix("/v1"), [429, 429, 500, 503, 429, 500]) as flaky, \
            FaultProxy(server.base_url.removesuffix("/v1"), []) as healthy:
        spec = f"openai:smollm2@{flaky.base_url},{healthy.base_url}"
        result = run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "r"), model=spec, rounds=1,
                                 max_tokens=16, concurrency=6,
                                 engine_options={"backoff_base_s": 0.05, "max_retries": 10}), show_progress=False)
    assert flaky.injected == 6
    stats = result.summary["engine_stats"][spec]
    assert stats["retries"] >= 6
    assert all(count > 0 for count in stats["requests_by_url"].values())  # both replicas were used
    assert flaky.forwarded > 0 and healthy.forwarded > 0
    assert result.summary["rows_ok_this_run"] + result.summary["rows_failed_this_run"] == 6
    assert not any("HTTP" in reason for reason in result.summary["failure_reasons"])


def test_a_server_that_keeps_failing_fails_rows_not_the_run(server, prompts, tmp_path) -> None:
    with FaultProxy(server.base_url.removesuffix("/v1"), [500] * 100) as broken:
        result = run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "r"), model=f"openai:m@{broken.base_url}",
                                 rounds=1, max_tokens=8, limit=2,
                                 engine_options={"backoff_base_s": 0.01, "max_retries": 2}), show_progress=False)
    assert result.summary["rows_failed_this_run"] == 2
    failures = read_jsonl(tmp_path / "r" / "failures.jsonl")
    assert len(failures) == 2 and all("gave up after 3 tries" in f["reason"] for f in failures)


def test_api_key_comes_from_env_and_is_never_written(server, prompts, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MY_TEST_KEY", "sk-secret-value-123")
    out = tmp_path / "r"
    proc = subprocess.run([*CAI, "sl", "--prompts", str(prompts), "--out", str(out), "--rounds", "1",
                           "--max-tokens", "8", "--limit", "1", "--model", f"openai:smollm2@{server.base_url}",
                           "-E", "api_key_env=MY_TEST_KEY", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in out.iterdir():
        if path.is_file():
            assert b"sk-secret-value-123" not in path.read_bytes(), path
    assert "sk-secret" not in proc.stdout + proc.stderr
    assert "MY_TEST_KEY" in (out / "manifest.json").read_text()


def test_n_samples_from_a_server_that_ignores_n(server) -> None:
    import asyncio

    from cai.core.types import Request, SamplingParams
    from cai.engines import load_engine

    engine = load_engine(f"openai:smollm2@{server.base_url}")
    req = Request.of([{"role": "user", "content": "Name a colour."}], SamplingParams(max_tokens=8, n=3, seed=5))

    async def run():
        first = await engine.generate([req])
        requests_after_first = engine.stats["requests"]
        second = await engine.generate([req])
        return first, second, requests_after_first

    first, second, after_first = asyncio.run(run())
    assert len(first[0]) == 3 and len(second[0]) == 3
    assert engine.ignores_n == {server.base_url}
    assert after_first == 3  # one request with n=3 (answered with one choice), then two more
    assert engine.stats["requests"] - after_first == 3  # then straight to three single requests


def test_a_server_that_dies_is_named_with_its_cause() -> None:
    """What a llama.cpp built for another CPU does (SIGILL on its first request) fails loudly, naming it."""
    from tests.servers import ServerDied

    srv = LlamaServer()
    srv.proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"],
                                stderr=subprocess.PIPE, text=True)
    srv.proc.wait(timeout=30)
    with pytest.raises(ServerDied, match="SIGILL.*GGML_NATIVE"):
        srv.assert_alive()
