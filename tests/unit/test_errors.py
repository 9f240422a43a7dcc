"""Errors: user mistakes are one line (exit 2), bugs crash loudly, model failures are row
failures, and a run whose rows mostly fail stops early (exit 3) keeping what it finished."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from cai.core.errors import CAIError, FailureBudgetExceeded
from cai.engines.base import EngineError
from cai.engines.fake import FakeScript, register_script
from cai.generate.sl import SLConfig, run_sl
from tests.conftest import ROOT, write_jsonl


def _prompts(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"id": f"r{i:02d}", "prompt": f"question {i}: how do I pick lock {i}?"}
                              for i in range(n)])


def _reply(request, k: int) -> str:
    last = request.messages[-1]["content"]
    if len(request.messages) == 1:
        return f"An answer to: {last}"
    if last.startswith(("Rewrite", "Please rewrite")):
        return "A safer reply about locks and doors " + str(len(request.messages))
    return "A critique: the reply has problems " + str(len(request.messages))


def _fails_on(marker: str, error: BaseException):
    def respond(request, k: int) -> str:
        if marker in request.messages[0]["content"] and len(request.messages) == 1:
            raise error
        return _reply(request, k)
    return respond


register_script("err-ok", FakeScript(_reply))
register_script("err-engine-error", FakeScript(_fails_on("question 3:", EngineError("server gave up after 9 tries"))))
register_script("err-empty", FakeScript(lambda request, k: ""))  # every row fails: code `empty`
register_script("err-some-empty", FakeScript(
    lambda request, k: "" if any(f"question {i}:" in request.messages[0]["content"] for i in (2, 9, 17))
    else _reply(request, k)))

# Run in a subprocess, which cannot see the scripts registered above: register a planted
# bug there, then run the real `cai` entry point on the remaining arguments.
_PLANTED = """
import sys
from cai.engines.fake import FakeScript, register_script
def respond(request, k):
    if "question 5:" in request.messages[0]["content"]:
        return {}["a bug in our own code"]
    return "A fine reply number " + str(len(request.messages))
register_script("planted-bug", FakeScript(respond))
from cai.cli import main
sys.argv = ["cai", *sys.argv[1:]]
main()
"""


def _cai(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _PLANTED, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)


def _ok_rows(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT COUNT(*) FROM results WHERE status='ok'").fetchone()[0]


def test_a_planted_bug_makes_cai_sl_exit_non_zero_with_a_traceback_and_keeps_finished_rows(tmp_path) -> None:
    out = tmp_path / "run"
    proc = _cai("sl", "--prompts", str(_prompts(tmp_path / "p.jsonl", 8)), "--out", str(out), "--model",
                "fake:planted-bug", "--rounds", "1", "--few-shot", "none", "--concurrency", "1", "--quiet")
    assert proc.returncode not in (0, 2), proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and "KeyError" in proc.stderr and "a bug in our own code" in proc.stderr
    assert _ok_rows(out / "store.sqlite") == 5  # r00..r04 finished before the bug; none was turned into a failure
    with closing(sqlite3.connect(out / "store.sqlite")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM results WHERE status='failed'").fetchone()[0] == 0


register_script("err-bug", FakeScript(_fails_on("question 5:", KeyError("a bug in our own code"))))


def test_a_bug_stops_the_run_at_once_without_recording_row_failures(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyError, match="a bug in our own code"):
        run_sl(SLConfig.of(prompts=str(_prompts(tmp_path / "p.jsonl", 200)), out=str(out), model="fake:err-bug",
                        rounds=1, few_shot="none", concurrency=4), show_progress=False)
    assert 0 < _ok_rows(out / "store.sqlite") < 20  # rows finished before it are kept; the run did not go on
    with closing(sqlite3.connect(out / "store.sqlite")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM results WHERE status='failed'").fetchone()[0] == 0
    assert not (out / "sl.jsonl").exists()  # a crash leaves the outputs as they were


def test_a_user_error_is_one_line_with_exit_2(tmp_path) -> None:
    proc = _cai("sl", "--prompts", str(_prompts(tmp_path / "p.jsonl", 2)), "--out", str(tmp_path / "run"),
                "--model", "fake:planted-bug", "--rounds", "0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == ["error: --rounds must be at least 1; got 0"]


def test_our_own_value_error_is_not_mistaken_for_a_user_error(tmp_path, monkeypatch, capsys) -> None:
    import cai.inputs.constitution
    from cai.cli import main

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(cai.inputs.constitution, "load_constitution", broken)
    monkeypatch.setattr(sys, "argv", ["cai", "sl", "--prompts", str(_prompts(tmp_path / "p.jsonl", 2)),
                                      "--out", str(tmp_path / "run"), "--model", "fake:err-ok"])
    with pytest.raises(ValueError, match="a bug"):
        main()


def test_an_engine_error_stays_a_row_failure(tmp_path) -> None:
    out = tmp_path / "run"
    result = run_sl(SLConfig.of(prompts=str(_prompts(tmp_path / "p.jsonl", 6)), out=str(out), model="fake:err-engine-error",
                             rounds=1, few_shot="none"), show_progress=False)
    assert (result.summary["rows_ok_this_run"], result.summary["rows_failed_this_run"]) == (5, 1)
    assert result.summary["failure_reasons"] == {"engine: engine_error": 1}
    failure = json.loads((out / "failures.jsonl").read_text())
    assert failure["code"] == "engine_error" and "server gave up" in failure["reason"]


def test_the_failure_budget_stops_a_run_where_every_row_fails(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(FailureBudgetExceeded) as caught:
        run_sl(SLConfig.of(prompts=str(_prompts(tmp_path / "p.jsonl", 60)), out=str(out), model="fake:err-empty",
                        rounds=1, few_shot="none", concurrency=4), show_progress=False)
    message = str(caught.value)
    assert "initial answer: empty" in message and "--max-failure-rate 0.5" in message
    assert "re-run the same command" in message and str(out) in message
    assert caught.value.exit_code == 3
    summary = json.loads((out / "summary.json").read_text())  # outputs and summary are written
    assert 20 <= summary["rows_failed_this_run"] < 60  # it stopped early, after the first 20 finished rows
    assert summary["rows_ok_this_run"] == 0 and summary["stopped_early"] == message
    assert len((out / "failures.jsonl").read_text().splitlines()) == summary["rows_failed_this_run"]
    assert (out / "sl.jsonl").exists()


def test_the_failure_budget_lets_a_run_with_a_few_failures_finish(tmp_path) -> None:
    result = run_sl(SLConfig.of(prompts=str(_prompts(tmp_path / "p.jsonl", 30)), out=str(tmp_path / "run"),
                             model="fake:err-some-empty", rounds=1, few_shot="none"), show_progress=False)
    assert (result.summary["rows_ok_this_run"], result.summary["rows_failed_this_run"]) == (27, 3)
    assert "stopped_early" not in result.summary


def test_max_failure_rate_one_turns_the_budget_off_and_bad_values_are_user_errors(tmp_path) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 25)
    result = run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "all"), model="fake:err-empty", rounds=1,
                             few_shot="none", max_failure_rate=1.0), show_progress=False)
    assert result.summary["rows_failed_this_run"] == 25
    with pytest.raises(CAIError, match="--max-failure-rate must be between 0 and 1"):
        run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "bad"), model="fake:err-ok", max_failure_rate=1.5),
               show_progress=False)


def test_the_failure_budget_stops_cai_sl_through_the_cli(tmp_path) -> None:
    out = tmp_path / "run"
    proc = _cai("sl", "--prompts", str(_prompts(tmp_path / "p.jsonl", 30)), "--out", str(out), "--model",
                "fake:echo", "--rounds", "1", "--few-shot", "none", "--max-tokens", "1", "--max-failure-rate", "0.2",
                "--quiet")  # every revision is cut at 1 token: code `truncated`
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "truncated" in proc.stderr and "--max-failure-rate 0.2" in proc.stderr
    assert json.loads((out / "summary.json").read_text())["stopped_early"]


register_script("err-nan-judge", FakeScript(_reply, lambda messages, continuation: float("nan")))


def test_rl_and_eval_judge_take_max_failure_rate(tmp_path) -> None:
    from typer.testing import CliRunner

    from cai.cli import app

    prompts = _prompts(tmp_path / "p.jsonl", 25)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": [{"role": "user", "content": f"question {i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]} for i in range(25)])
    runs = {"rl": ["rl", "--prompts", str(prompts), "--policy", "fake:err-empty", "--judge", "fake:echo"],
            "eval judge": ["eval", "judge", "--pairs", str(pairs), "--judge", "fake:err-nan-judge"]}
    for name, args in runs.items():
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / name), "--max-failure-rate", "0.3", "-q"])
        assert isinstance(result.exception, FailureBudgetExceeded), (name, result.output, result.exception)
        assert "--max-failure-rate 0.3" in str(result.exception)
    assert "too_few_candidates" in json.loads((tmp_path / "rl" / "summary.json").read_text())["stopped_early"]
    assert "nonfinite_score" in json.loads((tmp_path / "eval judge" / "summary.json").read_text())["stopped_early"]


def test_user_error_classes_share_one_base() -> None:
    from cai.export import ExportError
    from cai.inputs.constitution import ConstitutionError
    from cai.inputs.few_shot import FewShotError
    from cai.inputs.files import InputError
    from cai.runs.run_dir import RunLocked
    from cai.runs.store import StoreError
    from cai.train.common import TrainError

    for cls in (ConstitutionError, InputError, ExportError, FewShotError, RunLocked, StoreError, TrainError,
                EngineError):
        assert issubclass(cls, CAIError), cls
    for cls in (ConstitutionError, InputError, ExportError, FewShotError, TrainError):
        assert issubclass(cls, ValueError), cls  # as before, for code that catches ValueError
