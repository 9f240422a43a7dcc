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
  calibration error over the labelled pairs), tokens and time.
Labels are stored in the run directory like any other run, so an evaluation resumes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.core.options import Options, option
from cai.core.types import stable_hash
from cai.inputs.constitution import ConstitutionOptions
from cai.inputs.files import InputError, text_lines
from cai.inputs.prompts import BadRow, OnBadInput, PromptRow, limit_option, on_bad_input_option, split_hh_pair
from cai.label.base import Labeler
from cai.label.registry import LabelerOptions, make_labeler
from cai.runs.job import RunOptions
from cai.runs.rows import ChainFailure
from cai.stats.calibration import label_calibration_error
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


@dataclass
class JudgeEvalChain:
    labeler: Labeler

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        """Label (human choice, other) as candidates 0 and 1; the judge never knows which is which."""
        chosen, rejected = row.extra["chosen"], row.extra["rejected"]
        [judgement] = await self.labeler.label(row.messages, [(0, chosen), (1, rejected)], (row.id,))
        if judgement.failure is not None:
            exc = judgement.failure
            raise ChainFailure("label", exc.reason, {"judge_raw": exc.raw, "judge_failures": exc.judge_failures,
                                                     "judge_generated_tokens": exc.generated_tokens}, code=exc.code)
        label = judgement.label
        assert label is not None

        def for_human(p: float | None) -> float | None:  # P(the human's choice is better)
            return None if p is None else (p if judgement.x == 0 else 1.0 - p)

        return {"id": row.id, "source": row.source, "p_human_choice": for_human(label.p_x),
                "p_by_order": [for_human(p) for p in label.p_x_by_order], "position_bias": label.position_bias,
                "judge_generated_tokens": label.generated_tokens, "judge_raw": label.raw}


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


def run_judge_eval(config: JudgeEvalConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.runs.job import run_job

    constitution = config.constitution.load()

    def make_chain(engines: Any, run: Any) -> JudgeEvalChain:
        judges = [engines.open(spec, run, config.run.engine_options) for spec in config.labeling.judges]
        return JudgeEvalChain(make_labeler(config.labeling, judges, constitution, seed=config.run.seed))

    def write_outputs(run: Any) -> dict[str, int]:
        return {"labels.jsonl": run.write_jsonl("labels.jsonl", run.store.results(STAGE, "ok"))}

    def report(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
        labels = list(run.store.results(STAGE, "ok"))
        failed = sum(1 for f in run.store.results(STAGE, "failed") if f["stage"] != "input")
        timing = (summary["elapsed_s"], summary["rows_ok_this_run"])
        return {"report": JudgeReport(labels, failed).as_dict(*timing), "labeler": config.labeling.labeler,
                "judges": config.labeling.judges}

    result = run_job(command="eval judge", stage=STAGE, config=config, inputs=config.inputs,
                     make_chain=make_chain, write_outputs=write_outputs,
                     manifest_parts={"constitution": config.constitution.manifest(constitution)},
                     show_progress=show_progress, console=console, extra_summary=report)
    result.run.write_json("report.json", result.summary["report"])
    return result
