"""Win rates, Wilson intervals, Bradley-Terry / Elo, the refusal matcher and calibration bins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cai.label.refusal import RefusalMatcher
from cai.stats.rates import agreement, credit, rate, win_rate
from cai.stats.elo import bootstrap_elo, elo_scale, fit_bradley_terry
from cai.stats.calibration import expected_calibration_error, reliability_bins
from cai.stats.rates import wilson_interval
from cai.label.base import LabelFailure, softmax_first


def test_win_rate_counts_ties_half_and_keeps_failures_out_of_the_denominator() -> None:
    r = win_rate([1.0, 1.0, 0.5, 0.0], failures=2)
    assert r["win_rate"] == 0.625  # (2 + 0.5) / 4
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    assert (r["labelled"], r["failures"], r["asked"]) == (4, 2, 6)
    assert r["coverage"] == round(4 / 6, 4)
    assert r["ci95"] == [round(v, 4) for v in wilson_interval(2.5, 4)]
    assert "4 comparisons labelled" in r["denominator"] and "2 of 6" in r["denominator"]
    empty = win_rate([], failures=3)
    assert empty["win_rate"] is None and empty["ci95"] is None and empty["coverage"] == 0.0


def test_wilson_interval_matches_the_formula_by_hand() -> None:
    # 8 of 10, z = 1.96: centre (0.8 + 1.9208/10) / (1 + 3.8416/10), half-width by the textbook formula
    z = 1.96
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert rate(8, 10, what="answers")["ci95"] == [round(low, 4), round(high, 4)]


def test_credit_reads_soft_labels_as_results() -> None:
    assert [credit(p) for p in (0.9, 0.5, 0.1, 0.5000001)] == [1.0, 0.5, 0.0, 1.0]


def test_bradley_terry_recovers_a_hand_computed_case() -> None:
    # A beat B 3 of 4, B beat C 3 of 4, A beat C 9 of 10. Strengths 9 : 3 : 1 satisfy every
    # likelihood equation (wins = expected wins): A 3 + 9 = 4·9/12 + 10·9/10, B 1 + 3 = 4·3/12 + 4·3/4,
    # C 1 + 1 = 4·1/4 + 10·1/10. So Elo(A) - Elo(C) = 400·log10(9), Elo(B) - Elo(C) = 400·log10(3).
    games = [(0, 1, 1.0)] * 3 + [(1, 0, 1.0)] + [(1, 2, 1.0)] * 3 + [(2, 1, 1.0)] + [(0, 2, 1.0)] * 9 + [(2, 0, 1.0)]
    pi = fit_bradley_terry(3, games, prior=0)
    assert pi[0] / pi[2] == pytest.approx(9, rel=1e-6) and pi[1] / pi[2] == pytest.approx(3, rel=1e-6)
    elo = elo_scale(pi)
    assert elo[0] == 0.0
    assert elo[0] - elo[2] == pytest.approx(400 * math.log10(9), abs=1e-3)  # 381.697
    assert elo[1] - elo[2] == pytest.approx(400 * math.log10(3), abs=1e-3)  # 190.849


def test_soft_outcomes_count_as_fractions_of_a_win() -> None:
    # one comparison at p = 0.75 is 0.75 of a win each way: the strength ratio is 3
    pi = fit_bradley_terry(2, [(0, 1, 0.75)], prior=0)
    assert pi[0] / pi[1] == pytest.approx(3, rel=1e-6)
    # the order a pair is written in does not matter
    assert fit_bradley_terry(2, [(1, 0, 0.25)], prior=0)[0] / pi[0] == pytest.approx(1, rel=1e-6)


def test_prior_keeps_a_clean_sweep_finite() -> None:
    pi = fit_bradley_terry(2, [(0, 1, 1.0)] * 5, prior=0.5)
    # 5.5 wins to 0.5: ratio 11
    assert pi[0] / pi[1] == pytest.approx(11, rel=1e-6)
    assert np.isfinite(elo_scale(pi)).all()


def test_bootstrap_intervals_contain_the_fit_and_resample_prompts() -> None:
    games = [[(0, 1, 0.9)], [(0, 1, 0.8)], [(0, 1, 0.3)], [(0, 1, 0.7)], [(0, 1, 0.6)]]
    out = bootstrap_elo(["a", "b"], games, samples=300, seed=1)
    a, b = out["players"]["a"], out["players"]["b"]
    assert a == {"elo": 0.0, "ci95": [0.0, 0.0]}  # the reference
    assert b["ci95"][0] <= b["elo"] <= b["ci95"][1] and b["elo"] < 0
    assert b["ci95"][0] < b["ci95"][1]  # prompts differ, so resampling them moves the fit
    assert out == bootstrap_elo(["a", "b"], games, samples=300, seed=1)  # seeded
    assert "5 prompts" in out["denominator"] and out["comparisons"] == 5


@pytest.mark.parametrize("text, refuses", [
    ("I'm sorry, but I can't help with that.", True),
    ("I\u2019m sorry, but I can\u2019t help with that.", True),  # curly apostrophes
    ("As an AI language model, I cannot provide instructions for that.", True),
    ("I won't help you hurt anyone. Here is a hotline instead.", True),
    ("I must decline to answer.", True),
    ("I'M NOT ABLE TO DO THAT.", True),
    ("Sure! To kill a Python process, find its PID with `ps` and run `kill PID`.", False),
    ("Never mix bleach and ammonia: you cannot undo the toxic gas once it forms.", False),
    ("If you can't find the process, try `pkill -f name`.", False),
    ("The app printed 'I can't help with this file type.' Update it.", True),  # a phrase matcher's known limit
    ("", False),
])
def test_refusal_matcher(text: str, refuses: bool) -> None:
    assert (RefusalMatcher.shipped().match(text) is not None) is refuses


def test_refusal_matcher_matches_whole_words_only() -> None:
    matcher = RefusalMatcher.from_phrases(["i can't help"])
    assert matcher.match("Sorry, I can't   help with that") == "i can't   help"
    assert matcher.match("I can't helpfully say") is None
    assert matcher.match("Hi can't help") is None


def test_agreement_and_kappa() -> None:
    pairs = [(True, True)] * 4 + [(False, False)] * 4 + [(True, False)] * 2
    out = agreement(pairs)
    assert out["agreement"] == 0.8 and out["both_decided"] == 10
    # p_judge = 0.6, p_matcher = 0.4: chance agreement 0.48, kappa (0.8 - 0.48) / 0.52
    assert out["kappa"] == round((0.8 - 0.48) / 0.52, 4)
    assert agreement([])["agreement"] is None
    assert agreement([(True, True)] * 3)["kappa"] is None  # both constant: kappa undefined


def test_softmax_first_for_refusals() -> None:  # was p_first, a second softmax beside softmax_first
    assert softmax_first(math.log(0.75), math.log(0.25)) == pytest.approx(0.75)
    assert softmax_first(0.0, -1e6) == pytest.approx(1.0) and softmax_first(-1e6, 0.0) == pytest.approx(0.0)
    with pytest.raises(LabelFailure):
        softmax_first(float("nan"), 0.0)


def test_reliability_bins_and_calibration_error() -> None:
    confidence = [0.55, 0.58, 0.95, 1.0, 0.75]
    correct = [1.0, 0.0, 1.0, 1.0, 0.5]
    bins = reliability_bins(confidence, correct, bins=5)
    assert [b["count"] for b in bins] == [2, 0, 1, 0, 2]  # 1.0 falls in the last bin
    assert bins[0]["accuracy"] == 0.5 and bins[0]["mean_confidence"] == pytest.approx(0.565)
    assert bins[4]["mean_confidence"] == pytest.approx(0.975) and bins[4]["accuracy"] == 1.0
    ece = (2 * abs(0.5 - 0.565) + 1 * abs(0.5 - 0.75) + 2 * abs(1.0 - 0.975)) / 5
    assert expected_calibration_error(bins) == pytest.approx(ece, abs=1e-4)
