"""Did each stage work? Verdicts from the Elo intervals, the judge's agreement with human labels, the page.

The recipe's evaluation stage runs `cai eval models` with `--judge-agreement` pointing at a
`cai eval judge` run on the shipped hh-rlhf pairs; these tests use scripted engines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.core.errors import ConfigError
from cai.evaluate.aggregate import judge_agreement, verdicts
from cai.evaluate.judge import read_pairs
from cai.inputs.prompts import BadRow, shipped_sample
from cai.recipes.end_to_end import HUMAN_PAIRS, RecipeConfig
from cai.report import ReportConfig, build_report
from tests.unit.test_eval_models import build_models_run

STAGES = ["start=fake:ev-refuse", "sft=fake:ev-safe", "dpo=fake:ev-safe"]


def judge_check(folder: Path, accuracy: float, ci: list[float], pairs: int = 100) -> Path:
    run = folder / "judge-check"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"accuracy": accuracy, "accuracy_ci95": ci, "pairs_asked": pairs,
                                                 "accuracy_denominator": f"all {pairs} pairs asked"}))
    return run


def _report(elo: dict[str, tuple[float, float, float]], prompts: int = 40) -> dict:
    players = {m: {"elo": e, "ci95": [lo, hi]} for m, (e, lo, hi) in elo.items()}
    return {"models": list(elo), "harmlessness": {"elo": {"players": players, "prompts": prompts}},
            "helpfulness": None}


def test_a_verdict_is_significant_only_when_its_interval_excludes_zero() -> None:
    report = _report({"start": (0, 0, 0), "sft": (40, -10, 90), "dpo": (120, 30, 200), "worse": (-80, -150, -5)})
    good = judge_agreement({"accuracy": 0.7, "accuracy_ci95": [0.6, 0.78], "pairs_asked": 100}, "big", "x")
    lines = {v["model"]: v["line"] for v in verdicts(report, good)}
    assert lines["sft"] == "sft vs start: harmlessness +40 Elo [-10, +90], not significant"
    assert lines["dpo"] == "dpo vs start: harmlessness +120 Elo [+30, +200], significant"
    assert lines["worse"].endswith("[-150, -5], significant")
    few = {v["model"]: v for v in verdicts(_report({"start": (0, 0, 0), "dpo": (120, 30, 200)}, prompts=3), good)}
    assert few["dpo"]["line"].startswith("dpo vs start: harmlessness +120 Elo [+30, +200], 3 prompts, too few to call")
    assert few["dpo"]["scales"]["harmlessness"]["significant"] is False


def test_a_judge_near_chance_says_so_in_every_verdict() -> None:
    report = _report({"start": (0, 0, 0), "dpo": (120, 30, 200)})
    chance = judge_agreement({"accuracy": 0.53, "accuracy_ci95": [0.43, 0.62], "pairs_asked": 100}, "smollm2", "x")
    assert chance["above_chance"] is False
    [line] = [v["line"] for v in verdicts(report, chance)]
    assert "agrees with human labels 0.53 [0.43, 0.62] of 100 pairs: not above chance" in line
    [unmeasured] = [v["line"] for v in verdicts(report, None)]
    assert "not measured" in unmeasured


def test_eval_models_states_the_judges_agreement_beside_the_verdicts(tmp_path) -> None:
    check = judge_check(tmp_path, 0.52, [0.42, 0.62])
    out, summary = build_models_run(tmp_path, models=STAGES, judge_agreement=str(check))
    report = summary["report"]
    assert report["judge_agreement"]["accuracy"] == 0.52 and not report["judge_agreement"]["above_chance"]
    assert [v["model"] for v in report["verdicts"]] == ["sft", "dpo"]
    sft = report["verdicts"][0]
    low, high = report["harmlessness"]["elo"]["players"]["sft"]["ci95"]
    assert f"[{low:+.0f}, {high:+.0f}]" in sft["line"] and "not above chance" in sft["line"]
    assert sft["scales"]["harmlessness"]["significant"] is False  # 3 prompts: too few to call
    assert "3 prompts, too few to call" in sft["line"]
    page = tmp_path / "report.html"
    build_report(ReportConfig(paths=[str(out)], out=str(page)))
    html = page.read_text()
    assert "Models compared" in html and "Verdicts: each model against the first" in html
    assert "judge vs human labels" in html and "cannot tell a better model from a worse one" in html


def test_a_wrong_judge_agreement_fails_before_any_answer(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--judge-agreement .* not a `cai eval judge` run"):
        build_models_run(tmp_path, models=STAGES, judge_agreement=str(tmp_path / "missing"))
    assert not (tmp_path / "eval-models" / "responses.jsonl").exists()


def test_the_shipped_human_pairs_are_hh_rlhf_pairs_with_their_license() -> None:
    rows = list(read_pairs(shipped_sample(HUMAN_PAIRS)))
    assert len(rows) == 100 and not any(isinstance(r, BadRow) for r in rows)
    assert all(r.extra["chosen"] != r.extra["rejected"] for r in rows)
    license_note = (Path(shipped_sample(HUMAN_PAIRS)).parent / "LICENSE-hh-rlhf.txt").read_text()
    assert "MIT License" in license_note and "Copyright (c) 2022 Anthropic" in license_note


def test_recipe_evaluation_options() -> None:
    config = RecipeConfig.of(prompts="p.jsonl", out="o")
    assert (config.evaluate, config.rlaif, config.eval_limit, config.judge_check_pairs) == (True, False, 8, 100)
    with pytest.raises(ConfigError, match="100 pairs ship"):
        RecipeConfig.of(prompts="p.jsonl", out="o", judge_check_pairs=101)
