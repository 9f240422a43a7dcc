"""One plain batch through every decode path, side by side: which is fastest on this machine?

The 16 shipped sample prompts (`cai/samples/sample_prompts.jsonl`), chat template, greedy,
max 48 new tokens, all submitted at once; SmolLM2-135M in one dtype (`--dtype`). Rows:

  loop       the transformers engine's default: our decode loop (continuous batching, ragged attention)
  plain      the same engine with -E continuous=false: micro-batched, left-padded model.generate
  generate   transformers' model.generate on one left-padded static batch (no engine)
  cb         transformers' own continuous batching (model.generate_batch, paged attention)
  vllm       vLLM in-process through cai's vllm: engine (--vllm; needs vLLM, e.g. .venv-vllm)

Each repeat runs every row once, in rotating order, so machine load falls on all alike;
the table gives medians and each row's ratio to the best of `plain` and `generate` (the
bar the default must meet: >= 0.95x). Start-up (building each engine) is reported apart.

Usage: python benchmarks/bench_decode_paths.py [--dtype auto|bf16|fp32] [--repeats 5] [--vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "src" / "cai" / "samples" / "sample_prompts.jsonl"


def cpu_line() -> str:
    model, flags = "?", set()
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    shown = sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(shown) or 'n/a'}"


def count_new(tokens: list[int], eos: set[int]) -> int:
    for i, t in enumerate(tokens):
        if t in eos:
            return i + 1
    return len(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vllm", action="store_true", help="add vLLM in-process (vllm: engine)")
    ap.add_argument("--vllm-dtype", default=None, help="dtype for the vllm: row (default: --dtype)")
    ap.add_argument("--skip", default="", help="comma-separated rows to leave out, e.g. cb")
    args = ap.parse_args()

    import torch

    from cai.core.types import Request, SamplingParams
    from cai.engines import load_engine

    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    requests = [Request.of([{"role": "user", "content": p}], SamplingParams(max_tokens=args.max_tokens, temperature=0))
                for p in prompts]
    startup: dict[str, float] = {}

    def build(name: str, spec: str, options: dict):
        started = time.perf_counter()
        engine = load_engine(spec, options)
        startup[name] = time.perf_counter() - started
        return engine

    loop = build("loop", "smollm2", {"dtype": args.dtype})
    plain = build("plain", "smollm2", {"dtype": args.dtype, "continuous": False})
    ids = [plain.encode_prompt(r.messages) for r in requests]

    def engine_row(engine):
        def run() -> tuple[int, float]:
            if hasattr(engine, "clear_prefix_cache"):
                engine.clear_prefix_cache()
            started = time.perf_counter()
            out = asyncio.run(engine.generate(requests))
            return sum(c[0].completion_tokens for c in out), time.perf_counter() - started
        return run

    def static_generate() -> tuple[int, float]:
        x, mask = plain._left_pad(ids)

        def go():
            with torch.inference_mode():
                return plain.model.generate(input_ids=x, attention_mask=mask, max_new_tokens=args.max_tokens,
                                            do_sample=False, pad_token_id=plain.tokenizer.pad_token_id,
                                            eos_token_id=sorted(plain.eos_ids))
        started = time.perf_counter()
        out = asyncio.run(asyncio.to_thread(go))  # in a worker thread, as the engines run theirs
        seconds = time.perf_counter() - started
        return sum(count_new(row, plain.eos_ids) for row in out[:, x.shape[1]:].tolist()), seconds

    def transformers_cb() -> tuple[int, float]:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_sl_throughput import run_hf_cb  # the same capped paged cache as the SL benchmark's row (h)

        return run_hf_cb(plain, requests)

    rows = {"loop": ("loop: decode loop (default)", engine_row(loop)),
            "plain": ("plain: -E continuous=false", engine_row(plain)),
            "generate": ("generate: model.generate, one static batch", static_generate),
            "cb": ("cb: transformers generate_batch (paged)", transformers_cb)}
    if args.vllm:
        vdtype = args.vllm_dtype or args.dtype
        vllm = build("vllm", "vllm:smollm2", {"dtype": "bf16" if vdtype == "auto" and plain.dtype == torch.bfloat16
                                              else ("fp32" if vdtype == "auto" else vdtype), "kv_cache_gib": 2})
        rows["vllm"] = (f"vllm: vLLM {__import__('vllm').__version__} in-process (eager)", engine_row(vllm))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    order = [k for k in rows if k not in skip]
    for key in order:  # warm-up: no row pays first-call costs
        rows[key][1]()
    runs: dict[str, list[tuple[int, float]]] = {k: [] for k in order}
    loads = []
    for r in range(args.repeats):
        for key in order[r % len(order):] + order[:r % len(order)]:
            runs[key].append(rows[key][1]())
            loads.append(os.getloadavg()[0])
            n, s = runs[key][-1]
            print(f"  repeat {r + 1}: {key}: {n} tokens in {s:.2f}s", file=sys.stderr, flush=True)
    rates = {k: [n / s for n, s in v] for k, v in runs.items()}
    refs = [k for k in ("plain", "generate") if k in rates]
    best = [max(rates[k][i] for k in refs) for i in range(args.repeats)]
    print(f"\nPlain batch: {len(prompts)} sample prompts, greedy, max {args.max_tokens} new tokens, SmolLM2-135M "
          f"({plain.dtype}), torch {torch.__version__}, threads={torch.get_num_threads()}; {cpu_line()}; "
          f"{args.repeats} repeats interleaved, medians; 1-min load average during the runs "
          f"{min(loads):.1f}-{max(loads):.1f}\n")
    print("| path | tokens | seconds | tokens/s | vs best of plain, generate |")
    print("|---|---:|---:|---:|---:|")
    for key in order:
        n = statistics.median(x for x, _ in runs[key])
        s = statistics.median(y for _, y in runs[key])
        ratio = statistics.median(a / b for a, b in zip(rates[key], best))
        print(f"| {rows[key][0]} | {n:.0f} | {s:.2f} | {statistics.median(rates[key]):.1f} | {ratio:.2f}x |")
    print("\nstart-up (build the engine, s): " + ", ".join(f"{k} {v:.1f}" for k, v in startup.items()))


if __name__ == "__main__":
    main()
