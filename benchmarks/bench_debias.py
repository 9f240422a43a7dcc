"""Debiasing methods compared on human labels, through `cai eval judge`.

Labels the first N pairs of the shared hh-rlhf harmless-base test file whose two
transcripts together are at most `--max-chars` characters (short pairs, so that the
measurement fits a busy 2-core machine; the selection is written to the work folder) with
one judge (pairwise labeller), once per method: P(A) as the judge gave it, contextual calibration
and batch calibration (`--debias`), each with one order (a seeded coin per pair) and with
both orders averaged. The first run asks the model everything the others need (both
orders, and the content-free questions of contextual calibration); each later run starts
from a copy of its store with the finished rows deleted, so it replays the same model
answers from the call cache and only the debiasing differs between rows. Re-running with
the same `--work` resumes the first run from its store.

Prints, per method: accuracy over every pair asked with its 95% Wilson interval, the
position-bias rate (labels preferring the same position in both orders, over the labels
judged in both orders), accuracy by the position of the human's choice, the expected
calibration error over the labelled pairs, and seconds (the first row includes the model's
work). Then the command line that reproduces the table.

Usage: python benchmarks/bench_debias.py [--pairs 150] [--max-chars 800] [--judge smollm2] [-E key=value ...]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-first500.jsonl"

#: (debias, both orders); the first asks the model for everything the others replay
METHODS = [("contextual", True), ("none", True), ("batch", True), ("none", False), ("contextual", False),
           ("batch", False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--max-chars", type=int, default=800, help="longest chosen + rejected transcripts, in characters")
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("-E", dest="engine_options", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", default=None, help="folder for the run directories (default: a new temporary one)")
    args = ap.parse_args()

    from rich.console import Console

    from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-debias-"))
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs.jsonl"
    picked = [line for line in HH.read_text("utf-8").splitlines()
              if line.strip() and len(json.loads(line)["chosen"]) + len(json.loads(line)["rejected"]) <= args.max_chars]
    pairs.write_text("".join(line + "\n" for line in picked[:args.pairs]), "utf-8")
    print(f"  {min(args.pairs, len(picked))} pairs of {HH.name} with chosen + rejected <= {args.max_chars} chars "
          f"(of {len(picked)} such pairs)", file=sys.stderr, flush=True)
    first_store = None
    rows = []
    for debias, both in METHODS:
        out = work / f"{debias}-{'both' if both else 'one'}"
        if first_store:  # the first run resumes from its own store; the others start afresh
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(exist_ok=True)
        if first_store:  # the same model answers, none of the finished rows
            shutil.copy(first_store, out / "store.sqlite")
            with sqlite3.connect(out / "store.sqlite") as db:
                db.execute("DELETE FROM results")
        config = JudgeEvalConfig.of(pairs=str(pairs), out=str(out), judges=[args.judge],
                                    labeler="pairwise", debias=debias, both_orders=both,
                                    engine_options=args.engine_options, concurrency=16)
        start = time.perf_counter()
        result = run_judge_eval(config, show_progress=False, console=Console(file=io.StringIO()))
        elapsed = time.perf_counter() - start
        r = result.summary["report"]
        lo, hi = r["accuracy_ci95"]
        by_order = r["accuracy_by_order"]
        bias = "n/a (one order)" if r["position_bias_rate"] is None else \
            f"{r['position_bias_rate']:.3f} (of {r['position_bias_denominator'].split(' labels')[0]})"
        rows.append((f"{debias}, {'both orders' if both else 'one order'}", r["pairs_asked"], r["label_failures"],
                     f"{r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]", bias,
                     f"{_fmt(by_order['human_choice_shown_first'])} / {_fmt(by_order['human_choice_shown_second'])}",
                     _fmt(r["expected_calibration_error"]), f"{elapsed:.0f}",
                     result.summary["engine_calls_made"]))
        first_store = first_store or (out / "store.sqlite")
        print(f"  {rows[-1][0]}: {elapsed:.0f}s", file=sys.stderr, flush=True)

    print(f"\njudge {args.judge}, pairwise labeller, the first {args.pairs} pairs of {HH.name} whose chosen + "
          f"rejected transcripts are at most {args.max_chars} characters\n")
    print("| method | pairs asked | failed | accuracy [95% CI] | position-bias rate (over labels) | "
          "accuracy, human's choice shown first / second | ECE | seconds | model calls made |")
    print("|---|---:|---:|---|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    options = "".join(f" -E {o}" for o in args.engine_options)
    print(f"\ncommand per row: cai eval judge --pairs {pairs} --judge {args.judge}{options} --labeler pairwise "
          "--debias METHOD [--no-both-orders] --concurrency 16 --out DIR")
    print(f"whole table: python benchmarks/bench_debias.py --pairs {args.pairs} --max-chars {args.max_chars} "
          f"--judge {args.judge}{options}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
