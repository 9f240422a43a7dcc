"""Running one async chain per input row, many at once, with bounded memory.

`run_rows` streams rows from a reader, skips those the store already finished, starts a
task per row while at most `concurrency` are in flight, and stores each outcome as it
lands (`ok` with its record, or `failed` with the stage and reason). Bad input rows are
either fatal (`on_bad_input="error"`, checked in a first pass before any model call) or
recorded as failures. A rich progress bar shows rows, tokens/s and the ETA.

A row fails only for what a model or its output caused: a `ChainFailure` (unusable
output, with its code) or an `EngineError` (the engine gave up after its retries, or the
prompt did not fit: code `engine_error`, `context_overflow`, ...). Any other exception is
a bug, or a store that can record nothing more: the run stops at once (rows in flight
are cancelled, everything stored stays) and the exception is raised with its traceback.
A `FailureBudget` stops the run early, the same way, when too many rows fail.

Not here: what a chain does (`cai.generate.sl`, `cai.generate.rl`) or how engines batch (`cai.engines`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cai.engines.base import EngineError
from cai.inputs.prompts import BadRow, PromptRow
from cai.runs.store import Store

#: the failure budget is judged once this many rows have finished in a run
FAILURE_BUDGET_AFTER = 20


class ChainFailure(Exception):
    """A row cannot produce usable output; `stage`, `code` and `reason` go to failures.jsonl.

    `code` is a stable machine-readable reason (`empty`, `truncated`, `too_few_candidates`,
    ...) that summaries count by; `reason` is the message for people.
    """

    def __init__(self, stage: str, reason: str, trace: dict[str, Any] | None = None, *, code: str = "failed") -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason, self.trace, self.code = stage, reason, trace or {}, code


@dataclass
class RunCounts:
    total: int = 0
    ok: int = 0
    failed: int = 0
    bad_input: int = 0
    resumed: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    #: the first message seen for each failure reason (for the failure budget's message)
    failure_examples: dict[str, str] = field(default_factory=dict)
    #: the failure budget stopped the run before every row was tried
    stopped_early: bool = False

    def note_failure(self, stage: str, code: str, message: str = "") -> None:
        self.failed += 1
        key = f"{stage}: {code}"
        self.failure_reasons[key] = self.failure_reasons.get(key, 0) + 1
        self.failure_examples.setdefault(key, message)

    @property
    def row_failures(self) -> int:
        """Rows the model or its output failed this run (bad input rows not included)."""
        return self.failed - self.bad_input

    def commonest_failure(self) -> tuple[str, int]:
        """("stage: code", rows) of the commonest row failure; ("", 0) if none."""
        counted = {k: v for k, v in self.failure_reasons.items() if k != "input: bad_input"}
        if not counted:
            return "", 0
        key = max(counted, key=counted.__getitem__)
        return key, counted[key]


@dataclass
class FailureBudget:
    """Stop a run once more than `max_rate` of the rows it finished failed.

    Judged after each finished row once `after` rows have finished in this run, so a few
    early failures never stop it (and a run of fewer rows is never stopped). Only rows
    this run tried count: bad input rows skipped with `on_bad_input="skip"` count neither
    way (they are the input's fault, not the model's, and reported apart), nor rows an
    earlier run finished. `max_rate=1` never stops.
    """

    max_rate: float = 0.5
    after: int = FAILURE_BUDGET_AFTER

    def exceeded(self, counts: RunCounts) -> bool:
        finished = counts.ok + counts.row_failures
        return finished >= self.after and counts.row_failures > self.max_rate * finished


Chain = Callable[[PromptRow], Awaitable[dict[str, Any]]]
TokenCounter = Callable[[], int]


async def run_rows(rows: Iterable[PromptRow | BadRow], chain: Chain, *, store: Store, stage: str,
                   concurrency: int = 64, total: int | None = None, tokens: TokenCounter | None = None,
                   show_progress: bool = True, console: Console | None = None,
                   budget: FailureBudget | None = None) -> RunCounts:
    counts = RunCounts()
    done = store.done_ids(stage)
    slots = asyncio.Semaphore(max(1, concurrency))
    tasks: set[asyncio.Task] = set()
    started = time.perf_counter()
    progress = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[tps]} tok/s"), TextColumn("{task.fields[failed]} failed"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console, disable=not show_progress, transient=False)
    bar = progress.add_task(stage, total=total, tps="0", failed=0)

    fatal: list[Exception] = []  # a bug or a store error: the run stops and raises the first

    def stopping() -> bool:
        return bool(fatal) or counts.stopped_early

    def advance() -> None:
        rate = (tokens() if tokens else 0) / max(1e-6, time.perf_counter() - started)
        progress.update(bar, advance=1, tps=f"{rate:,.0f}", failed=counts.failed)

    async def settle(row: PromptRow, idx: int) -> None:
        """Run one row and store its outcome; only model-caused failures are row failures."""
        try:
            record = await chain(row)
        except ChainFailure as exc:
            store.put_result(stage, row.id, idx, "failed", _failure(row, exc.stage, exc.code, exc.reason, exc.trace))
            counts.note_failure(exc.stage, exc.code, exc.reason)
        except EngineError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            store.put_result(stage, row.id, idx, "failed", _failure(row, "engine", exc.code, reason, {}))
            counts.note_failure("engine", exc.code, reason)
        else:
            store.put_result(stage, row.id, idx, "ok", record)
            counts.ok += 1
        if budget is not None and budget.exceeded(counts):
            counts.stopped_early = True

    async def one(row: PromptRow, idx: int) -> None:
        try:
            await settle(row, idx)
        except Exception as exc:  # noqa: BLE001 - not a row failure: kept and raised once the run has stopped
            fatal.append(exc)
        finally:
            slots.release()
            advance()

    with progress:
        for idx, row in enumerate(rows):
            if stopping():
                break
            counts.total += 1
            if isinstance(row, BadRow):
                store.put_result(stage, f"bad-input:{row.source}", idx, "failed",
                                 {"id": None, "source": row.source, "stage": "input", "code": "bad_input",
                                  "reason": row.reason})
                counts.bad_input += 1
                counts.note_failure("input", "bad_input")
                advance()
                continue
            if row.id in done:
                counts.resumed += 1
                advance()
                continue
            await slots.acquire()
            if stopping():
                slots.release()
                break
            task = asyncio.create_task(one(row, idx))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks and not stopping():  # the last rows, until they end or the run must stop
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:  # stopping: cancel the rows in flight; what finished is in the store
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if fatal:
        raise fatal[0]
    return counts


def _failure(row: PromptRow, stage: str, code: str, reason: str, trace: dict[str, Any]) -> dict[str, Any]:
    return {"id": row.id, "source": row.source, "stage": stage, "code": code, "reason": reason,
            "messages": row.messages, "trace": trace}
