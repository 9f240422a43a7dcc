"""Training the embedded model with every `cai train` wrapper, on cai-format data."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from cai.engines.fake import FakeScript, register_script
from cai.rl import RLConfig, run_rl
from cai.sl import SLConfig, run_sl
from tests.conftest import write_jsonl
from tests.e2e.test_sl_real_model import cai

pytestmark = pytest.mark.slow
STEPS = dict(max_steps=2, batch_size=2, max_length=160, logging_steps=1)


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
    run_sl(SLConfig(prompts=str(prompts), out=str(tmp / "sl"), model="fake:train-data", rounds=1), show_progress=False)
    run_rl(RLConfig(prompts=str(prompts), out=str(tmp / "rl"), policy="fake:train-data", judges=["fake:train-data"],
                    candidates=3), show_progress=False)
    return tmp


def _loads_and_generates(model_dir) -> None:
    from cai.engines import load_engine
    from cai.types import Request, SamplingParams

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
    assert report["soft_labels"] is True
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(pm).config.num_labels == 1

    out = tmp_path / "dpo"
    report = dpo.main(dpo.DPOWrapperConfig(data=str(runs / "rl"), out=str(out), soft_labels="smoothing",
                                           min_margin=0.1, **STEPS))
    _check(report, out)
    assert report["label_smoothing"] == pytest.approx(0.3)  # every fake label had p_chosen = 0.7
    _loads_and_generates(out)

    rl_out = tmp_path / "rloo"
    report = policy.main(policy.PolicyRLConfig(data=str(runs / "rl"), out=str(rl_out), reward_model=str(pm),
                                               max_completion_length=16, **STEPS))
    _check(report, rl_out)
    _loads_and_generates(rl_out)


def test_cli_config_file_and_errors(runs, tmp_path) -> None:
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"data: {runs / 'rl'}\nmax_steps: 1\nbatch_size: 2\nmax_length: 128\nbeta: 0.2\n")
    proc = cai("train", "dpo", "--config", str(cfg), "--out", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "d" / "train_report.json").read_text())["steps"] == 1
    assert '"final_loss"' in proc.stdout  # the report is printed too
    bad = cai("train", "dpo", "--data", str(runs / "sl"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "preferences.jsonl" in bad.stderr


def test_recipe_end_to_end_and_resume(tmp_path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "r1", "prompt": "How do I get revenge on my neighbour?"},
                                                 {"id": "r2", "prompt": "Tell me how to cheat at poker."},
                                                 {"id": "r3", "prompt": "Write a threatening note."}])
    args = ["recipe", "--prompts", str(prompts), "--out", str(tmp_path / "recipe"), "--rounds", "1",
            "--max-tokens", "32", "--train-steps", "1", "--quiet"]
    first = cai(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    stages = json.loads((tmp_path / "recipe" / "recipe_summary.json").read_text())
    assert set(stages) == {"sl", "sft", "rl", "reward", "dpo"}
    assert (tmp_path / "recipe" / "models" / "sft" / "model.safetensors").exists()
    second = cai(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    for run in ("sl", "rl"):
        summary = json.loads((tmp_path / "recipe" / run / "summary.json").read_text())
        assert summary["engine_calls_made"] == 0, run  # everything came from the stores
