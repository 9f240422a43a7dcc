"""kill -9 of `cai sl` and `cai rl` at random moments, several times in a row, then a clean
finish: no row lost or duplicated, and no call that had finished before a kill made again."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.faults import harness as h

pytestmark = pytest.mark.slow
SEED = int(os.environ.get("CAI_FAULT_SEED", "9"))  # kill moments: random but reproducible
KILLS = 3


Snapshot = tuple[int, set[h.CallId]]  # (calls made so far, calls the store held) right after a stop


def snapshot(tmp_path: Path) -> Snapshot:
    return len(h.made_calls(tmp_path)), h.stored_calls(tmp_path / "run" / "store.sqlite")


def kill_repeatedly(tmp_path: Path, args: list, calls_per_run: int, rng: random.Random) -> list[Snapshot]:
    """Kill -9 the run KILLS times, each at a random point of what is left of its progress."""
    db = tmp_path / "run" / "store.sqlite"
    snapshots = []
    for _ in range(KILLS):
        done = h.count_calls(db)
        threshold = done + rng.randint(1, max(1, (calls_per_run - done) // 2))
        proc = h.spawn(args, h.env(tmp_path))
        h.wait_for(lambda: h.count_calls(db) >= threshold, proc)
        h.kill(proc)
        snapshots.append(snapshot(tmp_path))
    return snapshots


def kill_while_writing(tmp_path: Path, args: list, output: str) -> Snapshot:
    """Kill -9 the run while it writes `output`: the file must stay as it was before."""
    out = tmp_path / "run"
    before = (out / output).read_bytes() if (out / output).exists() else None
    proc = h.spawn(args, h.env(tmp_path, CAI_FAULT_WRITE_DELAY="0.05"))  # a window a loaded machine still sees
    h.wait_for(lambda: (out / f".{output}.partial").exists(), proc)
    h.kill(proc)
    assert (out / f".{output}.partial").exists(), "the kill did not land while the output was being written"
    after = (out / output).read_bytes() if (out / output).exists() else None
    assert after == before, f"{output} changed under a kill mid-write (it must be replaced whole or not at all)"
    return snapshot(tmp_path)


def redo_counts(tmp_path: Path, snapshots: list[Snapshot]) -> dict[str, int]:
    """How many calls the engine made, and how many of them had finished before some kill."""
    made = [call for _, call in h.made_calls(tmp_path)]
    redone = set()
    for position, finished in snapshots:
        redone |= finished & set(made[position:])
    return {"calls_made": len(made), "distinct_calls": len(set(made)), "finished_calls_made_again": len(redone),
            "in_flight_calls_lost_to_kills": len(made) - len(set(made))}


def test_kill9_cai_sl_repeatedly_then_clean_finish(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    rows, rounds = 24, 2
    prompts = h.prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    args = ["sl", "--prompts", prompts, "--out", out, "--model", "slowfake:steady", "-E", "latency_s=0.03",
            "--rounds", rounds, "--max-tokens", 64, "--concurrency", 3, "--quiet"]
    first = h.run([*args, "--limit", 6], h.env(tmp_path))  # a finished smaller run: outputs exist already
    assert first.returncode == 0, first.stderr
    snapshots = [snapshot(tmp_path)]
    snapshots += kill_repeatedly(tmp_path, args, rows * (1 + 2 * rounds), rng)
    snapshots.append(kill_while_writing(tmp_path, args, "sl.jsonl"))

    before_last = len(snapshots[-1][1])
    final = h.run(args, h.env(tmp_path))
    assert final.returncode == 0, final.stderr
    counts = redo_counts(tmp_path, snapshots)
    assert counts["finished_calls_made_again"] == 0, counts
    summary = h.summary(out)
    assert summary["engine_calls_made"] == h.count_calls(out / "store.sqlite") - before_last
    ids = [r["id"] for r in h.read_jsonl(out / "sl.jsonl")]
    assert sorted(ids) == [f"r{i:02d}" for i in range(rows)], "a row was lost or duplicated"
    assert len(h.read_jsonl(out / "sft.jsonl")) == rows and h.read_jsonl(out / "failures.jsonl") == []
    assert not list(out.glob(".*.partial"))
    print(f"\ncai sl, {KILLS + 1} kill -9 then a clean finish: {rows}/{rows} rows, 0 duplicated, {counts}")


def test_kill9_cai_rl_repeatedly_then_clean_finish(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    rows, candidates = 16, 3
    prompts = h.prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    args = ["rl", "--prompts", prompts, "--out", out, "--policy", "slowfake:steady", "--judge", "slowfake:steady",
            "-E", "latency_s=0.03", "--candidates", candidates, "--labeler", "pairwise", "--max-tokens", 64,
            "--concurrency", 3, "--quiet"]
    pairs = candidates * (candidates - 1) // 2
    snapshots = kill_repeatedly(tmp_path, args, rows * (1 + 2 * pairs), rng)
    snapshots.append(kill_while_writing(tmp_path, args, "preferences.jsonl"))

    before_last = len(snapshots[-1][1])
    final = h.run(args, h.env(tmp_path))
    assert final.returncode == 0, final.stderr
    counts = redo_counts(tmp_path, snapshots)
    assert counts["finished_calls_made_again"] == 0, counts
    assert h.summary(out)["engine_calls_made"] == h.count_calls(out / "store.sqlite") - before_last
    cands = h.read_jsonl(out / "candidates.jsonl")
    assert sorted(c["id"] for c in cands) == [f"r{i:02d}" for i in range(rows)], "a row was lost or duplicated"
    prefs = h.read_jsonl(out / "preferences.jsonl")
    keys = [(p["id"], p["chosen_index"], p["rejected_index"]) for p in prefs]
    assert len(keys) == len(set(keys)), "a preference row was duplicated"
    dropped = h.read_jsonl(out / "failures.jsonl")
    assert len(prefs) + len(dropped) == rows * pairs, "a labelled pair was lost"
    print(f"\ncai rl, {KILLS + 1} kill -9 then a clean finish: {rows}/{rows} rows, {len(prefs)} preference "
          f"rows + {len(dropped)} dropped pairs = {rows * pairs} pairs, {counts}")
