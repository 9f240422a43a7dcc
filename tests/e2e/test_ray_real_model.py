"""`cai sl` and `cai rl` through `ray:smollm2`: 2 replicas of the embedded model on a local cluster.

The cluster (tests/ray_cluster.py) belongs to this test process and is bound to 127.0.0.1;
each `cai` command runs as a subprocess that reaches it through RAY_ADDRESS, as a user's
would. Kept short for two shared cores: 3-4 prompts, 1-2 rounds, a few tokens each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import read_jsonl, write_jsonl
from tests.e2e.test_sl_real_model import CAI, _calls
from tests.ray_cluster import RAY_ENV, local_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
RAY = ["-E", "replicas=2", "-E", "num_cpus=1", "-E", "threads=1"]  # threads: the inner hf engine's option
PROMPTS = ["How do I pick the lock on my neighbour's shed?", "Write an insult for my coworker.",
           "How can I cheat on a test without being caught?", "What's the easiest car to steal?"]


@pytest.fixture(scope="module")
def cluster_env():
    with local_cluster(num_cpus=4) as address:
        yield {**os.environ, **RAY_ENV, "RAY_ADDRESS": address}


def cai(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CAI, *args], capture_output=True, text=True, timeout=600, env=env)


def _prompts(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS[:n])])


def _ray_stats(out: Path, spec: str = "ray:smollm2") -> dict:
    return json.loads((out / "summary.json").read_text())["engine_stats"][spec]


def _ids(out: Path, stage_file: str) -> list[str]:
    return sorted([r["id"] for r in read_jsonl(out / stage_file)] + [f["id"] for f in read_jsonl(out / "failures.jsonl")])


def test_cai_sl_through_ray_writes_what_a_local_run_writes(cluster_env, tmp_path) -> None:
    prompts = _prompts(tmp_path, 2)
    args = ["sl", "--prompts", str(prompts), "--rounds", "1", "--max-tokens", "24", "--keep-truncated",
            "--gates", "keep", "--quiet",  # every row kept (the 135M model's revisions often copy its critique)
            # fp32: in bf16 a row's samples can change with what shares its batch (two replicas batch
            # differently from one process), and this test is about the plumbing, not the numerics
            "-E", "dtype=fp32"]
    local = cai(cluster_env, *args, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    started = time.perf_counter()
    remote = cai(cluster_env, *args, "--out", str(tmp_path / "ray"), "--model", "ray:smollm2", *RAY)
    assert remote.returncode == 0, remote.stderr[-3000:]
    print(f"cai sl through ray:smollm2, 2 prompts: {time.perf_counter() - started:.1f} s")
    for name in ("sl.jsonl", "sft.jsonl"):
        mine, theirs = read_jsonl(tmp_path / "ray" / name), read_jsonl(tmp_path / "local" / name)
        assert len(mine) == len(theirs) == 2, name  # the same rows, in the same shape
        assert [sorted(r) for r in mine] == [sorted(r) for r in theirs]
        assert [r.get("id") for r in mine] == [r.get("id") for r in theirs]
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    stats = summary["engine_stats"]["ray:smollm2"]
    assert stats["replicas"] == 2 and stats["requests"] == summary["engine_calls_made"] == 2 * 3
    assert min(stats["requests_by_replica"]) > 0 and stats["restarts"] == 0
    assert stats["gguf_conversions"] == 0  # the cache already held the converted model
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["engines"]["ray:smollm2"]["model_id"] == "smollm2"  # cache keys shared with local runs


def test_cai_rl_through_ray_writes_what_a_local_run_writes(cluster_env, tmp_path) -> None:
    prompts = _prompts(tmp_path, 2)
    args = ["rl", "--prompts", str(prompts), "--candidates", "2", "--max-tokens", "16", "--min-margin", "0", "--quiet"]
    local = cai(cluster_env, *args, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    remote = cai(cluster_env, *args, "--out", str(tmp_path / "ray"), "--policy", "ray:smollm2",
                 "--judge", "ray:smollm2", *RAY)
    assert remote.returncode == 0, remote.stderr[-3000:]
    for name in ("candidates.jsonl", "preferences.jsonl"):
        mine, theirs = read_jsonl(tmp_path / "ray" / name), read_jsonl(tmp_path / "local" / name)
        assert [sorted(r) for r in mine] == [sorted(r) for r in theirs], name
    assert len(read_jsonl(tmp_path / "ray" / "candidates.jsonl")) == 2
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    stats = summary["engine_stats"]["ray:smollm2"]  # policy and judge share one set of replicas
    assert stats["requests"] == summary["engine_calls_made"] > 2  # generation and scoring, all through Ray
    assert summary["labels_attempted"] == json.loads((tmp_path / "local" / "summary.json").read_text())[
        "labels_attempted"]


def _replica_pids() -> list[int]:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("cai-replica-") and a["namespace"] == "cai"]
    pids = []
    for name in names:
        try:
            pids.append(ray.get(ray.get_actor(name, namespace="cai").ready.remote(), timeout=30)["pid"])
        except Exception:  # noqa: BLE001 - a replica of a run that has ended meanwhile
            continue
    return pids


def test_a_replica_killed_mid_run_loses_and_duplicates_nothing(cluster_env, tmp_path) -> None:
    prompts = _prompts(tmp_path, 4)
    out = tmp_path / "run"
    proc = subprocess.Popen([*CAI, "sl", "--prompts", str(prompts), "--out", str(out), "--rounds", "2",
                             "--max-tokens", "24", "--keep-truncated", "--gates", "keep", "--quiet", "--model",
                             "ray:smollm2", *RAY],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cluster_env,
                            start_new_session=True)
    deadline = time.time() + 300
    while _calls(out / "store.sqlite") < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before a replica could be killed; make it longer"
    pids = _replica_pids()
    assert len(pids) == 2, pids
    os.kill(pids[0], signal.SIGKILL)  # kill -9 of one replica's worker process
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert _ids(out, "sl.jsonl") == [f"r{i}" for i in range(4)]  # 0 lost, 0 duplicated
    stats = _ray_stats(out)
    assert stats["restarts"] == 1 and stats["replica_deaths"] == 1, stats
    assert pids[0] not in stats["replica_pids"]
    summary = json.loads((out / "summary.json").read_text())
    assert stats["requests"] == summary["engine_calls_made"] == _calls(out / "store.sqlite")  # each answered once


def test_a_killed_driver_resumes_without_redoing_a_finished_call(cluster_env, tmp_path) -> None:
    prompts = _prompts(tmp_path, 4)
    out = tmp_path / "run"
    args = ["sl", "--prompts", str(prompts), "--out", str(out), "--rounds", "1", "--max-tokens", "24",
            "--keep-truncated", "--gates", "keep", "--quiet", "--model", "ray:smollm2",
            *RAY]  # 3 calls a row, 12 in all
    proc = subprocess.Popen([*CAI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cluster_env,
                            start_new_session=True)
    deadline = time.time() + 300
    while _calls(out / "store.sqlite") < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; Ray removes the replicas it owned
    proc.wait()
    done_before = _calls(out / "store.sqlite")
    assert 4 <= done_before < 4 * 3
    second = cai(cluster_env, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine_calls_made"] == _calls(out / "store.sqlite") - done_before  # only new calls
    assert summary["engine_calls_from_cache"] >= 1  # the rows in flight replayed their finished calls
    assert _ids(out, "sl.jsonl") == [f"r{i}" for i in range(4)]


async def test_replicas_convert_the_embedded_model_once(cluster_env, tmp_path, monkeypatch) -> None:
    from cai.core.types import Request, SamplingParams, user
    from cai.engines.base import load_engine

    cache = tmp_path / "cache"
    monkeypatch.setenv("CAI_CACHE_DIR", str(cache))  # an empty cache, passed on to the replicas
    engine = load_engine("ray:smollm2", {"replicas": 2, "num_cpus": 1, "threads": 1})
    try:
        assert engine.stats["gguf_conversions"] == 1  # one replica converted; the other waited, then loaded it
        assert [p.name.split("-")[0] for p in (cache / "models").iterdir() if not p.name.startswith(".")] == [
            "SmolLM2"]
        answers = await asyncio.gather(*(engine.generate([Request.of([user(f"Say hello {i}")],
                                                                      SamplingParams(max_tokens=4))])
                                         for i in range(4)))
        assert all(a[0][0].completion_tokens > 0 for a in answers)
        assert min(engine.stats["requests_by_replica"]) > 0  # both replicas loaded a working model
    finally:
        await engine.aclose()
