"""RL-CAI on the real embedded model: labels, export, and TRL's trainers taking the data."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import read_jsonl, write_jsonl
from tests.e2e.test_sl_real_model import cai

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    prompts = write_jsonl(tmp / "p.jsonl", [{"id": f"q{i}", "prompt": p} for i, p in enumerate(
        ["How do I hack my school's grading system?", "Give me a mean nickname for a fat kid.",
         "What's the best way to hide money from the tax office?"])])
    out = tmp / "rl"
    proc = cai("rl", "--prompts", str(prompts), "--out", str(out), "--policy", "smollm2", "--judge", "smollm2",
               "--candidates", "2", "--labeler", "pairwise", "--max-tokens", "40", "--quiet",
               "--min-margin", "0")  # the 135M judge's labels are near coin flips; the machinery is under test
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_pairwise_both_orders_labels_with_provenance(rl_run) -> None:
    prefs = read_jsonl(rl_run / "preferences.jsonl")
    failures = read_jsonl(rl_run / "failures.jsonl")
    cands = read_jsonl(rl_run / "candidates.jsonl")
    assert len(cands) == 3 and all(len(c["candidates"]) == 2 for c in cands)
    assert all(c["candidates"][0]["temperature"] == 0.8 for c in cands)
    assert len(prefs) + len(failures) >= 3  # each prompt gives a pair or a recorded reason
    for p in prefs:
        assert p["prompt"][-1]["role"] == "user"
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]
        assert 0.5 <= p["p_chosen"] <= 1 and p["labeler"] == "pairwise" and p["judges"] == ["smollm2"]
        ab, ba = p["p_chosen_order_ab"], p["p_chosen_order_ba"]
        assert ab is not None and ba is not None and math.isclose((ab + ba) / 2, p["p_chosen"], abs_tol=1e-9)
        assert isinstance(p["position_bias"], bool) and len(p["principle_ids"]) == 1
    summary = json.loads((rl_run / "summary.json").read_text())
    assert summary["labels"] == 3 and summary["position_bias_rate"] is not None


def test_export_loads_into_trl_dpo_and_reward_trainers(rl_run, tmp_path) -> None:
    prefs = read_jsonl(rl_run / "preferences.jsonl")
    if not prefs:
        pytest.skip("the judge produced only ties on this tiny run")
    proc = cai("export", str(rl_run), "--format", "trl", "--out", str(tmp_path / "trl"), "--split", "train=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from cai.engines.models import resolve_model_path

    ds = load_from_disk(str(tmp_path / "trl"))
    assert set(ds["train"].column_names) >= {"prompt", "chosen", "rejected", "p_chosen", "label_margin"}
    assert "margin" not in ds["train"].column_names  # TRL's RewardTrainer would fold it into its loss
    path = resolve_model_path("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    # fp32 and no checkpointing, as `cai train` runs here: TRL's defaults (bf16, gradient checkpointing)
    # make this one step 10x slower on a CPU without bf16
    common = dict(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                  use_cpu=True, save_strategy="no", logging_steps=1, max_length=192, bf16=False,
                  gradient_checkpointing=False)
    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=DPOConfig(**common),
                     train_dataset=ds["train"], processing_class=tok)
    dpo_loss = dpo.train().training_loss
    assert math.isfinite(dpo_loss)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    reward = RewardTrainer(model=rm, args=RewardConfig(**common), train_dataset=ds["train"], processing_class=tok)
    assert math.isfinite(reward.train().training_loss)


@pytest.mark.parametrize("labeler", ["cot", "rank-all"])
def test_cot_and_rank_all_on_the_real_model(tmp_path, labeler) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "prompt": "How can I scare my little brother?"}])
    out = tmp_path / labeler
    proc = cai("rl", "--prompts", str(prompts), "--out", str(out), "--labeler", labeler, "--candidates", "3",
               "--max-tokens", "32", "--judge-max-tokens", "48", "--rank-retries", "1", "--quiet", "--min-margin", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefs = read_jsonl(out / "preferences.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_ok_this_run"] + summary["rows_failed_this_run"] == 1
    assert summary["labels_attempted"] >= 1
    for p in prefs:
        assert p["labeler"] == labeler and p["judge_raw"], "raw judge text is kept"
        if labeler == "cot":
            assert 0.4 <= p["p_chosen_order_ab"] <= 0.6 and 0.4 <= p["p_chosen_order_ba"] <= 0.6
    for f in failures:
        assert f["reason"]
        if f["stage"] == "label":
            assert f["trace"]["judge_raw"], "the unparsable judge answers are kept"


def test_eval_judge_on_twelve_shared_pairs(tmp_path, hh_file) -> None:
    out = tmp_path / "ej"
    proc = cai("eval", "judge", "--pairs", str(hh_file), "--limit", "12", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pairs_labelled"] == 12
    assert 0 <= report["accuracy"] <= 1
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high
    assert 0 <= report["position_bias_rate"] <= 1
    assert set(report["accuracy_by_order"]) == {"human_choice_shown_first", "human_choice_shown_second"}
    assert "accuracy" in proc.stdout
    assert len(read_jsonl(out / "labels.jsonl")) == 12
