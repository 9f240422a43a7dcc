"""Resuming a finished run: its time as a share of the original run's.

Runs the same `cai sl` command twice on one --out, as a user would (a fresh process each
time): the first run does the work, the second finds every row finished and only
rewrites the outputs. Both are timed from outside (process start to exit: imports,
engine start, the job) and from inside (the job's own `elapsed_s` in summary.json).
Two workloads:

- the embedded model: N hh-rlhf prompts, 1 round, short answers (a small real run);
- the fake engine: 1,000 prompts, 2 rounds (no model: what the store and outputs cost).

It also times what a resume cannot avoid: starting Python and importing cai's CLI, and
building the engine (loading the model). Each workload is repeated --repeats times in a
new directory; medians.

Usage: python benchmarks/bench_resume.py [--prompts 8] [--max-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-first500.jsonl"
CAI = Path(sys.executable).with_name("cai")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - start


def job_seconds(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["elapsed_s"]


def write_prompts(path: Path, n: int) -> None:
    from cai.inputs.prompts import read_prompts

    texts = [r.prompt for r in read_prompts(HH, hh_mode="first")]
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"{texts[i % len(texts)]} (#{i})"}) + "\n"
                            for i in range(n)), encoding="utf-8")


FAKE = """
import sys
from cai.engines.fake import FakeScript, register_script
register_script("bench", FakeScript(lambda request, k: "A careful and harmless reply, with care, number %d." % k))
from cai.cli import app
sys.argv = ["cai"] + sys.argv[1:]
app()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--fake-prompts", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    real_prompts, fake_prompts = work / "real.jsonl", work / "fake.jsonl"
    write_prompts(real_prompts, args.prompts)
    write_prompts(fake_prompts, args.fake_prompts)
    real = [str(CAI), "sl", "--prompts", str(real_prompts), "--rounds", "1", "--max-tokens", str(args.max_tokens),
            "--max-failure-rate", "1", "--quiet"]
    workloads = {
        f"embedded model, {args.prompts} prompts, 1 round, max {args.max_tokens} tokens, every row kept": lambda out: [
            *real, "--keep-truncated", "--out", str(out)],
        "the same, truncated rows failed (retried on resume)": lambda out: [*real, "--out", str(out)],
        f"fake engine, {args.fake_prompts} prompts, 2 rounds": lambda out: [
            sys.executable, "-c", FAKE, "sl", "--prompts", str(fake_prompts), "--out", str(out), "--rounds", "2",
            "--model", "fake:bench", "--max-failure-rate", "1", "--quiet"],
    }
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in workloads}
    floor: dict[str, list[float]] = {"start Python, import cai's CLI": [], "build the smollm2 engine (load the model)": []}
    load = ("import time; from cai.engines import load_engine; t = time.perf_counter(); load_engine('smollm2'); "
            "print(time.perf_counter() - t)")
    for r in range(args.repeats):
        for name, command in workloads.items():
            out = work / f"run-{r}-{len(rows[name])}-{abs(hash(name)) % 1000}"
            first = timed(command(out))
            first_job = job_seconds(out)
            failed = json.loads((out / "summary.json").read_text())["rows_failed_this_run"]
            again = timed(command(out))
            rows[name].append({"first": first, "first_job": first_job, "again": again, "again_job": job_seconds(out),
                               "retried": failed})
            print(f"  repeat {r + 1}: {name}: {first:.1f}s, resumed in {again:.1f}s", file=sys.stderr, flush=True)
        floor["start Python, import cai's CLI"].append(timed([sys.executable, "-c", "import cai.cli"]))
        done = subprocess.run([sys.executable, "-c", load], check=True, capture_output=True, text=True, cwd=ROOT)
        floor["build the smollm2 engine (load the model)"].append(float(done.stdout.strip().splitlines()[-1]))
    print(f"\nResuming a finished `cai sl` run, {args.repeats} repeats, medians\n")
    print("| workload | original run (s) | resume (s) | resume / original | original job (s) | resume job (s) "
          "| resume job / original job | rows retried on resume |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        med = lambda key: statistics.median(x[key] for x in runs)  # noqa: E731
        share = statistics.median(x["again"] / x["first"] for x in runs)
        job_share = statistics.median(x["again_job"] / x["first_job"] for x in runs)
        print(f"| {name} | {med('first'):.1f} | {med('again'):.2f} | {share:.1%} | {med('first_job'):.1f} | "
              f"{med('again_job'):.2f} | {job_share:.1%} | {med('retried'):g} of {args.prompts if 'fake' not in name else args.fake_prompts} |")
    print("\n| what every process pays | seconds |\n|---|---:|")
    for name, values in floor.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
