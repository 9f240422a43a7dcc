"""`cai eval constitutions A B` with a scripted judge whose principles behave in known ways:
agreement, flips, accuracy and McNemar by hand, per-principle deltas, the call cache shared by
the two sides, and one side's failures counted without losing the other's labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.evaluate.constitutions import ConstitutionsEvalConfig, ab_report, run_constitutions_eval
from cai.inputs.constitution import load_constitution
from tests.conftest import read_jsonl
from tests.unit.test_principle_stats import human_pairs  # noqa: F401  (registers the rule judge too)

P = 1 / (1 + math.exp(-2.9))  # the rule judge's probability for the reply its rule prefers

A = """name: rules-a
principles:
  - {id: safe, judge: "Judge by rule-safe."}
  - {id: coin, judge: "Judge by rule-coin."}
"""
B = A.replace("name: rules-a", "name: rules-b").replace("Judge by rule-safe.", "Judge by rule-unsafe.")


@pytest.fixture(scope="module")
def ab(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ab")
    (folder / "a.yaml").write_text(A)
    (folder / "b.yaml").write_text(B)
    out = folder / "ab"
    result = run_constitutions_eval(ConstitutionsEvalConfig.of(
        constitution_a=str(folder / "a.yaml"), constitution_b=str(folder / "b.yaml"), pairs=str(human_pairs(folder)),
        out=str(out), judges=["fake:rule-judge"], per_principle=True, strength_bootstrap=100, seed=1),
        show_progress=False)  # seed 1 samples `safe` for h2, h3 and h6, `coin` for the rest
    return out, result.summary


def test_a_changed_principle_flips_exactly_its_pairs(ab) -> None:
    out, summary = ab
    report = json.loads((out / "report.json").read_text())
    rows = read_jsonl(out / "comparisons.jsonl")
    assert len(rows) == report["pairs_asked"] == 6
    for r in rows:  # both sides sampled the same principle for the same pair
        assert r["a"]["principle_ids"] == r["b"]["principle_ids"]
    safe_pairs = [r for r in rows if r["a"]["principle_ids"] == ["safe"]]
    votes = [r for r in safe_pairs if r["id"] in ("h1", "h2", "h3", "h4")]  # exactly one reply says SAFE
    assert report["flips"]["count"] == len(votes)  # rule-safe against rule-unsafe: every vote reverses
    assert report["agreement"]["count"] == 6 - len(votes) and report["agreement"]["of"] == 6
    for r in votes:
        assert r["a"]["p_human_choice"] == pytest.approx(1 - r["b"]["p_human_choice"])
        assert r["a"]["p_human_choice"] in (pytest.approx(P), pytest.approx(1 - P))
    assert [e["id"] for e in report["flip_examples"]] == [r["id"] for r in votes] == ["h2", "h3"]


def test_accuracy_and_mcnemar_by_hand(ab) -> None:
    out, summary = ab
    report = json.loads((out / "report.json").read_text())
    rows = read_jsonl(out / "comparisons.jsonl")

    def right(p):
        return p is not None and p > 0.5

    only_a = sum(1 for r in rows if right(r["a"]["p_human_choice"]) and not right(r["b"]["p_human_choice"]))
    only_b = sum(1 for r in rows if right(r["b"]["p_human_choice"]) and not right(r["a"]["p_human_choice"]))
    m = report["mcnemar"]
    assert (m["a_right_b_not"], m["b_right_a_not"]) == (only_a, only_b)
    n = only_a + only_b
    expected = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n) if n else 1.0
    assert m["p_value"] == pytest.approx(expected, abs=1e-6)
    for side in ("a", "b"):
        credits = [1.0 if right(r[side]["p_human_choice"]) else 0.5 if r[side]["p_human_choice"] == 0.5 else 0.0
                   for r in rows]
        assert report["accuracy"][side]["rate"] == pytest.approx(sum(credits) / 6, abs=1e-4)
    assert summary["accuracy_a"] == report["accuracy"]["a"]["rate"] and summary["mcnemar_p"] == m["p_value"]
    # by hand: A is right on h2 and h3 and ties the rest; B is wrong on h2 and h3
    assert report["accuracy"]["a"]["rate"] == pytest.approx(4 / 6, abs=1e-4)
    assert report["accuracy"]["b"]["rate"] == pytest.approx(2 / 6, abs=1e-4)
    assert (only_a, only_b, m["p_value"]) == (2, 0, 0.5)


def test_per_principle_deltas(ab) -> None:
    out, _ = ab
    report = json.loads((out / "report.json").read_text())
    deltas = report["per_principle"]["deltas"]
    assert deltas["safe"]["changed"] is True and deltas["coin"]["changed"] is False
    # every pair alone: rule-safe has strength +1/3 on these pairs, rule-unsafe -1/3; the coin never moves
    assert deltas["safe"]["strength"] == {"a": pytest.approx(1 / 3, abs=1e-4), "b": pytest.approx(-1 / 3, abs=1e-4),
                                          "delta": pytest.approx(-2 / 3, abs=1e-3), "a_of": 6, "b_of": 6}
    assert deltas["coin"]["strength"]["delta"] == 0.0
    assert report["principles_alone"]["b"]["principles"]["safe"]["flags"][0].startswith("below_chance")


def test_the_two_sides_share_the_call_cache(ab) -> None:
    _, summary = ab
    # made: A's 2 principles alone (6 pairs x 2 orders each) + B's changed one; the rest is asked again and cached:
    # B's unchanged coin (12) and both sides' main labels (2 x 6 pairs x 2 orders)
    assert summary["engine_calls_made"] == 2 * 12 + 12
    assert summary["engine_calls_from_cache"] == 12 + 2 * 12


def test_one_sides_failures_are_counted_not_lost(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(A)
    (tmp_path / "broken.yaml").write_text("principles:\n  - {id: broken, judge: Judge by rule-broken.}\n")
    result = run_constitutions_eval(ConstitutionsEvalConfig.of(
        constitution_a=str(tmp_path / "a.yaml"), constitution_b=str(tmp_path / "broken.yaml"),
        pairs=str(human_pairs(tmp_path)), out=str(tmp_path / "ab"), judges=["fake:rule-judge"]), show_progress=False)
    report = json.loads((tmp_path / "ab" / "report.json").read_text())
    assert report["failed"] == {"a": 0, "b": 6} and report["labelled_by_both"] == 0
    assert report["agreement"]["rate"] is None and report["accuracy"]["b"]["rate"] == 0.5  # failures count half
    assert report["accuracy"]["b"]["failures"] == 6
    failures = read_jsonl(tmp_path / "ab" / "failures.jsonl")
    assert len(failures) == 6 and {f["code"] for f in failures} == {"nonfinite_score"}
    assert {f["stage"] for f in failures} == {"label B"}
    assert result.summary["pairs_asked"] == 6 and result.summary["agreement"] is None
    assert report["per_principle"]["b"]["principles"]["broken"]["outcomes"] == {"nonfinite_score": 6}


def test_without_human_labels_there_is_no_accuracy() -> None:
    a, b = load_constitution("baseline"), load_constitution("eval-harmless")
    record = {"id": "x", "source": "f:1", "messages": [], "chosen": "1", "rejected": "2",
              "a": {"outcome": "labelled", "p_human_choice": 0.7, "position_bias": False, "principle_ids": ["x"]},
              "b": {"outcome": "labelled", "p_human_choice": 0.2, "position_bias": True, "principle_ids": ["y"]}}
    report = ab_report([record], {"a": a, "b": b}, human=False)
    assert "accuracy" not in report and "mcnemar" not in report
    assert report["flips"]["count"] == 1 and report["flip_examples"][0]["first_is_human_choice"] is False
    assert all("agreement" not in row for row in report["per_principle"]["a"]["principles"].values())


def test_cli_takes_the_two_constitutions_as_arguments(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(A)
    runner = CliRunner()
    done = runner.invoke(app, ["eval", "constitutions", "baseline", str(tmp_path / "a.yaml"), "--pairs",
                               str(human_pairs(tmp_path)), "--out", str(tmp_path / "ab"), "--judge",
                               "fake:rule-judge", "--quiet"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "McNemar" in done.output and "only in B" in done.output
    manifest = json.loads((tmp_path / "ab" / "manifest.json").read_text())
    assert manifest["constitutions"]["a"]["name"] == "baseline"
    missing = runner.invoke(app, ["eval", "constitutions", "baseline", "--pairs", "x.jsonl"])
    assert missing.exit_code != 0
