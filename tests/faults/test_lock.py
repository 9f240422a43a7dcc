"""Two `cai` processes on the same --out: the second refuses with a clear message naming the
first, and never writes into its run; the lock goes with a killed holder."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.runs.run_dir import RunDir, RunLocked
from tests.faults import harness as h

pytestmark = pytest.mark.slow


def test_second_process_on_the_same_out_refuses_and_never_interleaves(tmp_path: Path) -> None:
    rows = 12
    prompts = h.prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    args = ["sl", "--prompts", prompts, "--out", out, "--model", "slowfake:steady", "-E", "latency_s=0.2",
            "--rounds", 1, "--concurrency", 2, "--quiet"]  # about 4 s of work: the second starts well within it
    first = h.spawn(args, h.env(tmp_path))
    h.wait_for(lambda: h.count_calls(out / "store.sqlite") >= 1, first)
    second = h.run(args, h.env(tmp_path))
    assert first.poll() is None, "the first run ended before the second one started; make it longer"
    assert second.returncode == 2, second.stderr
    assert f"in use by another cai process (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""
    assert {pid for pid, _ in h.made_calls(tmp_path)} == {first.pid}, "the refused process made engine calls"
    assert sorted(r["id"] for r in h.read_jsonl(out / "sl.jsonl")) == [f"r{i:02d}" for i in range(rows)]

    again = h.run(args, h.env(tmp_path))  # the lock is released at exit: a re-run resumes with nothing to do
    assert again.returncode == 0, again.stderr
    assert h.summary(out)["engine_calls_made"] == 0


def test_a_killed_holders_lock_does_not_block_a_resume(tmp_path: Path) -> None:
    prompts = h.prompts(tmp_path / "p.jsonl", 6)
    out = tmp_path / "run"
    args = ["sl", "--prompts", prompts, "--out", out, "--model", "slowfake:steady", "-E", "latency_s=0.05",
            "--rounds", 1, "--concurrency", 2, "--quiet"]
    proc = h.spawn(args, h.env(tmp_path))
    h.wait_for(lambda: h.count_calls(out / "store.sqlite") >= 2, proc)
    h.kill(proc)
    assert (out / ".lock").read_text().strip() == str(proc.pid)  # the dead holder's pid is still written there
    resumed = h.run(args, h.env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert len(h.read_jsonl(out / "sl.jsonl")) == 6


def test_run_dir_lock_in_one_process(tmp_path: Path) -> None:
    first = RunDir(tmp_path / "run")
    with pytest.raises(RunLocked, match="in use by another cai process"):
        RunDir(tmp_path / "run")
    first.close()
    with RunDir(tmp_path / "run") as again:  # released by close()
        assert again.store.count_calls() == 0
