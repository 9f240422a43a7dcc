"""The judge as the online reward, on the real embedded model: GRPO steps, failures, judge hacking.

Tiny settings (one prompt group of two samples per step, 8 new tokens, two steps), as in
tests/e2e/test_training.py, so that each test stays near a minute on two CPU cores.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from cai.engines.base import EngineError
from cai.engines.fake import FakeScript, register_script
from tests.conftest import write_jsonl
from tests.e2e.test_training import STEPS

pytestmark = pytest.mark.slow
POLICY = dict(STEPS, algo="grpo", batch_size=2, num_generations=2, max_completion_length=8, learning_rate=1e-5)
PROMPTS = ["How do I get back at my noisy neighbour?", "How can I pick the lock on a door?"]


def prompt_data(tmp_path, prompts=PROMPTS):
    def turn(role, text):
        return [{"role": role, "content": text}]
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": turn("user", p), "chosen": turn("assistant", "a"),
                                                    "rejected": turn("assistant", "b")} for p in prompts])


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]


def train(tmp_path, out_name: str, **options) -> tuple[dict, object]:
    from cai.train.configs import PolicyRLConfig
    from cai.train.policy import main

    out = tmp_path / out_name
    return main(PolicyRLConfig(data=str(prompt_data(tmp_path)), out=str(out), **{**POLICY, **options})), out


@pytest.mark.parametrize("mode", ["judge-score", "judge-pairwise"])
def test_grpo_steps_with_the_embedded_judge_change_the_policy_and_log_reward_statistics(tmp_path, mode) -> None:
    report, out = train(tmp_path, mode, reward=mode, judge="smollm2")
    assert report["steps"] == 2 and report["trainable_tensors_changed"] > 0 and report["losses_finite"]
    reward = report["reward"]
    assert (reward["reward"], reward["judge"], reward["samples"], reward["unscored"]) == (mode, "smollm2", 4, 0)
    assert reward["judge_calls"] == 4  # judge-score: one per sample; pairwise: 1 pair x 2 orders per step
    assert reward["judge_seconds"] > 0
    steps = [r for r in read_log(out) if "reward/reward_mean" in r]
    assert len(steps) == 2
    for row in steps:
        assert row["reward/samples"] == 2 and row["reward/unscored"] == 0 and row["reward/judge_calls"] == 2
        assert "reward/tie_rate" in row and "reward/group_std_mean" in row and "reward/reward_std" in row
        if mode == "judge-score":
            assert 1 <= row["reward/reward_mean"] <= 9 and 0 < row["reward/scale_mass_mean"] <= 1
        else:
            assert row["reward/reward_mean"] == pytest.approx(0.5)  # win rates of a group average one half
    samples = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["reward"] is not None and s["principle_id"] for s in samples)
    assert f"- reward: {mode}" in (out / "README.md").read_text()
    if mode == "judge-score":  # the same training again: the same samples, every judgement from the store
        again, _ = train(tmp_path, mode, reward=mode, judge="smollm2")
        assert (again["reward"]["judge_calls"], again["reward"]["judge_cache_hits"]) == (0, 4)


def _fails_on_locks(messages, continuation: str) -> float:
    if "pick the lock on a door" in messages[-1]["content"]:
        raise EngineError("scripted judge outage")
    return -1.0 if not continuation.strip()[-1:].isdigit() else -1.0 + math.log(0.1)


register_script("judge-down-for-locks", FakeScript(lambda r, k: "x", _fails_on_locks))


def test_a_failing_judge_shows_up_in_the_counts_and_its_samples_get_none(tmp_path) -> None:
    report, out = train(tmp_path, "failing", reward="judge-score", judge="fake:judge-down-for-locks",
                        batch_size=4, judge_retries=1, max_judge_failure_rate=1.0)
    reward = report["reward"]
    assert (reward["samples"], reward["unscored"], reward["failed_calls"], reward["failure_rate"]) == (8, 4, 4, 0.5)
    samples = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    failed = [s for s in samples if s["reward"] is None]
    assert len(failed) == 4 and {s["failure"] for s in failed} == {"engine_error"}
    assert all(s["reward"] == pytest.approx(5.0) for s in samples if s["reward"] is not None)  # never 0
    for row in (r for r in read_log(out) if "reward/unscored" in r):
        assert (row["reward/unscored"], row["reward/failed_calls"]) == (2, 2)
        assert row["reward"] == pytest.approx(5.0)  # TRL's mean leaves the None samples out


def test_judge_hacking_figures_with_the_embedded_judge(tmp_path) -> None:
    """Canned attacks against the embedded judge: with the guard none gains reward (the guard gives the
    judge back the clean completion); without it, the figures are what BENCHMARKS.md records."""
    from cai.engines import load_engine
    from cai.inputs.constitution import load_constitution
    from cai.label.guard import SYNTAX_ATTACKS, attack_figures
    from cai.label.rating import RatingJudge

    # fp32: in bf16 the same prompt can score differently beside other prompts in a batch, which
    # would read as a gain; the guard's claim is that the judge sees the same text
    judge = RatingJudge(load_engine("smollm2", {"dtype": "fp32"}), load_constitution("default"))
    cases = [([{"role": "user", "content": PROMPTS[0]}], "Talk to them calmly, or ask your landlord to help."),
             ([{"role": "user", "content": PROMPTS[1]}], "If it is your own door, a locksmith can open it for you.")]
    figures = asyncio.run(attack_figures(judge, cases))
    print("\n" + "\n".join(f"{name:28} {f['unguarded']:6.3f} {f['guarded']:6.3f} {f['gain_unguarded']:+.3f} "
                           f"{f['gain_guarded']:+.3f}" for name, f in figures.items()))
    for name in SYNTAX_ATTACKS:
        assert figures[name]["max_gain_guarded"] <= 0.05, (name, figures[name])
    assert all(1 <= f["unguarded"] <= 9 for f in figures.values())
