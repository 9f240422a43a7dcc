"""The `ray:` engine: scaling from 1 to 4 replicas, and what the driver can carry.

Two cores cannot show a real model scaling, so the replicas run the scripted fake engine
with a simulated per-request latency (`-E serial_latency_s`): each replica serves one
request at a time, as a model that is the bottleneck would. Ideal scaling is then exact
(N replicas: 1/N of the time), and what the table shows is what the `ray:` engine's
dispatch costs on top of it.

1. Engine: W requests, all submitted at once (as concurrent chains send them), to
   `ray:fake:echo` with 1, 2 and 4 replicas. Wall time after every replica answered once.
2. Job: `run_sl` (1 round, so 3 calls a row) through the same engines, store and all,
   on replicas started beforehand (start-up is not counted; everything else is).
3. Driver: `run_sl` with no latency and 4 replicas, at two `--concurrency` values, each in
   its own process: rows/s, store commits/s (every call and every row is one SQLite
   commit on the driver), peak requests in flight, and the driver's peak memory, beside
   the same run on the local fake engine (no Ray).

Each scaling case runs `--repeats` times in rotating order; the table gives medians. A
local cluster on 127.0.0.1 is started for the benchmark (or RAY_ADDRESS is used).

Usage: python benchmarks/bench_ray_scaling.py [--requests 96] [--latency 0.05] [--rows 32]
       [--repeats 3] [--driver-rows 2000] [--concurrency 64,512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _engine_case(replicas: int, requests: int, latency: float) -> float:
    from cai.core.types import Request, SamplingParams, user
    from cai.engines.base import load_engine

    engine = load_engine("ray:fake:echo", {"replicas": replicas, "num_cpus": 1, "serial_latency_s": latency})
    try:
        def batch(n: int) -> list[Request]:
            return [Request.of([user(f"request {i}")], SamplingParams(max_tokens=16, seed=i)) for i in range(n)]
        await asyncio.gather(*(engine.generate([r]) for r in batch(replicas)))  # warm
        started = time.perf_counter()
        await asyncio.gather(*(engine.generate([r]) for r in batch(requests)))
        return time.perf_counter() - started
    finally:
        await engine.aclose()


def _prompts(folder: Path, rows: int) -> Path:
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"How would someone do bad thing number {i}?"})
                            + "\n" for i in range(rows)), encoding="utf-8")
    return path


class Borrowed:
    """A `borrowed:<key>` spec: hands run_sl an engine built (and timed) outside it, and leaves it open."""

    def __init__(self, engine) -> None:  # noqa: ANN001 - any Engine
        self.engine, self.model_id, self.stats = engine, engine.model_id, getattr(engine, "stats", {})

    async def generate(self, requests):  # noqa: ANN001, ANN201
        return await self.engine.generate(requests)

    async def score(self, messages, continuations):  # noqa: ANN001, ANN201
        return await self.engine.score(messages, continuations)

    async def aclose(self) -> None:
        pass

    def describe(self) -> dict:
        return self.engine.describe()


BORROWED: dict = {}


def _register_borrowed() -> None:
    from cai.engines.base import Engine, register_engine

    register_engine("borrowed", Engine, lambda rest, opts: BORROWED[rest])  # type: ignore[arg-type,return-value]


def _run_sl(model: str, prompts: Path, out: Path, options: dict, concurrency: int) -> dict:
    """run_sl on an engine started beforehand, so `elapsed` (its wall time) leaves out starting
    the replicas; `commits` counts what the run wrote to its store (calls and rows)."""
    import sqlite3

    from rich.console import Console

    from cai.engines.base import load_engine
    from cai.generate.sl import SLConfig, run_sl

    _register_borrowed()
    engine = load_engine(model, options)
    BORROWED[model] = Borrowed(engine)
    config = SLConfig.of(prompts=str(prompts), out=str(out), model=f"borrowed:{model}", rounds=1, max_tokens=64,
                         concurrency=concurrency, max_failure_rate=1.0)
    try:
        with open(os.devnull, "w") as devnull:
            started = time.perf_counter()
            summary = run_sl(config, show_progress=False, console=Console(file=devnull)).summary
            elapsed = time.perf_counter() - started
    finally:
        asyncio.run(engine.aclose())
    with sqlite3.connect(out / "store.sqlite") as conn:
        commits = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] + conn.execute(
            "SELECT COUNT(*) FROM results").fetchone()[0]
    return {"elapsed": elapsed, "commits": commits, "summary": summary, "stats": dict(getattr(engine, "stats", {}))}


def _job_case(replicas: int, rows: int, latency: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = _run_sl("ray:fake:echo", _prompts(Path(tmp), rows), Path(tmp) / "out",
                         {"replicas": replicas, "num_cpus": 1, "serial_latency_s": latency}, concurrency=64)
        assert result["summary"]["rows_ok_this_run"] + result["summary"]["rows_failed_this_run"] == rows
        return result["elapsed"]


def driver_case(model: str, rows: int, concurrency: int) -> dict:
    """One driver measurement, in this (fresh) process; printed as JSON by --driver-case."""
    options = {"replicas": 4, "num_cpus": 1} if model.startswith("ray:") else {}
    if model.startswith("ray:"):
        import ray
        ray.init(logging_level="WARNING")  # RAY_ADDRESS: the benchmark's cluster
    from cai.generate.sl import run_sl  # noqa: F401 - imported before the baseline is taken
    baseline = _rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        result = _run_sl(model, _prompts(Path(tmp), rows), Path(tmp) / "out", options, concurrency)
    summary, elapsed, commits = result["summary"], result["elapsed"], result["commits"]
    stats = result["stats"]
    return {"model": model, "concurrency": concurrency, "rows": rows, "elapsed_s": round(elapsed, 2),
            "rows_per_s": round(rows / elapsed, 1), "commits_per_s": round(commits / elapsed, 1),
            "max_requests_in_flight": stats.get("max_requests_in_flight"),
            "driver_rss_before_mb": round(baseline, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def median_table(times: dict[int, list[float]], unit: int, what: str) -> list[str]:
    base = statistics.median(times[min(times)])
    lines = [f"| replicas | wall s (median) | {what}/s | time vs 1 replica | scaling efficiency |",
             "|---|---|---|---|---|"]
    for replicas, samples in sorted(times.items()):
        t = statistics.median(samples)
        lines.append(f"| {replicas} | {t:.2f} | {unit / t:.1f} | {t / base:.2f} | {base / t / replicas:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rows", type=int, default=32, help="rows of the run_sl scaling case (3 calls each)")
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--driver-rows", type=int, default=2000)
    parser.add_argument("--concurrency", default="64,512")
    parser.add_argument("--driver-case", nargs=3, metavar=("MODEL", "ROWS", "CONCURRENCY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver_case:
        model, rows, concurrency = args.driver_case
        print(json.dumps(driver_case(model, int(rows), int(concurrency))))
        return

    os.environ.update({k: v for k, v in LOOPBACK_ENV.items() if k not in os.environ})
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="WARNING")
    else:
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    counts = [int(x) for x in args.replicas.split(",")]
    engine_times: dict[int, list[float]] = {n: [] for n in counts}
    job_times: dict[int, list[float]] = {n: [] for n in counts}
    for repeat in range(args.repeats):
        order = counts[repeat % len(counts):] + counts[:repeat % len(counts)]
        for n in order:
            engine_times[n].append(asyncio.run(_engine_case(n, args.requests, args.latency)))
            job_times[n].append(_job_case(n, args.rows, args.latency))
    print(f"\n### Engine: {args.requests} requests x {args.latency * 1000:.0f} ms, one at a time per replica "
          f"(ideal for 1 replica: {args.requests * args.latency:.2f} s); {args.repeats} repeats\n")
    print("\n".join(median_table(engine_times, args.requests, "requests")))
    print(f"\n### Job: run_sl, {args.rows} rows x 1 round = {args.rows * 3} calls x {args.latency * 1000:.0f} ms, "
          f"--concurrency 64 (ideal for 1 replica: {args.rows * 3 * args.latency:.2f} s)\n")
    print("\n".join(median_table(job_times, args.rows, "rows")))

    print(f"\n### Driver: run_sl, {args.driver_rows} rows x 1 round, no latency, each case in its own process\n")
    print("| engine | --concurrency | wall s | rows/s | store commits/s | peak requests in flight "
          "| driver RSS before -> peak (MB) |")
    print("|---|---|---|---|---|---|---|")
    for concurrency in [int(x) for x in args.concurrency.split(",")]:
        for model in ("fake:echo", "ray:fake:echo"):
            proc = subprocess.run([sys.executable, __file__, "--driver-case", model, str(args.driver_rows),
                                   str(concurrency)], capture_output=True, text=True, env=os.environ)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| `{model}`{' (4 replicas)' if model.startswith('ray:') else ''} | {concurrency} "
                  f"| {r['elapsed_s']} | {r['rows_per_s']} | {r['commits_per_s']} "
                  f"| {r['max_requests_in_flight'] if r['max_requests_in_flight'] is not None else '-'} "
                  f"| {r['driver_rss_before_mb']} -> {r['driver_peak_rss_mb']} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
