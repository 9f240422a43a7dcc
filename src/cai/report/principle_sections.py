"""What the report shows per principle, and the A/B section of `cai eval constitutions`.

- `add_principle_parts(section)`: for an rl run (summary.json `per_principle`), an eval judge
  run (report.json `per_principle` and, with `--per-principle`, `principles_alone`) or an
  eval revisions run (report.json `per_principle`), a table with a row per principle (every
  figure with its interval and its count of what), a note naming the principles that stand
  out (never move a label, below chance, duplicate another), and, for the audit, a forest
  plot of each principle's strength with its bootstrap interval.
- `redteam_section(source, examples)`: a `cai redteam` run: kept and dropped by reason,
  duplicates, diversity beside the seeds', coverage per principle, example prompts.
- `constitutions_section(source, examples)`: agreement, flips with examples, accuracy of each
  constitution against the human labels, the exact McNemar test and the per-principle deltas.

The tables' text comes from `cai.stats.principles.display_rows`, the same rows `cai` prints
at the end of a run. Not here: computing any figure (`cai.stats.principles`,
`cai.evaluate.constitutions`).
"""

from __future__ import annotations

from typing import Any

from cai.report import plots
from cai.report.sections import Example, Figure, Section, Table, ci_text, finish_section, num, prompt_text
from cai.report.sources import Source
from cai.stats.principles import display_rows

FLAG_WORDS = {"never_moves_a_label": "never moves a label", "never_sampled": "never sampled",
              "below_chance": "agrees with the human labels less than chance",
              "below_chance_ci": "agrees with the human labels less than chance (95% interval below 0.5)",
              "revisions_lose": "its revisions lose to the answers they revise"}


def _tables_of(source: Source) -> list[tuple[str, dict[str, Any]]]:
    """(what, table) for each per-principle table this source holds."""
    if source.kind == "rl":
        return [("labels by the principle they sampled", source.summary.get("per_principle") or {})]
    if source.kind == "eval judge":
        report = source.json("report.json") or source.summary
        return [("labels by the principle they sampled", report.get("per_principle") or {}),
                ("every pair under each principle alone", report.get("principles_alone") or {})]
    if source.kind == "eval revisions":
        return [("revisions by the principle that asked for them",
                 source.json("report.json").get("per_principle") or {})]
    if source.kind == "redteam":
        return [("red-team prompts aimed at each", source.summary.get("coverage_per_principle") or {})]
    return []


def _standing_out(table: dict[str, Any]) -> list[str]:
    lines = []
    for pid, row in (table.get("principles") or {}).items():
        words = []
        for flag in row.get("flags", []):
            if flag.startswith("duplicates:"):
                corr = row.get("most_correlated") or {}
                words.append(f"duplicates {flag.split(':', 1)[1]} (r = {corr.get('r')}, over {corr.get('pairs')} "
                             "pairs)")
            else:
                words.append(FLAG_WORDS.get(flag, flag))
        if words:
            lines.append(f"{pid}: {'; '.join(words)}")
    return lines


def add_principle_parts(section: Section) -> Section:
    """Append the per-principle tables (and the strength plot) of the section's source, if it has any."""
    for what, table in _tables_of(section.source):
        headers, rows = display_rows(table)
        if not rows:
            continue
        section.tables.append(Table(f"Per principle: {what}. {table.get('denominator', '')}. Intervals are 95%.",
                                    headers, rows))
        flagged = _standing_out(table)
        if flagged:
            section.notes.append(f"Principles that stand out ({what}): " + " · ".join(flagged))
        principles = table.get("principles") or {}
        if principles and "strength" in next(iter(principles.values())):
            points = [(pid, r["strength"]["value"], r["strength"]["ci95"]) for pid, r in principles.items()]
            section.figures.append(Figure(
                plots.intervals(points, title="strength of each principle alone", xlabel="strength", reference=0.0),
                f"Strength = relevance x 2(accuracy - 0.5) of each principle alone on the {table.get('pairs')} pairs, "
                f"with its 95% bootstrap interval ({table.get('bootstrap')} resamples of the pairs): +1 always votes "
                f"with the human labels, -1 always against, 0 never votes or is right half the time. A principle "
                f"votes when |2p-1| >= {table.get('vote_margin')}."))
    return section


def redteam_section(source: Source, examples: int) -> Section:
    """`cai redteam`: what was generated, kept and dropped, duplicates and diversity, example prompts."""
    section = Section("Generated red-team prompts", source)
    s = source.summary
    total, kept = s.get("prompts_generated", 0), s.get("prompts_kept", 0)
    dedup, div, seeds = s.get("deduplication") or {}, s.get("diversity") or {}, s.get("seed_diversity") or {}
    config = source.manifest.get("config", {})
    section.facts += [
        ("model", f"{config.get('model', '?')} ({config.get('mode', '?')} mode), aimed at {config.get('principle', '?')}"),
        ("kept", f"{kept} of {total} samples the model wrote"),
        ("dropped by reason", ", ".join(f"{k} {v}" for k, v in (s.get("dropped_by_reason") or {}).items()) or "none"),
        ("duplicates", f"{dedup.get('duplicates', 0)} of {dedup.get('checked', 0)} that passed the filters "
                       f"({dedup.get('of_seeds', 0)} of seeds; exact {dedup.get('exact', 0)}, near "
                       f"{dedup.get('near', 0)})"),
        ("diversity", f"distinct-1 {div.get('distinct_1')}, distinct-2 {div.get('distinct_2')}, Self-BLEU "
                      f"{div.get('self_bleu')} over {div.get('prompts', 0)} kept prompts; the seeds: "
                      f"{seeds.get('distinct_1')}, {seeds.get('distinct_2')}, {seeds.get('self_bleu')} over "
                      f"{seeds.get('prompts', 0)}"),
    ]
    for r in list(source.records("prompts.jsonl"))[:max(examples, 0)]:
        section.examples.append(Example(f"{r.get('id')} (principle {r.get('principle')})", [
            ("prompt", str(r.get("prompt", ""))), ("seeds shown", "\n".join(r.get("seed_prompts") or []))]))
    return finish_section(section)


# ---- cai eval constitutions ---------------------------------------------------------------------
def _share(x: dict[str, Any] | None) -> str:
    if not x or x.get("rate") is None:
        return f"— (0 of {(x or {}).get('of', 0)})"
    count = f"{x['count']:g}" if isinstance(x["count"], float) else str(x["count"])
    return f"{x['rate']:.3f} 95% CI {ci_text(x.get('ci95'))} ({count} of {x['of']})"


def constitutions_section(source: Source, examples: int) -> Section:
    section = Section("A/B test of two constitutions", source)
    report = source.json("report.json")
    if not report:
        section.notes.append("no report.json: the run did not finish")
        return finish_section(section)
    names = report.get("constitutions", {})
    for side in ("a", "b"):
        c = names.get(side, {})
        section.facts.append((f"constitution {side.upper()}", f"{c.get('name', '?')} (hash {c.get('hash', '?')}, "
                                                               f"{c.get('judge_principles', '?')} judge principles; "
                                                               f"{c.get('source', '?')})"))
    agreement, flips = report.get("agreement", {}), report.get("flips", {})
    section.facts += [
        ("pairs", f"{report.get('pairs_asked', 0)} asked, {report.get('labelled_by_both', 0)} labelled under both; "
                  f"failed labels: A {report.get('failed', {}).get('a', 0)}, B {report.get('failed', {}).get('b', 0)}"),
        ("agreement", f"{_share(agreement)}; {agreement.get('denominator', '')}"),
        ("flips", f"{_share(flips)}; {flips.get('denominator', '')}"),
    ]
    accuracy = report.get("accuracy")
    if accuracy:
        for side in ("a", "b"):
            section.facts.append((f"accuracy {side.upper()} vs human labels",
                                  f"{_share(accuracy[side])}; {accuracy[side].get('denominator', '')}"))
        m = report.get("mcnemar", {})
        section.facts.append(("McNemar (exact, two-sided)",
                              f"p = {m.get('p_value')}: A right and B not on {m.get('a_right_b_not')} pairs, B right "
                              f"and A not on {m.get('b_right_a_not')}; difference B - A "
                              f"{m.get('difference_b_minus_a')}. {m.get('denominator', '')}"))
        section.figures.append(Figure(
            plots.intervals([(f"{side.upper()}: {names.get(side, {}).get('name', side)}", accuracy[side]["rate"],
                              accuracy[side]["ci95"]) for side in ("a", "b")],
                            title="accuracy against the human labels", xlabel="accuracy", reference=0.5),
            f"Each constitution's accuracy over all {report.get('pairs_asked', 0)} pairs asked (ties and failed labels "
            "half), with its 95% Wilson interval; 0.5 is a coin."))
    else:
        section.notes.append("the pairs have no human labels (--no-human-labels): agreement and flips only")
    _deltas_table(section, report)
    for e in (report.get("flip_examples") or [])[:max(examples, 0)]:
        first = "first (the human's choice)" if e.get("first_is_human_choice") else "first"
        section.examples.append(Example(f"flip {e.get('id')} ({e.get('source', '')})", [
            ("prompt", prompt_text(e.get("prompt", []))), (first, str(e.get("first", ""))),
            ("second", str(e.get("second", ""))),
            ("labels", f"P(first) under A {num(e['a'].get('p_first'))} (principles "
                       f"{', '.join(e['a'].get('principle_ids') or [])}); under B {num(e['b'].get('p_first'))} "
                       f"(principles {', '.join(e['b'].get('principle_ids') or [])})")]))
    return finish_section(section)


def _deltas_table(section: Section, report: dict[str, Any]) -> None:
    per = report.get("per_principle") or {}
    deltas = per.get("deltas") or {}
    if not deltas:
        return
    rows = []
    for pid, d in deltas.items():
        where = {"a": "only in A", "b": "only in B"}.get(d.get("in"), "changed" if d.get("changed") else "same")
        cells = [pid, where]
        for key in ("agreement", "strength"):
            x = d.get(key) or {}
            cells += [f"{num(x.get('a'))} (of {x.get('a_of', 0)})", f"{num(x.get('b'))} (of {x.get('b_of', 0)})",
                      "—" if x.get("delta") is None else f"{x['delta']:+.3f}"]
        rows.append(cells)
    section.tables.append(Table(
        f"Per-principle deltas (B - A): {per.get('denominator', '')}. The per-principle tables of each side, with "
        "counts and intervals, follow. (of n): the labels (agreement) or pairs (strength) behind each figure.",
        ["principle", "text", "agreement A", "agreement B", "Δ agreement", "strength A", "strength B", "Δ strength"],
        rows))
    for side in ("a", "b"):
        headers, side_rows = display_rows((report.get("principles_alone") or {}).get(side) or per.get(side) or {})
        if side_rows:
            section.tables.append(Table(f"Constitution {side.upper()} per principle.", headers, side_rows))
