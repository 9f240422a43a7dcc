"""Ctrl-C (SIGINT) mid-run: exit 130, say exactly how to resume, and leave a run that the
printed command finishes without redoing a finished call."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

import pytest

from tests.faults import harness as h

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("command", ["sl", "rl"])
def test_ctrl_c_leaves_a_resumable_run_and_prints_the_command(tmp_path: Path, command: str) -> None:
    rows = 12
    prompts = h.prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "my run"  # a space, so the printed command must quote it
    engine = ["--model", "slowfake:steady"] if command == "sl" else [
        "--policy", "slowfake:steady", "--judge", "slowfake:steady"]
    args = [command, "--prompts", str(prompts), "--out", str(out), *engine, "-E", "latency_s=0.05",
            "--concurrency", "2", "--quiet"]
    proc = h.spawn(args, h.env(tmp_path))
    h.wait_for(lambda: h.count_rows(out / "store.sqlite") >= 3, proc)
    stderr = h.kill(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    resume = lines[lines.index(next(l for l in lines if "To resume, run:" in l)) + 1]
    assert shlex.split(resume) == ["cai", *args]

    made_before = len(h.made_calls(tmp_path))
    finished = h.stored_calls(out / "store.sqlite")
    resumed = h.run(shlex.split(resume)[1:], h.env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    made_after = {call for _, call in h.made_calls(tmp_path)[made_before:]}
    assert not finished & made_after, "calls finished before Ctrl-C were made again"
    summary = h.summary(out)
    assert summary["rows_already_done"] + summary["rows_ok_this_run"] + summary["rows_failed_this_run"] == rows
    assert summary["rows_already_done"] >= 3, "Ctrl-C lost rows that had finished"
