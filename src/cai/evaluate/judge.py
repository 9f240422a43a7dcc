"""Judge accuracy against human preference labels (`cai eval judge`).

Input rows are hh-rlhf style: `chosen` and `rejected` transcripts that share everything
but the last assistant turn (or TRL preference rows). Each pair is labelled by any
labeller. The report states every denominator:

- `coverage`: pairs the judge labelled / pairs it was asked about (a parse failure or
  an engine error is a pair asked about and not labelled);
- `accuracy`: over *every pair asked about*, a failed label counting as half right (a
  coin flip) and a tie as half right, with a 95% Wilson interval;
  `accuracy_failures_as_wrong` is the stricter reading; `accuracy_labelled_only` is over
  the labelled pairs alone (the flattering number, shown beside the others, never alone);
- the position-bias rate (over labels judged in both orders), accuracy when only one
  order is asked, calibration (mean confidence when right vs wrong, and the expected
  calibration error over the labelled pairs), tokens and time;
- `per_principle`: the same split by the principle each label sampled
  (`cai.stats.principles.sampled_table`); with `--per-principle`, `principles_alone`:
  every pair labelled under each judge principle alone, and per principle relevance,
  accuracy, strength = relevance x 2(accuracy - 0.5) with a bootstrap interval, agreement,
  and the principles whose labels duplicate another's (`alone_table`).
Labels are stored in the run directory like any other run, so an evaluation resumes.
`cai eval constitutions` (`cai.evaluate.constitutions`) runs this chain twice per pair.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cai.core.errors import ConfigError
from cai.core.options import Options, at_least, in_unit_interval, option
from cai.core.types import stable_hash
from cai.engines.base import Engine
from cai.inputs.constitution import Constitution, ConstitutionOptions
from cai.inputs.files import InputError, text_lines
from cai.inputs.prompts import BadRow, OnBadInput, PromptRow, limit_option, on_bad_input_option, split_hh_pair
from cai.label.base import Judgement, Labeler
from cai.label.registry import LabelerOptions, make_labeler
from cai.runs.job import RunOptions
from cai.runs.rows import ChainFailure
from cai.stats.calibration import label_calibration_error
from cai.stats.principles import BOOTSTRAP, DUPLICATE_R, VOTE_MARGIN, LabelAttempt, alone_table, sampled_table
from cai.stats.rates import credit, wilson_interval

STAGE = "judge-eval"


def read_pairs(path: str | Path, limit: int | None = None) -> Iterator[PromptRow | BadRow]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    produced = 0
    for line_no, line in text_lines(path):
        if not line.strip():
            continue
        if limit is not None and produced >= limit:
            return
        produced += 1
        source = f"{path}:{line_no}"
        try:
            rec = json.loads(line)
            prompt, chosen, rejected = _pair_from(rec)
        except (json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            yield BadRow(source, f"not a preference pair: {exc}")
            continue
        row_id = str(rec.get("id") or "pair-" + stable_hash([prompt, chosen, rejected])[:12])
        yield PromptRow(id=row_id, messages=prompt, source=source, extra={"chosen": chosen, "rejected": rejected})


def _pair_from(rec: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    if isinstance(rec["chosen"], str):
        return split_hh_pair(rec["chosen"], rec["rejected"])
    return rec["prompt"], rec["chosen"][-1]["content"], rec["rejected"][-1]["content"]


def _for_human(judgement: Judgement, p: float | None) -> float | None:
    """P(the human's choice is better) from the judge's P(x is better)."""
    return None if p is None else (p if judgement.x == 0 else 1.0 - p)


def _alone(judgement: Judgement) -> dict[str, Any]:
    """One pair's label under one principle alone, as the per-principle audit keeps it."""
    if judgement.label is None:
        assert judgement.failure is not None
        return {"p_human_choice": None, "position_bias": None, "outcome": judgement.failure.code}
    return {"p_human_choice": _for_human(judgement, judgement.label.p_x),
            "position_bias": judgement.label.position_bias, "outcome": "labelled"}


@dataclass
class JudgeEvalChain:
    labeler: Labeler
    #: principle id -> a labeller of that principle alone (`--per-principle`); empty: no audit
    alone: dict[str, Labeler] = field(default_factory=dict)

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        """Label (human choice, other) as candidates 0 and 1; the judge never knows which is which."""
        chosen, rejected = row.extra["chosen"], row.extra["rejected"]
        candidates = [(0, chosen), (1, rejected)]
        # the audit first: the main label then asks its sampled principle's questions again, from the call cache
        alone = await asyncio.gather(*[labeler.label(row.messages, candidates, (row.id,))
                                       for labeler in self.alone.values()])
        [judgement] = await self.labeler.label(row.messages, candidates, (row.id,))
        audit = {"alone": {pid: _alone(j[0]) for pid, j in zip(self.alone, alone, strict=True)}} if self.alone else {}
        if judgement.failure is not None:
            exc = judgement.failure
            raise ChainFailure("label", exc.reason, {"judge_raw": exc.raw, "judge_failures": exc.judge_failures,
                                                     "judge_generated_tokens": exc.generated_tokens,
                                                     "principle_ids": exc.principle_ids, **audit}, code=exc.code)
        label = judgement.label
        assert label is not None
        return {"id": row.id, "source": row.source, "p_human_choice": _for_human(judgement, label.p_x),
                "p_by_order": [_for_human(judgement, p) for p in label.p_x_by_order],
                "position_bias": label.position_bias, "principle_ids": list(label.principle_ids),
                "judge_generated_tokens": label.generated_tokens, "judge_raw": label.raw, **audit}


@dataclass
class PrincipleAuditOptions(Options):
    """Which principles explain the human labels: every pair under each judge principle alone."""

    per_principle: bool = option(False, help="Also label every pair under each judge principle alone (one more "
                                             "label per principle and pair) and report, per principle, relevance, "
                                             "accuracy, strength = relevance x 2(accuracy - 0.5) with a bootstrap "
                                             "interval, and the principles whose labels duplicate another's.")
    vote_margin: float = option(VOTE_MARGIN, help="With --per-principle: a principle votes on a pair when its "
                                                  "margin |2p-1| reaches this; below it, it abstains.")
    duplicate_r: float = option(DUPLICATE_R, help="With --per-principle: flag a principle whose probabilities "
                                                  "correlate with another's above this (Pearson r).")
    strength_bootstrap: int = option(BOOTSTRAP, help="Bootstrap resamples of the pairs for the strength interval.")

    def check(self) -> None:
        in_unit_interval("--vote-margin", self.vote_margin)
        at_least("--strength-bootstrap", self.strength_bootstrap, 0)
        if not -1 <= self.duplicate_r <= 1:
            raise ConfigError(f"--duplicate-r must be between -1 and 1; got {self.duplicate_r!r}")


def check_alone(labeling: LabelerOptions) -> None:
    if labeling.labeler not in ("pairwise", "cot"):
        raise ConfigError(f"--per-principle labels under one principle at a time, which --labeler "
                          f"{labeling.labeler} cannot do; use pairwise or cot")


def alone_labelers(labeling: LabelerOptions, judges: Sequence[Engine], constitution: Constitution,
                   seed: int) -> dict[str, Labeler]:
    """One labeller per judge principle, asking it alone (the per-principle audit)."""
    check_alone(labeling)
    single = replace(labeling, principles_per_label=1)
    return {p.id: make_labeler(single, list(judges), Constitution(f"{constitution.name}:{p.id}", [p],
                                                                  source=constitution.source), seed=seed)
            for p in constitution.judge_principles}


def principle_figures(labels: Sequence[dict[str, Any]], failures: Sequence[dict[str, Any]],
                      principle_ids: Sequence[str], audit: PrincipleAuditOptions | None, seed: int = 0,
                      ) -> dict[str, Any]:
    """`per_principle` (and with the audit, `principles_alone`) from stored labels and failed rows."""
    attempts = [LabelAttempt(tuple(r.get("principle_ids") or ()), "labelled", r["p_human_choice"],
                             r["position_bias"]) for r in labels]
    attempts += [LabelAttempt(tuple(f.get("trace", {}).get("principle_ids") or ()), str(f.get("code", "failed")),
                              None, None) for f in failures]
    out: dict[str, Any] = {"per_principle": sampled_table(attempts, principle_ids=principle_ids, human=True)}
    if audit is not None and audit.per_principle:
        pairs = [{pid: {"p": x["p_human_choice"], "position_bias": x["position_bias"]}
                  for pid, x in (r.get("alone") or {}).items()} for r in labels]
        pairs += [{pid: {"p": x["p_human_choice"], "position_bias": x["position_bias"]}
                   for pid, x in (f.get("trace", {}).get("alone") or {}).items()} for f in failures]
        out["principles_alone"] = alone_table(pairs, principle_ids, vote_margin=audit.vote_margin,
                                              duplicate_r=audit.duplicate_r, bootstrap=audit.strength_bootstrap,
                                              seed=seed)
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)



@dataclass
class JudgeReport:
    """`labels`: the labelled pairs; `failed`: pairs the judge was asked about and could not label."""

    labels: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0

    def as_dict(self, elapsed_s: float, timed_labels: int) -> dict[str, Any]:
        """`elapsed_s` is the time it took to make `timed_labels` of the labels (this run's)."""
        n = len(self.labels)
        asked = n + self.failed
        credits = [credit(r["p_human_choice"]) or 0.0 for r in self.labels]
        correct = sum(credits)

        def share(part: float, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        def ci(part: float, whole: int) -> list[float]:
            return [round(v, 4) for v in wilson_interval(part, whole)]

        biased = [r["position_bias"] for r in self.labels if r["position_bias"] is not None]
        per_order = {}
        for slot, name in ((0, "human_choice_shown_first"), (1, "human_choice_shown_second")):
            got = [credit(r["p_by_order"][slot]) for r in self.labels if r["p_by_order"][slot] is not None]
            per_order[name] = round(sum(got) / len(got), 4) if got else None  # type: ignore[arg-type]
        confidence = [(max(r["p_human_choice"], 1 - r["p_human_choice"]), c)
                      for r, c in zip(self.labels, credits, strict=True)]
        right = [conf for conf, c in confidence if c == 1.0]
        wrong = [conf for conf, c in confidence if c == 0.0]
        return {
            "pairs_asked": asked,
            "pairs_labelled": n,
            "label_failures": self.failed,
            "coverage": share(n, asked),
            "accuracy": share(correct + 0.5 * self.failed, asked),
            "accuracy_ci95": ci(correct + 0.5 * self.failed, asked),
            "accuracy_denominator": f"all {asked} pairs asked; {self.failed} failed labels and "
                                    f"{sum(1 for c in credits if c == 0.5)} ties count as half right",
            "accuracy_failures_as_wrong": share(correct, asked),
            "accuracy_labelled_only": share(correct, n),
            "accuracy_labelled_only_ci95": ci(correct, n),
            "ties": sum(1 for c in credits if c == 0.5),
            "position_bias_rate": round(sum(biased) / len(biased), 4) if biased else None,
            "position_bias_denominator": f"{len(biased)} labels judged in both orders, of {asked} pairs asked",
            "accuracy_by_order": per_order,
            "mean_confidence_when_right": round(sum(right) / len(right), 4) if right else None,
            "mean_confidence_when_wrong": round(sum(wrong) / len(wrong), 4) if wrong else None,
            "expected_calibration_error": _rounded(
                label_calibration_error([r["p_human_choice"] for r in self.labels])),
            "calibration_denominator": f"{n} labelled pairs, 10 bins of confidence max(p, 1 - p)",
            "judge_generated_tokens_per_label": round(sum(r["judge_generated_tokens"] for r in self.labels) / n, 2)
            if n else None,
            "seconds_per_label": round(elapsed_s / timed_labels, 3) if timed_labels else None,
        }


@dataclass
class PairInputOptions(Options):
    """Preference pairs with human labels."""

    pairs: str = option(required=True, help="hh-rlhf style JSONL (chosen/rejected transcripts) or TRL preference "
                                            "rows.")
    limit: int | None = limit_option()
    on_bad_input: OnBadInput = on_bad_input_option()

    def rows(self) -> Iterator[PromptRow | BadRow]:
        return read_pairs(self.pairs, self.limit)


@dataclass
class JudgeEvalConfig(Options):
    """Everything `cai eval judge` needs; the CLI and `--config` fill it, `run_judge_eval` runs it."""

    inputs: PairInputOptions = field(default_factory=PairInputOptions)
    #: a judge evaluation measures failures, so it never stops on them (1 never stops)
    run: RunOptions = field(default_factory=lambda: RunOptions(out="runs/eval-judge", max_failure_rate=1.0))
    constitution: ConstitutionOptions = field(default_factory=ConstitutionOptions)
    labeling: LabelerOptions = field(default_factory=LabelerOptions)
    audit: PrincipleAuditOptions = field(default_factory=PrincipleAuditOptions)


def run_judge_eval(config: JudgeEvalConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.runs.job import run_job

    constitution = config.constitution.load()

    if config.audit.per_principle:  # a bad combination fails before the run directory is made
        check_alone(config.labeling)

    def make_chain(engines: Any, run: Any) -> JudgeEvalChain:
        judges = [engines.open(spec, run, config.run.engine_options) for spec in config.labeling.judges]
        alone = alone_labelers(config.labeling, judges, constitution, config.run.seed) \
            if config.audit.per_principle else {}
        return JudgeEvalChain(make_labeler(config.labeling, judges, constitution, seed=config.run.seed), alone)

    def write_outputs(run: Any) -> dict[str, int]:
        return {"labels.jsonl": run.write_jsonl("labels.jsonl", run.store.results(STAGE, "ok"))}

    def report(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
        labels = list(run.store.results(STAGE, "ok"))
        failures = [f for f in run.store.results(STAGE, "failed") if f["stage"] != "input"]
        timing = (summary["elapsed_s"], summary["rows_ok_this_run"])
        figures = principle_figures(labels, failures, [p.id for p in constitution.judge_principles], config.audit,
                                    seed=config.run.seed)
        return {"report": JudgeReport(labels, len(failures)).as_dict(*timing), "labeler": config.labeling.labeler,
                "judges": config.labeling.judges, **figures}

    result = run_job(command="eval judge", stage=STAGE, config=config, inputs=config.inputs,
                     make_chain=make_chain, write_outputs=write_outputs,
                     manifest_parts={"constitution": config.constitution.manifest(constitution)},
                     show_progress=show_progress, console=console, extra_summary=report)
    result.run.write_json("report.json", {**result.summary["report"], **{
        k: result.summary[k] for k in ("per_principle", "principles_alone") if k in result.summary}})
    return result
