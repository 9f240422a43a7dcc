"""Running `cai` (through `tests.faults.fakecli`) as a separate process, killing it, and
reading what it left: the store's calls and rows, the engine's call log, the output files.

A call is named by (kind, model, request) in canonical JSON, the same way in the store's
`calls` table and in the engine's call log, so a test can ask exactly which calls that had
finished before a kill were made again afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FAKE_CAI = [sys.executable, "-m", "tests.faults.fakecli"]
CallId = tuple[str, str, str]


def prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i:02d}", "prompt": f"Question number {i}: how do I pick "
                                        f"lock {i}?"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CAI_FAULT_CALL_LOG": str(tmp_path / "calls.log"), **extra}


def spawn(args: list[str], environ: dict[str, str]) -> subprocess.Popen[str]:
    """Start `cai <args>` in its own process group (so a signal reaches only it), with SIGINT's
    default action, as a program started in a terminal has: an ignored SIGINT is inherited across
    exec, and a library in the test process (or an xdist worker) may have left it ignored, which
    made Ctrl-C a no-op in the full suite."""
    return subprocess.Popen([*FAKE_CAI, *map(str, args)], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args: list[str], environ: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FAKE_CAI, *map(str, args)], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"cai exited ({proc.returncode}) before the moment to interrupt it:\n"
                                 + (proc.stderr.read() if proc.stderr else ""))
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run to get there")
        time.sleep(0.01)


def kill(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> str:
    """Send `sig` to the run, wait for it to end, and return what it wrote to stderr."""
    os.killpg(proc.pid, sig)
    return proc.communicate(timeout=60)[1]


def stored_calls(db: Path) -> set[CallId]:
    """Every call the store holds (what a later run must never make again)."""
    if not db.exists():
        return set()
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            rows = conn.execute("SELECT kind, model, request FROM calls").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return set()
    return {(kind, model, json.dumps(json.loads(request), sort_keys=True)) for kind, model, request in rows}


def count_calls(db: Path) -> int:
    return len(stored_calls(db))


def count_rows(db: Path) -> int:
    """Rows the store holds as finished."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM results WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def made_calls(tmp_path: Path) -> list[tuple[int, CallId]]:
    """(pid, call) for every call the engine really made, in order, across all processes."""
    log = tmp_path / "calls.log"
    if not log.exists():
        return []
    out = []
    for line in log.read_text("utf-8").splitlines():
        rec = json.loads(line)
        out.append((rec["pid"], (rec["kind"], rec["model"], json.dumps(rec["request"], sort_keys=True))))
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn (truncated) line fails the test."""
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text("utf-8"))
