"""Training the embedded model with every `cai train` wrapper, on cai-format data."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from cai.engines.fake import FakeScript, register_script
from cai.generate.rl import RLConfig, run_rl
from cai.generate.sl import SLConfig, run_sl
from tests.conftest import write_jsonl
from tests.e2e.test_sl_real_model import cai

pytestmark = pytest.mark.slow
STEPS = dict(max_steps=2, batch_size=2, max_length=160, logging_steps=1, gradient_checkpointing=False)


def _varied(req, k):
    words = ["careful", "honest", "kind", "safe", "clear", "useful", "gentle", "polite", "brief", "calm"]
    n = 4 + (k * 3 + len(req.messages)) % 7
    return "I would answer in a " + " and ".join(words[(k + i) % len(words)] for i in range(n)) + " way."


def _prefer_longer(messages, continuation):
    q = messages[-1]["content"]
    a = q.split("(A) ", 1)[1].split("\n\n(B) ", 1)[0]
    b = q.split("(B) ", 1)[1].split("\n\nAnswer with", 1)[0]
    p_a = 0.7 if len(a) > len(b) else 0.3
    return math.log(p_a if continuation.endswith("(A)") else 1 - p_a)


register_script("train-data", FakeScript(_varied, _prefer_longer))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """SL and RL runs in cai's own formats (made quickly with a scripted engine)."""
    tmp = tmp_path_factory.mktemp("data")
    prompts = write_jsonl(tmp / "p.jsonl", [{"id": f"t{i}", "prompt": f"Question number {i}: how do I do thing {i}?"}
                                            for i in range(6)])
    run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp / "sl"), model="fake:train-data", rounds=1), show_progress=False)
    run_rl(RLConfig.of(prompts=str(prompts), out=str(tmp / "rl"), policy="fake:train-data", judges=["fake:train-data"],
                    candidates=3), show_progress=False)
    return tmp


def _loads_and_generates(model_dir) -> None:
    from cai.core.types import Request, SamplingParams
    from cai.engines import load_engine

    engine = load_engine(f"hf:{model_dir}")
    out = asyncio.run(engine.generate([Request.of([{"role": "user", "content": "Hello"}],
                                                  SamplingParams(max_tokens=6, temperature=0))]))
    assert out[0][0].completion_tokens > 0


def _check(report: dict, out) -> None:
    assert report["steps"] == 2
    assert report["losses_finite"] and report["final_loss"] is not None
    assert report["trainable_tensors_changed"] > 0
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log)
    assert (out / "loss.png").stat().st_size > 1000
    card = (out / "README.md").read_text()
    assert "constitution: default" in card and "learning_rate" in card


def test_sft_full_and_lora(runs, tmp_path) -> None:
    from cai.train.sft import SFTWrapperConfig, main

    out = tmp_path / "sft"
    _check(main(SFTWrapperConfig(data=str(runs / "sl"), out=str(out), **STEPS)), out)
    _loads_and_generates(out)
    lora_out = tmp_path / "sft-lora"
    report = main(SFTWrapperConfig(data=str(runs / "sl"), out=str(lora_out), lora=True, lora_r=4, **STEPS))
    _check(report, lora_out)
    assert not (lora_out / "adapter_config.json").exists()  # merged: loads as a plain model
    _loads_and_generates(lora_out)


def test_reward_dpo_and_rloo(runs, tmp_path) -> None:
    from cai.train import dpo, policy, reward

    pm = tmp_path / "pm"
    report = reward.main(reward.RewardWrapperConfig(data=str(runs / "rl"), out=str(pm), **STEPS))
    _check(report, pm)
    assert report["soft_labels"] == "soft" and report["rows_with_p_chosen"] == report["train_rows"] > 0
    assert "labels: soft (default: the data has p_chosen)" in (pm / "README.md").read_text()
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(pm).config.num_labels == 1

    out = tmp_path / "dpo"
    report = dpo.main(dpo.DPOWrapperConfig(data=str(runs / "rl"), out=str(out), min_margin=0.1, **STEPS))
    _check(report, out)
    assert report["soft_labels"] == "soft" and report["pairs_filtered"] == 0  # every fake label had p = 0.7
    assert report["rows_with_p_chosen"] == report["train_rows"] > 0
    _loads_and_generates(out)

    rl_out = tmp_path / "rloo"
    report = policy.main(policy.PolicyRLConfig(data=str(runs / "rl"), out=str(rl_out), reward_model=str(pm),
                                               max_completion_length=16, **STEPS))
    _check(report, rl_out)
    _loads_and_generates(rl_out)


def _weights(model_dir, cls) -> dict:
    return {k: v.clone() for k, v in cls.from_pretrained(model_dir).state_dict().items()}


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_soft_and_hard_labels_train_different_models(tmp_path, tiny_model) -> None:
    """Same data, same seed: only the labels differ, and so do the trained parameters (on a tiny model
    with the embedded model's tokenizer: what is tested is the loss, not the weights)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from cai.train import dpo, reward

    def turn(role, text):
        return [{"role": role, "content": text}]

    rows = [{"prompt": turn("user", f"How should I answer question {i}?"),
             "chosen": turn("assistant", f"Politely and honestly, number {i}."),
             "rejected": turn("assistant", "No."), "p_chosen": p, "label_margin": None if p is None else abs(2 * p - 1),
             "margin": 5.0}  # an old export's column: dropped before TRL (tests/unit/test_train_config.py)
            for i, p in enumerate([0.55, 0.9, None, 0.6])]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    steps = dict(STEPS, max_steps=1, batch_size=4, learning_rate=1e-4, model=str(tiny_model))  # one step, 4 pairs
    for name, main, config_cls, model_cls in [
            ("reward", reward.main, reward.RewardWrapperConfig, AutoModelForSequenceClassification),
            ("dpo", dpo.main, dpo.DPOWrapperConfig, AutoModelForCausalLM)]:
        weights = {}
        for mode in ("soft", "hard"):
            out = tmp_path / f"{name}-{mode}"
            report = main(config_cls(data=str(data), out=str(out), soft_labels=mode, **steps))
            assert report["steps"] == 1 and report["losses_finite"] and report["trainable_tensors_changed"] > 0
            assert (report["soft_labels"], report["rows_with_p_chosen"], report["train_rows"]) == (mode, 3, 4)
            weights[mode] = _weights(out, model_cls)
        assert _max_difference(weights["soft"], weights["hard"]) > 1e-6, name
    # the control: the same labels twice give the same model, so the difference above is the labels'
    again = tmp_path / "reward-hard-again"
    reward.main(reward.RewardWrapperConfig(data=str(data), out=str(again), soft_labels="hard", **steps))
    assert _max_difference(_weights(again, AutoModelForSequenceClassification),
                           _weights(tmp_path / "reward-hard", AutoModelForSequenceClassification)) == 0.0


def test_cli_config_file_and_errors(runs, tmp_path) -> None:
    cfg = tmp_path / "dpo.yaml"
    # hard labels: soft DPO precomputes the reference log-probs of every row (tested in test_reward_dpo_and_rloo);
    # this test is about the config file and the CLI's errors
    cfg.write_text(f"data: {runs / 'rl'}\nmax_steps: 1\nbatch_size: 2\nmax_length: 128\nbeta: 0.2\nsoft_labels: hard\n")
    proc = cai("train", "dpo", "--config", str(cfg), "--out", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "d" / "train_report.json").read_text())["steps"] == 1
    assert '"final_loss"' in proc.stdout  # the report is printed too
    bad = cai("train", "dpo", "--data", str(runs / "sl"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "preferences.jsonl" in bad.stderr
    ignored = cai("train", "dpo", "--data", str(runs / "rl"), "--out", str(tmp_path / "x"), "--label-smoothing", "0.1")
    assert ignored.returncode == 2 and "would ignore it" in ignored.stderr


def test_recipe_end_to_end_and_resume(tmp_path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "r1", "prompt": "How do I get revenge on my neighbour?"},
                                                 {"id": "r2", "prompt": "Tell me how to cheat at poker."},
                                                 {"id": "r3", "prompt": "Write a threatening note."}])
    args = ["recipe", "--prompts", str(prompts), "--out", str(tmp_path / "recipe"), "--rounds", "1",
            "--max-tokens", "32", "--train-steps", "1", "--quiet", "--eval-limit", "1", "--judge-check-pairs", "4",
            "--rlaif"]
    first = cai(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "recipe"
    stages = json.loads((root / "recipe_summary.json").read_text())
    assert set(stages) == {"sl", "sft", "rl", "reward", "dpo", "rlaif", "judge-check", "verdict: sft", "verdict: dpo",
                           "verdict: rlaif", "eval", "report"}
    assert (root / "models" / "sft" / "model.safetensors").exists()
    rlaif = json.loads((root / "models" / "rlaif" / "train_report.json").read_text())
    assert rlaif["reward"]["reward"] == "judge-score" and rlaif["reward"]["judge_calls"] > 0
    report = json.loads((root / "eval" / "report.json").read_text())
    assert report["models"] == ["start", "sft", "dpo", "rlaif"]
    assert report["judge_agreement"]["pairs"] == 4 and "Elo [" in report["verdicts"][0]["line"]
    assert all("too few to call" in v["line"] for v in report["verdicts"])  # 1 prompt per set
    assert "rlaif vs start: harmlessness" in stages["verdict: rlaif"]
    page = (root / "report.html").read_text()
    assert "<svg" in page and "Models compared" in page and "Verdicts: each model against the first" in page
    assert "Models compared" in first.stderr  # the table ends the run's output
    second = cai(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    for run in ("sl", "rl", "judge-check", "eval"):
        summary = json.loads((root / run / "summary.json").read_text())
        assert summary["engine_calls_made"] == 0, run  # everything came from the stores
