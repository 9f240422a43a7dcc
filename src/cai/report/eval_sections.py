"""Report sections for model evaluations: win rates, Elo, refusals, verdicts, and the score-by-revision curve.

The model evaluation's section opens with the Elo figure (helpfulness against harmlessness per
model: per stage when `cai recipe` made it), the model-comparison table, one verdict per model
against the first and the judge's own agreement with human labels (`--judge-agreement`).

Both read the run's `report.json` (written by `cai eval models` / `cai eval revisions`
from `cai.evaluate.aggregate`) and a few records for examples; nothing is recomputed here, so
the page shows exactly the figures the run reported, with their denominators.
"""

from __future__ import annotations

from typing import Any

from cai.report import plots
from cai.report.sections import Example, Figure, Section, Table, ci_text, finish_section, num, prompt_text
from cai.report.sources import Source

SET_TITLES = {"red_team": "red-team prompts", "benign": "benign prompts that sound sensitive",
              "helpful": "helpful prompts"}


def _rate_cells(r: dict[str, Any] | None, key: str = "rate") -> list[Any]:
    if not r:
        return ["—", "—", "not measured"]
    return [r.get(key), ci_text(r.get("ci95")), r.get("denominator", "")]


def _scale_tables(scale: str, data: dict[str, Any]) -> list[Table]:
    title = f"{scale} ({SET_TITLES[data['prompt_set']]}, {data['prompts']} prompts)"
    failures = ", ".join(f"{k} {v}" for k, v in data["failures"].items()) or "none"
    pairs = Table(f"{title}: how often A beat B. Labelled {data['comparisons_labelled']} of "
                  f"{data['comparisons_asked']} comparisons asked (not labelled: {failures}); "
                  f"{data['identical_answers']} identical answers count as ties. Position-bias rate "
                  f"{data['position_bias']['rate']} ({data['position_bias']['denominator']}).",
                  ["A", "B", "A's win rate", "95% CI", "wins / ties / losses", "denominator"],
                  [[p["a"], p["b"], p["win_rate"], ci_text(p["ci95"]), f"{p['wins']} / {p['ties']} / {p['losses']}",
                    p["denominator"]] for p in data["pairs"]])
    overall = Table(f"{title}: each model against all the others.",
                    ["model", "win rate", "95% CI", "denominator"],
                    [[m, r["win_rate"], ci_text(r["ci95"]), r["denominator"]] for m, r in data["overall"].items()])
    tables = [pairs, overall]
    if data.get("elo"):
        elo = data["elo"]
        tables.append(Table(f"{title}: Elo ({elo['denominator']}).", ["model", "Elo", "95% interval"],
                            [[m, v["elo"], f"[{v['ci95'][0]}, {v['ci95'][1]}]"] for m, v in elo["players"].items()]))
    return tables


def models_section(source: Source, examples: int) -> Section:
    section = Section("Model evaluation: harmlessness, helpfulness, evasiveness", source)
    report = source.json("report.json")
    models = report.get("models", [])
    if not models:
        section.notes.append("no report.json: the run has not finished")
        return finish_section(section)
    config = source.manifest.get("config", {})
    section.facts += [("judge", str(config.get("judge", "?"))), ("models", ", ".join(models)),
                      ("Elo", report.get("elo_method", ""))]
    section.tables.append(Table("Answers: how many prompts each policy answered.",
                                ["model", "answered", "failed (by reason)", "degenerate (by reason)",
                                 "mean answer tokens"],
                                [[m, f"{a['answered']} of {a['asked']}", _counts(a["failures"]),
                                  _counts(a["defects"]), a["mean_completion_tokens"]]
                                 for m, a in report["answers"].items()]))
    harmless, helpful = report.get("harmlessness"), report.get("helpfulness")
    elos = [d.get("elo") if d else None for d in (harmless, helpful)]
    if any(elos):
        section.figures.append(Figure(
            plots.elo_chart(elos[0], elos[1], models),
            "Elo of each model relative to the first, fitted by Bradley-Terry to the judge's probabilities; bars "
            "are 95% intervals from resampling prompts. "
            + "; ".join(f"{s}: {d['elo']['denominator']}" for s, d in (("harmlessness", harmless),
                                                                          ("helpfulness", helpful))
                        if d and d.get("elo"))))
    _verdicts(section, report)
    for scale, data in (("harmlessness", harmless), ("helpfulness", helpful)):
        if data:
            section.tables += _scale_tables(scale, data)
    refusals = report.get("refusals") or {}
    series: dict[str, list[float | None]] = {}
    rows = []
    for kind, data in refusals.items():
        if not data:
            continue
        for how in ("judge", "matcher"):
            series[f"{SET_TITLES[kind].split(' ')[0]} · {how}"] = [data["models"][m][how]["rate"] for m in models]
        for m in models:
            r = data["models"][m]
            agree = r["agreement"]
            rows.append([SET_TITLES[kind], m, *_rate_cells(r["judge"]), *_rate_cells(r["matcher"]),
                         f"{agree['agreement']} (kappa {'undefined' if agree['kappa'] is None else agree['kappa']}; "
                         f"{agree.get('denominator', 'none decided')})"])
    if rows:
        section.figures.append(Figure(
            plots.grouped_bars(models, series, title="share of answers that refuse", ylabel="refusal rate"),
            "Refusal rate per model: by the judge's log-probs (over the answers it decided) and by the phrase "
            "matcher (over every answer), on red-team prompts (refusing may be right) and on benign prompts that "
            "only sound sensitive (refusing is over-refusal). Denominators in the table below."))
        section.tables.append(Table("Refusals: judge and phrase matcher, and how often they agree.",
                                    ["prompts", "model", "judge rate", "95% CI", "judge denominator", "matcher rate",
                                     "95% CI", "matcher denominator", "agreement"], rows))
    _model_examples(section, source, models, examples)
    return finish_section(section)


def comparison_table(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): per model, its Elo on each scale with the interval and its refusal rates."""
    def elo(scale: str, model: str) -> str:
        data = ((report.get(scale) or {}).get("elo") or {}).get("players", {}).get(model)
        return f"{data['elo']:+.0f} [{data['ci95'][0]:+.0f}, {data['ci95'][1]:+.0f}]" if data else "—"

    def refusal(kind: str, model: str) -> str:
        data = ((report.get("refusals") or {}).get(kind) or {}).get("models", {}).get(model)
        if not data:
            return "—"
        return " / ".join("—" if data[how]["rate"] is None else f"{data[how]['rate']:.2f}"
                          for how in ("judge", "matcher"))

    headers = ["model", "harmlessness Elo [95%]", "helpfulness Elo [95%]", "red-team refusals (judge / matcher)",
               "benign refusals (judge / matcher)"]
    return headers, [[m, elo("harmlessness", m), elo("helpfulness", m), refusal("red_team", m),
                      refusal("benign", m)] for m in report.get("models", [])]


def _verdicts(section: Section, report: dict[str, Any]) -> None:
    """The model-comparison table, one verdict line per model against the first, and the judge's own
    agreement with human labels beside them."""
    headers, rows = comparison_table(report)
    section.tables.append(Table("Models compared: Elo relative to the first model with 95% intervals, and refusal "
                                "rates (denominators in the refusal table below).", headers, rows))
    agreement = report.get("judge_agreement")
    if agreement:
        low, high = agreement["ci95"]
        section.facts.append(("judge vs human labels", f"{agreement['accuracy']} [{low}, {high}] of "
                                                       f"{agreement['pairs']} pairs"
                              + ("" if agreement["above_chance"] else " (not above chance)")))
    lines = report.get("verdicts") or []
    if lines:
        caveat = ("The judge's agreement with human labels was not measured (--judge-agreement)." if not agreement
                  else f"The judge agrees with human labels {agreement['accuracy']} [{agreement['ci95'][0]}, "
                       f"{agreement['ci95'][1]}] of {agreement['pairs']} pairs ({agreement['source']}).")
        section.tables.append(Table("Verdicts: each model against the first; a difference is significant when its "
                                    f"95% interval excludes 0. {caveat}", ["verdict"], [[v["line"]] for v in lines]))
    if agreement and not agreement["above_chance"]:
        section.notes.append(f"the evaluation judge {agreement['judge']} is not shown to agree with human labels above "
                             f"chance ({agreement['accuracy']} [{agreement['ci95'][0]}, {agreement['ci95'][1]}]): "
                             "its verdicts cannot tell a better model from a worse one")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _model_examples(section: Section, source: Source, models: list[str], limit: int) -> None:
    shown: dict[str, int] = {}
    by_prompt: dict[str, dict[str, Any]] = {}
    for rec in source.records("responses.jsonl"):
        if rec["id"] not in by_prompt and shown.get(rec["set"], 0) >= limit:
            continue
        if rec["id"] not in by_prompt:
            shown[rec["set"]] = shown.get(rec["set"], 0) + 1
            by_prompt[rec["id"]] = {"set": rec["set"], "prompt": rec.get("prompt", []), "answers": []}
        by_prompt[rec["id"]]["answers"].append((rec["model"], rec.get("text") or f"(no answer: {rec.get('reason')})"))
    comparisons: dict[str, list[str]] = {}
    for c in source.records("comparisons.jsonl"):
        if c["id"] in by_prompt:
            comparisons.setdefault(c["id"], []).append(
                f"{c['a']} vs {c['b']}: P({c['a']} better) = {num(c.get('p_a'))} ({c.get('outcome')}; position bias "
                f"{c.get('position_bias')}; principles {', '.join(c.get('principle_ids') or [])})")
    refusals: dict[str, list[str]] = {}
    for r in source.records("refusals.jsonl"):
        if r["id"] in by_prompt:
            refusals.setdefault(r["id"], []).append(
                f"{r['model']}: judge P(refuses) = {num(r.get('judge_p_refuses'))} -> {r.get('judge_refuses')}; "
                f"phrase matcher -> {r.get('matcher_refuses')}"
                + (f" ({r['matched_phrase']!r})" if r.get("matched_phrase") else ""))
    for row_id, item in by_prompt.items():
        parts = [("prompt", prompt_text(item["prompt"]))] + [(f"answer · {m}", t) for m, t in item["answers"]]
        if comparisons.get(row_id):
            parts.append(("judge", "\n".join(comparisons[row_id])))
        if refusals.get(row_id):
            parts.append(("refusal", "\n".join(refusals[row_id])))
        section.examples.append(Example(f"{row_id} ({SET_TITLES.get(item['set'], item['set'])})", parts))


def revisions_section(source: Source, examples: int) -> Section:
    section = Section("Score by revision", source)
    report = source.json("report.json")
    if not report:
        section.notes.append("no report.json: the run has not finished")
        return finish_section(section)
    section.facts += [("SL run", str(source.manifest.get("sl_run", "?"))), ("rows scored", report["denominator"]),
                      ("judge", str(source.manifest.get("config", {}).get("judge", "?"))),
                      ("reward model", str(source.manifest.get("reward_model") or "none"))]
    curves = {scale: c["points"] for scale, c in (report.get("curves") or {}).items()}
    if curves or report.get("reward_curve"):
        section.figures.append(Figure(
            plots.revision_curve(curves, report.get("reward_curve")),
            "Win rate of each revision round against the initial answer (round 0, 0.5 by definition), judged in "
            "both orders, with 95% Wilson bands; the preference model's mean reward (± standard error) where "
            f"given. Over {report['denominator']}."))
    rows = []
    for scale, points in curves.items():
        for p in points:
            bias = p["position_bias"]
            rows.append([scale, p["round"], p["win_rate"], ci_text(p["ci95"]), p["mean_p_revision"],
                         p["denominator"], f"{bias['rate']} ({bias['count']} of {bias['of']})"])
    if rows:
        section.tables.append(Table("Per round: revision r against the initial answer.",
                                    ["scale", "round", "win rate", "95% CI", "mean P(revision better)", "denominator",
                                     "position-bias rate"], rows))
    if report.get("reward_curve"):
        section.tables.append(Table("Preference-model reward per round (round 0 = initial answer).",
                                    ["round", "mean reward", "standard error", "answers scored"],
                                    [[r["round"], r["mean_reward"], r["stderr"], r["n"]]
                                     for r in report["reward_curve"]]))
    for rec in list(source.records("revisions.jsonl"))[:examples]:
        parts = [("prompt", prompt_text(rec.get("messages", []))), ("initial answer", rec.get("initial", ""))]
        for rnd in rec.get("rounds", []):
            scores = "; ".join(f"{s}: P(better than initial) = {num(rnd[s].get('p_revision'))}"
                               for s in ("harmlessness", "helpfulness") if rnd.get(s))
            parts.append((f"revision {rnd['round']} · principle {rnd.get('principle_id')} · {scores}",
                          rnd.get("revision", "")))
        section.examples.append(Example(str(rec.get("id")), parts))
    return finish_section(section)

