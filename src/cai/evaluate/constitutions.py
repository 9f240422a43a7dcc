"""`cai eval constitutions A B`: the same pairs, the same judge and seeds, two constitutions.

Each pair (read by `cai.evaluate.judge.read_pairs`) is labelled by `JudgeEvalChain` once
under A and once under B, with the same labeller options, judge engines, seed and row
key, so a principle both constitutions share (same id, same place) is sampled for the
same pairs and its questions come from the call cache the second time: the difference
is the constitutions', not the sampling's. One side's failed label never loses the
other's; it is counted with its code.

`report.json` (`ab_report`, pure) holds, each with its denominator:
- agreement between A and B (the same choice, tie included) over the pairs both labelled,
  with a Wilson interval; the pairs that flip (A picks one reply, B the other) and those
  that move to or from a tie, with examples;
- with human labels (the default; `--no-human-labels` for pairs whose order means nothing):
  each constitution's accuracy over every pair asked (ties and failed labels half, as `cai
  eval judge` counts), and an exact McNemar test of the paired difference, a label being
  right when it picks the human's choice (ties and failures are not right);
- per principle: each side's table (`cai.stats.principles`: sampled, and with
  `--per-principle` every principle alone) and the deltas B - A for the principles they
  share, marked `changed` when the judge question differs.

Not here: labelling (`cai.evaluate.judge`), drawing (`cai.report.principle_sections`). The
one-principle baseline to compare against ships as `--constitution baseline`
(`constitutions/baseline.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cai.core.options import Options, at_least, option
from cai.evaluate.judge import (
    JudgeEvalChain,
    PairInputOptions,
    PrincipleAuditOptions,
    alone_labelers,
    check_alone,
    principle_figures,
)
from cai.inputs.constitution import Constitution, judge_constitution
from cai.inputs.prompts import PromptRow
from cai.label.registry import LabelerOptions, make_labeler
from cai.runs.job import RunOptions
from cai.runs.rows import ChainFailure
from cai.stats.principles import proportion
from cai.stats.rates import credit, mcnemar_exact

STAGE = "eval-constitutions"
REPORT_FILE = "report.json"
SIDES = ("a", "b")


@dataclass
class ABOptions(Options):
    """The two constitutions, and what the pairs' order means."""

    constitution_a: str = option(required=True, help="Constitution A: a shipped name (e.g. baseline, the "
                                                     "one-principle baseline) or a file, as --constitution takes.")
    constitution_b: str = option(required=True, help="Constitution B, compared with A on the same pairs.")
    human_labels: bool = option(True, help="The pairs' chosen reply is a person's choice: report each constitution's "
                                           "accuracy against it and McNemar's test of the difference.")
    examples: int = option(5, help="Flipped pairs shown as examples in report.json and the report.")

    def check(self) -> None:
        at_least("--examples", self.examples, 0)


@dataclass
class ConstitutionsEvalConfig(Options):
    """Everything `cai eval constitutions` needs."""

    inputs: PairInputOptions = field(default_factory=PairInputOptions)
    #: an evaluation measures failures, so it never stops on them (1 never stops)
    run: RunOptions = field(default_factory=lambda: RunOptions(out="runs/eval-constitutions", max_failure_rate=1.0))
    ab: ABOptions = field(default_factory=ABOptions)
    labeling: LabelerOptions = field(default_factory=LabelerOptions)
    audit: PrincipleAuditOptions = field(default_factory=PrincipleAuditOptions)


class ConstitutionsChain:
    def __init__(self, chains: dict[str, JudgeEvalChain]) -> None:
        self.chains = chains

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        # one side after the other: B's questions that A already asked (a shared principle) come from the cache
        a = await self._side(self.chains["a"], row)
        b = await self._side(self.chains["b"], row)
        record = {"id": row.id, "source": row.source, "messages": row.messages, "chosen": row.extra["chosen"],
                  "rejected": row.extra["rejected"], "a": a, "b": b, "dropped": []}
        for side, result in (("a", a), ("b", b)):
            if result["outcome"] != "labelled":
                record["dropped"].append({"id": row.id, "source": row.source, "stage": f"label {side.upper()}",
                                          "code": result["outcome"], "reason": result.get("reason", "")})
        return record

    @staticmethod
    async def _side(chain: JudgeEvalChain, row: PromptRow) -> dict[str, Any]:
        try:
            label = await chain(row)
        except ChainFailure as exc:  # this side's label failed; the other side's still counts
            return {"outcome": exc.code, "reason": exc.reason, "p_human_choice": None, "position_bias": None,
                    "principle_ids": exc.trace.get("principle_ids", []), "alone": exc.trace.get("alone")}
        return {"outcome": "labelled", **{k: label.get(k) for k in (
            "p_human_choice", "p_by_order", "position_bias", "principle_ids", "alone")}}


# ---- the report --------------------------------------------------------------------------------
def _choice(p: float | None) -> str | None:
    return None if p is None else "first" if p > 0.5 else "second" if p < 0.5 else "tie"


def _side_figures(records: list[dict[str, Any]], side: str, constitution: Constitution, human: bool,
                  audit: PrincipleAuditOptions | None, seed: int) -> dict[str, Any]:
    labels = [{**r[side], "id": r["id"]} for r in records if r[side]["outcome"] == "labelled"]
    failures = [{"code": r[side]["outcome"], "trace": r[side]} for r in records if r[side]["outcome"] != "labelled"]
    figures = principle_figures(labels, failures, [p.id for p in constitution.judge_principles], audit, seed=seed)
    if not human:  # P(first reply) is not agreement with anyone
        for row in figures["per_principle"]["principles"].values():
            row.pop("agreement", None)
            row["flags"] = [f for f in row["flags"] if not f.startswith("below_chance")]
    return figures


def _accuracy(records: list[dict[str, Any]], side: str) -> dict[str, Any]:
    asked = len(records)
    credits = [credit(r[side]["p_human_choice"]) for r in records]
    failed = sum(1 for c in credits if c is None)
    ties = sum(1 for c in credits if c == 0.5)
    return {**proportion(sum(0.5 if c is None else c for c in credits), asked), "failures": failed, "ties": ties,
            "denominator": f"all {asked} pairs asked; {failed} failed labels and {ties} ties count as half right"}


def _deltas(a: Constitution, b: Constitution, fig_a: dict[str, Any], fig_b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ids = [p.id for p in a.judge_principles] + [p.id for p in b.judge_principles if p.id not in
                                                {q.id for q in a.judge_principles}]
    in_a, in_b = {p.id: p for p in a.judge_principles}, {p.id: p for p in b.judge_principles}
    for pid in ids:
        row: dict[str, Any] = {"in": "both" if pid in in_a and pid in in_b else "a" if pid in in_a else "b",
                               "changed": pid in in_a and pid in in_b and in_a[pid].judge != in_b[pid].judge}
        for key, table, metric in (("agreement", "per_principle", "agreement"),
                                   ("strength", "principles_alone", "strength")):
            va = ((fig_a.get(table) or {}).get("principles", {}).get(pid) or {}).get(metric) or {}
            vb = ((fig_b.get(table) or {}).get("principles", {}).get(pid) or {}).get(metric) or {}
            xa, xb = va.get("rate", va.get("value")), vb.get("rate", vb.get("value"))
            row[key] = {"a": xa, "b": xb, "delta": None if xa is None or xb is None else round(xb - xa, 4),
                        "a_of": va.get("of", va.get("n", 0)), "b_of": vb.get("of", vb.get("n", 0))}
        out[pid] = row
    return out


def ab_report(records: list[dict[str, Any]], constitutions: dict[str, Constitution], *, human: bool = True,
              examples: int = 5, audit: PrincipleAuditOptions | None = None, seed: int = 0) -> dict[str, Any]:
    """Agreement, flips, accuracy, McNemar and per-principle deltas of two constitutions on the same pairs."""
    asked = len(records)
    both = [r for r in records if r["a"]["p_human_choice"] is not None and r["b"]["p_human_choice"] is not None]
    same = sum(1 for r in both if _choice(r["a"]["p_human_choice"]) == _choice(r["b"]["p_human_choice"]))
    flips = [r for r in both if {_choice(r["a"]["p_human_choice"]), _choice(r["b"]["p_human_choice"])}
             == {"first", "second"}]
    tie_moves = [r for r in both if (_choice(r["a"]["p_human_choice"]) == "tie")
                 != (_choice(r["b"]["p_human_choice"]) == "tie")]
    report: dict[str, Any] = {
        "constitutions": {s: {"name": c.name, "source": c.source, "hash": c.hash,
                              "judge_principles": len(c.judge_principles)} for s, c in constitutions.items()},
        "pairs_asked": asked, "labelled_by_both": len(both),
        "failed": {s: sum(1 for r in records if r[s]["p_human_choice"] is None) for s in SIDES},
        "agreement": {**proportion(same, len(both)),
                      "denominator": f"{same} of the {len(both)} pairs both constitutions labelled got the same "
                                     f"choice (a tie counts as a choice); {asked - len(both)} of {asked} pairs "
                                     "had a failed label on at least one side"},
        "flips": {**proportion(len(flips), len(both)), "to_or_from_tie": len(tie_moves),
                  "denominator": f"pairs where A picks one reply and B the other, of the {len(both)} both labelled; "
                                 f"{len(tie_moves)} more moved to or from a tie"},
        "flip_examples": [_example(r, human) for r in flips[:examples]],
    }
    if human:
        right = {s: [r[s]["p_human_choice"] is not None and r[s]["p_human_choice"] > 0.5 for r in records]
                 for s in SIDES}
        only_a = sum(1 for x, y in zip(right["a"], right["b"], strict=True) if x and not y)
        only_b = sum(1 for x, y in zip(right["a"], right["b"], strict=True) if y and not x)
        report["accuracy"] = {s: _accuracy(records, s) for s in SIDES}
        strict = {s: sum(right[s]) for s in SIDES}
        report["mcnemar"] = {
            "a_right_b_not": only_a, "b_right_a_not": only_b, "both_right": sum(
                1 for x, y in zip(right["a"], right["b"], strict=True) if x and y), "pairs": asked,
            "p_value": round(mcnemar_exact(only_a, only_b), 6),
            "accuracy_strict": {s: proportion(strict[s], asked) for s in SIDES},
            "difference_b_minus_a": round((strict["b"] - strict["a"]) / asked, 4) if asked else None,
            "denominator": f"exact two-sided McNemar over all {asked} pairs asked: a label is right when it picks the "
                           f"human's choice (ties and failed labels are not); {only_a + only_b} discordant pairs"}
    figures = {s: _side_figures(records, s, constitutions[s], human, audit, seed) for s in SIDES}
    report["per_principle"] = {
        "a": figures["a"]["per_principle"], "b": figures["b"]["per_principle"],
        "deltas": _deltas(constitutions["a"], constitutions["b"], figures["a"], figures["b"]),
        "denominator": "each side's labels by the principle they sampled; deltas are B - A for the principles both "
                       "constitutions have (agreement: sampled labels; strength: every principle alone, with "
                       "--per-principle)"}
    if all("principles_alone" in figures[s] for s in SIDES):
        report["principles_alone"] = {s: figures[s]["principles_alone"] for s in SIDES}
    return report


def _example(record: dict[str, Any], human: bool) -> dict[str, Any]:
    return {"id": record["id"], "source": record["source"], "prompt": record["messages"],
            "first": record["chosen"], "second": record["rejected"], "first_is_human_choice": human,
            "a": {"p_first": record["a"]["p_human_choice"], "principle_ids": record["a"].get("principle_ids")},
            "b": {"p_first": record["b"]["p_human_choice"], "principle_ids": record["b"].get("principle_ids")}}


def ab_headlines(report: dict[str, Any]) -> dict[str, Any]:
    """The summary's few lines; report.json has the rest."""
    out = {"pairs_asked": report["pairs_asked"], "agreement": report["agreement"]["rate"],
           "agreement_ci95": report["agreement"]["ci95"], "flips": report["flips"]["count"]}
    if "accuracy" in report:
        out.update({"accuracy_a": report["accuracy"]["a"]["rate"], "accuracy_b": report["accuracy"]["b"]["rate"],
                    "mcnemar_p": report["mcnemar"]["p_value"]})
    return out


def run_constitutions_eval(config: ConstitutionsEvalConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.runs.job import run_job

    constitutions = {"a": judge_constitution(config.ab.constitution_a, "constitution A"),
                     "b": judge_constitution(config.ab.constitution_b, "constitution B")}
    if config.audit.per_principle:
        check_alone(config.labeling)

    def make_chain(engines: Any, run: Any) -> ConstitutionsChain:
        judges = [engines.open(spec, run, config.run.engine_options) for spec in config.labeling.judges]
        seed = config.run.seed
        return ConstitutionsChain({s: JudgeEvalChain(
            make_labeler(config.labeling, judges, c, seed=seed),
            alone_labelers(config.labeling, judges, c, seed) if config.audit.per_principle else {})
            for s, c in constitutions.items()})

    def write_outputs(run: Any) -> dict[str, int]:
        return {"comparisons.jsonl": run.write_jsonl("comparisons.jsonl", run.store.results(STAGE, "ok"))}

    def report(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
        full = ab_report(list(run.store.results(STAGE, "ok")), constitutions, human=config.ab.human_labels,
                         examples=config.ab.examples, audit=config.audit, seed=config.run.seed)
        run.write_json(REPORT_FILE, full)
        return {"report_file": REPORT_FILE, **ab_headlines(full)}

    return run_job(command="eval constitutions", stage=STAGE, config=config, inputs=config.inputs,
                   make_chain=make_chain, write_outputs=write_outputs,
                   manifest_parts={"constitutions": {s: {"name": c.name, "source": c.source, "hash": c.hash}
                                                     for s, c in constitutions.items()}},
                   show_progress=show_progress, console=console, extra_summary=report)
