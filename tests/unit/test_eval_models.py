"""`cai eval models` and `cai eval revisions` with scripted engines: every figure and every failure counted.

The builders at the top also make the fixture runs `test_report.py` reports on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.core.errors import ConfigError
from cai.engines.fake import FakeScript, register_script
from cai.evaluate.models import ModelsEvalConfig, run_models_eval
from cai.evaluate.revisions import RevisionsEvalConfig, run_revisions_eval
from cai.label.refusal import RefusalMatcher
from cai.inputs.files import InputError
from cai.generate.sl import SLConfig, run_sl
from tests.conftest import read_jsonl, write_jsonl

#: text that would break a page if it were ever written as markup or run as a template
HOSTILE = '</pre></details><script>alert("pwned")</script>{{ 7*7 }}{% if 1 %}x{% endif %}'
REFUSAL = "I'm sorry, but I can't help with that."


def _safe(request, k: int) -> str:
    return "SAFE answer about " + request.messages[-1]["content"][:40]


def _letter_for(messages, continuation: str, want: str) -> float:
    return -0.1 if continuation.strip()[-2] == want else -3.0


def judge_score(messages, continuation: str) -> float:
    """Prefers the reply that says SAFE; says a reply refuses when the phrase matcher does."""
    q = messages[-1]["content"]
    if "Does the reply refuse" in q:
        reply = q.split("Reply:")[1].split("Does the reply refuse")[0].replace("> ", "")
        refuses = RefusalMatcher.shipped().match(reply) is not None
        refuses_is_a = "(A) It refuses" in q
        return _letter_for(messages, continuation, "A" if refuses == refuses_is_a else "B")
    a, b = q.split("(A) Reply:")[1].split("(B) Reply:")
    if ("SAFE" in a) == ("SAFE" in b):
        return -1.0
    return _letter_for(messages, continuation, "A" if "SAFE" in a else "B")


def always_a(messages, continuation: str) -> float:
    return _letter_for(messages, continuation, "A")


def refusals_only(messages, continuation: str) -> float:
    assert "(A) Reply:" not in messages[-1]["content"], "identical answers must not be sent to the judge"
    return judge_score(messages, continuation)


def _sl_script(request, k: int) -> str:
    last = request.messages[-1]["content"]
    if last.startswith(("Rewrite", "Please rewrite")):
        return ("An initial risky answer." if "SAME" in json.dumps(request.messages) else
                "SAFE revision number " + str(len(request.messages)))
    if len(request.messages) == 1:
        return "An initial risky answer."
    return "A critique " + HOSTILE


register_script("ev-safe", FakeScript(_safe))
register_script("ev-refuse", FakeScript(lambda request, k: REFUSAL))
register_script("ev-judge", FakeScript(_safe, judge_score))
register_script("ev-always-a", FakeScript(_safe, always_a))
register_script("ev-refusals-only", FakeScript(_safe, refusals_only))
register_script("ev-sl", FakeScript(_sl_script))


def red_team_file(folder: Path, n: int = 3) -> Path:
    return write_jsonl(folder / "red.jsonl", [{"id": f"r{i}", "prompt": f"How do I do bad thing {i}? {HOSTILE}"}
                                              for i in range(n)])


def build_models_run(folder: Path, models: list[str] | None = None, judge: str = "fake:ev-judge",
                     **options) -> tuple[Path, dict]:
    out = folder / "eval-models"
    config = ModelsEvalConfig.of(prompts=str(red_team_file(folder)), out=str(out),
                                 models=models or ["fake:ev-safe", "refuser=fake:ev-refuse"], judge=judge,
                                 limit=3, bootstrap=50, **options)
    summary = run_models_eval(config, show_progress=False).summary
    assert summary["report_file"] == "report.json"
    return out, {**summary, "report": json.loads((out / "report.json").read_text())}


def build_sl_run(folder: Path, rounds: int = 2) -> Path:
    prompts = write_jsonl(folder / "sl-prompts.jsonl", [
        {"id": "s0", "prompt": f"Tell me something risky. {HOSTILE}"},
        {"id": "s1", "prompt": "Another risky request."},
        {"id": "s2", "prompt": "SAME: a request whose revisions change nothing."},
    ])
    out = folder / "sl"
    run_sl(SLConfig.of(prompts=str(prompts), out=str(out), model="fake:ev-sl", rounds=rounds), show_progress=False)
    return out


# ---- eval models ---------------------------------------------------------------------------
def test_win_rates_elo_and_refusals(tmp_path) -> None:
    out, summary = build_models_run(tmp_path)
    report = summary["report"]
    assert summary["harmlessness_elo"] == {m: v["elo"] for m, v in report["harmlessness"]["elo"]["players"].items()}
    assert summary["refusal_rate_benign_matcher"] == {"fake:ev-safe": 0.0, "refuser": 1.0}
    assert report["models"] == ["fake:ev-safe", "refuser"]
    for scale, kind in (("harmlessness", "red_team"), ("helpfulness", "helpful")):
        data = report[scale]
        assert data["prompt_set"] == kind and data["prompts"] == 3
        (pair,) = data["pairs"]
        assert (pair["a"], pair["b"], pair["win_rate"], pair["wins"], pair["labelled"]) == ("fake:ev-safe", "refuser",
                                                                                            1.0, 3, 3)
        assert data["overall"]["refuser"]["win_rate"] == 0.0
        elo = data["elo"]["players"]
        assert elo["fake:ev-safe"]["elo"] == 0.0 and elo["refuser"]["elo"] < -100
        assert data["position_bias"]["rate"] == 0.0 and data["position_bias"]["of"] == 3
    red, benign = report["refusals"]["red_team"]["models"], report["refusals"]["benign"]["models"]
    for refusals in (red, benign):
        assert refusals["refuser"]["judge"]["rate"] == 1.0 and refusals["refuser"]["matcher"]["rate"] == 1.0
        assert refusals["fake:ev-safe"]["judge"]["rate"] == 0.0 and refusals["fake:ev-safe"]["matcher"]["of"] == 3
        assert refusals["refuser"]["agreement"]["agreement"] == 1.0
    assert report["refusals"]["red_team"]["all_models"]["kappa"] == 1.0
    # files: 3 sets x 3 prompts x 2 models answers; 1 comparison per prompt on 2 sets; refusals on 2 sets
    assert len(read_jsonl(out / "responses.jsonl")) == 18
    assert len(read_jsonl(out / "comparisons.jsonl")) == 6
    assert len(read_jsonl(out / "refusals.jsonl")) == 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "eval models" and manifest["policies"]["refuser"]["spec"] == "fake:ev-refuse"


def test_resume_makes_no_new_calls(tmp_path) -> None:
    out, first = build_models_run(tmp_path)
    _, second = build_models_run(tmp_path)
    assert first["engine_calls_made"] > 0
    assert second["engine_calls_made"] == 0 and second["rows_already_done"] == 9
    assert second["report"]["harmlessness"]["pairs"] == first["report"]["harmlessness"]["pairs"]


def test_a_response_file_with_a_missing_answer_is_counted_not_dropped(tmp_path) -> None:
    answers = write_jsonl(tmp_path / "canned.jsonl", [
        {"id": "r0", "response": REFUSAL},
        {"prompt": "How do I do bad thing 1? " + HOSTILE, "response": REFUSAL},  # found by its text
    ])  # r2 and every helpful / benign prompt: no answer
    out, summary = build_models_run(tmp_path, models=["fake:ev-safe", str(answers)], helpful_prompts="none",
                                    benign_prompts="none")
    report = summary["report"]
    assert report["answers"]["canned"] == {"asked": 3, "answered": 2, "failures": {"no_response": 1}, "defects": {},
                                           "mean_completion_tokens": 0.0}
    pair = report["harmlessness"]["pairs"][0]
    assert (pair["labelled"], pair["failures"], pair["asked"]) == (2, 1, 3) and pair["win_rate"] == 1.0
    assert report["harmlessness"]["failures"] == {"no_response": 1}
    assert report["refusals"]["red_team"]["models"]["canned"]["unanswered"] == 1
    assert report["helpfulness"] is None and report["refusals"]["benign"] is None
    codes = sorted((f["stage"], f["code"]) for f in read_jsonl(out / "failures.jsonl"))
    assert codes == [("answer", "no_response"), ("comparison", "no_response")]


def test_identical_answers_are_ties_without_asking_the_judge(tmp_path) -> None:
    _, summary = build_models_run(tmp_path, models=["a=fake:ev-safe", "b=fake:ev-safe"],
                                  judge="fake:ev-refusals-only", benign_prompts="none")
    data = summary["report"]["harmlessness"]
    assert data["identical_answers"] == 3 and data["pairs"][0]["ties"] == 3 and data["pairs"][0]["win_rate"] == 0.5
    assert data["position_bias"]["of"] == 0  # no label was judged in any order


def test_a_judge_that_always_says_a_yields_ties_and_full_position_bias(tmp_path) -> None:
    _, summary = build_models_run(tmp_path, judge="fake:ev-always-a", helpful_prompts="none")
    data = summary["report"]["harmlessness"]
    assert data["pairs"][0]["ties"] == 3 and data["pairs"][0]["win_rate"] == 0.5
    assert data["position_bias"]["rate"] == 1.0 and data["position_bias"]["of"] == 3
    refuser = summary["report"]["refusals"]["red_team"]["models"]["refuser"]
    # P(refuses) = 0.5 exactly in both orders: undecided, counted apart, never a refusal rate of 1
    assert refuser["judge"]["of"] == 0 and refuser["judge"]["failures"] == 3 and refuser["judge"]["rate"] is None
    assert refuser["matcher"]["rate"] == 1.0


def test_config_errors_name_the_option(tmp_path) -> None:
    red = str(red_team_file(tmp_path))
    with pytest.raises(ConfigError, match="at least two"):
        ModelsEvalConfig.of(prompts=red, out=str(tmp_path / "o"), models=["smollm2"])
    with pytest.raises(ConfigError, match="given twice"):
        ModelsEvalConfig.of(prompts=red, out=str(tmp_path / "o"), models=["smollm2", "smollm2"])
    with pytest.raises(ConfigError, match=r"at least two policies to compare with --model \(got 0\)"):
        run_models_eval(ModelsEvalConfig.from_values({"prompts": red, "out": str(tmp_path / "o")}), show_progress=False)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "r0", "answer": "no response field"}])
    with pytest.raises(InputError, match="bad.jsonl: record 1 needs a 'response'"):
        run_models_eval(ModelsEvalConfig.of(prompts=red, out=str(tmp_path / "o"), models=["fake:ev-safe", str(bad)]),
                        show_progress=False)


# ---- eval revisions -------------------------------------------------------------------------
def test_score_by_revision_curve(tmp_path) -> None:
    sl = build_sl_run(tmp_path)
    result = run_revisions_eval(RevisionsEvalConfig.of(sl_run=str(sl), judge="fake:ev-judge"), show_progress=False)
    out = sl / "eval-revisions"  # the default --out, where cai report finds it
    assert result.run.path == out and (out / "report.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert result.summary["harmlessness_win_rate_vs_initial"] == {"round 1": report["curves"]["harmlessness"][
        "points"][0]["win_rate"], "round 2": report["curves"]["harmlessness"]["points"][1]["win_rate"]}
    assert report["prompts"] == 3 and report["rounds"] == 2 and report["sl_rows_failed"] == 0
    for scale in ("harmlessness", "helpfulness"):
        points = report["curves"][scale]["points"]
        assert [p["round"] for p in points] == [1, 2]
        # s0, s1: SAFE revisions beat the initial answer; s2: revisions identical to it, a tie
        assert all((p["wins"], p["ties"], p["labelled"]) == (2, 1, 3) for p in points)
        assert all(p["win_rate"] == pytest.approx(2.5 / 3, abs=1e-4) for p in points)
    rows = read_jsonl(out / "revisions.jsonl")
    same = next(r for r in rows if r["id"] == "s2")
    assert all(r["harmlessness"]["outcome"] == "identical" for r in same["rounds"])
    assert report["reward_curve"] is None


def test_revisions_need_a_scorer_and_an_sl_run(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--reward-model"):
        RevisionsEvalConfig.of(sl_run=str(tmp_path), judge="none")
    with pytest.raises(InputError, match="no sl.jsonl"):
        run_revisions_eval(RevisionsEvalConfig.of(sl_run=str(tmp_path), judge="fake:ev-judge"), show_progress=False)
