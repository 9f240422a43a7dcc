"""The report's per-principle tables, the strength plot and the A/B section, from scripted runs
(the builders are shared with the Chromium test in tests/e2e/test_report_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cai.evaluate.constitutions import ConstitutionsEvalConfig, run_constitutions_eval
from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
from cai.report import ReportConfig, build_report
from cai.evaluate.revisions import RevisionsEvalConfig, run_revisions_eval
from tests.unit.test_eval_constitutions import A, B
from tests.unit.test_eval_models import build_sl_run
from tests.unit.test_principle_stats import RULES, human_pairs
from tests.unit.test_report import build_rl_run


def build_audit_run(folder: Path) -> Path:
    """An eval judge run with the per-principle audit: principles that duplicate, never move, go below chance."""
    (folder / "rules.yaml").write_text(RULES)
    out = folder / "judge-audit"
    run_judge_eval(JudgeEvalConfig.of(pairs=str(human_pairs(folder)), out=str(out), judges=["fake:rule-judge"],
                                      constitution=str(folder / "rules.yaml"), per_principle=True,
                                      strength_bootstrap=100), show_progress=False)
    return out


def build_ab_run(folder: Path) -> Path:
    (folder / "a.yaml").write_text(A)
    (folder / "b.yaml").write_text(B.replace("name: rules-b", "name: <b>rules-b</b>"))  # a name is text, not markup
    out = folder / "ab"
    run_constitutions_eval(ConstitutionsEvalConfig.of(
        constitution_a=str(folder / "a.yaml"), constitution_b=str(folder / "b.yaml"), pairs=str(human_pairs(folder)),
        out=str(out), judges=["fake:rule-judge"], per_principle=True, strength_bootstrap=100, seed=1),
        show_progress=False)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, object, str]:
    root = tmp_path_factory.mktemp("principles")
    build_audit_run(root)
    build_ab_run(root)
    build_rl_run(root)
    run_revisions_eval(RevisionsEvalConfig.of(sl_run=str(build_sl_run(root)), judge="fake:ev-judge"),
                       show_progress=False)
    result = build_report(ReportConfig(paths=[str(root)], out=str(root / "report.html")))
    return root, result, (root / "report.html").read_text()


def test_judge_section_has_both_tables_flags_and_the_strength_plot(built) -> None:
    _, result, _ = built
    judge = next(s for s in result.sections if s.source.kind == "eval judge")
    captions = [t.caption for t in judge.tables]
    assert any(c.startswith("Per principle: labels by the principle they sampled") for c in captions)
    alone = next(t for t in judge.tables if t.caption.startswith("Per principle: every pair under each principle"))
    rows = {r[0]: r for r in alone.rows}
    assert set(rows) == {"safe", "safe-again", "unsafe", "coin", "first", "broken"}
    assert rows["safe"][alone.headers.index("strength [95% bootstrap]")].startswith("+0.333 [")
    assert rows["safe"][alone.headers.index("relevance")].startswith("0.67 [") and "(4 of 6)" in rows["safe"][2]
    note = next(n for n in judge.notes if n.startswith("Principles that stand out (every pair"))
    assert "coin: never moves a label" in note and "safe: duplicates safe-again (r = 1.0" in note
    assert "unsafe: agrees with the human labels less than chance" in note
    assert any(f.caption.startswith("Strength = relevance x 2(accuracy - 0.5)") for f in judge.figures)


def test_rl_section_has_its_per_principle_table(built) -> None:
    _, result, _ = built
    rl = next(s for s in result.sections if s.source.kind == "rl")
    table = next(t for t in rl.tables if t.caption.startswith("Per principle"))
    assert table.headers[:4] == ["principle", "attempted", "labelled", "kept"]
    assert sum(int(r[1]) for r in table.rows) == rl.source.summary["labels_attempted"]


def test_revisions_section_has_the_win_rate_per_principle(built) -> None:
    _, result, _ = built
    revisions = next(s for s in result.sections if s.source.kind == "eval revisions")
    table = next(t for t in revisions.tables if t.caption.startswith("Per principle: revisions by the principle"))
    assert table.headers == ["principle", "harmlessness win rate vs initial", "helpfulness win rate vs initial",
                             "flags"]
    assert all("labelled of" in cell for row in table.rows for cell in row[1:3])


def test_ab_section(built) -> None:
    _, result, html = built
    ab = next(s for s in result.sections if s.source.kind == "eval constitutions")
    facts = dict(ab.facts)
    assert facts["constitution B"].startswith("<b>rules-b</b> (hash ")
    assert facts["McNemar (exact, two-sided)"].startswith("p = ")
    assert "of 6" in facts["agreement"] and facts["accuracy A vs human labels"].startswith("0.")
    deltas = next(t for t in ab.tables if t.caption.startswith("Per-principle deltas"))
    assert {r[0]: r[1] for r in deltas.rows} == {"safe": "changed", "coin": "same"}
    assert deltas.rows[0][-1] == "-0.667"
    assert len(ab.examples) == ab.source.json("report.json")["flips"]["count"] == 2
    assert "&lt;b&gt;rules-b&lt;/b&gt;" in html and "<b>rules-b</b>" not in html
    assert re.search(r"<h2>A/B test of two constitutions</h2>", html)
