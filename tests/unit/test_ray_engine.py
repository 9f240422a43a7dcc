"""The `ray:` engine and the Ray Data recipe, on a local Ray cluster with the scripted fake engine.

One cluster for the module (tests/ray_cluster.py), 6 logical CPUs on 127.0.0.1. Each test
starts its own replicas and closes them. Scripts registered in this process do not exist
in the replicas' processes, so the replicas run the built-in `fake:echo`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from cai.core.types import Request, SamplingParams, user
from cai.engines.base import EngineError, load_engine
from tests.conftest import read_jsonl, write_jsonl
from tests.ray_cluster import local_cluster

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(num_cpus=6) as address:
        yield address


def _requests(n: int, *, k: int = 1) -> list[Request]:
    return [Request.of([user(f"question number {i}")], SamplingParams(max_tokens=50, n=k, seed=i)) for i in range(n)]


async def _each(engine, requests: list[Request]) -> list:
    """Every request as its own call, all at once, as concurrent chains send them."""
    return [answer[0] for answer in await asyncio.gather(*(engine.generate([r]) for r in requests))]


async def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_replicas_answer_exactly_as_the_inner_engine(cluster) -> None:
    local = load_engine("fake:echo")
    engine = load_engine("ray:fake:echo", {"replicas": 2, "num_cpus": 1})
    try:
        requests = _requests(20, k=2)
        assert await _each(engine, requests) == await local.generate(requests)
        messages, continuations = [user("Which is better?")], ["The answer is: (A)", "(B)"]
        assert await engine.score(messages, continuations) == await local.score(messages, continuations)
        assert engine.model_id == "fake:echo"  # the store's cache keys match a local run's
        by_replica = engine.stats["requests_by_replica"]
        assert sum(by_replica) == 21 and min(by_replica) > 0, by_replica  # spread over both, each answered once
        assert engine.describe()["replicas"] == 2 and engine.describe()["ray_address"] == cluster
    finally:
        await engine.aclose()
    assert set(engine.stats["replica_engine_stats"]) == {"0", "1"}  # each replica's own stats, kept at close


async def test_inner_options_reach_the_inner_engine(cluster) -> None:
    with pytest.raises(EngineError, match="bad options for fake"):  # validated by the inner engine, at start
        load_engine("ray:fake:echo", {"replicas": 1, "num_cpus": 0.5, "no_such_option": 1})
    engine = load_engine("ray:fake:echo", {"replicas": 1, "num_cpus": 0.5, "fail_every": 1})
    try:  # the inner engine's error fails the call, as it would locally; the replica lives on
        with pytest.raises(EngineError, match="scripted failure"):
            await engine.generate(_requests(1))
        assert engine.stats["replica_deaths"] == 0 and engine.stats["replicas_up"] == 1
    finally:
        await engine.aclose()


def test_bad_ray_options_fail_before_any_replica_starts() -> None:
    for options, match in [({"replicas": 0}, "replicas"), ({"placement_strategy": "ROUND_ROBIN"}, "placement"),
                           ({"placement_strategy": "PACK", "num_cpus": 0}, "bundle")]:
        with pytest.raises(EngineError, match=match):
            load_engine("ray:fake:echo", options)
    with pytest.raises(EngineError, match="inside a ray"):
        load_engine("ray:ray:fake:echo")
    with pytest.raises(EngineError, match="unknown model spec"):
        load_engine("ray:nosuch:model")


async def test_a_killed_replica_is_restarted_and_its_requests_answered_once(cluster) -> None:
    local = load_engine("fake:echo")
    engine = load_engine("ray:fake:echo", {"replicas": 2, "num_cpus": 1, "serial_latency_s": 0.05,
                                           "max_batch_requests": 8})
    try:
        requests = _requests(48)
        work = asyncio.ensure_future(_each(engine, requests))
        await _wait_for(lambda: engine.stats["requests"] >= 8)  # under way: batches answered and in flight
        victim = engine.stats["replica_pids"][0]
        os.kill(victim, signal.SIGKILL)
        answers = await work
        assert answers == await local.generate(requests)  # every request answered, with its own answer
        assert engine.stats["requests"] == 48  # each once: the lost batch's requests were answered elsewhere
        assert engine.stats["replica_deaths"] == 1 and engine.stats["requests_retried"] > 0
        await _wait_for(lambda: engine.stats["restarts"] == 1)
        assert engine.stats["replicas_up"] == 2 and engine.stats["replica_pids"][0] != victim
        assert len(await _each(engine, _requests(8))) == 8  # the restarted replica works
    finally:
        await engine.aclose()


async def test_replicas_that_are_gone_for_good(cluster) -> None:
    engine = load_engine("ray:fake:echo", {"replicas": 2, "num_cpus": 1, "max_restarts": 0,
                                           "serial_latency_s": 0.02, "max_batch_requests": 4})
    try:
        work = asyncio.ensure_future(_each(engine, _requests(24)))
        await _wait_for(lambda: engine.stats["requests"] >= 4)
        os.kill(engine.stats["replica_pids"][0], signal.SIGKILL)
        assert len(await work) == 24  # the other replica answered the rest
        await _wait_for(lambda: engine.stats["replicas_lost"] == 1)
        os.kill(engine.stats["replica_pids"][1], signal.SIGKILL)
        with pytest.raises(EngineError, match="every replica died"):  # fails its row; never hangs
            await asyncio.wait_for(engine.generate(_requests(1)), 60)
        assert engine.stats["restarts"] == 0 and engine.stats["replicas_lost"] == 2
    finally:
        await engine.aclose()


async def _timed_workload(replicas: int, requests: int, latency: float) -> float:
    engine = load_engine("ray:fake:echo", {"replicas": replicas, "num_cpus": 1, "serial_latency_s": latency})
    try:
        await _each(engine, _requests(replicas))  # warm: every replica answered once
        started = time.perf_counter()
        assert len(await _each(engine, _requests(requests))) == requests
        return time.perf_counter() - started
    finally:
        await engine.aclose()


async def test_four_replicas_finish_a_fixed_workload_in_well_under_half_the_time_of_one(cluster) -> None:
    one = await _timed_workload(1, 64, 0.04)  # 64 requests x 40 ms, one at a time: 2.56 s at best
    four = await _timed_workload(4, 64, 0.04)  # 0.64 s at best
    ratio = four / one
    print(f"1 replica {one:.2f} s, 4 replicas {four:.2f} s, ratio {ratio:.2f} (ideal 0.25)")
    assert one >= 64 * 0.04 * 0.95  # the latency is real: one replica serves one request at a time
    assert ratio < 0.4, (one, four)


def _sl_config(prompts, out, model: str, **extra):
    from cai.generate.sl import SLConfig

    # gates "keep": the echo script's revisions repeat the request, which the default gates fail
    return SLConfig.of(prompts=str(prompts), out=str(out), model=model, rounds=1, max_tokens=64, gates="keep", **extra)


def test_cai_sl_through_ray_writes_what_a_local_run_writes_and_resumes(cluster, tmp_path) -> None:
    from cai.generate.sl import run_sl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": f"How do I do bad thing {i}?"}
                                                 for i in range(6)])
    local = run_sl(_sl_config(prompts, tmp_path / "local", "fake:echo"), show_progress=False)
    remote = run_sl(_sl_config(prompts, tmp_path / "ray", "ray:fake:echo",
                               engine_options={"replicas": 2, "num_cpus": 1}), show_progress=False)
    for name in ("sl.jsonl", "sft.jsonl", "failures.jsonl"):
        assert read_jsonl(tmp_path / "ray" / name) == read_jsonl(tmp_path / "local" / name), name
    assert remote.summary["engine_calls_made"] == local.summary["engine_calls_made"] == 6 * 3
    stats = json.loads((tmp_path / "ray" / "summary.json").read_text())["engine_stats"]["ray:fake:echo"]
    assert stats["replicas"] == 2 and stats["requests"] == 18 and stats["restarts"] == 0
    again = run_sl(_sl_config(prompts, tmp_path / "ray", "ray:fake:echo",
                              engine_options={"replicas": 2, "num_cpus": 1}), show_progress=False)
    assert again.summary["engine_calls_made"] == 0 and again.summary["rows_already_done"] == 6


def test_ray_data_shards_merge_into_one_run_directory(cluster, tmp_path) -> None:
    from cai.runs.sharded import run_sharded
    from cai.generate.sl import run_sl

    rows = [{"id": f"r{i}", "prompt": f"How do I do bad thing {i}?"} for i in range(7)]
    rows.insert(3, {"id": "dup", "prompt": "same"})
    rows.insert(5, {"prompt": "no id here"})
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    local = run_sl(_sl_config(prompts, tmp_path / "local", "fake:echo"), show_progress=False)
    sharded = run_sharded(run_sl, _sl_config(prompts, tmp_path / "sharded", "fake:echo"), shards=3, num_cpus=1)
    out = tmp_path / "sharded"
    assert sharded.plan.rows_per_shard == [3, 3, 3]
    for name in ("sl.jsonl", "sft.jsonl", "failures.jsonl"):
        assert read_jsonl(out / name) == read_jsonl(tmp_path / "local" / name), name  # ids, order, sources
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_already_done"] == 9 and summary["engine_calls_made"] == 0  # the merge made no call
    assert summary["ray_data"]["engine_calls_made_in_shards"] == local.summary["engine_calls_made"] == 27
    resumed = run_sl(_sl_config(prompts, out, "fake:echo"), show_progress=False)  # an ordinary run directory
    assert resumed.summary["engine_calls_made"] == 0 and resumed.summary["rows_already_done"] == 9
