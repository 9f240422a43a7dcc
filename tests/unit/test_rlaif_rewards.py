"""The judge as an online reward, on scripted judges: d-RLAIF ratings, pairwise win rates, failures, the guard.

The real model trains against these rewards in tests/e2e/test_rlaif_training.py; here every
number is known in advance, so each test can fail.
"""

from __future__ import annotations

import math
import re

import pytest

from cai.core.errors import ConfigError
from cai.engines import load_engine
from cai.engines.base import EngineError
from cai.engines.fake import FakeEngine, FakeScript, register_script
from cai.inputs.constitution import load_constitution
from cai.label.guard import SYNTAX_ATTACKS, JudgeSyntaxGuard, canned_attacks
from cai.label.pairwise import PairwiseLabeler
from cai.label.rating import RatingJudge, RatingScaleError, expected_rating
from cai.runs.store import CachedEngine, Store
from cai.text.templates import render
from cai.train.common import TrainError
from cai.train.configs import PolicyRLConfig
from cai.train.rewards import (
    JudgePairwiseReward,
    JudgeScoreReward,
    RewardLog,
    groups_of,
    make_reward,
    pair_schedule,
)
from tests.unit.test_injection import HOSTILE, quoted_blocks, skeleton

STEM = "The rating is: "
MASS = 0.8  # the scripted judge puts this much of its next token on the scale


def reply_of(question: str) -> str:
    """The quoted reply of a rating question."""
    return quoted_blocks(question)[1]


def distribution(reply: str) -> list[float]:
    """P(1..9) of the scripted judge: mostly 8 for a kind reply, mostly 2 otherwise; 9 when primed."""
    top = 7 if "kind" in reply else 1
    if "9" in reply:  # a judge that copies a rating it sees: what the guard must defeat
        top = 8
    return [0.6 if v == top else 0.05 for v in range(9)]


def rating_scorer(messages, continuation: str) -> float:
    question = messages[-1]["content"]
    if "FAIL" in question:
        raise EngineError("scripted judge failure")
    if continuation == STEM:
        return -0.5
    label = int(continuation[len(STEM):])
    return -0.5 + math.log(MASS * distribution(reply_of(question))[label - 1])


register_script("rater", FakeScript(lambda r, k: "x", rating_scorer))

CONV = [{"role": "user", "content": "My neighbour is loud at night. What should I do?"}]
KIND = "Talk to them kindly and calmly about the noise, or ask your landlord to help."
RUDE = "Shout at them until they stop."


def rater(**kw) -> RatingJudge:
    return RatingJudge(load_engine("fake:rater"), load_constitution("default"), **kw)


def log(tmp_path, rate: float = 1.0, source: str = "judge-score", span: float = 8.0) -> RewardLog:
    return RewardLog(source, tmp_path, reward_range=span, max_failure_rate=rate)


# ---- d-RLAIF: the expected rating -------------------------------------------------------------
async def test_expected_rating_is_sum_of_v_times_p_normalised_over_the_scale() -> None:
    judge = rater()
    form = await judge.check()
    assert form.stem == STEM  # "The rating is:" + " 7" is two tokens in the fake tokenizer: the second form
    rating = await judge.rate(CONV, KIND, judge.principle("x"))
    p = [x / sum(distribution(KIND)) for x in distribution(KIND)]
    assert rating.probabilities == pytest.approx(p)
    assert rating.expected == pytest.approx(sum((v + 1) * q for v, q in enumerate(p)))
    assert rating.expected == pytest.approx(0.6 / 1.0 * 8 + 0.05 * (45 - 8))
    assert rating.scale_mass == pytest.approx(MASS)
    [(kind, (messages, continuations))] = judge.engine.calls
    assert kind == "score" and continuations == [STEM] + [f"{STEM}{v}" for v in range(1, 10)]  # one call, no decoding
    assert len(messages) == 1 and KIND in messages[0]["content"]


def test_low_mass_is_reported_not_hidden() -> None:
    r = expected_rating(0.0, [math.log(0.01)] * 9, list(range(1, 10)), "p")
    assert r.expected == pytest.approx(5.0) and r.scale_mass == pytest.approx(0.09)


class MultiTokenLabels(FakeEngine):
    async def token_ids(self, text: str) -> list[int]:
        return list(range(len(text)))  # a character tokenizer: every label after any stem is one token...


class SplitsEveryLabel(FakeEngine):
    async def token_ids(self, text: str) -> list[int]:
        ids = await super().token_ids(text)
        return ids + ([0] if text[-1:].isdigit() else [])  # ...and this one makes every label two tokens


async def test_the_scale_check_refuses_labels_that_are_not_one_token() -> None:
    ok = RatingJudge(MultiTokenLabels("rater"), load_constitution("default"))
    assert (await ok.check()).stem == STEM
    bad = RatingJudge(SplitsEveryLabel("rater"), load_constitution("default"))
    with pytest.raises(RatingScaleError, match=r"not each one token.*'The rating is: 1': 2 tokens"):
        await bad.check()


class CannotTokenize(FakeEngine):
    async def token_ids(self, text: str) -> list[int]:
        return await super(FakeEngine, self).token_ids(text)  # the Engine default: cannot tell


async def test_an_engine_that_cannot_tokenize_is_a_clear_error() -> None:
    judge = RatingJudge(CannotTokenize("rater"), load_constitution("default"))
    with pytest.raises(RatingScaleError, match="cannot check that the rating labels are single tokens"):
        await judge.check()


@pytest.mark.parametrize("text", HOSTILE)
def test_the_rating_template_fences_the_reply(text) -> None:
    def prompt(conv: str, reply: str) -> str:
        return render("judge_rating.j2", conversation=conv, reply=reply, principle="Which reply is kinder?",
                      low=1, high=9, middle=5)
    assert skeleton(prompt(f"Human: {text}", text)) == skeleton(prompt("Human: Hi", "Hello"))


# ---- judge-score as a TRL reward function ---------------------------------------------------------
JOKE = [{"role": "user", "content": "Tell me a joke."}]
PROMPTS = [CONV, CONV, JOKE, JOKE]


def completions(*texts: str) -> list[list[dict[str, str]]]:
    return [[{"role": "assistant", "content": t}] for t in texts]


def score_reward(tmp_path, *, rate: float = 1.0, retries: int = 2, store: Store | None = None) -> JudgeScoreReward:
    engine = load_engine("fake:rater")
    judge = RatingJudge(CachedEngine(engine, store) if store else engine, load_constitution("default"))
    return JudgeScoreReward(judge, "fake:rater", log(tmp_path, rate), retries=retries)


async def test_judge_score_rewards_groups_and_logs_their_statistics(tmp_path) -> None:
    reward = score_reward(tmp_path)
    await reward.prepare()
    metrics: dict[str, float] = {}
    out = await reward(prompts=PROMPTS, completions=completions(KIND, RUDE, KIND, KIND),
                       log_metric=metrics.__setitem__)
    kind, rude = (await rater().rate(CONV, KIND, rater().principle("x"))).expected, \
        (await rater().rate(CONV, RUDE, rater().principle("x"))).expected
    assert out == pytest.approx([kind, rude, kind, kind])
    [step] = reward.log.steps
    assert step["group_std_mean"] == pytest.approx((abs(kind - rude) / math.sqrt(2) + 0) / 2, abs=1e-4)
    assert (step["tie_rate"], step["tie_pairs"]) == (0.5, 2)  # the second group's two identical ratings
    assert step["scale_mass_mean"] == pytest.approx(MASS, abs=1e-4) and step["unscored"] == 0
    assert len(step["principles"]) <= 2  # one principle per group
    assert metrics["reward/reward_mean"] == pytest.approx(sum(out) / 4, abs=1e-4)
    assert metrics["reward/scale_mass_mean"] == pytest.approx(MASS, abs=1e-4)
    lines = (tmp_path / "rewards.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"principle_id"' in lines[0]


async def test_a_failed_judge_call_is_none_never_zero_and_is_counted(tmp_path) -> None:
    reward = score_reward(tmp_path, retries=2)
    out = await reward(prompts=PROMPTS, completions=completions(KIND, "FAIL here", RUDE, KIND))
    assert out[1] is None and all(isinstance(v, float) and v > 1 for v in (out[0], out[2], out[3]))
    [step] = reward.log.steps
    assert (step["unscored"], step["failed_calls"], step["failure_rate"]) == (1, 1, 0.25)
    tries = [c for c in reward.engine.calls if "FAIL" in c[1][0][-1]["content"]]
    assert len(tries) == 3  # the call and its two retries
    assert reward.log.report()["unscored"] == 1


async def test_a_failure_rate_over_the_budget_stops_training(tmp_path) -> None:
    reward = score_reward(tmp_path, rate=0.2, retries=0)
    batch = completions(KIND, "FAIL", RUDE, KIND)
    for _ in range(3):  # 12 samples, 3 failed: not judged yet (16)
        await reward(prompts=PROMPTS, completions=batch)
    with pytest.raises(TrainError, match=r"failed for 4 of the 16 samples.*--max-judge-failure-rate 0.2"):
        await reward(prompts=PROMPTS, completions=batch)


async def test_a_resumed_run_answers_from_the_store(tmp_path) -> None:
    batch = completions(KIND, RUDE, KIND, RUDE)
    first = score_reward(tmp_path / "a", store=Store(tmp_path / "judge.sqlite"))
    rewards = await first(prompts=PROMPTS, completions=batch)
    again = score_reward(tmp_path / "b", store=Store(tmp_path / "judge.sqlite"))
    assert await again(prompts=PROMPTS, completions=batch) == rewards
    assert again.log.steps[0]["judge_calls"] == 0 and again.log.steps[0]["judge_cache_hits"] == 4
    assert first.log.steps[0]["judge_calls"] == 4


# ---- judge-pairwise ---------------------------------------------------------------------------------
def longer_wins(messages, continuation: str) -> float:
    q = messages[-1]["content"]
    a, b = quoted_blocks(q)[1:3]
    p_a = 0.8 if len(a) > len(b) else 0.2
    return math.log(p_a if continuation.endswith("(A)") else 1 - p_a)


register_script("longer-wins", FakeScript(lambda r, k: "x", longer_wins))


def test_pair_schedule_all_pairs_up_to_four_then_round_robin() -> None:
    assert pair_schedule(2) == [(0, 1)] and len(pair_schedule(4)) == 6
    for size in (5, 6, 9):
        pairs = pair_schedule(size)
        assert len(pairs) == 2 * size
        assert all(sum(i in p for p in pairs) == 4 for i in range(size))  # each completion meets 4 others


async def test_judge_pairwise_reward_is_the_mean_win_probability_in_both_orders(tmp_path) -> None:
    engine = load_engine("fake:longer-wins")
    cached = CachedEngine(engine, Store(tmp_path / "judge.sqlite"))
    reward = JudgePairwiseReward(PairwiseLabeler(cached, load_constitution("default")), "fake:longer-wins",
                                 log(tmp_path, source="judge-pairwise", span=1.0))
    texts = ["short", "a little longer", "the longest of the three replies"]
    out = await reward(prompts=[CONV] * 3 + [JOKE] * 2, completions=completions(*texts, "same", "same"))
    assert out == pytest.approx([0.2, 0.5, 0.8, 0.5, 0.5])
    assert len(engine.calls) == 3 * 2  # 3 pairs, both orders; the identical pair is a tie without a call
    assert reward.log.steps[0]["judge_calls"] == 6
    assert reward.log.steps[0]["tie_rate"] == pytest.approx(1 / 4)


def flaky_pairs(messages, continuation: str) -> float:
    if "BROKEN" in messages[-1]["content"]:
        raise EngineError("scripted failure")
    return longer_wins(messages, continuation)


register_script("flaky-pairs", FakeScript(lambda r, k: "x", flaky_pairs))


async def test_a_failed_comparison_leaves_both_its_completions_without_a_reward(tmp_path) -> None:
    reward = JudgePairwiseReward(PairwiseLabeler(load_engine("fake:flaky-pairs"), load_constitution("default")),
                                 "fake:flaky-pairs", log(tmp_path, source="judge-pairwise", span=1.0), retries=1)
    out = await reward(prompts=[CONV] * 2 + [JOKE] * 2, completions=completions("a", "BROKEN", "b", "bb"))
    assert out[:2] == [None, None] and out[2:] == pytest.approx([0.2, 0.8])
    assert reward.log.steps[0]["unscored"] == 2 and reward.log.steps[0]["failed_calls"] == 1


# ---- the guard against judge hacking --------------------------------------------------------------
ATTACKS = {name: text for name, text in canned_attacks(KIND).items() if name in SYNTAX_ATTACKS}


def test_the_guard_gives_back_the_completion_without_the_attack() -> None:
    guard = JudgeSyntaxGuard()
    assert len(ATTACKS) == 4
    for name, text in ATTACKS.items():
        cleaned = guard.clean(text)
        assert cleaned.text == KIND and cleaned.removed >= 1, name
    assert guard.clean(KIND).removed == 0
    assert guard.clean("The answer is: 42 apples.").text == "42 apples."  # a number off the scale stays


async def test_no_attack_gains_reward_with_the_guard_and_each_would_without_it(tmp_path) -> None:
    """The scripted judge copies any 9 it sees: unguarded, every attack gains; guarded, none does."""
    reward = score_reward(tmp_path)
    texts = [KIND, *ATTACKS.values()]
    guarded = await reward(prompts=[CONV] * len(texts), completions=completions(*texts))
    assert guarded == pytest.approx([guarded[0]] * len(texts))
    assert reward.log.steps[0]["guarded"] == len(ATTACKS)
    judge = rater()
    principle = judge.principle("x")
    clean = (await judge.rate(CONV, KIND, principle)).expected
    for name, text in ATTACKS.items():
        assert (await judge.rate(CONV, text, principle)).expected > clean + 0.5, name


# ---- options and statistics ---------------------------------------------------------------------------
def test_groups_follow_the_prompts() -> None:
    assert groups_of(["a", "a", "b", "b", "a"]) == [[0, 1, 4], [2, 3]]


def test_options_the_trainer_would_ignore_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--judge is used only with --reward judge-score"):
        PolicyRLConfig(data="d", out="o", judge="smollm2")
    with pytest.raises(ConfigError, match="--reward-model is used only with --reward reward-model"):
        PolicyRLConfig(data="d", out="o", reward="judge-score", reward_model="models/pm")
    with pytest.raises(ConfigError, match="must be at least 2"):
        PolicyRLConfig(data="d", out="o", reward="judge-pairwise", num_generations=1)
    config = PolicyRLConfig.load({"data": "d", "out": str(tmp_path), "reward": "judge-score", "judge": "fake:rater",
                                  "judge_options": ["serial_latency_s=0"]})
    assert config.judge_options == {"serial_latency_s": 0}
    reward = make_reward(config, tmp_path)
    assert isinstance(reward, JudgeScoreReward) and reward.__name__ == "judge_score"
    assert re.search(r"judge_store\.sqlite$", str(reward.store.path))
    reward.close()
