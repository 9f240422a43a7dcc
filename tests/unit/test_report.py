"""`cai report` built from fixture runs of every kind (scripted engines), and hostile text in it."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cai.engines.fake import FakeScript, register_script
from cai.evaluate.revisions import RevisionsEvalConfig, run_revisions_eval
from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
from cai.report import ReportConfig, build_report
from cai.report.sources import ReportError
from cai.generate.rl import RLConfig, run_rl
from tests.conftest import write_jsonl
from tests.unit.test_eval_models import HOSTILE, build_models_run, build_sl_run

HOSTILE_MODEL = "<script>$x$"  # a policy name: drawn in a figure, written in tables


def _candidates(request, k: int) -> str:
    return f"SAFE candidate {k} {HOSTILE}" if k == 0 else f"risky candidate {k}"


register_script("rep-policy", FakeScript(_candidates))


def build_rl_run(folder: Path) -> Path:
    prompts = write_jsonl(folder / "rl-prompts.jsonl", [{"id": f"q{i}", "prompt": f"question {i} {HOSTILE}"}
                                                       for i in range(3)])
    out = folder / "rl"
    run_rl(RLConfig.of(prompts=str(prompts), out=str(out), policy="fake:rep-policy", judges=["fake:ev-judge"],
                       candidates=2, min_margin=0.0), show_progress=False)
    return out


def build_judge_run(folder: Path) -> Path:
    def pair(i: int, chosen: str, rejected: str) -> dict:
        return {"id": f"h{i}", "prompt": [{"role": "user", "content": f"q{i}"}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    pairs = write_jsonl(folder / "pairs.jsonl", [pair(0, "SAFE a", "bad a"), pair(1, "SAFE b", "bad b"),
                                                 pair(2, "bad c", "SAFE c"), pair(3, "same", "same too")])
    out = folder / "judge"
    run_judge_eval(JudgeEvalConfig.of(pairs=str(pairs), out=str(out), judges=["fake:ev-judge"]), show_progress=False)
    return out


def build_model_folder(folder: Path) -> Path:
    out = folder / "models" / "pm"
    out.mkdir(parents=True)
    write_jsonl(out / "training_log.jsonl", [{"step": s, "loss": 0.7 - 0.05 * s} for s in range(1, 6)]
                + [{"step": 5, "eval_loss": 0.6}])
    (out / "train_report.json").write_text(json.dumps({"kind": "reward", "out": str(out), "steps": 5,
                                                       "final_loss": 0.45, "labels": "soft (p_chosen on 6 of 6)"}))
    (out / "README.md").write_text(f"# pm\n\n## Data\n\n- data: `runs/rl` {HOSTILE}\n- constitution: default\n")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    build_sl_run(root)
    run_revisions_eval(RevisionsEvalConfig.of(sl_run=str(root / "sl"), judge="fake:ev-judge"), show_progress=False)
    build_models_run(root, models=["fake:ev-safe", f"{HOSTILE_MODEL}=fake:ev-refuse"])
    build_rl_run(root)
    build_judge_run(root)
    build_model_folder(root)
    with (root / "rl" / "preferences.jsonl").open("a") as fh:
        fh.write("{not json\n")  # a torn line: skipped and counted, never fatal
    return root


@pytest.fixture(scope="module")
def built(runs: Path, tmp_path_factory) -> tuple[str, object]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = build_report(ReportConfig(paths=[str(runs)], out=str(out)))
    return out.read_text("utf-8"), result


class _Page(HTMLParser):
    """Tags seen, the text of every <pre>, and the text of every SVG <text>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.pre: list[str] = []
        self.svg_text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        self._in.append(tag)
        if tag == "pre":
            self.pre.append("")
        if tag == "text":
            self.svg_text.append("")

    def handle_endtag(self, tag) -> None:
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass

    def handle_data(self, data) -> None:
        if "pre" in self._in:
            self.pre[-1] += data
        if "text" in self._in:
            self.svg_text[-1] += data


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_every_kind_of_source_gets_a_section_with_its_figures(built) -> None:
    html, result = built
    kinds = [s.source.kind for s in result.sections]
    assert kinds == ["eval models", "eval revisions", "sl", "rl", "eval judge", "model"]
    figures = {s.source.kind: [f.caption for f in s.figures] for s in result.sections}
    assert any("Elo" in c for c in figures["eval models"]) and any("Refusal" in c for c in figures["eval models"])
    assert any("revision round" in c for c in figures["eval revisions"])
    assert any("Label histogram" in c for c in figures["rl"]) and any("Margin" in c for c in figures["rl"])
    assert any("Reliability diagram" in c for c in figures["eval judge"])
    assert any("Training loss" in c for c in figures["model"])
    page = _page(html)
    assert page.tags.count("svg") == result.figures >= 8  # every figure is inline SVG


def test_the_page_is_self_contained(built) -> None:
    html, _ = built
    page = _page(html)
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert "http://" not in html.replace("http://www.w3.org/", "") and "https://" not in html
    assert "default-src 'none'" in html  # no script could run even if one got in


def test_hostile_text_renders_as_text(built) -> None:
    html, _ = built
    page = _page(html)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    # the trace text arrives whole inside one <pre>, with its closing tags and template syntax as text
    assert any(HOSTILE in text for text in page.pre), "the hostile critique is not shown as text"
    assert "{{ 7*7 }}" in html and "{% if 1 %}" in html
    # the hostile policy name is text in the figures too, $ and all (no mathtext)
    assert any(HOSTILE_MODEL in t for t in page.svg_text)
    assert page.tags.count("details") == html.count("</details>")  # no element was closed early


def test_rates_state_their_denominators(built) -> None:
    html, result = built
    assert "3 comparisons labelled, ties counted half; 0 of 3 asked" in html
    assert "of 3 answers the judge decided" in html and "labels judged in both orders" in html
    judge = next(s for s in result.sections if s.source.kind == "eval judge")
    facts = dict(judge.facts)
    assert "of 4" in facts["coverage"] and "all 4 pairs asked" in facts["accuracy"]
    rl = next(s for s in result.sections if s.source.kind == "rl")
    assert "of 3" in dict(rl.facts)["label coverage"]
    assert "preferences.jsonl: 1 malformed line(s) skipped" in rl.notes
    revisions = next(s for s in result.sections if s.source.kind == "eval revisions")
    assert "3 SL rows that finished; 0 rows" in dict(revisions.facts)["rows scored"]
    sl = next(s for s in result.sections if s.source.kind == "sl")  # row s2's revisions change nothing
    assert dict(sl.facts)["kept with a revision quality flag"] == "0.333 (1 of 3; 2 kept clean)"
    (gates,) = [t for t in sl.tables if t.caption.startswith("Revision quality gates (--gates default)")]
    assert "over the 3 rows finished (3 kept, 0 failed for any reason)" in gates.caption
    assert gates.rows[:2] == [["copies_critique", "fail", "0.000 (0 of 3)", "0.000 (0 of 3)"],
                              ["unchanged", "flag", "0.333 (1 of 3)", "0.000 (0 of 3)"]]
    assert "revision · flagged unchanged" in html


def test_sources_must_hold_something(tmp_path) -> None:
    with pytest.raises(ReportError, match="no such directory"):
        build_report(ReportConfig(paths=[str(tmp_path / "missing")], out=str(tmp_path / "r.html")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no cai run"):
        build_report(ReportConfig(paths=[str(tmp_path / "empty")], out=str(tmp_path / "r.html")))


def test_cai_report_command(runs, tmp_path) -> None:
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "cai.cli.__main__", "report", str(runs / "rl"), str(runs / "judge"),
                           "--out", str(out), "--title", "T <b>"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 sections from 2 sources" in proc.stderr
    assert "<title>T &lt;b&gt;</title>" in out.read_text("utf-8")
    bad = subprocess.run([sys.executable, "-m", "cai.cli.__main__", "report", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such directory" in bad.stderr
