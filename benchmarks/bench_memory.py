"""Peak memory of `cai sl` and `cai rl` on a scripted engine: 100 prompts against 1,000.

Each run is its own Python process (so nothing from one run lingers in the next): it
imports cai, notes its resident memory, runs the job on N prompts with a scripted engine
(no model: what is measured is the pipeline, the store and the outputs; unlike `fake:`,
which keeps every request it was sent for tests to inspect, it keeps nothing), and
reports the peak resident set (`ru_maxrss`) above that baseline, plus the peak of
Python's own allocations (tracemalloc, measured in a second run of the same size so
its overhead does not touch the first). Prompts are the hh-rlhf first human turns,
cycled with distinct ids. The sizes are run interleaved, --repeats times; medians.

Usage: python benchmarks/bench_memory.py [--sizes 100,1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-first500.jsonl"

CHILD = r"""
import json, resource, sys, time, tracemalloc
from pathlib import Path
command, prompts, out, traced = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
from cai.engines.base import Engine, register_engine
from cai.generate.rl import RLConfig, run_rl
from cai.generate.sl import SLConfig, run_sl
from cai.core.types import Completion

class Scripted(Engine):
    # like fake:, but keeps no record of its calls (fake: keeps every request for tests)
    model_id = "bench"
    def __init__(self, rest, options):
        pass
    async def generate(self, requests):
        return [[Completion(f"A careful and harmless reply, number {k}, to a message of "
                            f"{len(r.messages[-1]['content'])} characters, with care.", "stop", 20, 16)
                 for k in range(r.params.n)] for r in requests]
    async def score(self, messages, continuations):
        return [-float(len(c) % 7) for c in continuations]

register_engine("bench", Scripted)
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if traced:
    tracemalloc.start()
base = rss_mb()
start = time.perf_counter()
if command == "sl":
    result = run_sl(SLConfig.of(prompts=prompts, out=out, model="bench:x", rounds=2, max_tokens=64,
                                max_failure_rate=1.0), show_progress=False)
else:
    result = run_rl(RLConfig.of(prompts=prompts, out=out, policy="bench:x", judges=["bench:x"], candidates=2,
                                max_tokens=64, min_margin=0.0, max_failure_rate=1.0), show_progress=False)
elapsed = time.perf_counter() - start
print(json.dumps({"baseline_mb": base, "peak_mb": rss_mb(), "elapsed_s": elapsed,
                  "traced_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20 if traced else None,
                  "rows_ok": result.summary["rows_ok_this_run"]}))
"""


def write_prompts(path: Path, n: int) -> None:
    from cai.inputs.prompts import read_prompts

    texts = [r.prompt for r in read_prompts(HH, hh_mode="first")]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"m{i}", "prompt": f"{texts[i % len(texts)]} (#{i})"}) + "\n")


def run(command: str, prompts: Path, traced: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", CHILD, command, str(prompts), out, "1" if traced else "0"],
                              capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp())
    files = {}
    for n in sizes:
        files[n] = work / f"prompts-{n}.jsonl"
        write_prompts(files[n], n)
    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.repeats):
        for command in ("sl", "rl"):
            for n in (sizes if r % 2 == 0 else sizes[::-1]):
                plain, traced = run(command, files[n], False), run(command, files[n], True)
                results.setdefault((command, n), []).append({**plain, "traced_peak_mb": traced["traced_peak_mb"]})
                print(f"  repeat {r + 1}: cai {command}, {n} prompts: peak {plain['peak_mb']:.0f} MB "
                      f"(baseline {plain['baseline_mb']:.0f}), {plain['elapsed_s']:.1f}s", file=sys.stderr, flush=True)
    print(f"\nPeak memory on a scripted engine (no model), {args.repeats} repeats interleaved, medians\n")
    print("| job | prompts | rows ok | peak RSS above baseline (MB) | peak Python allocations (MB) | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for (command, n), runs in results.items():
        med = lambda key: statistics.median(x[key] for x in runs)  # noqa: E731
        print(f"| cai {command} | {n} | {runs[0]['rows_ok']} | {med('peak_mb') - med('baseline_mb'):.1f} | "
              f"{med('traced_peak_mb'):.1f} | {med('elapsed_s'):.1f} |")
    for command in ("sl", "rl"):
        small, big = (results[(command, n)] for n in (sizes[0], sizes[-1]))
        ratio = statistics.median(b["traced_peak_mb"] for b in big) / statistics.median(s["traced_peak_mb"] for s in small)
        print(f"cai {command}: Python allocations at {sizes[-1]} prompts are {ratio:.2f}x those at {sizes[0]}")


if __name__ == "__main__":
    sys.exit(main())
