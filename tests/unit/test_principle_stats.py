"""Per-principle figures: the statistics by hand, then `cai rl`, `cai eval judge --per-principle` and
`cai eval revisions` with scripted judges whose principles behave in known ways."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cai.engines.fake import FakeScript, register_script
from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
from cai.evaluate.revisions import RevisionsEvalConfig, run_revisions_eval
from cai.generate.rl import RLConfig, run_rl
from cai.stats.principles import (
    LabelAttempt,
    alone_table,
    bootstrap_mean,
    display_rows,
    mean_interval,
    pearson,
    revision_table,
    sampled_table,
)
from cai.stats.rates import mcnemar_exact, wilson_interval
from tests.conftest import read_jsonl, write_jsonl
from tests.unit.test_eval_models import build_sl_run

P = 1 / (1 + math.exp(-2.9))  # the scripted judge's P(A) when it prefers A: softmax(-0.1, -3.0)


# ---- the statistics, by hand ---------------------------------------------------------------------
def test_mcnemar_exact_by_hand() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)  # C(6,0)+C(6,1) over 2^6, both tails
    assert mcnemar_exact(5, 1) == mcnemar_exact(1, 5)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(3, 3) == 1.0  # capped
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mean_pearson_and_bootstrap() -> None:
    m = mean_interval([0.2, 0.4, 0.6])
    half = 1.96 * 0.2 / math.sqrt(3)
    assert m["mean"] == 0.4 and m["ci95"] == [round(0.4 - half, 4), round(0.4 + half, 4)] and m["n"] == 3
    assert mean_interval([])["mean"] is None and mean_interval([0.5])["ci95"] is None
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    values = [1.0, 1.0, 1.0, -1.0, 0.0, 0.0]
    ci = bootstrap_mean(values, samples=500, seed=3)
    assert ci == bootstrap_mean(values, samples=500, seed=3)  # seeded
    assert ci is not None and -1 <= ci[0] < 1 / 3 < ci[1] <= 1
    assert bootstrap_mean([1.0] * 5, samples=50) == [1.0, 1.0]


def test_sampled_table_by_hand() -> None:
    attempts = [
        LabelAttempt(("a",), "kept", 0.9, False),
        LabelAttempt(("a",), "below_min_margin", 0.55, True),
        LabelAttempt(("a",), "nonfinite_score", None, None),
        LabelAttempt(("b",), "tie", 0.5, True),
        LabelAttempt(("a", "b"), "kept", 0.2, False),  # asked under two principles: counts for both
        LabelAttempt((), "engine_error", None, None),  # principles not recorded
    ]
    table = sampled_table(attempts, principle_ids=["a", "b", "never"])
    a, b = table["principles"]["a"], table["principles"]["b"]
    assert table["labels_attempted"] == 6
    assert (a["attempted"], a["labelled"]) == (4, 3)
    assert a["kept"]["count"] == 2 and a["kept"]["rate"] == 0.5
    assert a["kept"]["ci95"] == [round(v, 4) for v in wilson_interval(2, 4)]
    assert a["mean_margin"]["mean"] == pytest.approx((0.8 + 0.1 + 0.6) / 3, abs=1e-4)
    assert (a["position_bias"]["count"], a["position_bias"]["of"]) == (1, 3)
    assert a["outcomes"] == {"below_min_margin": 1, "kept": 2, "nonfinite_score": 1}
    assert (b["attempted"], b["kept"]["count"], b["flags"]) == (2, 1, [])
    assert table["principles"]["never"]["flags"] == ["never_sampled"]
    assert table["principles"]["(unknown)"]["attempted"] == 1
    only_ties = sampled_table([LabelAttempt(("c",), "tie", 0.5, False)])
    assert only_ties["principles"]["c"]["flags"] == ["never_moves_a_label"]
    # with human labels p is P(the human's choice): agreement counts failures and ties half
    human = sampled_table([LabelAttempt(("h",), "labelled", 0.2, False), LabelAttempt(("h",), "labelled", 0.3, None),
                           LabelAttempt(("h",), "nonfinite_score", None, None)], human=True)
    h = human["principles"]["h"]
    assert h["agreement"]["count"] == 0.5 and h["agreement"]["rate"] == pytest.approx(0.5 / 3, abs=1e-4)
    assert "below_chance" in h["flags"]


def _pairs(*columns: list[float | None]) -> list[dict]:
    """pairs[i][principle] from one list of P(the human's choice) per principle."""
    names = ["p1", "p2", "p3"][:len(columns)]
    return [{name: {"p": col[i], "position_bias": False} for name, col in zip(names, columns)}
            for i in range(len(columns[0]))]


def test_alone_table_strength_by_hand() -> None:
    good = [0.9, 0.9, 0.9, 0.1, 0.5, None]  # 3 votes with the human, 1 against, a tie, a failure
    bad = [0.1, 0.1, 0.2, 0.95, 0.52, 0.5]  # 3 votes against, 1 with; 0.52 is below the vote margin
    same = [0.92, 0.88, 0.9, 0.12, 0.5, 0.5]  # moves with `good`
    table = alone_table(_pairs(good, bad, same), ["p1", "p2", "p3"], vote_margin=0.1, bootstrap=200, seed=1)
    p1, p2, p3 = (table["principles"][k] for k in ("p1", "p2", "p3"))
    assert (p1["asked"], p1["labelled"], p1["votes"]) == (6, 5, 4)
    assert p1["relevance"]["rate"] == pytest.approx(4 / 6, abs=1e-4)
    assert p1["accuracy"]["rate"] == 0.75
    assert p1["strength"]["value"] == pytest.approx(4 / 6 * 2 * (0.75 - 0.5), abs=1e-4) == pytest.approx(2 / 6)
    lo, hi = p1["strength"]["ci95"]
    assert lo <= 2 / 6 <= hi
    assert p1["agreement"]["count"] == 3 + 0.5 + 0.5  # the tie and the failure count half
    assert p2["votes"] == 4 and p2["accuracy"]["rate"] == 0.25
    assert p2["strength"]["value"] == pytest.approx(4 / 6 * 2 * (0.25 - 0.5), abs=1e-4) == pytest.approx(-2 / 6)
    assert "below_chance" in p2["flags"] or "below_chance_ci" in p2["flags"]
    assert p1["most_correlated"]["principle"] == "p3" and p1["most_correlated"]["r"] > 0.99
    assert "duplicates:p3" in p1["flags"] and "duplicates:p1" in p3["flags"]
    assert not any(f.startswith("duplicates") for f in p2["flags"])
    silent = alone_table(_pairs([0.5, 0.52, 0.48]), ["p1"], bootstrap=10)["principles"]["p1"]
    assert silent["flags"] == ["never_moves_a_label"] and silent["strength"]["value"] == 0.0
    headers, rows = display_rows(table)
    assert headers[0] == "principle" and "strength [95% bootstrap]" in headers and len(rows) == 3
    assert rows[0][4].startswith("+0.333 [")


def test_revision_table_by_hand() -> None:
    table = revision_table([("kind", "harmlessness", 0.9), ("kind", "harmlessness", 0.5), ("kind", "harmlessness", None),
                            ("kind", "helpfulness", 0.2), ("blunt", "harmlessness", 0.1)])
    kind = table["principles"]["kind"]
    assert kind["harmlessness"]["win_rate"] == 0.75 and kind["harmlessness"]["labelled"] == 2
    assert kind["harmlessness"]["failures"] == 1 and kind["helpfulness"]["win_rate"] == 0.0
    assert kind["flags"] == [] and table["principles"]["blunt"]["flags"] == ["revisions_lose"]
    headers, rows = display_rows(table)
    assert headers == ["principle", "harmlessness win rate vs initial", "flags"] or "helpfulness" in " ".join(headers)


# ---- through the commands, with a scripted judge -------------------------------------------------
RULES = """name: rules
principles:
  - {id: safe, judge: "Judge by rule-safe."}
  - {id: safe-again, judge: "Judge by rule-safe, said again."}
  - {id: unsafe, judge: "Judge by rule-unsafe."}
  - {id: coin, judge: "Judge by rule-coin."}
  - {id: first, judge: "Judge by rule-first."}
  - {id: broken, judge: "Judge by rule-broken."}
"""


def rule_judge(messages, continuation: str) -> float:
    """Each principle's rule: prefer the SAFE reply, the other one, always (A), no preference, or NaN."""
    q = messages[-1]["content"]
    principle = q.split("\n\nOptions:")[0].split("\n\n")[-1]
    letter = continuation.strip()[-2]
    a, b = q.split("(A) Reply:")[1].split("(B) Reply:")
    if "rule-broken" in principle:
        return float("nan")
    if "rule-coin" in principle or (("SAFE" in a) == ("SAFE" in b) and "rule-first" not in principle):
        return -1.0
    if "rule-first" in principle:
        want = "A"
    elif "rule-unsafe" in principle:
        want = "B" if "SAFE" in a else "A"
    else:
        want = "A" if "SAFE" in a else "B"
    return -0.1 if letter == want else -3.0


register_script("rule-judge", FakeScript(lambda request, k: "unused", rule_judge))


def _pair(i: int, chosen: str, rejected: str) -> dict:
    return {"id": f"h{i}", "prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def human_pairs(folder: Path) -> Path:
    return write_jsonl(folder / "pairs.jsonl", [
        _pair(1, "SAFE one", "bad one"), _pair(2, "SAFE two", "bad two"), _pair(3, "SAFE three", "bad three"),
        _pair(4, "bad four", "SAFE four"), _pair(5, "plain five", "plain five too"),
        _pair(6, "SAFE six", "SAFE six too")])


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("audit")
    (folder / "rules.yaml").write_text(RULES)
    out = folder / "judge"
    result = run_judge_eval(JudgeEvalConfig.of(pairs=str(human_pairs(folder)), out=str(out), judges=["fake:rule-judge"],
                                               constitution=str(folder / "rules.yaml"), per_principle=True,
                                               strength_bootstrap=200), show_progress=False)
    return out, result.summary


def test_eval_judge_per_principle_audit(judged) -> None:
    out, summary = judged
    alone = summary["principles_alone"]["principles"]
    assert summary["principles_alone"]["pairs"] == 6
    safe, unsafe = alone["safe"], alone["unsafe"]
    assert (safe["asked"], safe["votes"]) == (6, 4)
    assert safe["relevance"]["rate"] == pytest.approx(4 / 6, abs=1e-4) and safe["accuracy"]["rate"] == 0.75
    assert safe["strength"]["value"] == pytest.approx(1 / 3, abs=1e-4)
    assert safe["agreement"]["count"] == 4.0  # 3 right, 1 wrong, 2 ties at half
    assert unsafe["strength"]["value"] == pytest.approx(-1 / 3, abs=1e-4) and unsafe["accuracy"]["rate"] == 0.25
    assert any(f.startswith("below_chance") for f in unsafe["flags"])
    assert "duplicates:safe-again" in safe["flags"] and safe["most_correlated"]["r"] == pytest.approx(1.0)
    assert alone["coin"]["flags"] == ["never_moves_a_label"]
    first = alone["first"]
    assert "never_moves_a_label" in first["flags"] and first["position_bias"]["rate"] == 1.0  # (A) in both orders
    assert first["mean_margin"]["mean"] == pytest.approx(0.0, abs=1e-4)
    broken = alone["broken"]
    assert (broken["labelled"], broken["votes"], broken["agreement"]["count"]) == (0, 0, 3.0)  # failures count half
    # the sampled labels: every attempt accounted for under the principle it sampled
    sampled = summary["per_principle"]["principles"]
    assert sum(r["attempted"] for r in sampled.values()) == summary["per_principle"]["labels_attempted"] == 6
    assert set(sampled) == {"safe", "safe-again", "unsafe", "coin", "first", "broken"}
    if sampled["broken"]["attempted"]:  # a failed label is counted against the principle it was asked under
        assert sampled["broken"]["outcomes"] == {"nonfinite_score": sampled["broken"]["attempted"]}
    report = json.loads((out / "report.json").read_text())
    assert report["principles_alone"]["principles"]["safe"] == safe and "per_principle" in report
    labels = read_jsonl(out / "labels.jsonl")
    assert all(set(r["alone"]) == set(alone) for r in labels)


def test_per_principle_audit_reuses_the_main_labels_calls(judged) -> None:
    out, summary = judged
    # 6 pairs x 6 principles alone x 2 orders (one scoring call each); the main label of each pair asks its
    # sampled principle's two questions again, which the call cache answers
    assert summary["engine_calls_made"] == 6 * 6 * 2
    assert summary["engine_calls_from_cache"] == 6 * 2


def test_per_principle_needs_a_pairwise_labeller(tmp_path) -> None:
    from cai.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--per-principle"):
        run_judge_eval(JudgeEvalConfig.of(pairs=str(human_pairs(tmp_path)), out=str(tmp_path / "j"),
                                          judges=["fake:rule-judge"], labeler="rank-all", per_principle=True),
                       show_progress=False)


def test_rl_summary_has_a_table_per_principle(tmp_path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    register_script("rule-policy", FakeScript(lambda request, k: f"SAFE reply {k}" if k == 0 else f"other reply {k}"))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(8)])
    result = run_rl(RLConfig.of(prompts=str(prompts), out=str(tmp_path / "rl"), policy="fake:rule-policy",
                                judges=["fake:rule-judge"], constitution=str(tmp_path / "rules.yaml"),
                                candidates=2, min_margin=0.1, max_failure_rate=1.0), show_progress=False)
    table = result.summary["per_principle"]
    rows = table["principles"]
    assert set(rows) >= {"safe", "safe-again", "unsafe", "coin", "first", "broken"}
    assert sum(r["attempted"] for r in rows.values()) == result.summary["labels_attempted"] == 8
    for pid, row in rows.items():
        if row["attempted"] == 0:
            assert row["flags"] == ["never_sampled"]
        elif pid in ("coin", "first", "broken"):  # ties, position-bias ties, failed labels: nothing kept
            assert "never_moves_a_label" in row["flags"] and row["kept"]["count"] == 0
        else:
            assert row["kept"]["count"] == row["attempted"]
    saved = json.loads((tmp_path / "rl" / "summary.json").read_text())
    assert saved["per_principle"] == table


def test_eval_revisions_win_rate_per_principle(tmp_path) -> None:
    sl = build_sl_run(tmp_path)
    result = run_revisions_eval(RevisionsEvalConfig.of(sl_run=str(sl), judge="fake:ev-judge"), show_progress=False)
    report = json.loads((sl / "eval-revisions" / "report.json").read_text())
    table = report["per_principle"]
    assert table == result.summary["per_principle"]
    used = {r["principle_id"] for row in read_jsonl(sl / "sl.jsonl") for r in row["rounds"]}
    assert set(table["principles"]) == used
    total = sum(row["harmlessness"]["asked"] for row in table["principles"].values())
    assert total == sum(len(row["rounds"]) for row in read_jsonl(sl / "sl.jsonl"))
