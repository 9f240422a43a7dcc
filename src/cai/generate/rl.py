"""RL-CAI / RLAIF data: K candidates per prompt, AI preference labels, preference rows.

Per prompt: the policy samples K candidates (n samples at one temperature, or one per
temperature of a sweep, as NeMo-Aligner did with 0.01/0.51/1.01/1.51). A candidate
with a defect (empty, degenerate) or the same text as an earlier one is dropped with its
code. The labeller (`cai.label.registry`) labels the rest: pairwise / cot compare every pair,
rank-all names the most and least aligned of all K in one shot. With `all`, each label
gives a preference row; `best-worst` (K > 2) ranks candidates by mean win probability
and keeps the best against the worst.

A label is dropped, with a stable reason code and a message in failures.jsonl, when it
is a tie (`tie`), when
its margin |2p - 1| is below `min_margin` (`below_min_margin`), or when the judge's
label failed (`nonfinite_score`, `too_few_judges`, ...): one pair's failure never loses
the row's other pairs. Every label asked for is logged in the row's `label_attempts`
with its outcome, so the summary's rates count every attempt, not the survivors.
Rows go out in TRL's conversational preference format with provenance columns.
The summary's `per_principle` table splits the same counts by the principle each label
was asked under (`cai.stats.principles.sampled_table`), so an author sees which principles
never move a label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cai.core.options import Options, at_least, float_list, in_unit_interval, option
from cai.core.types import Request, SamplingParams, assistant, derive_seed
from cai.engines.base import Engine
from cai.inputs.constitution import ConstitutionOptions
from cai.inputs.prompts import InputOptions, PromptRow
from cai.label.base import Judgement, Labeler
from cai.label.registry import LabelerOptions, make_labeler
from cai.runs.job import RunOptions
from cai.runs.rows import ChainFailure
from cai.stats.principles import LabelAttempt, sampled_table
from cai.text.parsing import find_defect

STAGE = "rl"


@dataclass
class CandidateOptions(Options):
    """How the policy writes the K candidates, and which labelled pairs become rows."""

    policy: str = option("smollm2", help="Model spec that writes the candidates.")
    candidates: int = option(2, help="K candidates per prompt, sampled at --temperature.")
    temperature: float = option(0.8, help="Sampling temperature of the candidates.")
    temperatures: list[float] | None = option(None, parse=float_list, cli_type=str, metavar="T1,T2,...",
                                              help="A temperature sweep instead, one candidate each, e.g. "
                                                   "0.01,0.51,1.01,1.51 (NeMo).")
    max_tokens: int = option(256, help="Max new tokens per candidate.")
    pairs: str = option("all", choices=("all", "best-worst"),
                        help="For K>2: 'all' labelled pairs, or 'best-worst' after a round of all pairs.")
    min_margin: float = option(0.1, help="Drop pairs with |2p-1| below this (kept in failures.jsonl with code "
                                         "below_min_margin): near coin flips are not preferences, and a raw TRL "
                                         "user would train on them as certain. 0 keeps every labelled pair.")

    def check(self) -> None:
        if not self.temperatures:
            at_least("--candidates", self.candidates, 2)
        at_least("--max-tokens", self.max_tokens, 1)
        in_unit_interval("--min-margin", self.min_margin)


@dataclass
class RLConfig(Options):
    """Everything `cai rl` needs; the CLI and `--config` fill it, `run_rl` runs it."""

    inputs: InputOptions = field(default_factory=InputOptions)
    run: RunOptions = field(default_factory=RunOptions)
    constitution: ConstitutionOptions = field(default_factory=ConstitutionOptions)
    sampling: CandidateOptions = field(default_factory=CandidateOptions)
    labeling: LabelerOptions = field(default_factory=LabelerOptions)


def preference_row(row: PromptRow, chosen: str, rejected: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference format plus provenance columns."""
    return {"prompt": row.messages, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)],
            "id": row.id, **provenance}


def _attempt(judgement: Judgement, outcome: str) -> dict[str, Any]:
    """One label the judge was asked for, whatever became of it (for the summary's rates)."""
    label = judgement.label
    if label is not None:
        return {"candidates": [judgement.x, judgement.y], "outcome": outcome, "p_x": label.p_x,
                "position_bias": label.position_bias, "label_margin": abs(2 * label.p_x - 1),
                "judge_generated_tokens": label.generated_tokens, "principle_ids": list(label.principle_ids)}
    assert judgement.failure is not None
    return {"candidates": [judgement.x, judgement.y], "outcome": outcome, "p_x": None, "position_bias": None,
            "label_margin": None, "judge_generated_tokens": judgement.failure.generated_tokens,
            "principle_ids": list(judgement.failure.principle_ids)}


class RLChain:
    def __init__(self, policy: Engine, labeler: Labeler, settings: CandidateOptions, seed: int = 0) -> None:
        self.policy, self.labeler, self.settings, self.seed = policy, labeler, settings, seed

    async def candidates(self, row: PromptRow) -> list[dict[str, Any]]:
        s = self.settings
        if s.temperatures:
            requests = [Request.of(row.messages, SamplingParams(max_tokens=s.max_tokens, temperature=t,
                                                                seed=derive_seed(self.seed, row.id, "cand", t)))
                        for t in s.temperatures]
            outs = [c[0] for c in await self.policy.generate(requests)]
            temps = list(s.temperatures)
        else:
            params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, n=s.candidates,
                                    seed=derive_seed(self.seed, row.id, "cand"))
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
        usable = self._usable(row, cands, record)
        judgements = await self.labeler.label(row.messages, [(c["index"], c["text"]) for c in usable], (row.id,))
        texts = {c["index"]: c["text"] for c in usable}
        labelled = []
        for j in judgements:
            if j.failure is not None:  # this label failed; the row's other labels still count
                record["label_attempts"].append(_attempt(j, j.failure.code))
                record["dropped"].append(self._dropped(row, "label", j.failure.code,
                                                       f"candidates {j.x} and {j.y}: {j.failure.reason}",
                                                       raw=j.failure.raw, judge_failures=j.failure.judge_failures))
            else:
                labelled.append(j)
        record["labels"] = len(labelled)
        if not labelled:  # every label failed: the row fails, with the first one's code and its raw answer
            first = judgements[0].failure
            assert first is not None
            record["judge_raw"], record["judge_failures"] = first.raw, first.judge_failures
            raise ChainFailure("label", f"no pair of this prompt got a label ({len(judgements)} asked; first: "
                                        f"{first.reason})", record, code=first.code)
        emitted = labelled
        if self.settings.pairs == "best-worst" and len(usable) > 2:
            emitted = [self._best_vs_worst(labelled)]
        for j in labelled:
            assert j.label is not None
            x_wins = j.label.p_x >= 0.5
            pref = preference_row(row, texts[j.x if x_wins else j.y], texts[j.y if x_wins else j.x],
                                  self.labeler.provenance(j, x_wins))
            if not any(j is e for e in emitted):
                record["label_attempts"].append(_attempt(j, "not_best_worst"))
            elif j.label.p_x == 0.5:
                record["label_attempts"].append(_attempt(j, "tie"))
                record["dropped"].append(self._dropped(row, "pair", "tie", "tie: the judge has no preference", pref))
            elif pref["label_margin"] < self.settings.min_margin:
                record["label_attempts"].append(_attempt(j, "below_min_margin"))
                record["dropped"].append(self._dropped(
                    row, "pair", "below_min_margin",
                    f"margin {pref['label_margin']:.3f} below --min-margin {self.settings.min_margin}", pref))
            else:
                record["label_attempts"].append(_attempt(j, "kept"))
                record["preferences"].append(pref)
        return record

    def _usable(self, row: PromptRow, cands: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
        """Candidates the judge will see: no defect, and each text once (a copy is dropped, with its code)."""
        usable: list[dict[str, Any]] = []
        for c in cands:
            defect = find_defect(c["text"])
            same = next((u for u in usable if u["text"] == c["text"]), None)
            if defect:
                record["dropped"].append(self._dropped(row, "candidate", f"candidate_{defect.code}",
                                                       f"candidate {c['index']}: {defect.message}"))
            elif same is not None:
                record["dropped"].append(self._dropped(row, "candidate", "identical_candidates",
                                                       f"candidate {c['index']} is identical to candidate "
                                                       f"{same['index']}"))
            else:
                usable.append(c)
        if len(usable) < 2:
            raise ChainFailure("candidates", "fewer than 2 distinct usable candidates", record,
                               code="too_few_candidates")
        return usable

    @staticmethod
    def _best_vs_worst(labelled: list[Judgement]) -> Judgement:
        wins: dict[int, list[float]] = {}
        for j in labelled:
            assert j.label is not None
            wins.setdefault(j.x, []).append(j.label.p_x)
            wins.setdefault(j.y, []).append(1 - j.label.p_x)
        mean = {i: sum(v) / len(v) for i, v in wins.items()}
        best = max(mean, key=mean.__getitem__)
        # the worst candidate among those the best was compared with (when every mean is
        # equal the best must not be paired with itself)
        with_best = [j for j in labelled if best in (j.x, j.y)]
        return min(with_best, key=lambda j: mean[j.y if j.x == best else j.x])

    @staticmethod
    def _dropped(row: PromptRow, stage: str, code: str, reason: str, pair: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
        return {"id": row.id, "source": row.source, "stage": stage, "code": code, "reason": reason, "pair": pair,
                **extra}


NEAR_COIN_FLIP = 0.1  # kept pairs whose margin |2p - 1| is below this are reported


def _margin(pref: dict[str, Any]) -> float:
    """A kept pair's (or a label attempt's) |2p - 1| (rows stored before the rename call it `margin`)."""
    return pref["label_margin"] if "label_margin" in pref else pref["margin"]


def label_summary(run: Any, summary: dict[str, Any] | None = None, principle_ids: Sequence[str] = ()
                  ) -> dict[str, Any]:
    """Label counts and rates, each over an explicit denominator, and the same per principle.

    Rates are computed over *every label the judge was asked for* (`label_attempts` of
    every row, finished or failed), not over the preference rows that survived: ties,
    `--min-margin` drops and best-worst's unused pairs are exactly the labels a biased
    judge produces, so leaving them out would flatter it. `per_principle`
    (`cai.stats.principles.sampled_table`) splits them by the principle each label was asked
    under; `principle_ids` (the constitution's judge principles) shows the ones never sampled.
    """
    attempts = labelled = both_orders = position_biased = tokens = pairs = near_coin_flip = 0
    margins: list[float] = []  # summed at the end, as sum() always did (one float per kept pair)
    by_principle: list[LabelAttempt] = []
    outcomes: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    bins = {f"{lo / 10:.1f}-{(lo + 1) / 10:.1f}": 0 for lo in range(5, 10)}
    for status, row in run.store.entries(STAGE):  # one row at a time: memory stays flat
        if status == "ok":
            row_attempts = row.get("label_attempts", [])
            dropped.update(d.get("code", "unknown") for d in row["dropped"])
            for p in row["preferences"]:
                pairs += 1
                margins.append(_margin(p))
                near_coin_flip += _margin(p) < NEAR_COIN_FLIP
                lo = min(9, max(5, int(p["p_chosen"] * 10)))
                bins[f"{lo / 10:.1f}-{(lo + 1) / 10:.1f}"] += 1
        else:
            row_attempts = row.get("trace", {}).get("label_attempts", [])
        for a in row_attempts:
            attempts += 1
            outcomes[a["outcome"]] += 1
            by_principle.append(LabelAttempt(tuple(a.get("principle_ids") or ()), a["outcome"], a["p_x"],
                                             a["position_bias"]))
            tokens += a["judge_generated_tokens"]
            if a["p_x"] is not None:
                labelled += 1
                if a["position_bias"] is not None:
                    both_orders += 1
                    position_biased += bool(a["position_bias"])

    def rate(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    return {
        "labels_attempted": attempts,
        "labels": labelled,
        "label_coverage": rate(labelled, attempts),
        "label_outcomes": dict(sorted(outcomes.items())),
        "preference_pairs": pairs,
        "pairs_dropped": dict(sorted(dropped.items())),
        "p_chosen_histogram_kept_pairs": bins,
        "mean_margin_kept_pairs": round(sum(margins) / pairs, 4) if pairs else None,
        f"kept_pairs_margin_below_{NEAR_COIN_FLIP}": near_coin_flip,
        "position_bias_rate": rate(position_biased, both_orders),
        "position_bias_denominator": f"{both_orders} labels judged in both orders, of {attempts} attempted",
        "label_failures": attempts - labelled,
        "judge_generated_tokens_per_attempt": round(tokens / attempts, 2) if attempts else None,
        "per_principle": sampled_table(by_principle, principle_ids=principle_ids),
    }


def run_rl(config: RLConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.runs.job import run_job

    constitution = config.constitution.load()

    def make_chain(engines: Any, run: Any) -> RLChain:
        options = config.run.engine_options
        policy = engines.open(config.sampling.policy, run, options)
        judges = [engines.open(spec, run, options) for spec in config.labeling.judges]
        labeler = make_labeler(config.labeling, judges, constitution, seed=config.run.seed)
        return RLChain(policy, labeler, config.sampling, seed=config.run.seed)

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
        command="rl", stage=STAGE, config=config, inputs=config.inputs,
        make_chain=make_chain, write_outputs=write_outputs,
        manifest_parts={"constitution": config.constitution.manifest(constitution)},
        show_progress=show_progress, console=console,
        extra_summary=lambda run, summary: label_summary(run, summary, [p.id for p in constitution.judge_principles]),
    )
