from __future__ import annotations

import json
import math

import pytest

from cai.engines.fake import FakeScript, register_script
from cai.evaluate.judge import JudgeEvalConfig, JudgeReport, read_pairs, run_judge_eval
from cai.stats.rates import wilson_interval
from cai.export import ExportError, export_run, split_rows
from cai.generate.rl import RLConfig, run_rl
from tests.conftest import read_jsonl, write_jsonl


def prefer_longer(messages, continuation):
    """P(A) follows which option is longer: a content judge, not a position judge."""
    q = messages[-1]["content"]
    a = q.split("(A) ", 1)[1].split("\n\n(B) ", 1)[0]
    b = q.split("(B) ", 1)[1].split("\n\nAnswer with", 1)[0]
    p_a = 0.8 if len(a) > len(b) else 0.2
    return math.log(p_a if continuation.endswith("(A)") else 1 - p_a)


register_script("longer", FakeScript(
    lambda req, k: " ".join(f"w{i}" for i in range((k + 1) * 3 + int(req.params.temperature * 10))), prefer_longer))


@pytest.fixture
def rl_run(tmp_path, prompts_file):
    run_rl(RLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "rl"), policy="fake:longer",
                    judges=["fake:longer"], candidates=3), show_progress=False)
    return tmp_path / "rl"


def test_rl_all_pairs_and_provenance(rl_run) -> None:
    prefs = read_jsonl(rl_run / "preferences.jsonl")
    assert len(prefs) == 3 * 3  # 3 prompts x C(3, 2) pairs
    for p in prefs:
        assert len(p["chosen"][0]["content"]) > len(p["rejected"][0]["content"])
        assert p["p_chosen"] == pytest.approx(0.8) and p["label_margin"] == pytest.approx(0.6)
        assert p["position_bias"] is False
    summary = json.loads((rl_run / "summary.json").read_text())
    assert summary["position_bias_rate"] == 0.0 and summary["labels"] == 9


def test_best_worst_and_min_margin(tmp_path, prompts_file) -> None:
    out = tmp_path / "bw"
    run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:longer", judges=["fake:longer"],
                    candidates=3, pairs="best-worst"), show_progress=False)
    prefs = read_jsonl(out / "preferences.jsonl")
    assert len(prefs) == 3 and all((p["chosen_index"], p["rejected_index"]) == (2, 0) for p in prefs)
    strict = tmp_path / "strict"
    run_rl(RLConfig.of(prompts=str(prompts_file), out=str(strict), policy="fake:longer", judges=["fake:longer"],
                    candidates=2, min_margin=0.7), show_progress=False)
    assert read_jsonl(strict / "preferences.jsonl") == []
    failures = read_jsonl(strict / "failures.jsonl")
    assert len(failures) == 3 and all("below --min-margin" in f["reason"] and f["pair"] for f in failures)
    summary = json.loads((strict / "summary.json").read_text())
    assert summary["pairs_dropped"] == {"below_min_margin": 3}
    assert all(f["code"] == "below_min_margin" for f in failures)


def test_temperature_sweep_records_sampling(tmp_path, prompts_file) -> None:
    out = tmp_path / "sweep"
    run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:longer", judges=["fake:longer"],
                    temperatures=[0.01, 0.51, 1.01, 1.51]), show_progress=False)
    cands = read_jsonl(out / "candidates.jsonl")
    assert [c["temperature"] for c in cands[0]["candidates"]] == [0.01, 0.51, 1.01, 1.51]


def test_trl_export_split_keeps_prompts_together_and_blends(rl_run, tmp_path, hh_file) -> None:
    report = export_run(rl_run, "trl", tmp_path / "trl", split="train=0.5,test=0.5",
                        blends=[f"{hh_file}:1.0"])
    assert report["blended"] == {str(hh_file): 9}
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "trl"))
    prompts = {split: {json.dumps(r["prompt"]) for r in ds[split]} for split in ds}
    assert not prompts["train"] & prompts["test"]
    origins = [r["origin"] for split in ds for r in ds[split]]
    assert origins.count("cai") == 9 and origins.count(f"blend:{hh_file.name}") == 9
    blended = next(r for split in ds for r in ds[split] if r["origin"] != "cai")
    assert blended["chosen"][0]["role"] == "assistant" and blended["prompt"][-1]["role"] == "user"


def test_nemo_sl_export_and_bad_runs(tmp_path, prompts_file) -> None:
    from cai.generate.sl import SLConfig, run_sl

    register_script("sl-ok", FakeScript(lambda req, k: "A careful and helpful reply number " + str(len(req.messages))))
    run_sl(SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "sl"), model="fake:sl-ok", rounds=1),
           show_progress=False)
    export_run(tmp_path / "sl", "nemo", tmp_path / "nemo", split="train=1")
    rows = read_jsonl(tmp_path / "nemo" / "train_sft.jsonl")
    assert len(rows) == 3 and rows[0]["mask"] == "User"
    assert [t["from"] for t in rows[0]["conversations"]] == ["User", "Assistant"]
    with pytest.raises(ExportError, match="neither"):
        export_run(tmp_path, "trl", tmp_path / "x")


def test_split_is_seeded_per_prompt_and_follows_the_fractions() -> None:
    rows = [{"prompt": [{"role": "user", "content": str(i)}]} for i in range(1000)]
    a = split_rows(rows, {"train": 0.8, "test": 0.2}, seed=1)
    assert a == split_rows(rows, {"train": 0.8, "test": 0.2}, seed=1)
    assert len(a["train"]) + len(a["test"]) == 1000 and 750 <= len(a["train"]) <= 850  # ~binomial(1000, 0.8)
    few = split_rows(rows[:10], {"train": 0.8, "test": 0.2}, seed=1)  # a prompt's split ignores the other rows
    assert few["test"] == [r for r in a["test"] if r in rows[:10]]


def test_read_pairs_from_hh(hh_file, tmp_path) -> None:
    rows = list(read_pairs(hh_file, limit=5))
    assert len(rows) == 5
    assert rows[0].messages[-1]["role"] == "user"
    assert rows[0].extra["chosen"] != rows[0].extra["rejected"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b",
                                                "rejected": "\n\nHuman: DIFFERENT\n\nAssistant: c"}])
    assert "differ" in next(read_pairs(bad)).reason


def test_wilson_interval() -> None:
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


def test_judge_eval_with_a_scripted_judge(tmp_path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": "\n\nHuman: q1\n\nAssistant: a much longer and careful reply",
         "rejected": "\n\nHuman: q1\n\nAssistant: short"},
        {"chosen": "\n\nHuman: q2\n\nAssistant: tiny",
         "rejected": "\n\nHuman: q2\n\nAssistant: a long but harmful reply"},
    ])
    result = run_judge_eval(JudgeEvalConfig.of(pairs=str(pairs), out=str(tmp_path / "ev"), judges=["fake:longer"]),
                            show_progress=False)
    report = result.summary["report"]
    assert report["accuracy"] == 0.5 and report["position_bias_rate"] == 0.0
    assert report["accuracy_by_order"] == {"human_choice_shown_first": 0.5, "human_choice_shown_second": 0.5}
    assert report["mean_confidence_when_right"] == pytest.approx(0.8)
    assert report["seconds_per_label"] == pytest.approx(result.summary["elapsed_s"] / 2, abs=1e-3)
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["report"] == report
    assert JudgeReport([]).as_dict(0.0, 0)["accuracy"] is None


def test_best_worst_with_a_judge_that_only_ties(tmp_path, prompts_file) -> None:
    """Equal win rates must not crash best-worst selection; the tie is dropped with its reason."""
    out = tmp_path / "ties"
    result = run_rl(RLConfig.of(prompts=str(prompts_file), out=str(out), policy="fake:longer", judges=["fake:echo"],
                             candidates=3, pairs="best-worst"), show_progress=False)
    assert result.summary["rows_failed_this_run"] == 0, result.summary["failure_reasons"]
    failures = read_jsonl(out / "failures.jsonl")
    assert len(failures) == 3 and all(f["reason"].startswith("tie") for f in failures)
