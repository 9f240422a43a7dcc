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
  order is asked, calibration (mean confidence when right vs wrong), tokens and time.
Labels are stored in the run directory like any other run, so an evaluation resumes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.data import BadRow, InputError, PromptRow, split_hh_pair, text_lines
from cai.judges import LabelFailure, RankLabel
from cai.pipeline import ChainFailure
from cai.types import stable_hash

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
    labeler: Any

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        chosen, rejected = row.extra["chosen"], row.extra["rejected"]
        record: dict[str, Any] = {"id": row.id, "source": row.source}
        if self.labeler.name == "rank-all":
            try:
                label: RankLabel = await self.labeler.rank(row.messages, [chosen, rejected], (row.id,))
            except LabelFailure as exc:
                raise ChainFailure("label", exc.reason, {"judge_raw": exc.raw, "judge_failures": exc.judge_failures,
                                                         "judge_generated_tokens": exc.generated_tokens},
                                   code=exc.code) from exc
            p, by_order, bias, tokens, raw = (1.0 if label.chosen == 0 else 0.0), [None, None], None, \
                label.generated_tokens, label.raw
        else:
            try:
                pair = await self.labeler.compare(row.messages, chosen, rejected, (row.id,))
            except LabelFailure as exc:
                raise ChainFailure("label", exc.reason, {"judge_raw": exc.raw, "judge_failures": exc.judge_failures},
                                   code=exc.code) from exc
            p, by_order, bias, tokens, raw = pair.p_x, pair.p_x_by_order, pair.position_bias, \
                pair.generated_tokens, pair.raw
        return {**record, "p_human_choice": p, "p_by_order": by_order, "position_bias": bias,
                "judge_generated_tokens": tokens, "judge_raw": raw}


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _credit(p: float | None) -> float | None:
    return None if p is None else (1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0)


@dataclass
class JudgeReport:
    """`labels`: the labelled pairs; `failed`: pairs the judge was asked about and could not label."""

    labels: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0

    def as_dict(self, elapsed_s: float, timed_labels: int) -> dict[str, Any]:
        """`elapsed_s` is the time it took to make `timed_labels` of the labels (this run's)."""
        n = len(self.labels)
        asked = n + self.failed
        credits = [_credit(r["p_human_choice"]) or 0.0 for r in self.labels]
        correct = sum(credits)

        def share(part: float, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        def ci(part: float, whole: int) -> list[float]:
            return [round(v, 4) for v in wilson_interval(part, whole)]

        biased = [r["position_bias"] for r in self.labels if r["position_bias"] is not None]
        per_order = {}
        for slot, name in ((0, "human_choice_shown_first"), (1, "human_choice_shown_second")):
            got = [_credit(r["p_by_order"][slot]) for r in self.labels if r["p_by_order"][slot] is not None]
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
            "judge_generated_tokens_per_label": round(sum(r["judge_generated_tokens"] for r in self.labels) / n, 2)
            if n else None,
            "seconds_per_label": round(elapsed_s / timed_labels, 3) if timed_labels else None,
        }


@dataclass
class JudgeEvalConfig:
    pairs: str
    out: str = "runs/eval-judge"
    judges: list[str] = field(default_factory=lambda: ["smollm2"])
    labeler: str = "pairwise"
    constitution: str = "default"
    judge_principles: str | None = None
    cot_few_shot: str = "default"
    both_orders: bool = True
    principles_per_label: int = 1
    clamp: tuple[float, float] = (0.4, 0.6)
    combine: str = "mean"
    min_judges: int = 1
    judge_max_tokens: int = 192
    rank_retries: int = 2
    seed: int = 0
    limit: int | None = None
    on_bad_input: str = "error"
    concurrency: int = 64
    engine_options: dict[str, Any] = field(default_factory=dict)
    max_failure_rate: float = 1.0  # a judge eval measures failures; 1 never stops. stop early when more of the finished pairs failed (cai.pipeline.FailureBudget)


def run_judge_eval(config: JudgeEvalConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.constitution import load_constitution
    from cai.jobs import InputConfig, run_job
    from cai.rl import RLConfig, make_labeler

    constitution = load_constitution(config.constitution, judge_principles=config.judge_principles)
    rl_like = RLConfig(prompts=config.pairs, out=config.out, judges=config.judges, labeler=config.labeler,
                       cot_few_shot=config.cot_few_shot,
                       both_orders=config.both_orders, principles_per_label=config.principles_per_label,
                       clamp=config.clamp, combine=config.combine, min_judges=config.min_judges,
                       judge_max_tokens=config.judge_max_tokens,
                       rank_retries=config.rank_retries, seed=config.seed)

    class PairInput(InputConfig):
        def rows(self) -> Iterator[PromptRow | BadRow]:
            return read_pairs(config.pairs, config.limit)

    def make_chain(engines: Any, run: Any) -> JudgeEvalChain:
        judges = [engines.open(spec, run, config.engine_options) for spec in config.judges]
        return JudgeEvalChain(make_labeler(rl_like, judges, constitution))

    def write_outputs(run: Any) -> dict[str, int]:
        return {"labels.jsonl": run.write_jsonl("labels.jsonl", run.store.results(STAGE, "ok"))}

    def report(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
        labels = list(run.store.results(STAGE, "ok"))
        failed = sum(1 for f in run.store.results(STAGE, "failed") if f["stage"] != "input")
        timing = (summary["elapsed_s"], summary["rows_ok_this_run"])
        return {"report": JudgeReport(labels, failed).as_dict(*timing), "labeler": config.labeler,
                "judges": config.judges}

    result = run_job(command="eval judge", stage=STAGE, out=config.out,
                     inputs=PairInput(prompts=config.pairs, limit=config.limit, on_bad_input=config.on_bad_input),  # type: ignore[arg-type]
                     config=config, make_chain=make_chain, write_outputs=write_outputs,
                     manifest_parts={"constitution": {"name": constitution.name, "source": constitution.source,
                                                      "hash": constitution.hash}},
                     concurrency=config.concurrency, show_progress=show_progress, console=console,
                     extra_summary=report)
    result.run.write_json("report.json", result.summary["report"])
    return result
