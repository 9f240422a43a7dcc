"""A store or output file damaged by a crash (or anything else) is recovered or reported
clearly, and never silently reused."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from tests.faults import harness as h

pytestmark = pytest.mark.slow
ROWS = 8


def sl_args(tmp_path: Path, latency: float = 0.0) -> list:
    prompts = h.prompts(tmp_path / "p.jsonl", ROWS)
    return ["sl", "--prompts", prompts, "--out", tmp_path / "run", "--model", "slowfake:steady",
            "-E", f"latency_s={latency}", "--rounds", 1, "--concurrency", 2, "--quiet"]


def finished_run(tmp_path: Path) -> list:
    args = sl_args(tmp_path)
    done = h.run(args, h.env(tmp_path))
    assert done.returncode == 0, done.stderr
    return args


@pytest.mark.parametrize("damage", ["truncated", "garbage", "one page overwritten"])
def test_a_damaged_store_is_a_clear_error_and_is_left_alone(tmp_path: Path, damage: str) -> None:
    args = finished_run(tmp_path)
    db = tmp_path / "run" / "store.sqlite"
    assert not Path(f"{db}-wal").exists()  # a clean exit checkpointed the log into the file
    data = db.read_bytes()
    noise = random.Random(0).randbytes(len(data))
    page = 4096 * (len(data) // 4096 // 2)  # a page in the middle: the header still says "SQLite"
    damaged = {"truncated": data[: len(data) * 2 // 3], "garbage": noise,
               "one page overwritten": data[:page] + noise[page:page + 4096] + data[page + 4096:]}[damage]
    db.write_bytes(damaged)
    proc = h.run(args, h.env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{db}: the store is corrupt" in proc.stderr and "will not be reused" in proc.stderr
    assert db.read_bytes() == damaged, "the damaged store was changed instead of being left for the user"


def test_a_torn_write_ahead_log_after_a_kill_is_recovered(tmp_path: Path) -> None:
    args = sl_args(tmp_path, latency=0.03)
    db = tmp_path / "run" / "store.sqlite"
    proc = h.spawn(args, h.env(tmp_path))
    h.wait_for(lambda: h.count_rows(db) >= ROWS // 2, proc)
    h.kill(proc, signal.SIGKILL)
    wal = Path(f"{db}-wal")
    size = wal.stat().st_size
    assert size > 0, "nothing was left in the log to tear"
    os.truncate(wal, size - 1000)  # the last frames half written, as a crash mid-write leaves them
    resumed = h.run(args, h.env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["id"] for r in h.read_jsonl(tmp_path / "run" / "sl.jsonl")) == [f"r{i:02d}" for i in range(ROWS)]
    assert h.summary(tmp_path / "run")["rows_already_done"] > 0, "the log's whole frames were not recovered"


def test_a_truncated_output_file_is_rewritten_from_the_store(tmp_path: Path) -> None:
    args = finished_run(tmp_path)
    sl = tmp_path / "run" / "sl.jsonl"
    whole = sl.read_bytes()
    sl.write_bytes(whole[: len(whole) // 2])  # e.g. a copy cut short
    again = h.run(args, h.env(tmp_path))
    assert again.returncode == 0, again.stderr
    assert sl.read_bytes() == whole and h.summary(tmp_path / "run")["engine_calls_made"] == 0


def test_export_names_a_truncated_output_file(tmp_path: Path) -> None:
    finished_run(tmp_path)
    sft = tmp_path / "run" / "sft.jsonl"
    lines = sft.read_text("utf-8").splitlines(keepends=True)
    sft.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2], encoding="utf-8")
    proc = h.run(["export", tmp_path / "run", "--format", "trl", "--out", tmp_path / "export"], h.env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"{sft}:4: malformed JSON" in proc.stderr
    assert not (tmp_path / "export").exists(), "a dataset was written from the partial file"
