"""What one AI preference label costs, by labeller, on the same prompts and candidates.

Runs `cai rl` on the same N shared red-team prompts with K candidates for each
labeller, on the embedded model, and prints judge-generated tokens per label, seconds
per label, coverage (labels made / labels attempted), failed labels, the position-bias
rate over every label judged in both orders (kept or not), and how many kept pairs are
near coin flips (margin < 0.1). The candidates
are generated once (the first run) and reused by the others through a shared store, so
only labelling differs between rows.

Usage: python benchmarks/bench_rl_labels.py [--prompts 8] [--candidates 2]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-first500.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    from cai.generate.rl import RLConfig, run_rl

    work = Path(tempfile.mkdtemp())
    seed_store = None
    rows = []
    for labeler in ("pairwise", "cot", "rank-all"):
        out = work / labeler
        out.mkdir()
        if seed_store:  # reuse the candidates (and nothing else) from the first run's store
            shutil.copy(seed_store, out / "store.sqlite")
            with sqlite3.connect(out / "store.sqlite") as db:  # keep the calls, not the finished rows
                db.execute("DELETE FROM results")
        start = time.perf_counter()
        result = run_rl(RLConfig.of(prompts=str(HH), out=str(out), labeler=labeler, candidates=args.candidates,
                                 max_tokens=args.max_tokens, limit=args.prompts, judge_max_tokens=96,
                                 min_margin=0.0, max_failure_rate=1.0),
                        show_progress=False)
        elapsed = time.perf_counter() - start
        s = result.summary
        attempts = s["labels_attempted"]
        rows.append((labeler, attempts, s["label_coverage"], s["preference_pairs"],
                     s["judge_generated_tokens_per_attempt"], elapsed / max(1, attempts), s["label_failures"],
                     s["position_bias_rate"], s["position_bias_denominator"].split(" labels")[0],
                     s["kept_pairs_margin_below_0.1"]))
        seed_store = seed_store or (out / "store.sqlite")
        print(f"  {labeler}: {attempts} label attempts in {elapsed:.1f}s", file=sys.stderr, flush=True)
    print(f"\nRL labels: {args.prompts} hh-rlhf prompts, K={args.candidates}, SmolLM2-135M as policy and judge\n")
    print("| labeller | label attempts | coverage | pairs kept | judge generated tokens / attempt "
          "| seconds / attempt | failed labels | position-bias rate (over) | kept pairs with margin < 0.1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, labels, coverage, pairs, tokens, secs, failures, bias, over, coin in rows:
        print(f"| {name} | {labels} | {coverage} | {pairs} | {tokens} | {secs:.2f} | {failures} | {bias} ({over}) "
              f"| {coin} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
