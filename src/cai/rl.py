"""RL-CAI / RLAIF data: K candidates per prompt, AI preference labels, preference rows.

Per prompt: the policy samples K candidates (n samples at one temperature, or one per
temperature of a sweep, as NeMo-Aligner did with 0.01/0.51/1.01/1.51). Then:
- pairwise / cot labellers compare pairs: `all` pairs gives one preference row per
  labelled pair; `best-worst` labels every pair (a round), ranks candidates by mean win
  probability and keeps the best against the worst;
- rank-all asks for the most and least aligned of all K in one shot.

A pair is dropped, with a stable reason code and a message in failures.jsonl, when the
two texts are the same (`identical_candidates`), when the label is a tie (`tie`), when
its margin |2p - 1| is below `min_margin` (`below_min_margin`), or when the judge's
label failed (`nonfinite_score`, `too_few_judges`, ...): one pair's failure never loses
the row's other pairs. Every label asked for is logged in the row's `label_attempts`
with its outcome, so the summary's rates count every attempt, not the survivors.
Rows go out in TRL's conversational preference format with provenance columns.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from cai.data import PromptRow
from cai.engines.base import Engine
from cai.errors import ConfigError
from cai.jobs import JobConfig
from cai.judges import EnsembleLabeler, LabelFailure, PairLabel, PairwiseLabeler, RankAllLabeler, RankLabel
from cai.parsing import find_defect
from cai.pipeline import ChainFailure
from cai.types import Request, SamplingParams, assistant, derive_seed

STAGE = "rl"
LABELERS = ("pairwise", "cot", "rank-all")


@dataclass
class RLSettings:
    candidates: int = 2
    temperature: float = 0.8
    temperatures: list[float] | None = None  # a sweep; overrides candidates/temperature
    max_tokens: int = 256
    pairs: str = "all"  # or "best-worst"
    min_margin: float = 0.0
    seed: int = 0


def preference_row(row: PromptRow, chosen: str, rejected: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference format plus provenance columns."""
    return {"prompt": row.messages, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)],
            "id": row.id, **provenance}


def _pair_provenance(label: PairLabel, labeler: str, i: int, j: int, x_wins: bool) -> dict[str, Any]:
    """Provenance with probabilities re-expressed for the chosen reply.

    `label_margin` = |2p - 1| is named so that TRL's RewardTrainer, which silently uses
    any column called `margin` in its loss, does not pick it up.
    """
    def for_chosen(p: float | None) -> float | None:
        return None if p is None else (p if x_wins else 1.0 - p)

    p = for_chosen(label.p_x)
    assert p is not None
    return {"labeler": labeler, "judges": label.judges, "principle_ids": label.principle_ids,
            "p_chosen": p, "p_chosen_order_ab": for_chosen(label.p_x_by_order[0]),
            "p_chosen_order_ba": for_chosen(label.p_x_by_order[1]), "label_margin": abs(2 * p - 1),
            "position_bias": label.position_bias, "judge_agreement": label.agreement,
            "judges_answered": label.judges_answered, "judge_failures": label.judge_failures,
            "judge_raw": label.raw, "chosen_index": i if x_wins else j, "rejected_index": j if x_wins else i,
            "judge_generated_tokens": label.generated_tokens}


def _attempt(pair: tuple[int, int], outcome: str, label: PairLabel | None = None,
             failure: LabelFailure | None = None) -> dict[str, Any]:
    """One label the judge was asked for, whatever became of it (for the summary's rates)."""
    if label is not None:
        return {"candidates": list(pair), "outcome": outcome, "p_x": label.p_x, "position_bias": label.position_bias,
                "margin": abs(2 * label.p_x - 1), "judge_generated_tokens": label.generated_tokens}
    assert failure is not None
    return {"candidates": list(pair), "outcome": outcome, "p_x": None, "position_bias": None, "margin": None,
            "judge_generated_tokens": failure.generated_tokens}


class RLChain:
    def __init__(self, policy: Engine, labeler: PairwiseLabeler | RankAllLabeler | EnsembleLabeler,
                 settings: RLSettings) -> None:
        self.policy, self.labeler, self.settings = policy, labeler, settings

    async def candidates(self, row: PromptRow) -> list[dict[str, Any]]:
        s = self.settings
        if s.temperatures:
            requests = [Request.of(row.messages, SamplingParams(max_tokens=s.max_tokens, temperature=t,
                                                                seed=derive_seed(s.seed, row.id, "cand", t)))
                        for t in s.temperatures]
            outs = [c[0] for c in await self.policy.generate(requests)]
            temps = list(s.temperatures)
        else:
            params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, n=s.candidates,
                                    seed=derive_seed(s.seed, row.id, "cand"))
            outs = (await self.policy.generate([Request.of(row.messages, params)]))[0]
            temps = [s.temperature] * len(outs)
        return [{"index": i, "text": c.text, "temperature": t, "max_tokens": s.max_tokens,
                 "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}
                for i, (c, t) in enumerate(zip(outs, temps, strict=True))]

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        cands = await self.candidates(row)
        record: dict[str, Any] = {"id": row.id, "source": row.source, "messages": row.messages,
                                  "candidates": cands, "preferences": [], "dropped": [], "labels": 0,
                                  "label_attempts": []}
        usable = []
        for c in cands:
            defect = find_defect(c["text"])
            if defect:
                record["dropped"].append(self._dropped(row, "candidate", f"candidate_{defect.code}",
                                                       f"candidate {c['index']}: {defect.message}"))
            else:
                usable.append(c)
        if len({c["text"] for c in usable}) < 2:
            raise ChainFailure("candidates", "fewer than 2 distinct usable candidates", record,
                               code="too_few_candidates")
        if self.labeler.name == "rank-all":  # a RankAllLabeler, or an ensemble of them
            await self._rank_all(row, usable, record)
        else:
            await self._pairwise(row, usable, record)
        return record

    async def _rank_all(self, row: PromptRow, usable: list[dict[str, Any]], record: dict[str, Any]) -> None:
        try:
            label: RankLabel = await self.labeler.rank(row.messages, [c["text"] for c in usable],  # type: ignore[union-attr]
                                                       (row.id,))
        except LabelFailure as exc:
            record["judge_raw"] = exc.raw
            record["judge_generated_tokens"] = exc.generated_tokens
            record["judge_failures"] = exc.judge_failures
            record["label_attempts"].append(_attempt((-1, -1), exc.code, failure=exc))
            raise ChainFailure("label", exc.reason, record, code=exc.code) from exc
        record["labels"] = 1
        chosen, rejected = usable[label.chosen], usable[label.rejected]
        if chosen["text"] == rejected["text"]:  # two identical candidates among K >= 3
            record["label_attempts"].append({"candidates": [chosen["index"], rejected["index"]],
                                             "outcome": "identical_candidates", "p_x": 1.0, "position_bias": None,
                                             "margin": 1.0, "judge_generated_tokens": label.generated_tokens})
            record["dropped"].append(self._dropped(row, "label", "identical_candidates",
                                                   "rank-all chose two candidates with the same text"))
            return
        record["label_attempts"].append({"candidates": [chosen["index"], rejected["index"]], "outcome": "kept",
                                         "p_x": 1.0, "position_bias": None, "margin": 1.0,
                                         "judge_generated_tokens": label.generated_tokens})
        record["preferences"].append(preference_row(row, chosen["text"], rejected["text"], {
            "labeler": "rank-all", "judges": label.judges, "principle_ids": [], "p_chosen": 1.0,
            "p_chosen_order_ab": None, "p_chosen_order_ba": None, "label_margin": 1.0, "position_bias": None,
            "judge_agreement": label.agreement, "judges_answered": label.judges_answered,
            "judge_failures": label.judge_failures, "judge_raw": label.raw, "chosen_index": chosen["index"],
            "rejected_index": rejected["index"], "judge_generated_tokens": label.generated_tokens,
            "judge_attempts": label.attempts, "shown_order": [usable[i]["index"] for i in label.shown_order]}))

    async def _pairwise(self, row: PromptRow, usable: list[dict[str, Any]], record: dict[str, Any]) -> None:
        pairs = []
        for a, b in itertools.combinations(usable, 2):
            if a["text"] != b["text"]:
                pairs.append((a, b))
            else:
                record["dropped"].append(self._dropped(row, "pair", "identical_candidates",
                                                       f"candidates {a['index']} and {b['index']} are identical"))
        results = await asyncio.gather(*[self.labeler.compare(row.messages, a["text"], b["text"],  # type: ignore[union-attr]
                                                              (row.id, a["index"], b["index"])) for a, b in pairs],
                                       return_exceptions=True)
        rows = []
        for (a, b), result in zip(pairs, results, strict=True):
            ids = (a["index"], b["index"])
            if isinstance(result, LabelFailure):  # this pair has no label; the row's other pairs still count
                record["label_attempts"].append(_attempt(ids, result.code, failure=result))
                record["dropped"].append(self._dropped(row, "label", result.code,
                                                       f"candidates {ids[0]} and {ids[1]}: {result.reason}",
                                                       raw=result.raw, judge_failures=result.judge_failures))
                continue
            if isinstance(result, BaseException):
                raise result
            x_wins = result.p_x >= 0.5
            prov = _pair_provenance(result, self.labeler.name, a["index"], b["index"], x_wins)
            chosen, rejected = (a, b) if x_wins else (b, a)
            rows.append((preference_row(row, chosen["text"], rejected["text"], prov), a, b, result))
        record["labels"] = len(rows)
        if not rows:  # every pair's label failed: the row fails, with the first pair's code
            first = record["label_attempts"][0]["outcome"]
            raise ChainFailure("label", f"no pair of this prompt got a label ({len(pairs)} asked; first: {first})",
                               record, code=first)
        emitted = rows
        if self.settings.pairs == "best-worst" and len(usable) > 2:
            emitted = [self._best_vs_worst(usable, rows)]
        for pref, a, b, label in rows:
            ids = (a["index"], b["index"])
            if not any(pref is e[0] for e in emitted):
                record["label_attempts"].append(_attempt(ids, "not_best_worst", label))
            elif label.p_x == 0.5:
                record["label_attempts"].append(_attempt(ids, "tie", label))
                record["dropped"].append(self._dropped(row, "pair", "tie", "tie: the judge has no preference", pref))
            elif pref["label_margin"] < self.settings.min_margin:
                record["label_attempts"].append(_attempt(ids, "below_min_margin", label))
                record["dropped"].append(self._dropped(
                    row, "pair", "below_min_margin",
                    f"margin {pref['label_margin']:.3f} below --min-margin {self.settings.min_margin}", pref))
            else:
                record["label_attempts"].append(_attempt(ids, "kept", label))
                record["preferences"].append(pref)

    @staticmethod
    def _best_vs_worst(usable: list[dict[str, Any]], rows: list[tuple]) -> tuple:
        wins: dict[int, list[float]] = {c["index"]: [] for c in usable}
        for _, a, b, label in rows:
            wins[a["index"]].append(label.p_x)
            wins[b["index"]].append(1 - label.p_x)
        mean = {i: sum(v) / len(v) for i, v in wins.items() if v}
        best = max(mean, key=mean.__getitem__)
        # the worst candidate among those the best was compared with (identical texts never
        # were, and when every mean is equal the best must not be paired with itself)
        with_best = [r for r in rows if best in (r[1]["index"], r[2]["index"])]
        return min(with_best, key=lambda r: mean[r[2]["index"] if r[1]["index"] == best else r[1]["index"]])

    @staticmethod
    def _dropped(row: PromptRow, stage: str, code: str, reason: str, pair: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
        return {"id": row.id, "source": row.source, "stage": stage, "code": code, "reason": reason, "pair": pair,
                **extra}


@dataclass
class RLConfig(JobConfig):
    """Everything `cai rl` needs; the CLI fills it, `run_rl` runs it."""

    policy: str = "smollm2"
    judges: list[str] = field(default_factory=lambda: ["smollm2"])
    labeler: str = "pairwise"
    constitution: str = "default"
    judge_principles: str | None = None  # a second file whose judge questions join the constitution
    cot_few_shot: str = "default"  # CoT examples: default, none, our YAML or Anthropic's CoT file (cai.few_shot)
    candidates: int = 2
    temperature: float = 0.8
    temperatures: list[float] | None = None
    max_tokens: int = 256
    pairs: str = "all"
    both_orders: bool = True
    principles_per_label: int = 1
    clamp: tuple[float, float] = (0.4, 0.6)
    combine: str = "mean"
    min_judges: int = 1
    #: pairs with |2p - 1| below this are dropped (code below_min_margin): a near coin-flip
    #: label would train a raw TRL user's model as a full preference. 0 keeps everything.
    min_margin: float = 0.1
    judge_max_tokens: int = 192
    rank_retries: int = 2
    seed: int = 0


def make_labeler(config: RLConfig, judges: list[Engine], constitution: Any) -> Any:
    if config.labeler not in LABELERS:
        raise ConfigError(f"--labeler must be one of {', '.join(LABELERS)}; got {config.labeler!r}")
    if config.cot_few_shot != "default" and config.labeler != "cot":
        raise ConfigError(f"--cot-few-shot is used only by --labeler cot, not {config.labeler}")
    from cai.few_shot import load_cot_few_shot

    cot_few_shot = load_cot_few_shot(config.cot_few_shot if config.labeler == "cot" else "none")
    made: list[Any] = []
    for engine in judges:
        if config.labeler == "rank-all":
            made.append(RankAllLabeler(engine, constitution, seed=config.seed, max_retries=config.rank_retries,
                                       max_tokens=config.judge_max_tokens))
        else:
            made.append(PairwiseLabeler(engine, constitution, principles_per_label=config.principles_per_label,
                                        both_orders=config.both_orders, seed=config.seed,
                                        cot=config.labeler == "cot", clamp=config.clamp,
                                        cot_max_tokens=config.judge_max_tokens, cot_few_shot=cot_few_shot))
    if len(made) == 1 and config.min_judges != 1:
        raise ConfigError(f"--min-judges {config.min_judges} needs an ensemble: give that many --judge options")
    return made[0] if len(made) == 1 else EnsembleLabeler(made, combine=config.combine, min_judges=config.min_judges)


NEAR_COIN_FLIP = 0.1  # kept pairs whose margin |2p - 1| is below this are reported


def _margin(pref: dict[str, Any]) -> float:
    """A kept pair's |2p - 1| (rows stored before the rename call it `margin`)."""
    return pref["label_margin"] if "label_margin" in pref else pref["margin"]


def label_summary(run: Any, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Label counts and rates, each over an explicit denominator.

    Rates are computed over *every label the judge was asked for* (`label_attempts` of
    every row, finished or failed), not over the preference rows that survived: ties,
    `--min-margin` drops and best-worst's unused pairs are exactly the labels a biased
    judge produces, so leaving them out would flatter it.
    """
    ok = list(run.store.results(STAGE, "ok"))
    failed_rows = list(run.store.results(STAGE, "failed"))
    attempts = [a for r in ok for a in r.get("label_attempts", [])]
    attempts += [a for f in failed_rows for a in f.get("trace", {}).get("label_attempts", [])]
    labelled = [a for a in attempts if a["p_x"] is not None]
    outcomes: dict[str, int] = {}
    for a in attempts:
        outcomes[a["outcome"]] = outcomes.get(a["outcome"], 0) + 1
    prefs = [p for r in ok for p in r["preferences"]]
    dropped = [d.get("code", "unknown") for r in ok for d in r["dropped"]]
    bins = {f"{lo / 10:.1f}-{(lo + 1) / 10:.1f}": 0 for lo in range(5, 10)}
    for p in prefs:
        lo = min(9, max(5, int(p["p_chosen"] * 10)))
        bins[f"{lo / 10:.1f}-{(lo + 1) / 10:.1f}"] += 1
    both_orders = [a["position_bias"] for a in labelled if a["position_bias"] is not None]
    tokens = sum(a["judge_generated_tokens"] for a in attempts)

    def rate(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    return {
        "labels_attempted": len(attempts),
        "labels": len(labelled),
        "label_coverage": rate(len(labelled), len(attempts)),
        "label_outcomes": dict(sorted(outcomes.items())),
        "preference_pairs": len(prefs),
        "pairs_dropped": {code: dropped.count(code) for code in sorted(set(dropped))},
        "p_chosen_histogram_kept_pairs": bins,
        "mean_margin_kept_pairs": round(sum(_margin(p) for p in prefs) / len(prefs), 4) if prefs else None,
        f"kept_pairs_margin_below_{NEAR_COIN_FLIP}": sum(_margin(p) < NEAR_COIN_FLIP for p in prefs),
        "position_bias_rate": rate(sum(both_orders), len(both_orders)),
        "position_bias_denominator": f"{len(both_orders)} labels judged in both orders, of {len(attempts)} attempted",
        "label_failures": len(attempts) - len(labelled),
        "judge_generated_tokens_per_attempt": round(tokens / len(attempts), 2) if attempts else None,
    }


def run_rl(config: RLConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.constitution import load_constitution
    from cai.jobs import run_job

    if config.pairs not in ("all", "best-worst"):
        raise ConfigError("--pairs must be 'all' or 'best-worst'")
    if not config.temperatures and config.candidates < 2:
        raise ConfigError("--candidates must be at least 2")
    if not config.judges:
        raise ConfigError("give at least one --judge")
    constitution = load_constitution(config.constitution, judge_principles=config.judge_principles)
    settings = RLSettings(candidates=config.candidates, temperature=config.temperature,
                          temperatures=config.temperatures, max_tokens=config.max_tokens, pairs=config.pairs,
                          min_margin=config.min_margin, seed=config.seed)
    inputs = config.inputs()

    def make_chain(engines: Any, run: Any) -> RLChain:
        policy = engines.open(config.policy, run, config.engine_options)
        judges = [engines.open(spec, run, config.engine_options) for spec in config.judges]
        return RLChain(policy, make_labeler(config, judges, constitution), settings)

    def write_outputs(run: Any) -> dict[str, int]:
        def cand_rows() -> Any:
            for r in run.store.results(STAGE):
                if r.get("candidates"):
                    yield {"id": r["id"], "prompt": r["messages"], "candidates": r["candidates"]}
        if not run.store.count_results(STAGE):
            return {}
        ok = run.store.results(STAGE, "ok")
        return {"candidates.jsonl": run.write_jsonl("candidates.jsonl", cand_rows()),
                "preferences.jsonl": run.write_jsonl("preferences.jsonl", (p for r in ok for p in r["preferences"]))}

    return run_job(
        command="rl", stage=STAGE, out=config.out, inputs=inputs, config=config,
        make_chain=make_chain, write_outputs=write_outputs, concurrency=config.concurrency,
        manifest_parts={"constitution": {"name": constitution.name, "source": constitution.source,
                                         "hash": constitution.hash}},
        show_progress=show_progress, console=console, extra_summary=label_summary,
    )
