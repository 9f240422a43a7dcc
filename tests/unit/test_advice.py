"""Summaries that say what to change: each failure kind names its option and the value it had."""

from __future__ import annotations

import io

from rich.console import Console

from cai.generate.sl import SLConfig, run_sl
from cai.runs.advice import advice
from tests.unit.test_sl_chain import scripted  # noqa: F401  (registers the fake:sl-test script)


def test_each_failure_kind_names_its_option_and_value() -> None:
    summary = {"failure_reasons": {"round 2 revision: truncated": 11, "engine: context_overflow": 1,
                                   "labels: unparsable": 2},
               "rows_ok_this_run": 4, "rows_failed_this_run": 14, "bad_input_rows": 0,
               "pairs_dropped": {"below_min_margin": 3, "tie": 1}, "labels_attempted": 8}
    lines = advice(summary, {"max_tokens": 96, "rounds": 2, "min_margin": 0.1, "judge_max_tokens": 192,
                             "rank_retries": 2})
    assert lines[0] == ("11 of 18 rows truncated at --max-tokens 96: raise --max-tokens (or keep them, flagged, "
                        "with --keep-truncated)")  # commonest first
    assert any(line.startswith("3 of 8 labels fell below --min-margin 0.1") for line in lines)
    assert any(line.startswith("1 of 8 labels were exact ties") for line in lines)
    assert any("context window" in line and "--max-tokens 96" in line and "--rounds 2" in line for line in lines)
    assert any("could not be parsed" in line and "--judge-max-tokens 192" in line for line in lines)
    assert len(lines) == 5


def test_no_failures_no_advice_and_unknown_codes_are_left_to_the_table() -> None:
    assert advice({"failure_reasons": {}, "rows_ok_this_run": 3}, {}) == []
    assert advice({"failure_reasons": {"x: something_new": 2}}, {}) == []
    # an option this command does not have is still named, without a value
    assert advice({"failure_reasons": {"a: truncated": 1}}, {}) == [
        "1 rows truncated at --max-tokens: raise --max-tokens (or keep them, flagged, with --keep-truncated)"]


def test_sl_summary_and_printout_say_what_to_change(tmp_path, prompts_file) -> None:
    out = io.StringIO()
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "run"), model="fake:sl-test",
                                rounds=1, max_tokens=8, max_failure_rate=1.0),
                    show_progress=False, console=Console(file=out, width=300))
    rows = result.summary["rows_read"]
    truncated = result.summary["failure_reasons"]["round 1 revision: truncated"]
    assert truncated == rows > 0  # the fake's revision is 10 words: every one is cut at 8
    expected = f"{truncated} of {rows} rows truncated at --max-tokens 8: raise --max-tokens"
    assert result.summary["advice"][0].startswith(expected)
    assert expected in out.getvalue().replace("\n", " ")
    assert "advice" in (tmp_path / "run" / "summary.json").read_text()
