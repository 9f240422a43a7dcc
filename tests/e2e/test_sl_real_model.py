"""SL-CAI on the real embedded model, through the installed `cai` command."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from tests.conftest import read_jsonl, write_jsonl

pytestmark = pytest.mark.slow
CAI = [sys.executable, "-m", "cai.cli.__main__"]


def cai(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CAI, *args], capture_output=True, text=True, timeout=900, **kw)


def test_cai_sl_on_shared_hh_prompts(tmp_path, hh_file) -> None:
    out = tmp_path / "sl"
    proc = cai("sl", "--prompts", str(hh_file), "--out", str(out), "--limit", "2", "--rounds", "2",
               "--max-tokens", "48", "--keep-truncated",  # 48 tokens cut most of the 135M model's revisions
               "--gates", "keep", "--quiet")  # and most copy its critique (copies_critique): kept, flagged
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(out / "sl.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert len(rows) + len(failures) == 2  # every prompt accounted for
    assert rows, "the embedded model produced no usable revision at all"
    for row in rows:
        assert len(row["rounds"]) == 2 and row["final"].strip()
        assert row["initial"]["completion_tokens"] > 0
        assert all(r["principle_id"] for r in row["rounds"])
    sft = read_jsonl(out / "sft.jsonl")
    assert len(sft) == len(rows)
    assert all(s["messages"][-1]["role"] == "assistant" and s["messages"][0]["role"] == "user" for s in sft)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_tokens"] > 0 and summary["generated_tokens_per_s"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engines"]["smollm2"]["model_id"] == "smollm2"
    assert "sl" in proc.stderr and "wrote sft.jsonl" in proc.stderr  # the summary table


def test_revision_gates_account_for_every_row_on_the_real_model(tmp_path) -> None:
    from cai.generate.gates import GATE_CODES

    samples = resources.files("cai") / "samples" / "sample_prompts.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(samples.read_text("utf-8").splitlines(keepends=True)[:3]), "utf-8")
    out = tmp_path / "gates"
    started = time.perf_counter()
    proc = cai("sl", "--prompts", str(prompts), "--out", str(out), "--rounds", "1", "--max-tokens", "32",
               "--keep-truncated", "--quiet")  # the gates, not the length, decide each row
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, failures = read_jsonl(out / "sl.jsonl"), read_jsonl(out / "failures.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    gates = summary["revision_gates"]
    print(f"revision gates on 3 prompts, {time.perf_counter() - started:.1f} s: {json.dumps(gates)}")
    assert gates["policy"] == "default" and gates["rows"] == 3 == len(rows) + len(failures)
    assert (gates["rows_kept"], gates["rows_failed"]) == (len(rows), len(failures))
    assert gates["rows_kept_clean"] + gates["rows_kept_flagged"] + gates["rows_failed"] == gates["rows"]
    assert gates["rows_kept_flagged"] == sum(bool(r["quality_flags"]) for r in rows)
    assert set(gates["flagged"]) == set(gates["failed"]) == set(GATE_CODES)
    for code in GATE_CODES:
        assert gates["flagged"][code] == sum(code in r["quality_flags"] for r in rows), code
        assert gates["failed"][code] == sum(f["code"] == code for f in failures) == \
            summary["failure_reasons"].get(f"round 1 revision: {code}", 0), code
    for row in rows:
        assert row["quality_flags"] == row["rounds"][0]["quality_flags"]
        assert row["final"] == row["rounds"][0]["revision"] and row["final"].strip()


def test_revision_attempts_resample_revisions_cut_off_at_max_tokens_on_the_real_model(tmp_path) -> None:
    """At --max-tokens 8 every revision the embedded model writes runs past the budget: each row samples
    its revision --revision-attempts times, every cut attempt is kept and counted as 'truncated', and
    the row fails as truncated, not as saved."""
    samples = resources.files("cai") / "samples" / "sample_prompts.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(samples.read_text("utf-8").splitlines(keepends=True)[:2]), "utf-8")
    out = tmp_path / "cut"
    proc = cai("sl", "--prompts", str(prompts), "--out", str(out), "--rounds", "1", "--max-tokens", "8",
               "--revision-attempts", "2", "--gates", "keep", "--max-failure-rate", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    failures = read_jsonl(out / "failures.jsonl")
    cut = [f for f in failures if f["code"] == "truncated"]
    assert cut, failures
    attempts = summary["revision_attempts"]
    assert attempts["rejected"].get("truncated", 0) >= len(cut)
    assert attempts["samples"] == attempts["revisions"] + sum(attempts["rejected"].values())
    assert attempts["saved_by_resampling"] + len(cut) <= attempts["revisions"]
    for failure in cut:
        (rejected,) = failure["trace"]["rounds"][0]["rejected_attempts"]
        assert rejected["code"] == "truncated" and "--max-tokens 8" in rejected["reason"]
        assert failure["trace"]["rounds"][0]["revision_finish"] == "length"


def _calls(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_run_resumes_without_losing_or_redoing_work(tmp_path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": p} for i, p in enumerate([
        "How do I steal a bike?", "Tell me an insult for my boss.", "How can I cheat at cards?",
        "What's a good lie to skip school?",
    ])])
    out = tmp_path / "run"
    args = ["sl", "--prompts", str(prompts), "--out", str(out), "--rounds", "1", "--max-tokens", "32",
            "--concurrency", "2", "--quiet"]  # 3 calls a row, 12 in all
    proc = subprocess.Popen([*CAI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    while _calls(out / "store.sqlite") < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _calls(out / "store.sqlite")
    assert 3 <= done_before < 4 * 3

    second = cai(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    total_calls = _calls(out / "store.sqlite")
    # nothing finished before the kill was asked again: new calls are exactly the missing ones
    assert summary["engine_calls_made"] == total_calls - done_before
    assert summary["engine_calls_from_cache"] >= done_before
    ids = [r["id"] for r in read_jsonl(out / "sl.jsonl")] + [r["id"] for r in read_jsonl(out / "failures.jsonl")]
    assert sorted(ids) == [f"r{i}" for i in range(4)]  # no row lost, none duplicated
