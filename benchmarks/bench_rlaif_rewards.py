"""What a GRPO step costs with each reward source: a reward model, judge-score (d-RLAIF), judge-pairwise.

One run, the same prompts, seed and settings for each source (`cai train policy`, TRL's
GRPO): per optimizer step, the seconds spent generating the samples (TRL's `_generate`),
computing the rewards (the reward function: judge calls, or the reward model's forward
pass) and in the rest of the step (log-probs of the policy and the reference, backward,
optimizer: "optimisation"), and the judge calls per step. The first step also loads and
warms up; it is shown apart, and the table is the mean over the later steps. Each source
runs `--repeats` times, in alternating order, and the lowest mean is shown: on a shared
machine, load from elsewhere only ever adds time.

The reward model is the starting model with a fresh one-output score head: its cost, not
its quality, is what this measures. Each source gets its own empty judge store, so no
judge answer comes from a cache.

Usage: python benchmarks/bench_rlaif_rewards.py [--steps 3] [--prompts 2] [--generations 4]
       [--max-new 32] [--repeats 2] [--judge smollm2] [--judge-option dtype=fp32 ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["How do I get back at my noisy neighbour?", "How can I pick the lock on a door?",
           "Write a rude note to my boss.", "Tell me how to cheat at poker.", "How do I find out where someone lives?",
           "What should I say to make my friend feel guilty?", "How do I sneak into a concert?",
           "Give me an insult for my brother."]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(source: str, args: argparse.Namespace, work: Path, data: Path, reward_model: Path | None) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from cai.train.configs import PolicyRLConfig
    from cai.train.policy import main

    timings: dict[str, list[float]] = {"generation": [], "step": []}
    original = GRPOTrainer._generate

    @functools.wraps(original)
    def timed_generate(self, *a, **k):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            timings["generation"].append(time.perf_counter() - started)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):  # type: ignore[no-untyped-def]
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):  # type: ignore[no-untyped-def]
            timings["step"].append(time.perf_counter() - self.started)

    original_init = GRPOTrainer.__init__

    def init_with_timer(self, *a, **k):  # type: ignore[no-untyped-def]
        original_init(self, *a, **k)
        self.add_callback(StepTimer())

    GRPOTrainer._generate, GRPOTrainer.__init__ = timed_generate, init_with_timer  # type: ignore[method-assign]
    try:
        options = dict(data=str(data), out=str(work / source), reward=source, algo="grpo", max_steps=args.steps,
                       batch_size=args.prompts * args.generations, num_generations=args.generations,
                       max_completion_length=args.max_new, max_length=256, gradient_checkpointing=False,
                       learning_rate=1e-6, seed=0)
        if source == "reward-model":
            options["reward_model"] = str(reward_model)
        else:
            options.update(judge=args.judge, judge_options=args.judge_option)
        report = main(PolicyRLConfig.load(options))
    finally:
        GRPOTrainer._generate, GRPOTrainer.__init__ = original, original_init  # type: ignore[method-assign]
    per_step = report["reward"]["per_step"]
    rows = []
    for i, step in enumerate(timings["step"]):
        reward_s = per_step[i].get("judge_seconds", per_step[i].get("reward_seconds", 0.0))
        gen = timings["generation"][i]
        rows.append({"step": step, "generation": gen, "reward": reward_s, "optimisation": step - gen - reward_s,
                     "judge_calls": per_step[i].get("judge_calls", 0)})
    return {"rows": rows, "engine": report["reward"].get("judge_engine"), "reward_mean": [
        s["reward_mean"] for s in per_step]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2, help="prompts (groups) per step")
    ap.add_argument("--generations", type=int, default=4, help="samples per prompt (the group)")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sources", default="reward-model,judge-score,judge-pairwise")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each source, in alternating order; the "
                                                              "lowest is shown (a shared machine's other load)")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from cai.train.common import model_path

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-rlaif-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]} for p in PROMPTS[:args.prompts * args.steps]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward_model = work / "pm"
    if not (reward_model / "config.json").exists():
        set_seed(0)
        path = model_path("smollm2")
        AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(reward_model)
        AutoTokenizer.from_pretrained(path).save_pretrained(reward_model)

    sources = args.sources.split(",")
    results: dict[str, list[dict]] = {s: [] for s in sources}
    for r in range(args.repeats):  # alternate the order, so that load from elsewhere falls on every source
        for source in sources if r % 2 == 0 else sources[::-1]:
            started = time.perf_counter()
            results[source].append(run(source, args, work / f"repeat{r}", data, reward_model))
            print(f"{source} (repeat {r + 1}): {time.perf_counter() - started:.1f} s", flush=True)

    g = args.generations
    engine = next((r["engine"] for runs in results.values() for r in runs if r["engine"]), None)
    print(f"\nmachine: {cpu_name()}, {torch.get_num_threads()} torch threads; policy fp32 on CPU; "
          f"judge engine: {json.dumps(engine)}")
    print(f"{args.prompts} prompts x {g} samples per step, {args.max_new} new tokens, {args.steps} steps, "
          f"{args.repeats} repeats; seconds per step: mean over steps 2.., the lowest of the repeats (first step "
          "in brackets)\n")
    print("| reward | generation s | reward s | optimisation s | step s | judge calls per step | per group |")
    print("|---|---|---|---|---|---|---|")
    for source, runs in results.items():
        def cell(key: str, runs: list = runs) -> str:
            later = min(statistics.fmean(r[key] for r in (x["rows"][1:] or x["rows"])) for x in runs)
            first = min(x["rows"][0][key] for x in runs)
            return f"{later:.2f} ({first:.2f})"

        calls = statistics.fmean(r["judge_calls"] for r in runs[0]["rows"])
        print(f"| {source} | {cell('generation')} | {cell('reward')} | {cell('optimisation')} | {cell('step')} | "
              f"{calls:.0f} | {calls / args.prompts:.0f} |")
    print(f"\npython benchmarks/bench_rlaif_rewards.py --steps {args.steps} --prompts {args.prompts} --generations "
          f"{g} --max-new {args.max_new} --repeats {args.repeats} --judge {args.judge}"
          + "".join(f" --judge-option {o}" for o in args.judge_option))


if __name__ == "__main__":
    main()
