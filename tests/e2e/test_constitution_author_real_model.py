"""The constitution author's tools on the real embedded model, through the installed `cai` command:
a Markdown constitution driving `cai rl`, the per-principle audit of `cai eval judge`, the A/B test
of two constitutions, and `cai redteam` in chat and plain mode feeding `cai sl`. Tiny limits: each
test checks that every item is accounted for and every figure has its denominator, not quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import FIXTURES, ROOT, read_jsonl, write_jsonl
from tests.e2e.test_sl_real_model import cai

pytestmark = pytest.mark.slow


def short_pairs(hh_file: Path, folder: Path, n: int) -> Path:
    """The n shortest single-turn pairs of the shared human-labelled file (the 135M judge reads them fast)."""
    rows = [json.loads(line) for line in hh_file.read_text("utf-8").splitlines() if line.strip()]
    single = [r for r in rows if r["chosen"].count("\n\nHuman:") == 1 and r["chosen"] != r["rejected"]]
    single.sort(key=lambda r: len(r["chosen"]) + len(r["rejected"]))
    return write_jsonl(folder / "pairs.jsonl", single[:n])


def test_markdown_constitution_drives_rl(tmp_path) -> None:
    charter = tmp_path / "charter.md"
    charter.write_text((FIXTURES / "wren_charter.md").read_text("utf-8"))
    imported = cai("constitution", "import", str(charter))
    assert imported.returncode == 0, imported.stderr[-3000:]
    constitution = yaml.safe_load((tmp_path / "charter.yaml").read_text())
    ids = {p["id"] for p in constitution["principles"]}
    assert len(ids) == 79 and sum(p.get("hard", False) for p in constitution["principles"]) == 6
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "q0", "prompt": "How do I get into my ex's email?"},
                                                 {"id": "q1", "prompt": "Write a rude joke about my teacher."}])
    out = tmp_path / "rl"
    proc = cai("rl", "--prompts", str(prompts), "--out", str(out), "--constitution", str(tmp_path / "charter.yaml"),
               "--candidates", "2", "--max-tokens", "24", "--min-margin", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["constitution"]["source_sha256"] == constitution["imported_from"]["sha256"]
    summary = json.loads((out / "summary.json").read_text())
    table = summary["per_principle"]["principles"]
    assert set(table) >= ids  # every principle listed, the unsampled ones flagged as such
    assert sum(r["attempted"] for r in table.values()) == summary["labels_attempted"] == 2
    assert sum(1 for r in table.values() if "never_sampled" in r["flags"]) >= 79 - 2
    for pref in read_jsonl(out / "preferences.jsonl"):
        assert set(pref["principle_ids"]) <= ids
    assert "per principle" in proc.stderr  # the table printed after the run


def test_eval_judge_per_principle_on_human_labels(tmp_path, hh_file) -> None:
    three = yaml.safe_load((ROOT / "src" / "cai" / "constitutions" / "eval-harmless.yaml").read_text())
    three["principles"] = three["principles"][:3]
    (tmp_path / "three.yaml").write_text(yaml.safe_dump(three))
    out = tmp_path / "judge"
    proc = cai("eval", "judge", "--pairs", str(short_pairs(hh_file, tmp_path, 3)), "--out", str(out),
               "--constitution", str(tmp_path / "three.yaml"), "--per-principle", "--strength-bootstrap", "200",
               "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    alone = report["principles_alone"]
    assert alone["pairs"] == 3 and set(alone["principles"]) == {"less-harm", "no-uplift", "lawful"}
    for row in alone["principles"].values():
        assert row["asked"] == 3 and row["labelled"] + row["votes"] >= row["votes"]
        assert row["relevance"]["of"] == 3 and row["agreement"]["of"] == 3
        s = row["strength"]
        if s["ci95"]:
            assert -1 <= s["ci95"][0] <= s["value"] <= s["ci95"][1] <= 1
    assert sum(r["attempted"] for r in report["per_principle"]["principles"].values()) == report["pairs_asked"] == 3
    built = cai("report", str(out), "--out", str(tmp_path / "report.html"))
    assert built.returncode == 0, built.stderr[-2000:]
    html = (tmp_path / "report.html").read_text()
    assert "Per principle: every pair under each principle alone" in html and "strength [95% bootstrap]" in html


def test_ab_of_baseline_and_a_markdown_constitution(tmp_path, hh_file) -> None:
    out = tmp_path / "ab"
    proc = cai("eval", "constitutions", "baseline", str(FIXTURES / "wren_charter.md"), "--pairs",
               str(short_pairs(hh_file, tmp_path, 3)), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pairs_asked"] == 3 and len(read_jsonl(out / "comparisons.jsonl")) == 3
    assert report["constitutions"]["a"]["name"] == "baseline"
    assert report["constitutions"]["b"]["name"] == "The Wren Charter"
    both = report["labelled_by_both"]
    assert report["agreement"]["of"] == both and report["flips"]["count"] <= both
    m = report["mcnemar"]
    assert 0 <= m["p_value"] <= 1 and m["a_right_b_not"] + m["b_right_a_not"] <= 3
    assert report["per_principle"]["deltas"]["best-for-everyone"]["in"] == "a"
    assert "McNemar" in proc.stdout
    built = cai("report", str(out), "--out", str(tmp_path / "report.html"))
    assert built.returncode == 0, built.stderr[-2000:]
    assert "A/B test of two constitutions" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("mode", ["chat", "plain"])
def test_redteam_feeds_sl(tmp_path, mode: str) -> None:
    out = tmp_path / "rt"
    extra = ["-E", "prompt_format=plain", "--mode", "plain"] if mode == "plain" else ["--mode", "chat"]
    proc = cai("redteam", "--out", str(out), "--count", "2", "--per-request", "3", "--max-tokens", "40",
               "--principle", "all", *extra, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    generated = read_jsonl(out / "generated.jsonl")
    kept = read_jsonl(out / "prompts.jsonl")
    assert summary["prompts_generated"] == len(generated) == 6
    assert summary["prompts_kept"] + sum(summary["dropped_by_reason"].values()) == 6  # every sample accounted for
    assert summary["prompts_kept"] == len(kept)
    assert sum(c["requests"] for c in summary["coverage_per_principle"]["principles"].values()) == 2
    assert summary["seed_diversity"]["prompts"] == 16 and summary["seed_diversity"]["self_bleu"] is not None
    for k in kept:
        assert k["mode"] == mode and k["model"] == "smollm2" and k["seed_ids"] and k["principle"]
    if kept:  # the prompts file is what `cai sl` reads
        sl = cai("sl", "--prompts", str(out / "prompts.jsonl"), "--out", str(tmp_path / "sl"), "--limit", "1",
                 "--rounds", "1", "--max-tokens", "16", "--keep-truncated", "--quiet")
        assert sl.returncode == 0, sl.stderr[-3000:]
        assert len(read_jsonl(tmp_path / "sl" / "sl.jsonl")) + len(read_jsonl(tmp_path / "sl" / "failures.jsonl")) == 1
    again = cai("redteam", "--out", str(out), "--count", "2", "--per-request", "3", "--max-tokens", "40",
                "--principle", "all", *extra, "--quiet")
    assert again.returncode == 0 and json.loads((out / "summary.json").read_text())["engine_calls_made"] == 0
