"""A full disk or a read-only --out: a clear error naming the file, nothing finished lost,
and (once there is room) the same command resumes.

The real cases mount a small tmpfs, which needs root with CAP_SYS_ADMIN; where that is not
possible they are skipped with the reason, and the in-process cases below simulate the
same errors at the store and file level so the behaviour is still tested everywhere.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from cai.runs.job import JobResult
from tests.faults import harness as h

pytestmark = pytest.mark.slow
ROWS = 12


def sl_args(tmp_path: Path, out: Path) -> list:
    prompts = h.prompts(tmp_path / "p.jsonl", ROWS)
    return ["sl", "--prompts", prompts, "--out", out, "--model", "slowfake:steady", "-E", "latency_s=0.01",
            "--rounds", 2, "--concurrency", 2, "--quiet"]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of a given size at tmp_path/disk (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"

    def make(size: str) -> Path:
        mount.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {made.stderr.strip()}")
        return mount

    try:
        yield make
    finally:
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_disk_full_is_a_clear_error_and_the_run_resumes_once_there_is_room(
        tmp_path: Path, mount_tmpfs: Callable[[str], Path]) -> None:
    disk = mount_tmpfs("200k")
    out = disk / "run"
    args = sl_args(tmp_path, out)
    full = h.run(args, h.env(tmp_path))
    assert full.returncode == 2, f"the run did not fill 200 KiB; make it bigger\n{full.stderr}"
    assert "disk full" in full.stderr and "re-run the same command to resume" in full.stderr
    assert "Traceback" not in full.stderr
    remount(disk, "size=16m")  # the user frees some space
    kept = h.stored_calls(out / "store.sqlite")
    assert kept, "nothing was kept from before the disk filled"
    made_before = len(h.made_calls(tmp_path))
    resumed = h.run(args, h.env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert not kept & {call for _, call in h.made_calls(tmp_path)[made_before:]}, "kept calls were made again"
    assert sorted(r["id"] for r in h.read_jsonl(out / "sl.jsonl")) == [f"r{i:02d}" for i in range(ROWS)]


def test_read_only_out_is_a_clear_error_and_changes_nothing(
        tmp_path: Path, mount_tmpfs: Callable[[str], Path]) -> None:
    root = os.geteuid() == 0  # root writes through file modes: only a read-only mount stops it
    out = (mount_tmpfs("16m") if root else tmp_path) / "run"
    args = sl_args(tmp_path, out)
    assert h.run(args, h.env(tmp_path)).returncode == 0
    if root:
        remount(out.parent, "ro")
    else:
        for path in [*out.iterdir(), out]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    before = digests(out)
    proc = h.run([*args, "--rounds", 3], h.env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"{out}: cannot write here" in proc.stderr and "Traceback" not in proc.stderr
    assert digests(out) == before


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_out_that_is_not_a_directory_is_a_clear_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    out = blocker if where == "a file" else blocker / "run"
    proc = h.run(sl_args(tmp_path, out), h.env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert str(blocker) in proc.stderr and "Traceback" not in proc.stderr
    assert blocker.read_text() == "keep me\n"


# ---- the same faults simulated in-process (no mount needed) -------------------------------
class FillsUp(sqlite3.Connection):
    """A connection whose disk fills after `room` more calls are stored; small row records
    still fit, as they may on a nearly full disk (they must not be written as row failures)."""

    room = 0

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
        if sql.startswith("INSERT OR REPLACE INTO calls"):
            if FillsUp.room <= 0:
                raise sqlite3.OperationalError("database or disk is full")
            FillsUp.room -= 1
        return super().execute(sql, *args)


def run_sl_in_process(tmp_path: Path) -> JobResult:
    import tests.faults.fakecli  # noqa: F401  (registers the steady script)
    from cai.generate.sl import SLConfig, run_sl

    prompts = h.prompts(tmp_path / "p.jsonl", ROWS)
    return run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "run"), model="fake:steady", rounds=2,
                           max_tokens=64, concurrency=2), show_progress=False)


def test_store_disk_full_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cai.runs.store import StoreError

    connect = sqlite3.connect
    monkeypatch.setattr("cai.runs.store.sqlite3.connect", lambda *a, **kw: connect(*a, **kw, factory=FillsUp))
    FillsUp.room = 25
    with pytest.raises(StoreError, match="disk full"):
        run_sl_in_process(tmp_path)
    monkeypatch.undo()
    kept = h.count_calls(tmp_path / "run" / "store.sqlite")
    assert kept > 0
    with closing(sqlite3.connect(tmp_path / "run" / "store.sqlite")) as conn:
        failed = conn.execute("SELECT COUNT(*) FROM results WHERE status='failed'").fetchone()[0]
    assert failed == 0, "a full disk was recorded as row failures"
    result = run_sl_in_process(tmp_path)
    assert result.summary["engine_calls_made"] == h.count_calls(tmp_path / "run" / "store.sqlite") - kept
    assert result.summary["rows_failed_this_run"] == 0 and len(h.read_jsonl(tmp_path / "run" / "sl.jsonl")) == ROWS


def test_output_disk_full_in_process_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cai.runs.store import StoreError

    run_sl_in_process(tmp_path)
    sl = tmp_path / "run" / "sl.jsonl"
    before = sl.read_bytes()  # the finished run's output: a failed rewrite must leave it whole

    fsync = os.fsync

    def no_space_for_sl(fd: int) -> None:  # the disk fills while sl.jsonl is being written
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".sl.jsonl.partial"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr("cai.runs.run_dir.os.fsync", no_space_for_sl)
    with pytest.raises(StoreError, match=r"sl\.jsonl: disk full .*; everything finished so far is kept"):
        run_sl_in_process(tmp_path)
    assert sl.read_bytes() == before and not list(sl.parent.glob(".*.partial"))
