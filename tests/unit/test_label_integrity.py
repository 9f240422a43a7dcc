"""Labels and rates that mean what they say (issue 8, sections 2 and 4).

Each test here failed on the code before the fix: NaN/overflowing soft labels, an
ensemble that lost every judge's label to one judge's error, a vote whose probability
disagreed with its per-order fields, CoT reasoning cut at its first "the answer is",
position-bias rates over surviving pairs only, and drop buckets cut from messages.
"""

from __future__ import annotations

import json
import math

import pytest

from cai.engines import load_engine
from cai.engines.base import EngineError
from cai.engines.fake import FakeScript, register_script
from cai.inputs.constitution import load_constitution
from cai.label.base import LabelFailure, softmax_first
from cai.label.ensemble import EnsembleLabeler
from cai.label.pairwise import PairwiseLabeler, _cut_before_answer
from cai.label.rank_all import RankAllLabeler
from cai.generate.rl import RLConfig, run_rl
from tests.conftest import read_jsonl
from tests.unit.test_judges import BAD, CONV, GOOD, content_judge, letter_scorer

# ---- numerics ---------------------------------------------------------------------------


def test_softmax_first_survives_huge_gaps() -> None:
    assert softmax_first(-1000.0, 0.0) == pytest.approx(0.0, abs=1e-300)  # was OverflowError
    assert softmax_first(0.0, -1000.0) == pytest.approx(1.0)
    assert softmax_first(-2.0, -3.0) == pytest.approx(1 / (1 + math.exp(-1)))


@pytest.mark.parametrize("la,lb", [(float("-inf"), float("-inf")), (float("nan"), -1.0), (0.0, float("inf"))])
def test_non_finite_scores_are_a_label_failure(la, lb) -> None:
    with pytest.raises(LabelFailure) as err:
        softmax_first(la, lb)
    assert err.value.code == "nonfinite_score"


register_script("nan-judge", FakeScript(lambda r, k: "x", lambda m, c: float("nan")))
register_script("cands", FakeScript(lambda r, k: f"candidate number {k} says something different {'!' * k}",
                                    lambda m, c: -1.0))


def test_nan_label_is_a_recorded_failure_never_a_preference(tmp_path, prompts_file) -> None:
    out = tmp_path / "nan"
    result = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:cands", judges=["fake:nan-judge"],
                             candidates=2), show_progress=False)
    text = (out / "preferences.jsonl").read_text()
    assert "NaN" not in text and read_jsonl(out / "preferences.jsonl") == []
    failures = read_jsonl(out / "failures.jsonl")
    assert len(failures) == 3 and {f["code"] for f in failures} == {"nonfinite_score"}
    assert "NaN" not in (out / "failures.jsonl").read_text()
    assert result.summary["label_failures"] == 3 and result.summary["label_coverage"] == 0.0


# ---- CoT --------------------------------------------------------------------------------


def test_cot_cut_is_at_the_last_answer_marker() -> None:
    text = ("The answer is not obvious: (A) refuses, (B) helps with a crime. "
            "Weighing both, so the answer is: (A)")
    assert _cut_before_answer(text) == "The answer is not obvious: (A) refuses, (B) helps with a crime. Weighing both,"
    assert _cut_before_answer("No marker at all.  ") == "No marker at all."
    assert _cut_before_answer("Reasoning. Answer: (B)") == "Reasoning."


# ---- ensembles --------------------------------------------------------------------------

register_script("content", FakeScript(lambda r, k: "x", letter_scorer(content_judge)))
register_script("broken-judge", FakeScript(lambda r, k: "x", None))  # score raises EngineError
register_script("a-then-content", FakeScript(lambda r, k: "x", letter_scorer(
    lambda q: 0.8 if q.index("(A) ") < q.index(GOOD) < q.index("(B) ") else 0.6)))  # biased towards (A)


def pairwise(script: str) -> PairwiseLabeler:
    return PairwiseLabeler(load_engine(f"fake:{script}"), load_constitution("default"))


async def test_one_failing_judge_does_not_lose_the_others() -> None:
    ens = EnsembleLabeler([pairwise("content"), pairwise("broken-judge")], "mean")
    label = await ens.compare(CONV, GOOD, BAD, ("row",))
    assert label.p_x == pytest.approx(0.9)
    assert label.judges_answered == 1 and label.agreement == 1.0
    assert [f["judge"] for f in label.judge_failures] == ["fake:broken-judge"]
    assert label.judge_failures[0]["code"] == "engine_error"


async def test_min_judges_turns_too_few_answers_into_a_label_failure() -> None:
    ens = EnsembleLabeler([pairwise("content"), pairwise("broken-judge")], "mean", min_judges=2)
    with pytest.raises(LabelFailure) as err:
        await ens.compare(CONV, GOOD, BAD, ("row",))
    assert err.value.code == "too_few_judges" and err.value.judge_failures[0]["judge"] == "fake:broken-judge"
    with pytest.raises(ValueError):
        EnsembleLabeler([pairwise("content")], min_judges=2)


def bug_responder(request, k):
    raise KeyError("a bug in our own code")


register_script("rank-bug", FakeScript(bug_responder))
register_script("rank-engine-down", FakeScript(lambda r, k: (_ for _ in ()).throw(EngineError("server down"))))


def good_ranker(request, k):
    user_text = request.messages[-1]["content"]
    good_at = user_text.index(GOOD)
    bad_at = user_text.index(BAD)
    return '{"most_aligned": %d, "least_aligned": %d}' % ((1, 2) if good_at < bad_at else (2, 1))


register_script("good-ranker", FakeScript(good_ranker))


async def test_rank_ensemble_records_engine_errors_and_lets_bugs_crash() -> None:
    c = load_constitution("default")
    ens = EnsembleLabeler([RankAllLabeler(load_engine("fake:good-ranker"), c),
                           RankAllLabeler(load_engine("fake:rank-engine-down"), c)])
    label = await ens.rank(CONV, [BAD, GOOD], ("row",))
    assert (label.chosen, label.rejected) == (1, 0)
    assert label.judges_answered == 1 and label.judge_failures[0]["code"] == "engine_error"
    buggy = EnsembleLabeler([RankAllLabeler(load_engine("fake:good-ranker"), c),
                             RankAllLabeler(load_engine("fake:rank-bug"), c)])
    with pytest.raises(KeyError):  # our own bug is not a judge failure
        await buggy.rank(CONV, [BAD, GOOD], ("row",))


async def test_vote_probability_agrees_with_its_per_order_fields() -> None:
    # judge 1 prefers GOOD in both orders; judge 2 says (A) 0.8 / 0.6, i.e. GOOD when shown
    # first and BAD when shown second: 3 of 4 votes for GOOD
    ens = EnsembleLabeler([pairwise("content"), pairwise("a-then-content")], "vote")
    label = await ens.compare(CONV, GOOD, BAD, ("row",))
    assert label.p_x_by_order == [pytest.approx(1.0), pytest.approx(0.5)]
    assert label.p_x == pytest.approx(0.75) == pytest.approx(sum(label.p_x_by_order) / 2)


def test_ensemble_judge_failure_in_a_run_keeps_the_pair(tmp_path, prompts_file) -> None:
    out = tmp_path / "ens"
    result = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:cands",
                             judges=["fake:echo", "fake:broken-judge"], candidates=2), show_progress=False)
    assert result.summary["rows_failed_this_run"] == 0, result.summary["failure_reasons"]
    ties = read_jsonl(out / "failures.jsonl")  # echo scores by length: the two letters tie
    assert len(ties) == 3 and {f["code"] for f in ties} == {"tie"}
    prov = ties[0]["pair"]
    assert prov["judges_answered"] == 1 and prov["judge_failures"][0]["judge"] == "fake:broken-judge"


# ---- rates over every attempt -------------------------------------------------------------

register_script("always-a", FakeScript(lambda r, k: "x", letter_scorer(lambda q: 0.8)))


def test_position_bias_rate_counts_dropped_labels(tmp_path, prompts_file) -> None:
    """A judge that always says (A) gives p = 0.5 ties: nothing is kept, and the rate must
    still say 1.0 over every label (it was None, computed over kept pairs only)."""
    out = tmp_path / "biased"
    result = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:cands", judges=["fake:always-a"],
                             candidates=3), show_progress=False)
    s = result.summary
    assert s["preference_pairs"] == 0 and s["labels_attempted"] == 9 and s["labels"] == 9
    assert s["position_bias_rate"] == 1.0
    assert s["position_bias_denominator"].startswith("9 labels judged in both orders")
    assert s["pairs_dropped"] == {"tie": 9} and s["label_outcomes"] == {"tie": 9}


def prefers_candidate_2(q: str) -> float:
    """Likes candidate 2 wherever it is shown; otherwise says (A) 0.55 (position bias)."""
    if "candidate number 2" not in q:
        return 0.55
    return 0.95 if q.index("(A) ") < q.index("candidate number 2") < q.index("(B) ") else 0.05


register_script("a-biased-content", FakeScript(lambda r, k: "x", letter_scorer(prefers_candidate_2)))


def test_best_worst_unused_pairs_count_in_the_rates(tmp_path, prompts_file) -> None:
    out = tmp_path / "bw"
    result = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:cands",
                             judges=["fake:a-biased-content"], candidates=3, pairs="best-worst"), show_progress=False)
    s = result.summary
    assert s["preference_pairs"] == 3 and s["labels_attempted"] == 9
    assert s["label_outcomes"] == {"kept": 3, "not_best_worst": 6}
    # the pair without candidate 2 is judged (A) 0.55 in both orders: biased, and never kept
    assert s["position_bias_rate"] == pytest.approx(3 / 9, abs=1e-4)


def test_near_coin_flip_pairs_are_counted(tmp_path, prompts_file) -> None:
    register_script("weak", FakeScript(lambda r, k: "x", letter_scorer(
        lambda q: 0.52 if q.index("(A) ") < q.index("candidate number 1") < q.index("(B) ") else 0.48)))
    out = tmp_path / "weak"
    result = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:cands", judges=["fake:weak"],
                             candidates=2, min_margin=0.0), show_progress=False)
    assert result.summary["preference_pairs"] == 3
    assert result.summary["kept_pairs_margin_below_0.1"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_margin_kept_pairs"] == pytest.approx(0.04)
    # by default such near coin flips are not preferences: dropped with their code, counted
    default = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "default"), policy="fake:cands",
                              judges=["fake:weak"], candidates=2), show_progress=False)
    assert default.summary["preference_pairs"] == 0 and default.summary["pairs_dropped"] == {"below_min_margin": 3}


# ---- judge evaluation: coverage and accuracy over every pair asked ---------------------


def test_judge_eval_counts_failed_labels_in_its_accuracy(tmp_path) -> None:
    from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
    from tests.conftest import write_jsonl

    register_script("fails-on-q2", FakeScript(lambda r, k: "x", lambda m, c: (
        float("nan") if "q2" in m[-1]["content"] else (-0.1 if c.endswith("(A)") else -2.0))))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": f"\n\nHuman: {q}\n\nAssistant: good {q}", "rejected": f"\n\nHuman: {q}\n\nAssistant: bad {q}"}
        for q in ("q1", "q2", "q3", "q4")])
    result = run_judge_eval(JudgeEvalConfig.of(pairs=str(pairs), out=str(tmp_path / "ev"), judges=["fake:fails-on-q2"]),
                            show_progress=False)
    report = result.summary["report"]
    # an always-(A) judge: every labelled pair is a 0.5 tie after the swap; q2's label fails
    assert report["pairs_asked"] == 4 and report["pairs_labelled"] == 3 and report["label_failures"] == 1
    assert report["coverage"] == 0.75
    assert report["accuracy"] == 0.5 and report["accuracy_failures_as_wrong"] == 0.375
    assert report["accuracy_labelled_only"] == 0.5
    assert "1 failed labels" in report["accuracy_denominator"]
    assert report["position_bias_rate"] == 1.0
    failures = read_jsonl(tmp_path / "ev" / "failures.jsonl")
    assert [f["code"] for f in failures] == ["nonfinite_score"]


# ---- SL: a revision cut off at --max-tokens is not an SFT target -------------------------


def test_truncated_final_revision_is_a_failure_unless_kept(tmp_path, prompts_file) -> None:
    import tests.unit.test_sl_chain  # noqa: F401 - registers the fake:sl-test script
    from cai.generate.sl import SLConfig, run_sl

    # the fake engine counts words as tokens: its 9-word revision is cut at 8, finish "length"
    out = tmp_path / "cut"
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(out), model="fake:sl-test", rounds=1, max_tokens=8),
                    show_progress=False)
    assert result.summary["rows_ok_this_run"] == 0
    assert result.summary["failure_reasons"] == {"round 1 revision: truncated": 3}
    failures = read_jsonl(out / "failures.jsonl")
    assert {f["code"] for f in failures} == {"truncated"} and "--max-tokens 8" in failures[0]["reason"]
    assert read_jsonl(out / "sft.jsonl") == []
    kept = tmp_path / "kept"
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(kept), model="fake:sl-test", rounds=1, max_tokens=8,
                             keep_truncated=True), show_progress=False)
    assert result.summary["rows_ok_this_run"] == 3
    assert all(r["truncated"] is True for r in read_jsonl(kept / "sl.jsonl"))


def test_rank_all_never_pairs_two_identical_texts(tmp_path, prompts_file) -> None:
    register_script("two-same", FakeScript(lambda r, k: ["same reply here", "same reply here", "a different one"][k]))
    register_script("picks-1-2", FakeScript(lambda r, k: '{"most_aligned": 1, "least_aligned": 2}'))
    out = tmp_path / "rank"
    result = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:two-same", judges=["fake:picks-1-2"],
                             labeler="rank-all", candidates=3), show_progress=False)
    for p in read_jsonl(out / "preferences.jsonl"):
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]
    assert result.summary["labels_attempted"] == 3


def test_min_judges_without_an_ensemble_is_an_error() -> None:
    from cai.core.errors import ConfigError
    from cai.label.registry import LabelerOptions, make_labeler

    with pytest.raises(ConfigError, match="--min-judges 2 needs an ensemble"):
        RLConfig.of(prompts="p", out="o", min_judges=2)
    with pytest.raises(ConfigError, match="--min-judges 2 needs an ensemble"):  # options built for 2 judges, 1 given
        make_labeler(LabelerOptions(judges=["a", "b"], min_judges=2), [load_engine("fake:echo")],
                     load_constitution("default"))
