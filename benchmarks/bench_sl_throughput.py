"""SL-CAI generation throughput: cai's pipeline against the naive baselines, side by side.

One process, one model (the embedded SmolLM2-135M, same dtype everywhere), one workload:
N shared red-team prompts (hh-rlhf first human turns), R critique/revision rounds, fixed
max new tokens, sampling at T=0.7. Each method does the same chain of 1 + 2R generation
steps per prompt; we count generated tokens (up to and including EOS, never padding)
and divide by wall time.

  (a) seed-style: a per-prompt loop calling a transformers text-generation pipeline,
      stage by stage (measured on the first --loop-prompts prompts: it is slow)
  (b) NeMo-style: stage-synchronous static batches of 32 (every prompt finishes a stage
      before any starts the next)
  (c) cai: run_sl on the transformers engine (rows concurrent, shared micro-batcher)
  (d) ceiling: the engine's own batched generate on exactly the requests (c) made, all
      submitted at once (perfect batching, no chain dependencies, same token budget)
  (e) optional (--openai URL): run_sl through the openai: engine against a local server

Usage: python benchmarks/bench_sl_throughput.py [--prompts 32] [--rounds 2] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-first500.jsonl"


def load_prompts(n: int) -> list[str]:
    from cai.data import read_prompts

    return [r.prompt for r in read_prompts(HH, hh_mode="first", limit=n)]


def chain_messages(prompt: str, history: list[dict], step: int, principles: list, few_shot: list) -> list[dict]:
    """The same message shapes cai's SL chain builds (answer, then critique/revision)."""
    if step == 0:
        return [{"role": "user", "content": prompt}]
    p = principles[(step - 1) // 2]
    if step % 2 == 1:
        return few_shot + history + [{"role": "user", "content": p.critique}]
    return few_shot + history + [{"role": "user", "content": p.revision}]


def advance(history: list[dict], step: int, text: str, prompt: str, principles: list) -> list[dict]:
    if step == 0:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    p = principles[(step - 1) // 2]
    ask = p.critique if step % 2 == 1 else p.revision
    return history + [{"role": "user", "content": ask}, {"role": "assistant", "content": text}]


def count_new(tokens: list[int], eos: set[int]) -> int:
    for i, t in enumerate(tokens):
        if t in eos:
            return i + 1
    return len(tokens)


def batched_generate(engine, convs: list[list[dict]], max_tokens: int) -> tuple[list[str], int]:
    tok, model = engine.tokenizer, engine.model
    ids = [engine.encode_prompt(c) for c in convs]
    input_ids, mask = engine._left_pad(ids)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=True,
                             temperature=0.7, top_k=0, pad_token_id=tok.pad_token_id, eos_token_id=sorted(engine.eos_ids))
    texts, produced = [], 0
    for row in out[:, input_ids.shape[1]:].tolist():
        n = count_new(row, engine.eos_ids)
        produced += n
        texts.append(tok.decode(row[:n], skip_special_tokens=True).strip())
    return texts, produced


def run_stage_sync(engine, prompts, rounds, max_tokens, batch, principles_for, few_shot) -> tuple[int, float]:
    histories = [[] for _ in prompts]
    produced, start = 0, time.perf_counter()
    for step in range(1 + 2 * rounds):
        convs = [chain_messages(p, h, step, principles_for(i), few_shot) for i, (p, h) in enumerate(zip(prompts, histories))]
        texts = []
        for lo in range(0, len(convs), batch):
            t, n = batched_generate(engine, convs[lo:lo + batch], max_tokens)
            texts += t
            produced += n
        histories = [advance(h, step, t, p, principles_for(i)) for i, (h, t, p) in enumerate(zip(histories, texts, prompts))]
    return produced, time.perf_counter() - start


def run_pipeline_loop(engine, prompts, rounds, max_tokens, principles_for, few_shot) -> tuple[int, float]:
    from transformers import pipeline

    pipe = pipeline("text-generation", model=engine.model, tokenizer=engine.tokenizer)
    produced, start = 0, time.perf_counter()
    for i, prompt in enumerate(prompts):
        history: list[dict] = []
        for step in range(1 + 2 * rounds):
            conv = chain_messages(prompt, history, step, principles_for(i), few_shot)
            out = pipe(conv, max_new_tokens=max_tokens, do_sample=True, temperature=0.7, top_k=0,
                       pad_token_id=engine.tokenizer.pad_token_id, return_full_text=False)
            text = out[0]["generated_text"]
            produced += len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
            history = advance(history, step, text.strip(), prompt, principles_for(i))
    return produced, time.perf_counter() - start


def run_cai(spec: str, prompts_file: Path, rounds: int, max_tokens: int, options: dict,
            keep: list | None = None) -> tuple[int, float]:
    """run_sl end to end; `keep` receives the requests it made (from its store)."""
    from cai.sl import SLConfig, run_sl
    from cai.store import Store
    from cai.types import Request, SamplingParams

    with tempfile.TemporaryDirectory() as out:
        result = run_sl(SLConfig.of(prompts=str(prompts_file), out=out, model=spec, rounds=rounds, max_tokens=max_tokens,
                                 temperature=0.7, engine_options=options), show_progress=False)
        if keep is not None:
            store = Store(Path(out) / "store.sqlite")
            for (request,) in store.conn.execute("SELECT request FROM calls WHERE kind='generate'"):
                r = json.loads(request)
                params = {**r["params"], "stop": tuple(r["params"]["stop"])}
                keep.append(Request.of(r["messages"], SamplingParams(**params)))
            store.close()
    return result.summary["generated_tokens"], result.summary["elapsed_s"]


def run_ceiling(engine, requests: list) -> tuple[int, float]:
    start = time.perf_counter()
    out = asyncio.run(engine.generate(requests))
    return sum(c[0].completion_tokens for c in out), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--loop-prompts", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--openai", default=None, help="base URL of a local OpenAI-compatible server for row (e)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from cai.constitution import load_constitution
    from cai.engines import load_engine
    from cai.sl import load_few_shot

    prompts = load_prompts(args.prompts)
    constitution = load_constitution("default")
    few_shot = load_few_shot("default").prefix()
    ids = [f"b{i}" for i in range(len(prompts))]

    def principles_for(i: int) -> list:
        return constitution.sample_sl(args.rounds, 0, ids[i])

    engine = load_engine("smollm2", {"max_batch_size": args.batch})
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"id": ids[i], "prompt": p}) + "\n")
        prompts_file = Path(fh.name)

    # warm-up so no method pays first-call costs
    batched_generate(engine, [[{"role": "user", "content": "hi"}]] * 2, 8)
    rows = {}

    def record(name: str, result: tuple[int, float]) -> None:
        rows[name] = result
        print(f"  {name}: {result[0]} tokens in {result[1]:.1f}s", file=sys.stderr, flush=True)

    record("(a) per-prompt pipeline loop", run_pipeline_loop(
        engine, prompts[: args.loop_prompts], args.rounds, args.max_tokens, principles_for, few_shot))
    record(f"(b) stage-synchronous batches of {args.batch}", run_stage_sync(
        engine, prompts, args.rounds, args.max_tokens, args.batch, principles_for, few_shot))
    made: list = []
    record("(c) cai pipeline, transformers engine", run_cai(
        "smollm2", prompts_file, args.rounds, args.max_tokens, {"max_batch_size": args.batch}, keep=made))
    record("(d) engine ceiling: same requests, all at once", run_ceiling(engine, made))
    if args.openai:
        record("(e) cai pipeline, openai: engine", run_cai(f"openai:smollm2@{args.openai}", prompts_file,
                                                            args.rounds, args.max_tokens, {}))

    rates = {name: n / s for name, (n, s) in rows.items()}
    a = rates["(a) per-prompt pipeline loop"]
    b = rates[f"(b) stage-synchronous batches of {args.batch}"]
    c = rates["(c) cai pipeline, transformers engine"]
    d = rates["(d) engine ceiling: same requests, all at once"]
    print(f"\nSL-CAI workload: {len(prompts)} prompts, {args.rounds} rounds, max {args.max_tokens} new tokens, "
          f"T=0.7, SmolLM2-135M ({engine.dtype}), torch threads={torch.get_num_threads()}\n")
    print(f"| method | generated tokens | seconds | tokens/s | vs (a) | vs (b) | vs (d) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (n, s) in rows.items():
        r = rates[name]
        print(f"| {name} | {n} | {s:.1f} | {r:.1f} | {r / a:.2f}x | {r / b:.2f}x | {r / d:.2f}x |")
    print(f"\ncai vs ceiling {c / d:.2f} (target >= 0.95), vs loop {c / a:.1f}x (target >= 15), "
          f"vs stage-sync {c / b:.2f}x (target >= 1.3)")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {"tokens": n, "seconds": s} for k, (n, s) in rows.items()}, indent=2))
    prompts_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
