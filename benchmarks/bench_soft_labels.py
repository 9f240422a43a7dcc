"""Soft vs hard labels for `cai train reward`: same data, same seed, different models.

Makes N synthetic preference pairs whose judge probability p_chosen runs from 0.55 to
0.95, and whose chosen reply differs from the rejected one by a number of courteous
words that grows with p (so a model can tell the pairs apart). Trains the embedded
model as a reward model on them with `--soft-labels soft` and with `--soft-labels hard`
(same steps, learning rate and seed), then scores every pair with both models and prints:

- the mean and max |parameter difference| between the two models;
- calibration on the training pairs: mean σ(Δr) against the mean p, the mean
  |σ(Δr) − p| over all N pairs, and the correlation of Δr with p.

Synthetic data, training-set figures: this shows what each loss asks of the reward gap,
not how well either model generalises.

Usage: python benchmarks/bench_soft_labels.py [--pairs 16] [--steps 24] [--lr 3e-5]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COURTEOUS = ["please", "kindly", "thank", "you", "gladly", "sincerely", "warmly", "respectfully", "truly"]


def make_pairs(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        k = 1 + i * (len(COURTEOUS) - 1) // max(1, n - 1)  # 1..9 courteous words
        p = round(0.55 + 0.4 * (k - 1) / (len(COURTEOUS) - 1), 3)  # 0.55..0.95, rising with k
        answer = f"Here is what I can tell you about topic {i}."
        rows.append({"prompt": [{"role": "user", "content": f"Tell me about topic {i}."}],
                     "chosen": [{"role": "assistant", "content": " ".join(COURTEOUS[:k]).capitalize() + ". " + answer}],
                     "rejected": [{"role": "assistant", "content": answer}], "p_chosen": p})
    return rows


def reward_gaps(model_dir: Path, rows: list[dict[str, Any]]) -> list[float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    gaps = []
    with torch.no_grad():
        for row in rows:
            scores = []
            for reply in (row["chosen"], row["rejected"]):
                ids = tok.apply_chat_template(row["prompt"] + reply, return_tensors="pt", return_dict=True)
                scores.append(model(**ids).logits[0, 0].item())
            gaps.append(scores[0] - scores[1])
    return gaps


def correlation(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx, sy = math.sqrt(sum((x - mx) ** 2 for x in xs)), math.sqrt(sum((y - my) ** 2 for y in ys))
    return cov / (sx * sy) if sx and sy else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification

    from cai.train.reward import RewardWrapperConfig, main as train_reward

    work = Path(tempfile.mkdtemp())
    rows = make_pairs(args.pairs)
    data = work / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ps = [r["p_chosen"] for r in rows]
    results, weights = {}, {}
    for mode in ("soft", "hard"):
        out = work / mode
        start = time.perf_counter()
        config = RewardWrapperConfig(data=str(data), out=str(out), soft_labels=mode, max_steps=args.steps,
                                     batch_size=args.batch_size, learning_rate=args.lr, max_length=128,
                                     logging_steps=max(1, args.steps // 4))
        report = train_reward(config)
        seconds = time.perf_counter() - start
        gaps = reward_gaps(out, rows)
        probs = [1 / (1 + math.exp(-g)) for g in gaps]
        results[mode] = dict(seconds=seconds, loss=report["final_loss"], mean_sigma=sum(probs) / len(probs),
                             calib=sum(abs(q - p) for q, p in zip(probs, ps)) / len(ps), corr=correlation(gaps, ps),
                             mean_gap=sum(gaps) / len(gaps))
        weights[mode] = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
        print(f"  {mode}: {args.steps} steps in {seconds:.1f}s", file=sys.stderr, flush=True)
    diffs = [(weights["soft"][k] - weights["hard"][k]).abs() for k in weights["soft"]]
    mean_diff = (sum(d.sum().item() for d in diffs) / sum(d.numel() for d in diffs))
    max_diff = max(d.max().item() for d in diffs)

    print(f"\nReward model, soft vs hard labels: {args.pairs} synthetic pairs, p_chosen {min(ps)}..{max(ps)} "
          f"(mean {sum(ps) / len(ps):.3f}), {args.steps} steps, batch {args.batch_size}, lr {args.lr}, seed 0, "
          f"SmolLM2-135M, torch {torch.__version__}\n")
    print(f"mean |parameter difference| soft vs hard: {mean_diff:.3e} (max {max_diff:.3e}, over "
          f"{sum(d.numel() for d in diffs)} parameters)\n")
    mean_p = sum(ps) / len(ps)
    print(f"| labels | final train loss | mean Δr | mean σ(Δr) (mean p = {mean_p:.3f}) "
          f"| mean \\|σ(Δr) − p\\| (over {len(ps)} pairs) | corr(Δr, p) |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['loss']:.4f} | {r['mean_gap']:.3f} | {r['mean_sigma']:.3f} | {r['calib']:.3f} "
              f"| {r['corr']:.3f} |")
    floor = -sum(p * math.log(p) + (1 - p) * math.log(1 - p) for p in ps) / len(ps)
    print(f"\nThe soft loss cannot go below the labels' mean entropy, {floor:.4f}; the hard loss goes to 0.")


if __name__ == "__main__":
    main()
