"""SL-CAI generation throughput: cai's pipeline against the naive baselines, side by side.

One process, one model (the embedded SmolLM2-135M, same dtype everywhere, loaded once
before any timing), one workload: N shared red-team prompts (hh-rlhf first human turns),
R critique/revision rounds, fixed max new tokens, sampling at T=0.7. Each method does the
same chain of 1 + 2R generation steps per prompt; we count generated tokens (up to and
including EOS, never padding) and divide by wall time.

  (a) seed-style: a per-prompt loop calling a transformers text-generation pipeline,
      stage by stage (measured on the first --loop-prompts prompts: it is slow)
  (b) NeMo-style: stage-synchronous static batches (every prompt finishes a stage
      before any starts the next), left-padded model.generate
  (c0) cai: run_sl on the transformers engine's plain path (-E continuous=false:
      micro-batched model.generate, shared-prefix reuse within a batch), i.e. before
      issue 12
  (c) cai: run_sl on the transformers engine's decode loop (the default: continuous
      batching, per-row seeds, prefix KV cache across a chain's steps)
  (d) ceiling: the decode-loop engine on exactly the requests (c) made, all submitted
      at once (no chain dependencies, same token budget, prefix cache cleared first)
  (e) optional: run_sl through the openai: engine against a local llama.cpp server
      (--openai URL, or --llama-server to start llama_cpp.server on the embedded GGUF)
  (f) optional (--vllm): run_sl on the vllm: engine, vLLM in-process (needs vLLM: run
      this script with .venv-vllm/bin/python, `make test-vllm` builds it)
  (g) optional (--vllm-server): run_sl through the openai: engine against `vllm serve`
      on 127.0.0.1 (same dtype as the transformers engine)
  (h) optional (--hf-cb): transformers' own continuous batching (model.generate_batch,
      paged attention) on exactly the requests (c) made, all at once (compare with (d)), with a
      fixed paged cache (`paged_cache_cap`)
  Start-up (building each engine, starting each server) is reported apart, never timed in a row.

Every repeat runs each method once, in rotating order, so machine load falls on all of
them alike; the table gives medians over repeats (ratios are medians of each repeat's
own ratios). Each repeat starts with an empty prefix cache.

Usage: python benchmarks/bench_sl_throughput.py [--prompts 32] [--rounds 2] [--max-tokens 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-first500.jsonl"
LOADED: dict = {}  # engines built once, handed to run_sl through the "loaded:" spec


def load_prompts(n: int) -> list[str]:
    from cai.inputs.prompts import read_prompts

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


def run_cai(spec: str, prompts_file: Path, rounds: int, max_tokens: int, keep: list | None = None) -> tuple[int, float]:
    """run_sl end to end (timed by run_sl itself); `keep` receives the requests it made."""
    from cai.core.types import Request, SamplingParams
    from cai.runs.store import Store
    from cai.generate.sl import SLConfig, run_sl

    with tempfile.TemporaryDirectory() as out:
        result = run_sl(SLConfig.of(prompts=str(prompts_file), out=out, model=spec, rounds=rounds,
                                    max_tokens=max_tokens, temperature=0.7), show_progress=False)
        if keep is not None:
            store = Store(Path(out) / "store.sqlite")
            for (request,) in store.conn.execute("SELECT request FROM calls WHERE kind='generate'"):
                r = json.loads(request)
                params = {**r["params"], "stop": tuple(r["params"]["stop"])}
                keep.append(Request.of(r["messages"], SamplingParams(**params)))
            store.close()
    return result.summary["generated_tokens"], result.summary["elapsed_s"]


def run_ceiling(engine, requests: list) -> tuple[int, float]:
    engine.clear_prefix_cache()
    start = time.perf_counter()
    out = asyncio.run(engine.generate(requests))
    return sum(c[0].completion_tokens for c in out), time.perf_counter() - start


def paged_cache_cap():
    """A fixed paged cache for generate_batch (128 pages of 256 tokens, 2,048 tokens a step): left
    to itself it sizes the cache from free memory, and its process grew to 14.8 GB on the 24 GiB
    machine and was OOM-killed (issue 23)."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    return ContinuousBatchingConfig(num_blocks=128, max_batch_tokens=2048)


def run_hf_cb(engine, requests: list) -> tuple[int, float]:
    """(c)'s requests through transformers' generate_batch (one sampling config: T and max tokens of the first)."""
    from transformers import GenerationConfig

    ids = [engine.encode_prompt(r.messages) for r in requests]
    p = requests[0].params
    config = GenerationConfig(max_new_tokens=p.max_tokens, do_sample=p.temperature > 0, temperature=p.temperature,
                              top_k=0, eos_token_id=sorted(engine.eos_ids), pad_token_id=engine.tokenizer.pad_token_id)
    start = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate_batch(inputs=ids, generation_config=config, progress_bar=False,
                                         continuous_batching_config=paged_cache_cap())
    seconds = time.perf_counter() - start
    return sum(count_new(list(o.generated_tokens), engine.eos_ids) for o in out.values()), seconds


def start_vllm_server(dtype: str) -> tuple[object, str]:
    """`vllm serve` on the embedded model at 127.0.0.1 (CPU settings as tests/vllm uses them)."""
    import subprocess

    sys.path.insert(0, str(ROOT))
    from cai.engines.models import resolve_model_path
    from cai.engines.vllm_engine import cpu_list
    from tests.servers import free_port, wait_ready

    port = free_port()
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": cpu_list(sorted(os.sched_getaffinity(0))),
           **os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model",
                             resolve_model_path("smollm2"),
                             "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", dtype, "--enforce-eager", "--max-model-len", "4096",
                             "--no-enable-chunked-prefill"],  # README, vLLM: seeded requests crash it on CPU
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/v1/models", timeout=900, proc=proc)
    return proc, f"http://127.0.0.1:{port}/v1"


def register_loaded() -> None:
    from cai.engines.base import register_engine
    from cai.engines.transformers_engine import TransformersEngine

    register_engine("loaded", TransformersEngine, lambda rest, options: LOADED[rest])


def loop_cost(engine, convs: list[list[dict]], steps: int) -> tuple[float, float]:
    """(seconds per prompt token prefilled, seconds per token decoded) by the decode loop when
    `convs` join together after their shared start is cached, then decode `steps` steps."""
    from cai.core.types import SamplingParams
    from cai.engines.batching import WorkItem

    loop = engine.loop
    params = SamplingParams(max_tokens=steps + 1, temperature=0.7, seed=0)
    items = [WorkItem(prompt_ids=engine.encode_prompt(c), future=None, params=params, seq=i)  # type: ignore[arg-type]
             for i, c in enumerate(convs)]
    engine.clear_prefix_cache()
    loop.admit(items[:1])
    loop.step()  # the shared start, once
    before = dict(loop.stats)
    start = time.perf_counter()
    waiting = items[1:]
    while waiting:
        chosen = loop.admit(waiting)
        waiting = [it for it in waiting if it not in chosen]
        loop.step()
    prefill_s = time.perf_counter() - start
    prefilled = loop.stats["prefill_tokens"] - before["prefill_tokens"]
    decoded_before, start = loop.stats["decode_tokens"], time.perf_counter()
    for _ in range(steps):
        loop.step()
    decode_s = time.perf_counter() - start
    decoded = loop.stats["decode_tokens"] - decoded_before
    loop.drop()
    return prefill_s / prefilled, decode_s / max(1, decoded)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--loop-prompts", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto", help="auto: bf16 where the CPU has AVX512-BF16/AMX, else fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--skip", default="", help="comma-separated rows to leave out, e.g. a,b")
    ap.add_argument("--once", default="", help="comma-separated rows run in the first repeat only, e.g. b,e")
    ap.add_argument("--openai", default=None, help="base URL of a local OpenAI-compatible server for row (e)")
    ap.add_argument("--llama-server", action="store_true", help="start llama_cpp.server on the embedded GGUF for (e)")
    ap.add_argument("--json", default=None, help="also write every repeat's results here")
    ap.add_argument("--vllm", action="store_true", help="row (f): the vllm: engine in-process")
    ap.add_argument("--vllm-server", action="store_true", help="row (g): openai: against `vllm serve` on 127.0.0.1")
    ap.add_argument("--hf-cb", action="store_true", help="row (h): transformers' generate_batch on (c)'s requests")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cai.core.types import Request, SamplingParams
    from cai.engines import load_engine
    from cai.inputs.constitution import load_constitution
    from cai.generate.sl import load_few_shot

    prompts = load_prompts(args.prompts)
    constitution = load_constitution("default")
    few_shot = load_few_shot("default").prefix()
    ids = [f"b{i}" for i in range(len(prompts))]

    def principles_for(i: int) -> list:
        return constitution.sample_sl(args.rounds, 0, ids[i])

    options = {"max_batch_size": args.batch, "dtype": args.dtype}
    startup: dict[str, float] = {}
    started = time.perf_counter()
    LOADED["plain"] = load_engine("smollm2", {**options, "continuous": False})
    startup["transformers engine (plain)"] = time.perf_counter() - started
    started = time.perf_counter()
    LOADED["loop"] = load_engine("smollm2", options)
    startup["transformers engine (loop)"] = time.perf_counter() - started
    vdtype = "bf16" if LOADED["loop"].dtype == torch.bfloat16 else "fp32"
    if args.vllm:
        started = time.perf_counter()
        LOADED["vllm"] = load_engine("vllm:smollm2", {"dtype": vdtype, "kv_cache_gib": 2})
        startup["vllm: in-process (import + LLM())"] = time.perf_counter() - started
    register_loaded()
    plain, loop = LOADED["plain"], LOADED["loop"]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"id": ids[i], "prompt": p}) + "\n")
        prompts_file = Path(fh.name)
    server = None
    if args.llama_server:
        sys.path.insert(0, str(ROOT))
        from tests.servers import LlamaServer

        started = time.perf_counter()
        server = LlamaServer().start()
        startup["llama.cpp server"] = time.perf_counter() - started
        args.openai = server.base_url
    vllm_server = None
    if args.vllm_server:
        started = time.perf_counter()
        vllm_server, vllm_url = start_vllm_server({"bf16": "bfloat16", "fp32": "float32"}[vdtype])
        startup["vllm serve (until /v1/models answers)"] = time.perf_counter() - started

    # warm-up so no method pays first-call costs
    batched_generate(plain, [[{"role": "user", "content": "hi"}]] * 2, 8)
    asyncio.run(loop.generate([Request.of([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=4))]))

    made: list = []
    counters: list[dict] = []  # the decode loop's counters over each (c) run

    def run_c() -> tuple[int, float]:
        loop.clear_prefix_cache()
        made.clear()
        before = dict(loop.stats)
        result = run_cai("loaded:loop", prompts_file, args.rounds, args.max_tokens, keep=made)
        counters.append({k: loop.stats[k] - before.get(k, 0) for k in ("steps", "prefill_tokens",
                                                                         "prefix_tokens_reused", "decode_tokens")})
        return result

    methods = {
        "a": ("(a) per-prompt pipeline loop", lambda: run_pipeline_loop(
            plain, prompts[: args.loop_prompts], args.rounds, args.max_tokens, principles_for, few_shot)),
        "b": (f"(b) stage-synchronous batches of {args.batch}", lambda: run_stage_sync(
            plain, prompts, args.rounds, args.max_tokens, args.batch, principles_for, few_shot)),
        "c0": ("(c0) cai pipeline, plain path (before)", lambda: run_cai(
            "loaded:plain", prompts_file, args.rounds, args.max_tokens)),
        "c": ("(c) cai pipeline, decode loop (after)", run_c),
        "d": ("(d) engine ceiling: (c)'s requests, all at once", lambda: run_ceiling(loop, list(made))),
    }
    if args.openai:
        methods["e"] = ("(e) cai pipeline, openai: engine (llama.cpp server)", lambda: run_cai(
            f"openai:smollm2@{args.openai}", prompts_file, args.rounds, args.max_tokens))
    if args.vllm:
        methods["f"] = ("(f) cai pipeline, vllm: engine (vLLM in-process)", lambda: run_cai(
            "loaded:vllm", prompts_file, args.rounds, args.max_tokens))
    if args.vllm_server:
        methods["g"] = ("(g) cai pipeline, openai: engine (vLLM server)", lambda: run_cai(
            f"openai:smollm2@{vllm_url}", prompts_file, args.rounds, args.max_tokens))
    if args.hf_cb:
        methods["h"] = ("(h) transformers generate_batch: (c)'s requests at once", lambda: run_hf_cb(plain, list(made)))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    once = {s.strip() for s in args.once.split(",") if s.strip()}
    order = [k for k in methods if k not in skip]
    runs: dict[str, list[tuple[int, float]]] = {k: [] for k in order}
    started = time.perf_counter()
    try:
        for r in range(args.repeats):
            turn = [k for k in order[r % len(order):] + order[: r % len(order)] if r == 0 or k not in once]
            for replay in ("h", "d"):  # (d) and (h) replay this repeat's (c)
                if replay in turn and "c" in turn:
                    turn.remove(replay)
                    turn.insert(turn.index("c") + 1, replay)
            for key in turn:
                n, s = methods[key][1]()
                runs[key].append((n, s))
                print(f"  repeat {r + 1}: {methods[key][0]}: {n} tokens in {s:.1f}s", file=sys.stderr, flush=True)
        limits = loop_limits(loop, plain, prompts, few_shot, principles_for, args) if "c" in runs else None
    finally:
        if server:
            server.kill()
        if vllm_server is not None:
            vllm_server.terminate()
        prompts_file.unlink()

    rates = {k: [n / s for n, s in v] for k, v in runs.items()}
    print(f"\nSL-CAI workload: {len(prompts)} prompts, {args.rounds} rounds, max {args.max_tokens} new tokens, "
          f"T=0.7, SmolLM2-135M ({loop.dtype}), torch threads={torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, {args.repeats} repeats interleaved (rows {sorted(once) or 'none'} once), medians; "
          f"{time.perf_counter() - started:.0f} s in all\n")
    refs = [k for k in ("a", "b", "c0", "d") if k in rates]
    print("| method | generated tokens | seconds | tokens/s | " + " | ".join(f"vs ({k})" for k in refs) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(refs))
    for key in order:
        n = statistics.median(x for x, _ in runs[key])
        s = statistics.median(y for _, y in runs[key])
        cells = [f"{statistics.median(a / b for a, b in zip(rates[key], rates[ref])):.2f}x" for ref in refs]
        print(f"| {methods[key][0]} | {n:.0f} | {s:.1f} | {statistics.median(rates[key]):.1f} | " + " | ".join(cells) + " |")
    print("\nstart-up, not in any row (s): " + ", ".join(f"{k} {v:.1f}" for k, v in startup.items()))
    if counters:
        c = {k: statistics.median(x[k] for x in counters) for k in counters[0]}
        print(f"\n(c), per run (medians): {c['steps']:.0f} steps, {c['prefill_tokens']:.0f} prompt tokens computed and "
              f"{c['prefix_tokens_reused']:.0f} taken from the prefix cache "
              f"({c['prefix_tokens_reused'] / max(1, c['prefill_tokens'] + c['prefix_tokens_reused']):.0%} reused), "
              f"{c['decode_tokens']:.0f} decode steps x rows")
    if "a" in rates and "c" in rates:
        print(f"(c) vs (a): {statistics.median(c / a for c, a in zip(rates['c'], rates['a'])):.1f}x (target >= 10)")
    if "c" in rates and "d" in rates:
        print(f"(c) vs (d): {statistics.median(c / d for c, d in zip(rates['c'], rates['d'])):.2f} (target >= 0.95)")
    if limits and "a" in runs and counters:
        prefill_s, decode_s = limits
        n_c, _ = runs["c"][0]
        per_prompt_prefill = statistics.median(x["prefill_tokens"] for x in counters) / len(prompts)
        per_prompt_tokens = statistics.median(n for n, _ in runs["c"]) / len(prompts)
        floor = (per_prompt_prefill * prefill_s + per_prompt_tokens * decode_s) / per_prompt_tokens
        a_cost = statistics.median(s / n for n, s in runs["a"])
        print(f"\nLimits on this machine (decode loop, {len(prompts)} rows): prefill {1 / prefill_s:.0f} prompt "
              f"tokens/s, decode {decode_s * 1000:.1f} ms per token; (c) computes {per_prompt_prefill:.0f} prompt "
              f"tokens and decodes {per_prompt_tokens:.0f} tokens per prompt, so it cannot beat "
              f"{floor * 1000:.1f} ms per generated token; (a) took {a_cost * 1000:.1f} ms per generated token: "
              f"(c) vs (a) is at most {a_cost / floor:.1f}x with this workload")
    if args.json:
        Path(args.json).write_text(json.dumps({methods[k][0]: v for k, v in runs.items()}, indent=2))


def loop_limits(loop, plain, prompts, few_shot, principles_for, args) -> tuple[float, float]:
    """The decode loop's prefill and decode costs on critique-like prompts, as many rows as prompts."""
    convs = [few_shot + [{"role": "user", "content": p}, {"role": "assistant", "content": "Sure. " * 20},
                         {"role": "user", "content": principles_for(i)[0].critique}] for i, p in enumerate(prompts)]
    return loop_cost(loop, convs, steps=args.max_tokens)


if __name__ == "__main__":
    sys.exit(main())
