"""Per-principle figures: which principles of a constitution do the work, each with its denominator.

Two kinds of input, two tables:

- `sampled_table`: labels that each sampled one principle (or M) from the constitution, as
  `cai rl` and `cai eval judge` ask them. A `LabelAttempt` names the principles it was
  asked under, what became of it (`kept`, `tie`, `below_min_margin`, a failure code ...),
  its probability and its position-bias flag. Per principle: labels attempted and
  labelled, kept (Wilson 95% over attempted), the mean margin |2p-1| over the labelled
  (normal 95% interval), the position-bias rate (Wilson, over labels judged in both
  orders) and, where the probability is P(the human's choice) (`eval judge`), agreement
  with human labels over every label attempted (a failure or tie counts half, as
  `cai eval judge` counts them). A label asked under M principles counts for each of them.
- `alone_table`: every pair labelled under each principle alone (`--per-principle`), the
  audit of Feedback Forensics and ICAI. A principle *votes* on a pair when its margin
  |2p-1| reaches `vote_margin`; relevance = votes / pairs asked; accuracy = votes for the
  human's choice / votes; **strength = relevance x 2(accuracy - 0.5)**, which is the mean
  over pairs of +1 (a vote with the human), -1 (against) and 0 (no vote, or a failed
  label), with a seeded bootstrap 95% interval over pairs. Agreement with the human
  labels (ties and failures half) and the correlation of principles' probabilities over
  the pairs both labelled come with it.

What stands out (`flags`): a principle that never moves a label (no kept label; alone: no
vote), one whose agreement with the human labels is below chance (`below_chance`;
`below_chance_ci` when its whole 95% interval is), and one whose probabilities duplicate
another's (Pearson r above `duplicate_r`, over at least 3 pairs both labelled).

`revision_table` is `cai eval revisions` by principle: the win rate of the revisions made
under each SL principle against the initial answer. `display_rows` renders any of them (and
`cai redteam`'s coverage per principle) as strings for a terminal or the report. Pure: plain records in, plain dicts out.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cai.stats.rates import credit, wilson_interval, win_rate

VOTE_MARGIN = 0.1
DUPLICATE_R = 0.9
BOOTSTRAP = 1000
UNKNOWN = "(unknown)"  # a failed label whose principles were not recorded


@dataclass(frozen=True)
class LabelAttempt:
    """One label a judge was asked for under `principle_ids`: what became of it and its figures."""

    principle_ids: tuple[str, ...]
    outcome: str  # "kept", or why not: "tie", "below_min_margin", a failure code ...
    p: float | None  # None: the label failed
    position_bias: bool | None = None


def _r4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ci(lo_hi: tuple[float, float] | None) -> list[float] | None:
    return None if lo_hi is None else [round(lo_hi[0], 4), round(lo_hi[1], 4)]


def proportion(part: float, whole: int) -> dict[str, Any]:
    """A share with its Wilson 95% interval and both counts (None when there is nothing to divide)."""
    return {"rate": _r4(part / whole) if whole else None,
            "ci95": _ci(wilson_interval(part, whole)) if whole else None, "count": part, "of": whole}


def mean_interval(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """The mean with a normal-approximation 95% interval, kept inside `bounds` (none below 2 values)."""
    n = len(values)
    if not n:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": _r4(mean), "ci95": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return {"mean": _r4(mean), "ci95": [round(max(bounds[0], mean - half), 4), round(min(bounds[1], mean + half), 4)],
            "n": n}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r, or None when either side does not vary (or fewer than 2 points)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def bootstrap_mean(values: Sequence[float], *, samples: int = BOOTSTRAP, seed: int = 0) -> list[float] | None:
    """Percentile 95% interval of the mean, resampling the values with replacement (seeded)."""
    n = len(values)
    if n == 0 or samples <= 0:
        return None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(samples))
    lo, hi = means[int(0.025 * (samples - 1))], means[int(math.ceil(0.975 * (samples - 1)))]
    return [round(lo, 4), round(hi, 4)]


# ---- labels that sampled their principles -----------------------------------------------------
def sampled_table(attempts: Iterable[LabelAttempt], *, principle_ids: Sequence[str] = (), human: bool = False,
                  vote_margin: float = VOTE_MARGIN) -> dict[str, Any]:
    """Per principle: attempted, labelled, kept, mean margin, position bias (and, with `human`, agreement
    with the human labels, `p` being P(the human's choice)). `principle_ids` lists principles that
    should appear even with no attempt (they were never sampled: that is worth seeing too). A principle
    never moves a label when none of its labels was kept (with `human`: none reached `vote_margin`)."""
    by: dict[str, list[LabelAttempt]] = {pid: [] for pid in principle_ids}
    total = 0
    for a in attempts:
        total += 1
        for pid in a.principle_ids or (UNKNOWN,):
            by.setdefault(pid, []).append(a)
    principles = {}
    for pid, mine in by.items():
        labelled = [a for a in mine if a.p is not None]
        both = [a.position_bias for a in labelled if a.position_bias is not None]
        kept = sum(1 for a in mine if a.outcome == "kept")
        row: dict[str, Any] = {
            "attempted": len(mine), "labelled": len(labelled),
            "outcomes": dict(sorted(Counter(a.outcome for a in mine).items())),
            **({} if human else {"kept": proportion(kept, len(mine))}),
            "mean_margin": mean_interval([abs(2 * a.p - 1) for a in labelled if a.p is not None]),
            "position_bias": proportion(sum(both), len(both)),
        }
        if human:
            credits = [credit(a.p) for a in mine]
            row["agreement"] = proportion(sum(0.5 if c is None else c for c in credits), len(mine))
        moved = sum(1 for a in labelled if a.p is not None and abs(2 * a.p - 1) >= vote_margin) if human else kept
        row["flags"] = _flags(row, moved=moved)
        principles[pid] = row
    return {"principles": principles, "labels_attempted": total,
            "denominator": f"each principle's labels of the {total} attempted (a label asked under several "
                           "principles counts for each); " + ("" if human else "kept: over attempted; ")
                           + "mean margin: over labelled; position "
                           "bias: over labels judged in both orders" + ("; agreement with the human labels: over "
                                                                         "attempted, ties and failures half" if human
                                                                         else "")}


def _flags(row: dict[str, Any], *, moved: int | None) -> list[str]:
    flags = []
    if row["attempted"] == 0:
        flags.append("never_sampled")
    elif moved is not None and moved == 0:
        flags.append("never_moves_a_label")
    agreement = row.get("agreement") or row.get("accuracy")
    if agreement and agreement["rate"] is not None and agreement["rate"] < 0.5:
        flags.append("below_chance_ci" if agreement["ci95"] and agreement["ci95"][1] < 0.5 else "below_chance")
    return flags


# ---- every pair under each principle alone ------------------------------------------------------
def alone_table(pairs: Sequence[Mapping[str, Mapping[str, Any]]], principle_ids: Sequence[str], *,
                vote_margin: float = VOTE_MARGIN, duplicate_r: float = DUPLICATE_R, bootstrap: int = BOOTSTRAP,
                seed: int = 0) -> dict[str, Any]:
    """`pairs[i][pid]` = {"p": P(human's choice) or None, "position_bias": bool|None} for each principle
    asked about pair i. Relevance, accuracy and strength (Feedback Forensics), agreement, correlations."""
    principles: dict[str, Any] = {}
    series: dict[str, dict[int, float]] = {}
    for pid in principle_ids:
        asked = [(i, pair[pid]) for i, pair in enumerate(pairs) if pid in pair]
        n = len(asked)
        labelled = [(i, x) for i, x in asked if x.get("p") is not None]
        series[pid] = {i: float(x["p"]) for i, x in labelled}
        scores = []
        for _, x in asked:
            p = x.get("p")
            votes = p is not None and abs(2 * p - 1) >= vote_margin
            scores.append(0.0 if not votes else (1.0 if p > 0.5 else -1.0))
        votes = sum(1 for s in scores if s != 0)
        agree = sum(1 for s in scores if s > 0)
        relevance = votes / n if n else None
        accuracy = agree / votes if votes else None
        strength = relevance * 2 * (accuracy - 0.5) if relevance is not None and accuracy is not None else (
            0.0 if n else None)
        both = [x["position_bias"] for _, x in labelled if x.get("position_bias") is not None]
        credits = [credit(x.get("p")) for _, x in asked]
        row = {
            "asked": n, "labelled": len(labelled), "votes": votes,
            "relevance": proportion(votes, n),
            "accuracy": proportion(agree, votes),
            "strength": {"value": _r4(strength), "ci95": bootstrap_mean(scores, samples=bootstrap,
                                                                       seed=seed + _stable(pid)),
                         "n": n},
            "agreement": proportion(sum(0.5 if c is None else c for c in credits), n),
            "mean_margin": mean_interval([abs(2 * x["p"] - 1) for _, x in labelled]),
            "position_bias": proportion(sum(both), len(both)),
        }
        flags = []
        if n and votes == 0:
            flags.append("never_moves_a_label")
        flags += [f for f in _flags({"attempted": n, "accuracy": row["accuracy"]}, moved=None)]
        row["flags"] = flags
        principles[pid] = row
    for pid, row in principles.items():
        best = None
        for other in principle_ids:
            if other == pid:
                continue
            common = sorted(set(series[pid]) & set(series[other]))
            if len(common) < 3:
                continue
            r = pearson([series[pid][i] for i in common], [series[other][i] for i in common])
            if r is not None and (best is None or r > best["r"]):
                best = {"principle": other, "r": round(r, 4), "pairs": len(common)}
        row["most_correlated"] = best
        if best and best["r"] > duplicate_r:
            row["flags"].append(f"duplicates:{best['principle']}")
    return {"principles": principles, "pairs": len(pairs), "vote_margin": vote_margin, "duplicate_r": duplicate_r,
            "bootstrap": bootstrap,
            "denominator": f"each principle alone on the {len(pairs)} pairs: it votes when |2p-1| >= {vote_margin}; "
                           "relevance = votes / pairs asked; accuracy = votes for the human's choice / votes; "
                           "strength = relevance x 2(accuracy - 0.5), 95% bootstrap interval over pairs; "
                           "agreement: over pairs asked, ties and failures half"}


def _stable(text: str) -> int:
    """A small seed offset from a principle id that does not change between Python runs."""
    return sum((i + 1) * ord(c) for i, c in enumerate(text)) % 100_003


# ---- revisions by the principle that asked for them ---------------------------------------------
def revision_table(rounds: Iterable[tuple[str, str, float | None]]) -> dict[str, Any]:
    """(principle id, scale, P(revision beats the initial answer) or None) per scored revision -> per
    principle and scale, the win rate (ties half) with its Wilson interval and the failed labels beside it."""
    by: dict[str, dict[str, list[float | None]]] = {}
    for pid, scale, p in rounds:
        by.setdefault(pid or UNKNOWN, {}).setdefault(scale, []).append(p)
    principles = {}
    for pid, scales in sorted(by.items()):
        row: dict[str, Any] = {}
        for scale, ps in scales.items():
            credits = [c for c in (credit(p) for p in ps) if c is not None]
            row[scale] = win_rate(credits, failures=len(ps) - len(credits))
        win = [r["win_rate"] for r in row.values() if r["win_rate"] is not None]
        row["flags"] = ["revisions_lose"] if win and max(win) < 0.5 else []
        principles[pid] = row
    return {"principles": principles,
            "denominator": "revisions made under each principle, each judged against the initial answer; win rate "
                           "over the labelled ones, ties half; failed labels beside it"}


# ---- display -------------------------------------------------------------------------------------
def _share(x: dict[str, Any] | None) -> str:
    if not x or x.get("rate") is None:
        return f"— (0 of {x['of']})" if x else "—"
    ci = x.get("ci95")
    count = f"{x['count']:g}" if isinstance(x["count"], float) else str(x["count"])
    return f"{x['rate']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] ({count} of {x['of']})" if ci else f"{x['rate']:.2f}"


def _mean(x: dict[str, Any]) -> str:
    if x.get("mean") is None:
        return "— (0)"
    ci = x.get("ci95")
    return f"{x['mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n {x['n']})" if ci else f"{x['mean']:.3f} (n {x['n']})"


def display_rows(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of text) for any of the tables above; a row per principle, flags last."""
    rows = table.get("principles") or {}
    if not rows:
        return [], []
    first = next(iter(rows.values()))
    if "requests" in first:  # red-team coverage
        return ["principle", "requests", "samples", "kept"], [
            [pid, str(r["requests"]), str(r["generated"]), _share(r["kept"])] for pid, r in rows.items()]
    if "strength" in first:  # alone
        headers = ["principle", "asked", "relevance", "accuracy", "strength [95% bootstrap]", "agreement",
                   "mean margin", "position bias", "most correlated", "flags"]
        out = []
        for pid, r in rows.items():
            s = r["strength"]
            strength = "—" if s["value"] is None else (f"{s['value']:+.3f}" + (
                f" [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]" if s["ci95"] else ""))
            corr = r.get("most_correlated")
            out.append([pid, str(r["asked"]), _share(r["relevance"]), _share(r["accuracy"]), strength,
                        _share(r["agreement"]), _mean(r["mean_margin"]), _share(r["position_bias"]),
                        f"{corr['principle']} r={corr['r']:.2f} (n {corr['pairs']})" if corr else "—",
                        ", ".join(r["flags"]) or "—"])
        return headers, out
    if "attempted" in first:  # sampled
        kept, human = "kept" in first, "agreement" in first
        headers = ["principle", "attempted", "labelled"] + (["kept"] if kept else []) + [
            "mean margin", "position bias"] + (["agreement with humans"] if human else []) + ["flags"]
        out = []
        for pid, r in rows.items():
            out.append([pid, str(r["attempted"]), str(r["labelled"])] + ([_share(r["kept"])] if kept else [])
                       + [_mean(r["mean_margin"]), _share(r["position_bias"])]
                       + ([_share(r["agreement"])] if human else []) + [", ".join(r["flags"]) or "—"])
        return headers, out
    scales = [k for k in first if k != "flags"]
    headers = ["principle"] + [f"{s} win rate vs initial" for s in scales] + ["flags"]
    out = []
    for pid, r in rows.items():
        cells = []
        for s in scales:
            w = r.get(s)
            if not w or w["win_rate"] is None:
                cells.append("—")
            else:
                ci = w["ci95"]
                cells.append(f"{w['win_rate']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] ({w['labelled']} labelled of "
                             f"{w['asked']})")
        out.append([pid] + cells + [", ".join(r["flags"]) or "—"])
    return headers, out
