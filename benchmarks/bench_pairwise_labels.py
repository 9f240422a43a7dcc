"""Pairwise labels per second on the transformers engine, before and after one prefill per label.

The first N human-labelled hh-rlhf pairs (harmless-base test) whose judge prompt fits in
--max-prompt-tokens are labelled by the embedded judge exactly as `--labeler pairwise`
does: one principle sampled per pair, both orders, P(A) from the log-probs of "The answer
is: (A)" and "(B)", all N labels in flight at once (as `cai rl` runs them). Three engines,
same weights and dtype, each loaded once before any timing:

  before:     -E continuous=false, the plain path: every scored continuation is its own row
              of a batched forward pass, so each label computes its judge prompt 4 times
              (2 orders x 2 continuations)
  after, no cache: the decode loop with -E prefix_cache_mb=0: each order's prompt is
              computed once and both continuations on top of it (2 prompts per label)
  after:      the decode loop as shipped: the same, and the second order (and any later
              label) reuses what its prompt shares with prompts already computed

Peers, optional, on the same pairs in the same run (start-up reported apart):

  --vllm          the vllm: engine, vLLM in-process, prompt log-probs (run this script with
                  .venv-vllm/bin/python; `make test-vllm` builds it)
  --vllm-server   openai: against vLLM's OpenAI server on 127.0.0.1 (token-id prompts, prompt
                  log-probs)
  --llama-server  openai: against llama_cpp.server on the embedded GGUF (Q4_1 weights: its
                  labels differ from the others' by more than rounding)

transformers' own continuous batching (generate_batch) has no row: it returns no prompt
log-probs, so it cannot score a label.

Every repeat runs each engine once, in rotating order, each starting with an empty prefix
cache; the table gives medians. It also checks that every engine gave the same labels
(the largest |p difference| from the plain path) and counts prompt tokens computed per
label (the plain path's from its rows, the loop's from its own counters).

Usage: python benchmarks/bench_pairwise_labels.py [--pairs 24] [--max-prompt-tokens 400] [--repeats 3]
       [--vllm] [--vllm-server] [--llama-server]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-first500.jsonl"


def load_pairs(n: int, max_tokens: int, engine) -> list[tuple[list, str, str]]:
    """(conversation, chosen reply, rejected reply) for the first n pairs whose judge prompt fits."""
    from cai.inputs.prompts import split_hh_pair
    from cai.text.templates import render, transcript

    pairs = []
    for line in HH.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        try:
            conversation, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
        except ValueError:
            continue
        if chosen == rejected:
            continue
        prompt = render("judge_pairwise.j2", conversation=transcript(conversation), principle="x" * 200,
                        option_a=chosen, option_b=rejected)
        if len(engine.encode_prompt([{"role": "user", "content": prompt}])) <= max_tokens:
            pairs.append((conversation, chosen, rejected))
        if len(pairs) == n:
            break
    return pairs


def label_all(engine, pairs) -> tuple[list[float], float, int | None]:
    """p(chosen) for every pair, the wall time, and prompt tokens the engine computed (None
    where the engine does not count them: the peers)."""
    from cai.inputs.constitution import load_constitution
    from cai.label.pairwise import PairwiseLabeler

    labeler = PairwiseLabeler(engine, load_constitution("default"), seed=0)
    if hasattr(engine, "clear_prefix_cache"):
        engine.clear_prefix_cache()
    computed_before = engine.stats.get("prefill_tokens", 0)
    rows_before = getattr(engine, "score_row_tokens", 0)

    async def run():
        try:
            return await asyncio.gather(*[labeler.compare(conv, x, y, key=(f"pair{i}",))
                                          for i, (conv, x, y) in enumerate(pairs)])
        finally:
            if engine.model_id.startswith("openai:"):  # its HTTP client belongs to this event loop
                await engine.aclose()

    start = time.perf_counter()
    labels = asyncio.run(run())
    elapsed = time.perf_counter() - start
    if getattr(engine, "loop", None) is not None:
        computed = engine.stats["prefill_tokens"] - computed_before
    elif hasattr(engine, "score_row_tokens"):
        computed = engine.score_row_tokens - rows_before
    else:
        computed = None
    return [lab.p_x for lab in labels], elapsed, computed


def count_plain_rows(engine) -> None:
    """Make the plain engine count the tokens of every scored row it computes."""
    engine.score_row_tokens = 0
    run = engine.run_score_batch

    def counted(batch):
        engine.score_row_tokens += sum(len(it.prompt_ids) + len(it.continuation_ids) for it in batch)
        return run(batch)

    engine.run_score_batch = counted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--max-prompt-tokens", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--vllm", action="store_true", help="add the vllm: engine (vLLM in-process)")
    ap.add_argument("--vllm-server", action="store_true", help="add openai: against vLLM's server on 127.0.0.1")
    ap.add_argument("--llama-server", action="store_true", help="add openai: against llama_cpp.server")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cai.engines import load_engine

    engines = {
        "before: plain path, one row per continuation": load_engine("smollm2", {"dtype": args.dtype, "continuous": False}),
        "after, no cache: one prefill per order": load_engine("smollm2", {"dtype": args.dtype, "prefix_cache_mb": 0}),
        "after: one prefill per order + prefix cache": load_engine("smollm2", {"dtype": args.dtype}),
    }
    dtype = engines["after: one prefill per order + prefix cache"].dtype
    peer_dtype = "bf16" if dtype == torch.bfloat16 else "fp32"
    startup: dict[str, float] = {}
    servers = []
    if args.vllm:
        started = time.perf_counter()
        engines["peer: vllm: in-process"] = load_engine("vllm:smollm2", {"dtype": peer_dtype, "kv_cache_gib": 2})
        startup["vllm: (import + LLM())"] = time.perf_counter() - started
    if args.vllm_server:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_sl_throughput import start_vllm_server

        started = time.perf_counter()
        proc, url = start_vllm_server({"bf16": "bfloat16", "fp32": "float32"}[peer_dtype])
        servers.append(proc.terminate)
        startup["vLLM server"] = time.perf_counter() - started
        engines["peer: openai: -> vLLM server"] = load_engine(f"openai:smollm2@{url}", {})
    if args.llama_server:
        sys.path.insert(0, str(ROOT))
        from tests.servers import LlamaServer

        started = time.perf_counter()
        server = LlamaServer().start()
        servers.append(server.kill)
        startup["llama.cpp server"] = time.perf_counter() - started
        engines["peer: openai: -> llama.cpp server (Q4_1)"] = load_engine(f"openai:smollm2@{server.base_url}", {})
    try:
        table(args, engines, startup)
    finally:
        for stop in servers:
            stop()


def table(args, engines: dict, startup: dict[str, float]) -> None:
    names = list(engines)
    count_plain_rows(engines[names[0]])
    pairs = load_pairs(args.pairs, args.max_prompt_tokens, engines[names[0]])
    label_all(engines[names[0]], pairs[:1])  # warm-up, every engine
    for name in names[1:]:
        label_all(engines[name], pairs[:1])
    results: dict[str, list[tuple[list[float], float, int]]] = {n: [] for n in names}
    started = time.perf_counter()
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            results[name].append(label_all(engines[name], pairs))
            p, s, c = results[name][-1]
            print(f"  repeat {r + 1}: {name}: {len(pairs)} labels in {s:.1f}s", file=sys.stderr, flush=True)
    reference = results[names[0]][0][0]
    dtype = engines[names[2]].dtype
    print(f"\nPairwise labels: {len(pairs)} hh-rlhf pairs (judge prompt <= {args.max_prompt_tokens} tokens), both "
          f"orders, SmolLM2-135M ({dtype}) as judge, all labels in flight at once, torch threads="
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, {args.repeats} repeats interleaved, medians; "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print("| engine | labels | seconds | labels/s | vs before | prompt tokens computed / label | max abs(p - p_before) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = [len(pairs) / s for _, s, _ in results[names[0]]]
    for name in names:
        rates = [len(pairs) / s for _, s, _ in results[name]]
        worst = max(abs(a - b) for p, _, _ in results[name] for a, b in zip(p, reference))
        print(f"| {name} | {len(pairs)} | {statistics.median(s for _, s, _ in results[name]):.1f} | "
              f"{statistics.median(rates):.2f} | {statistics.median(a / b for a, b in zip(rates, base)):.2f}x | "
              f"{tokens_per_label(results[name], len(pairs))} | {worst:.1e} |")
    if startup:
        print("\nstart-up, not in any row (s): " + ", ".join(f"{k} {v:.1f}" for k, v in startup.items()))


def tokens_per_label(results: list[tuple[list[float], float, int | None]], labels: int) -> str:
    counts = [c for _, _, c in results if c is not None]
    return f"{statistics.median(counts) / labels:.0f}" if counts else "n/a"


if __name__ == "__main__":
    sys.exit(main())
