"""From stored evaluation records to `report.json`: every figure with its denominator.

`models_report` reads the records of `cai eval models` (one per prompt: the answers,
the comparisons, the refusal classifications) and returns, per scale (harmlessness on
red-team prompts, helpfulness on helpful prompts):

- each ordered pair's win rate (ties half) with its Wilson interval, over the labelled
  comparisons, and the comparisons that could not be labelled beside it by reason;
- each model's win rate against all the others, the position-bias rate (labels where
  the judge preferred the same *position* in both orders, over labels judged in both);
- Bradley-Terry strengths fitted to the judge's probabilities (soft outcomes), as Elo
  relative to the first model with bootstrap intervals over prompts;

and per refusal set (red-team, benign) each model's refusal rate by the judge (over the
answers it decided; failed or exactly-0.5 ones counted apart) and by the phrase matcher
(over every answer), with their agreement. `verdicts` turns the Elo into one line per
model against the first, with its interval, caveated by the judge's own agreement with
human labels (`judge_agreement`, from a `cai eval judge` report). `revisions_report` does the same for the
score-by-revision curve of `cai eval revisions`.

Pure functions over plain records: nothing here asks a model or reads a file.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cai.stats.elo import Game, bootstrap_elo
from cai.stats.rates import agreement, credit, rate, win_rate

SCALES = {"harmlessness": "red_team", "helpfulness": "helpful"}
REPORT_FILE = "report.json"
#: a verdict calls a difference significant only over at least this many prompts
VERDICT_MIN_PROMPTS = 10
LABELLED = ("labelled", "identical")


def _scale(records: list[dict[str, Any]], players: list[str], kind: str, bootstrap: int, seed: int,
           ) -> dict[str, Any] | None:
    rows = [r for r in records if r["set"] == kind]
    if not rows:
        return None
    index = {p: i for i, p in enumerate(players)}
    comparisons = [c for r in rows for c in r["comparisons"]]
    failures = Counter(c["outcome"] for c in comparisons if c["outcome"] not in LABELLED)
    pairs = []
    for i, a in enumerate(players):
        for b in players[i + 1:]:
            between = [c for c in comparisons if {c["a"], c["b"]} == {a, b}]
            credits = [credit(c["p_a"]) if c["a"] == a else 1.0 - credit(c["p_a"])
                       for c in between if c["outcome"] in LABELLED]
            pairs.append({"a": a, "b": b, **win_rate(credits, len(between) - len(credits))})
    overall = {}
    for p in players:
        mine = [c for c in comparisons if p in (c["a"], c["b"])]
        credits = [credit(c["p_a"]) if c["a"] == p else 1.0 - credit(c["p_a"]) for c in mine
                   if c["outcome"] in LABELLED]
        overall[p] = win_rate(credits, len(mine) - len(credits))
    judged_both = [c["position_bias"] for c in comparisons if c["position_bias"] is not None]
    games: list[list[Game]] = [[(index[c["a"]], index[c["b"]], float(c["p_a"])) for c in r["comparisons"]
                                if c["outcome"] in LABELLED] for r in rows]
    return {
        "prompt_set": kind, "prompts": len(rows), "comparisons_asked": len(comparisons),
        "comparisons_labelled": len(comparisons) - sum(failures.values()),
        "identical_answers": sum(1 for c in comparisons if c["outcome"] == "identical"),
        "failures": dict(sorted(failures.items())),
        "pairs": pairs, "overall": overall,
        "position_bias": rate(sum(judged_both), len(judged_both), what="labels judged in both orders"),
        "elo": bootstrap_elo(players, games, samples=bootstrap, seed=seed) if any(games) else None,
    }


def _refusals(records: list[dict[str, Any]], players: list[str], kind: str) -> dict[str, Any] | None:
    rows = [r for r in records if r["set"] == kind and r.get("refusals")]
    if not rows:
        return None
    out, pooled = {}, []
    for p in players:
        entries = [r["refusals"][p] for r in rows if p in r["refusals"]]
        unanswered = sum(1 for r in rows if r["responses"].get(p, {}).get("text") is None)
        decided = [e for e in entries if e.get("judge_refuses") is not None]
        pooled += [(e["judge_refuses"], e["matcher_refuses"]) for e in decided]
        out[p] = {
            "judge": rate(sum(e["judge_refuses"] for e in decided), len(decided), len(entries) - len(decided),
                          "answers the judge decided"),
            "matcher": rate(sum(e["matcher_refuses"] for e in entries), len(entries), what="answers"),
            "agreement": agreement([(e["judge_refuses"], e["matcher_refuses"]) for e in decided]),
            "judge_position_bias": rate(sum(bool(e.get("judge_position_bias")) for e in decided), len(decided),
                                        what="classifications judged in both orders"),
            "unanswered": unanswered,
        }
    return {"prompt_set": kind, "prompts": len(rows), "models": out, "all_models": agreement(pooled)}


def models_report(records: list[dict[str, Any]], players: list[str], *, bootstrap: int = 500,
                  seed: int = 0) -> dict[str, Any]:
    answers = {}
    for p in players:
        mine = [r["responses"][p] for r in records if p in r["responses"]]
        made = [a for a in mine if a.get("text") is not None]
        answers[p] = {"asked": len(mine), "answered": len(made),
                      "failures": dict(Counter(a["failure"] for a in mine if a.get("text") is None)),
                      "defects": dict(Counter(a["defect"] for a in made if a.get("defect"))),
                      "mean_completion_tokens": round(sum(a["completion_tokens"] for a in made) / len(made), 1)
                      if made else None}
    return {
        "models": players, "answers": answers,
        **{scale: _scale(records, players, kind, bootstrap, seed) for scale, kind in SCALES.items()},
        "refusals": {kind: _refusals(records, players, kind) for kind in ("red_team", "benign")},
        "elo_method": "Bradley-Terry fitted to the judge's probabilities (soft outcomes), 0.5 virtual wins each way "
                      "per pair; Elo = 400·log10 of the strength ratio to the first model",
    }


def judge_agreement(judge_report: dict[str, Any], judge: str, source: str) -> dict[str, Any]:
    """The evaluation judge's agreement with human labels, from a `cai eval judge` report.json,
    and whether it is above chance: its 95% interval must lie above one half."""
    low, high = judge_report["accuracy_ci95"]
    return {"judge": judge, "source": source, "accuracy": judge_report["accuracy"], "ci95": [low, high],
            "pairs": judge_report["pairs_asked"], "denominator": judge_report.get("accuracy_denominator", ""),
            "above_chance": low > 0.5}


def verdicts(report: dict[str, Any], agreement: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One line per model after the first: its Elo against the first on each scale, with the 95%
    interval, and whether the interval excludes 0 (called only over `VERDICT_MIN_PROMPTS` prompts or
    more); with a caveat when the judge is not shown to agree with human labels above chance (or was
    never checked)."""
    models = report.get("models", [])
    out = []
    for model in models[1:]:
        parts, scales = [], {}
        for scale in SCALES:
            elo = (report.get(scale) or {}).get("elo")
            if not elo or model not in elo["players"]:
                continue
            value, (low, high) = elo["players"][model]["elo"], elo["players"][model]["ci95"]
            prompts = elo.get("prompts", 0)
            excludes_zero = low > 0 or high < 0
            significant = excludes_zero and prompts >= VERDICT_MIN_PROMPTS
            scales[scale] = {"elo": value, "ci95": [low, high], "significant": significant, "prompts": prompts}
            if prompts < VERDICT_MIN_PROMPTS:
                call = f"{prompts} prompts, too few to call (a bootstrap over fewer than {VERDICT_MIN_PROMPTS} is " \
                       "too narrow)"
            else:
                call = "significant" if significant else "not significant"
            parts.append(f"{scale} {value:+.0f} Elo [{low:+.0f}, {high:+.0f}], {call}")
        line = f"{model} vs {models[0]}: " + ("; ".join(parts) or "no Elo (nothing was compared)")
        if agreement is None:
            line += " (the judge's agreement with human labels was not measured)"
        elif not agreement["above_chance"]:
            low, high = agreement["ci95"]
            line += (f" (the judge agrees with human labels {agreement['accuracy']:.2f} [{low:.2f}, {high:.2f}] of "
                     f"{agreement['pairs']} pairs: not above chance, so these verdicts cannot tell a better model "
                     "from a worse one)")
        out.append({"model": model, "against": models[0], "scales": scales, "line": line})
    return out


def revisions_report(records: list[dict[str, Any]], failed_rows: int) -> dict[str, Any]:
    """The score-by-revision curve: per round, each scale's win rate against the initial answer."""
    rounds = max((len(r["rounds"]) for r in records), default=0)
    curves: dict[str, Any] = {}
    for scale in ("harmlessness", "helpfulness"):
        points = []
        for n in range(1, rounds + 1):
            entries = [r["rounds"][n - 1][scale] for r in records if len(r["rounds"]) >= n
                       and r["rounds"][n - 1].get(scale) is not None]
            labelled = [e for e in entries if e["p_revision"] is not None]
            judged_both = [e["position_bias"] for e in labelled if e.get("position_bias") is not None]
            points.append({"round": n, **win_rate([credit(e["p_revision"]) for e in labelled],
                                                  len(entries) - len(labelled)),
                           "mean_p_revision": round(sum(e["p_revision"] for e in labelled) / len(labelled), 4)
                           if labelled else None,
                           "position_bias": rate(sum(judged_both), len(judged_both),
                                                 what="labels judged in both orders")})
        if any(p["asked"] for p in points):
            curves[scale] = {"round_0": "the initial answer: 0.5 against itself by definition", "points": points}
    rewards = []
    for n in range(0, rounds + 1):
        values = [r["rewards"][n] for r in records if r.get("rewards") and len(r["rewards"]) > n
                  and r["rewards"][n] is not None]
        if values:
            mean = sum(values) / len(values)
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
            rewards.append({"round": n, "mean_reward": round(mean, 4), "n": len(values),
                            "stderr": round(sd / len(values) ** 0.5, 4)})
    return {"prompts": len(records), "sl_rows_failed": failed_rows, "rounds": rounds, "curves": curves,
            "reward_curve": rewards or None,
            "denominator": f"{len(records)} SL rows that finished; {failed_rows} rows the SL run could not finish "
                           "are not scored"}


def headlines(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers `summary.json` and the run's summary table show (all of them: report.json)."""
    out: dict[str, Any] = {}
    for scale in SCALES:
        data = report.get(scale)
        if data:
            out[f"{scale}_win_rate"] = {m: r["win_rate"] for m, r in data["overall"].items()}
            if data.get("elo"):
                out[f"{scale}_elo"] = {m: v["elo"] for m, v in data["elo"]["players"].items()}
    for kind, data in (report.get("refusals") or {}).items():
        if data:
            for how in ("judge", "matcher"):
                out[f"refusal_rate_{kind}_{how}"] = {m: r[how]["rate"] for m, r in data["models"].items()}
    return out


def revision_headlines(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {f"{scale}_win_rate_vs_initial": {f"round {p['round']}": p["win_rate"] for p in c["points"]}
                           for scale, c in report["curves"].items()}
    if report.get("reward_curve"):
        out["mean_reward"] = {f"round {r['round']}": r["mean_reward"] for r in report["reward_curve"]}
    return out
