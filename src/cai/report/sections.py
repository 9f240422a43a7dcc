"""What the report shows for each kind of run: the data runs, judge evaluations and trained models.

A `Section` is plain view data (facts, tables, figures, example traces) for the template;
the template only lays it out, and escapes every string it is given. Each figure's
caption and each rate's cell say what it counts and over what: `n of N`, the failures
beside it.

- `overview`: one row per source: rows read, finished, failed by reason, engine calls
  made and from cache, generated tokens and tokens/s.
- `sl_section`: row outcomes, the revision quality gates (rows flagged and failed by
  each gate), and example traces (prompt -> answer -> critique -> revision, with each
  round's principle id and quality flags).
- `rl_section`: the p_chosen histogram and margin distribution of kept pairs, label
  outcomes, position-bias rate, example candidate pairs with their labels.
- `judge_section`: accuracy against human labels and a calibration (reliability) diagram.
- `model_section`: loss curves and the model card's facts.

The evaluation runs (`eval models`, `eval revisions`) are in `cai.report.eval_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cai.stats.rates import credit
from cai.stats.calibration import expected_calibration_error, reliability_bins
from cai.report import plots
from cai.report.sources import Source


@dataclass
class Figure:
    svg: str
    caption: str


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Example:
    title: str
    #: (label, text) in reading order; label "" continues the previous block
    parts: list[tuple[str, str]]


@dataclass
class Section:
    title: str
    source: Source
    facts: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def share(part: float, whole: int, extra: str = "") -> str:
    """'0.42 (21 of 50)', or '— (0 of 0)' when there is nothing to divide."""
    value = f"{part / whole:.3f}" if whole else "—"
    count = f"{part:g}" if isinstance(part, float) else str(part)
    return f"{value} ({count} of {whole}{'; ' + extra if extra else ''})"


def num(value: Any) -> str:
    """A probability or score for an example's label line: 3 decimals, or as it is."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def ci_text(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "—"


def overview(sources: list[Source]) -> Table:
    rows = []
    for s in sources:
        summary = s.summary
        if s.kind == "model":
            report = s.json("train_report.json")
            rows.append([s.name, "trained model", f"{report.get('steps', '—')} steps", "—", "—", "—", "—", "—"])
            continue
        if not summary:
            rows.append([s.name, s.kind, "no summary.json (unfinished?)", "", "", "", "", ""])
            continue
        failed = summary.get("rows_failed_this_run", 0)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("failure_reasons", {}).items())) or "none"
        rows.append([
            s.name, s.kind, str(summary.get("rows_read", "—")),
            f"{summary.get('rows_ok_this_run', 0)} this run + {summary.get('rows_already_done', 0)} earlier",
            f"{failed} ({reasons})",
            f"{summary.get('engine_calls_made', 0)} made / {summary.get('engine_calls_from_cache', 0)} cached",
            str(summary.get("generated_tokens", "—")),
            f"{summary.get('generated_tokens_per_s', '—')} tok/s over {summary.get('elapsed_s', '—')} s",
        ])
    return Table("Every source: rows read, rows finished (this run and resumed), rows failed by reason, engine "
                 "calls, generated tokens and throughput of the last invocation.",
                 ["source", "kind", "rows read", "rows finished", "rows failed (by reason)", "engine calls",
                  "generated tokens", "throughput"], rows)


def _failure_table(source: Source) -> Table | None:
    counts: dict[tuple[str, str], int] = {}
    for f in source.records("failures.jsonl"):
        key = (str(f.get("stage", "?")), str(f.get("code", "?")))
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    return Table("Everything failed or dropped (failures.jsonl), by stage and reason code.", ["stage", "code", "count"],
                 [[s, c, n] for (s, c), n in sorted(counts.items(), key=lambda kv: -kv[1])])


def finish_section(section: Section) -> Section:
    table = _failure_table(section.source)
    if table:
        section.tables.append(table)
    for name, n in section.source.skipped.items():
        section.notes.append(f"{name}: {n} malformed line(s) skipped")
    return section


def prompt_text(messages: list[dict[str, Any]]) -> str:
    return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages or [])


def sl_section(source: Source, examples: int) -> Section:
    section = Section("SL-CAI critique and revision", source)
    config = source.manifest.get("config", {})
    constitution = source.manifest.get("constitution", {})
    section.facts += [("model", str(config.get("model", "?"))), ("rounds", str(config.get("rounds", "?"))),
                      ("constitution", f"{constitution.get('name', '?')} (hash {constitution.get('hash', '?')})")]
    rows = list(source.records("sl.jsonl"))
    failed = source.summary.get("rows_failed_this_run", 0)
    truncated = sum(1 for r in rows if r.get("truncated"))
    section.facts.append(("final revisions kept", share(len(rows), len(rows) + failed, f"{failed} rows failed")))
    section.facts.append(("kept although cut off at --max-tokens", share(truncated, len(rows))))
    gates = _gate_table(source.summary.get("revision_gates"))
    if gates:
        fact, table = gates
        section.facts.append(fact)
        section.tables.append(table)
    for r in rows[:examples]:
        parts = [("prompt", prompt_text(r.get("messages", []))),
                 ("initial answer", r.get("initial", {}).get("text", ""))]
        for rnd in r.get("rounds", []):
            pid = rnd.get("principle_id", "?")
            flags = rnd.get("quality_flags") or []
            parts += [(f"round {rnd.get('round')} · principle {pid} · critique request",
                       rnd.get("critique_request", "")),
                      ("critique", rnd.get("critique", "")), ("revision request", rnd.get("revision_request", "")),
                      ("revision" + (f" · flagged {', '.join(map(str, flags))}" if flags else ""),
                       rnd.get("revision", ""))]
        section.examples.append(Example(f"{r.get('id')} ({r.get('source', '')})", parts))
    return finish_section(section)


def _gate_table(gates: Any) -> tuple[tuple[str, str], Table] | None:
    """The revision quality gates of an sl summary: a fact and a table, each rate over every row finished."""
    if not isinstance(gates, dict) or not gates.get("rows"):
        return None
    rows, kept = gates["rows"], gates.get("rows_kept", 0)
    fact = ("kept with a revision quality flag", share(gates.get("rows_kept_flagged", 0), kept,
                                                        f"{gates.get('rows_kept_clean', 0)} kept clean"))
    actions, flagged, failed = gates.get("actions", {}), gates.get("flagged", {}), gates.get("failed", {})
    table = Table(f"Revision quality gates (--gates {gates.get('policy', '?')}): rows kept with each flag and rows "
                  f"failed by each gate, each over the {rows} rows finished ({kept} kept, "
                  f"{gates.get('rows_failed', 0)} failed for any reason); a kept row may carry several flags.",
                  ["gate", "action", "rows kept, flagged", "rows failed"],
                  [[code, actions.get(code, "?"), share(flagged.get(code, 0), rows), share(failed.get(code, 0), rows)]
                   for code in dict.fromkeys([*flagged, *failed])])
    return fact, table


def rl_section(source: Source, examples: int) -> Section:
    section = Section("RL-CAI preference labels", source)
    s, config = source.summary, source.manifest.get("config", {})
    section.facts += [("labeller", str(config.get("labeler", "?"))), ("judges", ", ".join(config.get("judges", []))),
                      ("policy", str(config.get("policy", "?")))]
    attempted, labels = s.get("labels_attempted", 0), s.get("labels", 0)
    section.facts += [
        ("label coverage", share(labels, attempted, f"{s.get('label_failures', 0)} labels failed")),
        ("position-bias rate", f"{s.get('position_bias_rate')} ({s.get('position_bias_denominator', '?')})"),
        ("kept preference pairs", share(s.get("preference_pairs", 0), attempted, "of every label attempted")),
    ]
    prefs = list(source.records("preferences.jsonl"))
    p = [r["p_chosen"] for r in prefs if isinstance(r.get("p_chosen"), (int, float))]
    margins = [r.get("label_margin", r.get("margin")) for r in prefs]
    margins = [m for m in margins if isinstance(m, (int, float))]
    if p:
        section.figures.append(Figure(
            plots.histogram(p, low=0.5, high=1.0, bins=10, title="p_chosen of kept pairs", xlabel="p_chosen"),
            f"Label histogram: the judge's probability that the chosen reply is better, for the {len(p)} kept pairs "
            f"of {attempted} labels attempted (dropped labels are counted under label outcomes)."))
        section.figures.append(Figure(
            plots.histogram(margins, low=0.0, high=1.0, bins=10, title="label margin |2p-1| of kept pairs",
                            xlabel="label margin"),
            f"Margin distribution of the {len(margins)} kept pairs: 0 is a coin flip, 1 certain."))
    outcomes = s.get("label_outcomes") or {}
    if outcomes:
        section.figures.append(Figure(
            plots.bars(list(outcomes), list(outcomes.values()), title="label outcomes", xlabel="outcome"),
            f"What became of each of the {attempted} labels attempted (kept, tie, below --min-margin, failed ...)."))
    for r in prefs[:examples]:
        chosen = (r.get("chosen") or [{}])[-1].get("content", "")
        rejected = (r.get("rejected") or [{}])[-1].get("content", "")
        label = (f"p_chosen {num(r.get('p_chosen'))}; by order (A,B) {num(r.get('p_chosen_order_ab'))} / (B,A) "
                 f"{num(r.get('p_chosen_order_ba'))}; position bias {r.get('position_bias')}; principles "
                 f"{', '.join(r.get('principle_ids') or [])}; judges {', '.join(r.get('judges') or [])}")
        section.examples.append(Example(str(r.get("id")), [("prompt", prompt_text(r.get("prompt", []))),
                                                           ("chosen", chosen), ("rejected", rejected),
                                                           ("label", label)]))
    return finish_section(section)


def judge_section(source: Source, bins: int = 5) -> Section:
    section = Section("Judge accuracy against human labels", source)
    report = source.json("report.json") or source.summary.get("report", {})
    asked = report.get("pairs_asked", 0)
    section.facts += [
        ("accuracy", f"{report.get('accuracy')} 95% CI {ci_text(report.get('accuracy_ci95'))} "
                     f"({report.get('accuracy_denominator', '?')})"),
        ("coverage", share(report.get("pairs_labelled", 0), asked, f"{report.get('label_failures', 0)} failed")),
        ("accuracy over labelled pairs only", f"{report.get('accuracy_labelled_only')} "
                                              f"(of {report.get('pairs_labelled', 0)}; flatters a judge that fails)"),
        ("position-bias rate", f"{report.get('position_bias_rate')} ({report.get('position_bias_denominator', '?')})"),
        ("accuracy by order", ", ".join(f"{k}: {v}" for k, v in (report.get("accuracy_by_order") or {}).items())
         + f" (each over the labelled pairs judged in that order, of {report.get('pairs_labelled', 0)} labelled)"),
    ]
    labels = [r for r in source.records("labels.jsonl") if isinstance(r.get("p_human_choice"), (int, float))]
    if labels:
        confidence = [max(r["p_human_choice"], 1 - r["p_human_choice"]) for r in labels]
        correct = [credit(r["p_human_choice"]) for r in labels]
        points = reliability_bins(confidence, correct, bins)
        section.figures.append(Figure(
            plots.reliability(points, title="calibration against human labels"),
            f"Reliability diagram: accuracy against confidence in {bins} bins, over the {len(labels)} labelled pairs "
            f"of {asked} asked ({report.get('label_failures', 0)} failed labels are not in it; a tie counts half). "
            f"Expected calibration error {expected_calibration_error(points)}."))
        section.tables.append(Table("Calibration bins (confidence = max(p, 1-p)).",
                                    ["confidence", "pairs", "mean confidence", "accuracy"],
                                    [[f"{b['low']}–{b['high']}", b["count"], b["mean_confidence"], b["accuracy"]]
                                     for b in points]))
    return finish_section(section)


def model_section(source: Source) -> Section:
    section = Section("Trained model", source)
    report = source.json("train_report.json")
    for key, value in report.items():
        if key != "out" and not isinstance(value, (dict, list)):
            section.facts.append((key.replace("_", " "), str(value)))
    log = list(source.records("training_log.jsonl"))
    series = {"train loss": [(r["step"], r["loss"]) for r in log if "loss" in r and "step" in r],
              "eval loss": [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r and "step" in r]}
    series = {k: v for k, v in series.items() if v}
    if series:
        steps = max(x for points in series.values() for x, _ in points)
        section.figures.append(Figure(plots.lines(series, title=f"loss: {source.path.name}", xlabel="step",
                                                  ylabel="loss"),
                                      f"Training loss per logged step ({len(series.get('train loss', []))} points "
                                      f"over {steps} steps) from training_log.jsonl."))
    card = source.text("README.md")
    facts = [line[2:] for line in card.splitlines() if line.startswith("- ")]
    if facts:
        section.examples.append(Example("model card (README.md)", [("facts", "\n".join(facts))]))
    return finish_section(section)
