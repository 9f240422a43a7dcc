"""How often each revision quality gate fires on the embedded model, with the demo's settings.

Runs `cai sl` (one round, `--max-tokens 192 --stop '\\n\\n' --revision-attempts 5`, the
default `--gates default`, as `make demo` does) on the first N prompts of a shipped prompt
file, then prints, from the run's summary:

- per row (denominator: every row read): kept clean, kept with each flag, failed by each
  gate and by every other reason;
- per revision sample (denominator: every revision sampled, first tries and resamples):
  how many were rejected, by reason code, and how many rows a resample saved.

Each rate carries its Wilson 95% interval. A run already in `--out` is resumed, not redone.

Usage: python benchmarks/bench_revision_gates.py [--prompts src/cai/samples/hh_rlhf_harmless_100.jsonl]
       [--limit 64] [--out runs/gates-64] [--model smollm2] [--existing RUN]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cai.generate.gates import GATE_CODES
from cai.stats.rates import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
DEMO_OPTIONS = ["--rounds", "1", "--max-tokens", "192", "--stop", "\\n\\n", "--revision-attempts", "5"]


def share(part: int, whole: int) -> str:
    if not whole:
        return f"{part} of 0"
    low, high = wilson_interval(part, whole)
    return f"{part} of {whole} ({part / whole:.0%}, 95% CI {low:.0%}-{high:.0%})"


def report(summary: dict) -> list[str]:
    gates, attempts = summary["revision_gates"], summary["revision_attempts"]
    rows = gates["rows"]
    lines = [f"gate policy {gates['policy']}: " + ", ".join(f"{k} {v}" for k, v in gates["actions"].items()), "",
             "| per row | rows | rate (95% CI) |", "|---|---:|---|",
             f"| kept, no flag | {gates['rows_kept_clean']} | {share(gates['rows_kept_clean'], rows)} |"]
    lines += [f"| kept, flagged {code} | {gates['flagged'][code]} | {share(gates['flagged'][code], rows)} |"
              for code in GATE_CODES]
    lines += [f"| failed: {code} | {gates['failed'][code]} | {share(gates['failed'][code], rows)} |"
              for code in GATE_CODES]
    gate_failures = {f"revision: {code}" for code in GATE_CODES}
    for reason, count in sorted(summary["failure_reasons"].items(), key=lambda kv: -kv[1]):
        if not any(reason.endswith(g) for g in gate_failures):
            lines.append(f"| failed: {reason} | {count} | {share(count, rows)} |")
    samples = attempts["samples"]
    lines += ["", f"| per revision sample ({attempts['denominator']}) | samples | rate (95% CI) |", "|---|---:|---|"]
    rejected = sum(attempts["rejected"].values())
    # a row's last attempt is returned, not rejected: where it failed too, the row failed at its revision
    last_failed = sum(n for reason, n in summary["failure_reasons"].items() if " revision: " in reason)
    passed = samples - rejected - last_failed
    lines.append(f"| passed: the row kept it (flags allowed) | {passed} | {share(passed, samples)} |")
    lines += [f"| rejected, then resampled: {code} | {count} | {share(count, samples)} |"
              for code, count in sorted(attempts["rejected"].items(), key=lambda kv: -kv[1])]
    lines.append(f"| failed on the last attempt (the row failed) | {last_failed} | {share(last_failed, samples)} |")
    saved = attempts["saved_by_resampling"]
    lines.append(f"| revisions a resample saved | {saved} | {share(saved, attempts['revisions'])} of the revisions |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default=str(ROOT / "src" / "cai" / "samples" / "hh_rlhf_harmless_100.jsonl"))
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "runs" / "gates-64"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--existing", default=None, help="report on this finished run instead of running one")
    args = ap.parse_args()
    out = Path(args.existing or args.out)
    seconds = None
    if not args.existing:
        started = time.perf_counter()
        cai = str(Path(sys.executable).parent / "cai")
        subprocess.run([cai, "sl", "--prompts", args.prompts, "--limit", str(args.limit), "--out", str(out),
                        "--model", args.model, "--quiet", *DEMO_OPTIONS], check=True)
        seconds = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    took = f", {seconds:.0f} s" if seconds is not None else ""
    print(f"cai sl on {out} ({summary['revision_gates']['rows']} rows{took}); settings: {' '.join(DEMO_OPTIONS)}\n")
    print("\n".join(report(summary)))


if __name__ == "__main__":
    main()
