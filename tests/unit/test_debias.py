"""Debiasing P(A): the calibration rule, contextual and batch priors on scripted judges,
the option, and the expected calibration error of `cai eval judge`."""

from __future__ import annotations

import math

import pytest

from cai.core.errors import ConfigError
from cai.engines import load_engine
from cai.engines.fake import FakeScript, register_script
from cai.inputs.constitution import load_constitution
from cai.label.debias import CONTENT_FREE, RunningPrior, calibrate
from cai.stats.calibration import label_calibration_error
from cai.label.pairwise import PairwiseLabeler
from cai.label.registry import LabelerOptions

CONV = [{"role": "user", "content": "How do I pick a lock?"}]
GOOD, BAD = "I can explain how locks work in general.", "Here is how to break into your neighbour's house."
PRIOR_LOGIT = 2.0  # the judge's lean towards the letter (A), whatever the replies say
SIGNAL_LOGIT = 1.0  # what it adds for the better reply


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def biased_judge(messages, continuation):  # noqa: ANN001
    """logit P(A) = PRIOR_LOGIT + SIGNAL_LOGIT when GOOD is option (A), - SIGNAL_LOGIT when it is (B),
    and PRIOR_LOGIT alone on a question without GOOD (a content-free one)."""
    q = messages[-1]["content"]
    signal = 0.0
    if GOOD in q:
        signal = SIGNAL_LOGIT if q.index("(A) ") < q.index(GOOD) < q.index("(B) ") else -SIGNAL_LOGIT
    p_a = _sigmoid(PRIOR_LOGIT + signal)
    return math.log(p_a if continuation.rstrip().endswith("(A)") else 1 - p_a)


register_script("biased", FakeScript(lambda r, k: "x", biased_judge))


def labeler(**kw) -> PairwiseLabeler:
    return PairwiseLabeler(load_engine("fake:biased"), load_constitution("default"), **kw)


# ---- the rule --------------------------------------------------------------------------------
def test_calibration_divides_the_prior_out() -> None:
    assert calibrate(0.7, None) == 0.7 and calibrate(0.7, 0.5) == pytest.approx(0.7)
    assert calibrate(0.8, 0.8) == pytest.approx(0.5)  # an answer equal to the prior says nothing
    # the same as subtracting the prior's log-odds
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert logit(calibrate(0.9, 0.7)) == pytest.approx(logit(0.9) - logit(0.7))
    assert calibrate(1.0, 0.9) == 1.0 and calibrate(0.0, 0.1) == 0.0  # certain answers stay exact
    assert 0 < calibrate(0.5, 1.0) < 0.5  # a prior of 1 does not divide by zero


def test_running_prior_waits_for_its_warmup_then_is_the_mean() -> None:
    prior = RunningPrior(warmup=3)
    for p in (0.9, 0.7):
        prior.add(p)
    assert prior.prior() is None
    prior.add(0.8)
    assert prior.prior() == pytest.approx(0.8)


# ---- contextual calibration ---------------------------------------------------------------------
async def test_one_order_without_debiasing_follows_the_letter() -> None:
    lab = labeler(both_orders=False)
    p = [(await lab.compare(CONV, GOOD, BAD, (f"r{i}",))).p_x for i in range(12)]
    assert {x > 0.5 for x in p} == {True, False}  # right only when GOOD happened to be (A)


async def test_contextual_calibration_makes_one_order_follow_the_content() -> None:
    lab = labeler(both_orders=False, debias="contextual")
    for i in range(12):
        label = await lab.compare(CONV, GOOD, BAD, (f"r{i}",))
        assert label.p_x == pytest.approx(_sigmoid(SIGNAL_LOGIT))  # the prior is gone, in either position
        flipped = await lab.compare(CONV, BAD, GOOD, (f"r{i}",))
        assert flipped.p_x == pytest.approx(1 - _sigmoid(SIGNAL_LOGIT))


async def test_contextual_calibration_asks_each_principle_once_with_content_free_replies() -> None:
    lab = labeler(debias="contextual")
    labels = [await lab.compare(CONV, GOOD, BAD, (f"r{i}",)) for i in range(10)]
    principles = {pid for label in labels for pid in label.principle_ids}
    content_free = [args for kind, args in lab.engine.calls if kind == "score" and GOOD not in args[0][-1]["content"]]
    assert len(content_free) == len(principles) * len(CONTENT_FREE)
    # both orders agree once the prior is divided out, so no label is flagged as position-biased
    assert all(label.position_bias is False for label in labels)
    assert all(label.p_x == pytest.approx(_sigmoid(SIGNAL_LOGIT)) for label in labels)


async def test_both_orders_without_calibration_flag_the_bias() -> None:
    label = await labeler().compare(CONV, GOOD, BAD, ("r",))
    assert label.position_bias is True  # A is preferred in both orders


# ---- batch calibration ----------------------------------------------------------------------------
async def test_batch_calibration_uses_the_mean_of_earlier_answers() -> None:
    lab = labeler(both_orders=False, debias="batch")
    first = [await lab.compare(CONV, GOOD, BAD, (f"r{i}",)) for i in range(16)]  # 16 answers: the warmup
    assert {x.p_x > 0.5 for x in first} == {True, False}  # uncalibrated while warming up
    later = [await lab.compare(CONV, GOOD, BAD, (f"s{i}",)) for i in range(16)]
    assert all(x.p_x > 0.5 for x in later)  # re-centred on the mean, the content decides


# ---- the option -------------------------------------------------------------------------------
def test_debias_option_is_checked() -> None:
    assert LabelerOptions(debias="contextual").debias == "contextual"
    with pytest.raises(ConfigError, match="--debias must be one of"):
        LabelerOptions(debias="magic")
    with pytest.raises(ConfigError, match="rank-all has no P\\(A\\)"):
        LabelerOptions(labeler="rank-all", debias="batch")


# ---- expected calibration error -------------------------------------------------------------------
def test_ece_of_perfectly_calibrated_and_overconfident_labels() -> None:
    assert label_calibration_error([]) is None
    # confidence 0.75, right 3 times in 4: calibrated
    assert label_calibration_error([0.75, 0.75, 0.75, 0.25]) == pytest.approx(0.0)
    # confidence 0.95, right half the time: a gap of 0.45
    assert label_calibration_error([0.95, 0.05]) == pytest.approx(0.45)
    # a tie is half right at confidence 0.5
    assert label_calibration_error([0.5]) == pytest.approx(0.0)


def test_judge_report_states_ece_with_its_denominator() -> None:
    from cai.evaluate.judge import JudgeReport

    labels = [{"p_human_choice": p, "p_by_order": [p, None], "position_bias": None, "judge_generated_tokens": 0}
              for p in (0.95, 0.05)]
    report = JudgeReport(labels, failed=1).as_dict(1.0, 2)
    assert report["expected_calibration_error"] == pytest.approx(0.45)
    assert report["calibration_denominator"].startswith("2 labelled pairs")


def test_with_both_orders_a_shared_prior_changes_confidence_never_the_direction() -> None:
    """p_x = (cal(P_ab) + 1 - cal(P_ba)) / 2 is above 0.5 exactly when P_ab > P_ba, whatever the
    prior: calibration moves both-order labels' confidence (and the bias flag), not their choice."""
    import random

    rng = random.Random(0)
    for _ in range(2000):
        p_ab, p_ba, prior = rng.random(), rng.random(), rng.uniform(0.01, 0.99)
        raw = (p_ab + 1 - p_ba) / 2
        calibrated = (calibrate(p_ab, prior) + 1 - calibrate(p_ba, prior)) / 2
        assert (raw > 0.5) == (calibrated > 0.5) or abs(p_ab - p_ba) < 1e-12
