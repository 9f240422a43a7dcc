"""Running one async chain per input row, many at once, with bounded memory.

`run_rows` streams rows from a reader, skips those the store already finished, starts a
task per row while at most `concurrency` are in flight, and stores each outcome as it
lands (`ok` with its record, or `failed` with the stage and reason). Bad input rows are
either fatal (`on_bad_input="error"`, checked in a first pass before any model call) or
recorded as failures. A rich progress bar shows rows, tokens/s and the ETA.

Not here: what a chain does (`cai.sl`, `cai.rl`) or how engines batch (`cai.engines`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from cai.data import BadRow, InputError, PromptRow
from cai.store import Store, StoreError

OnBadInput = Literal["error", "skip"]


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

    def note_failure(self, stage: str, code: str) -> None:
        self.failed += 1
        key = f"{stage}: {code}"
        self.failure_reasons[key] = self.failure_reasons.get(key, 0) + 1


Chain = Callable[[PromptRow], Awaitable[dict[str, Any]]]
TokenCounter = Callable[[], int]


def check_input(rows: Iterable[PromptRow | BadRow]) -> int:
    """First pass for on_bad_input='error': raise on the first bad row, else count rows."""
    count = 0
    for row in rows:
        if isinstance(row, BadRow):
            raise InputError(f"{row.source}: {row.reason}")
        count += 1
    return count


async def run_rows(rows: Iterable[PromptRow | BadRow], chain: Chain, *, store: Store, stage: str,
                   concurrency: int = 64, total: int | None = None, tokens: TokenCounter | None = None,
                   show_progress: bool = True, console: Console | None = None) -> RunCounts:
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

    fatal: list[BaseException] = []

    def finished(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            fatal.append(task.exception())  # type: ignore[arg-type]

    def advance() -> None:
        rate = (tokens() if tokens else 0) / max(1e-6, time.perf_counter() - started)
        progress.update(bar, advance=1, tps=f"{rate:,.0f}", failed=counts.failed)

    async def one(row: PromptRow, idx: int) -> None:
        try:
            record = await chain(row)
            store.put_result(stage, row.id, idx, "ok", record)
            counts.ok += 1
        except ChainFailure as exc:
            store.put_result(stage, row.id, idx, "failed", _failure(row, exc.stage, exc.code, exc.reason, exc.trace))
            counts.note_failure(exc.stage, exc.code)
        except StoreError:  # the run can record nothing more: it stops (never a row failure)
            raise
        except Exception as exc:  # noqa: BLE001 - one row's crash must not end the run
            reason = f"{type(exc).__name__}: {exc}"
            store.put_result(stage, row.id, idx, "failed", _failure(row, "engine", "engine_error", reason, {}))
            counts.note_failure("engine", "engine_error")
        finally:
            slots.release()
            advance()

    with progress:
        for idx, row in enumerate(rows):
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
            if fatal:
                break
            task = asyncio.create_task(one(row, idx))
            tasks.add(task)
            task.add_done_callback(finished)
        if fatal:  # stop the rest; what finished is in the store
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if fatal:
            raise fatal[0]
    return counts


def _failure(row: PromptRow, stage: str, code: str, reason: str, trace: dict[str, Any]) -> dict[str, Any]:
    return {"id": row.id, "source": row.source, "stage": stage, "code": code, "reason": reason,
            "messages": row.messages, "trace": trace}
