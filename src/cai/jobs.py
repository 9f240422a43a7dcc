"""What every data-generating command shares: inputs, engines, the run loop, the summary.

A job (`cai sl`, `cai rl`) is a config dataclass plus a chain. `run_job` opens the run
directory, validates the input, wraps each engine in the run's call cache, runs the
chain over every row, rewrites the output files from the store and writes
`summary.json`, then prints a summary table. Engines and the run directory are closed
however the job ends.

When more than `max_failure_rate` of the rows fail (`cai.pipeline.FailureBudget`), the
job stops early, still writes its outputs and summary (with `stopped_early`), and then
raises `FailureBudgetExceeded`, naming the commonest failure and how to go on. A bug
stops it at once: the outputs are not rewritten, everything finished stays in the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from cai.data import HHMode, read_prompts
from cai.engines.base import Engine, load_engine
from cai.errors import ConfigError, FailureBudgetExceeded
from cai.pipeline import Chain, FailureBudget, OnBadInput, RunCounts, check_input, run_rows
from cai.run import RunDir
from cai.store import CachedEngine


@dataclass
class InputConfig:
    prompts: str = ""
    prompt_field: str = "auto"
    hh_mode: HHMode = "first"
    limit: int | None = None
    on_bad_input: OnBadInput = "error"

    def rows(self) -> Iterable:
        return read_prompts(self.prompts, prompt_field=self.prompt_field, hh_mode=self.hh_mode, limit=self.limit)


@dataclass
class JobConfig:
    """Fields every data job shares; SLConfig and RLConfig add their own."""

    prompts: str
    out: str
    prompt_field: str = "auto"
    hh_mode: str = "first"
    limit: int | None = None
    on_bad_input: str = "error"
    concurrency: int = 64
    engine_options: dict[str, Any] = field(default_factory=dict)
    #: stop early when more than this share of the finished rows failed (1 never stops)
    max_failure_rate: float = 0.5

    def inputs(self) -> InputConfig:
        return InputConfig(prompts=self.prompts, prompt_field=self.prompt_field, hh_mode=self.hh_mode,  # type: ignore[arg-type]
                           limit=self.limit, on_bad_input=self.on_bad_input)  # type: ignore[arg-type]


@dataclass
class JobResult:
    run: RunDir
    counts: RunCounts
    summary: dict[str, Any]


@dataclass
class EngineSet:
    """Engines opened for one job, each behind the run's call cache; closed together."""

    engines: dict[str, CachedEngine] = field(default_factory=dict)

    def open(self, spec: str, run: RunDir, options: dict[str, Any] | None = None) -> CachedEngine:
        if spec not in self.engines:
            self.engines[spec] = CachedEngine(load_engine(spec, options), run.store)
        return self.engines[spec]

    def stat(self, name: str) -> int:
        return sum(e.stats[name] for e in self.engines.values())

    def describe(self) -> dict[str, Any]:
        return {spec: e.describe() for spec, e in self.engines.items()}

    def inner_stats(self) -> dict[str, Any]:
        """Each engine's own counters (batches, HTTP retries, requests per URL...)."""
        return {spec: dict(getattr(e.inner, "stats", {})) for spec, e in self.engines.items()}

    async def aclose(self) -> None:
        """Close every engine, even when closing one fails (the first failure is raised)."""
        errors: list[Exception] = []
        for engine in self.engines.values():
            try:
                await engine.aclose()
            except Exception as exc:  # noqa: BLE001 - the others still close; raised below
                errors.append(exc)
        if errors:
            raise errors[0]


def run_job(*, out: str, **job: Any) -> JobResult:
    """Run a job (the arguments of `_run_in`) in `out`, holding its lock until it ends, however it ends."""
    budget = failure_budget(job["config"])
    with RunDir(out) as run:
        return _run_in(run, budget=budget, **job)


def failure_budget(config: Any) -> FailureBudget:
    """The job's failure budget from its config's `max_failure_rate` (0.5 where it has none)."""
    rate = getattr(config, "max_failure_rate", 0.5)
    if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ConfigError(f"--max-failure-rate must be between 0 and 1 (1 never stops a run); got {rate!r}")
    return FailureBudget(max_rate=float(rate))


def _run_in(run: RunDir, *, command: str, stage: str, inputs: InputConfig, config: Any,
            make_chain: Callable[[EngineSet, RunDir], Chain], write_outputs: Callable[[RunDir], dict[str, int]],
            manifest_parts: dict[str, Any], concurrency: int, show_progress: bool = True,
            console: Console | None = None,
            extra_summary: Callable[[RunDir, dict[str, Any]], dict[str, Any]] | None = None,
            budget: FailureBudget | None = None,
            ) -> JobResult:
    console = console or Console(stderr=True)
    total = None
    if inputs.on_bad_input == "error":
        total = check_input(inputs.rows())
    elif inputs.limit is not None:
        total = inputs.limit
    engines = EngineSet()
    started = time.perf_counter()

    async def main() -> RunCounts:
        try:
            chain = make_chain(engines, run)
            run.write_manifest(command, asdict(config), engines=engines.describe(), **manifest_parts)
            return await run_rows(inputs.rows(), chain, store=run.store, stage=stage, concurrency=concurrency,
                                  total=total, tokens=lambda: engines.stat("completion_tokens"),
                                  show_progress=show_progress, console=console, budget=budget)
        finally:
            await engines.aclose()

    counts = asyncio.run(main())
    elapsed = time.perf_counter() - started
    written = write_outputs(run)
    written["failures.jsonl"] = run.write_failures([stage])
    generated = engines.stat("completion_tokens")
    summary = {
        "command": command,
        "rows_read": counts.total,
        "rows_ok_this_run": counts.ok,
        "rows_failed_this_run": counts.failed,
        "bad_input_rows": counts.bad_input,
        "rows_already_done": counts.resumed,
        "failure_reasons": counts.failure_reasons,
        "files": written,
        "engine_calls_made": engines.stat("calls_made"),
        "engine_calls_from_cache": engines.stat("cache_hits"),
        "prompt_tokens": engines.stat("prompt_tokens"),
        "generated_tokens": generated,
        "elapsed_s": round(elapsed, 2),
        "generated_tokens_per_s": round(generated / elapsed, 2) if elapsed > 0 else 0.0,
        "engine_stats": engines.inner_stats(),
    }
    if counts.stopped_early:
        assert budget is not None
        summary["stopped_early"] = budget_message(counts, budget, run)
    if extra_summary:
        summary.update(extra_summary(run, summary))
    run.write_json("summary.json", summary)
    print_summary(console, summary, run)
    result = JobResult(run=run, counts=counts, summary=summary)
    if counts.stopped_early:
        raise FailureBudgetExceeded(summary["stopped_early"], result)
    return result


def budget_message(counts: RunCounts, budget: FailureBudget, run: RunDir) -> str:
    failed, finished = counts.row_failures, counts.ok + counts.row_failures
    reason, rows = counts.commonest_failure()
    example = counts.failure_examples.get(reason, "")
    return (f"too many rows failed, so the run stopped there: {failed} of the {finished} rows finished in this "
            f"run ({failed / finished:.0%}), more than --max-failure-rate {budget.max_rate:g}. "
            f"Commonest: {reason} ({rows} rows"
            + (f"; e.g. {example[:200]}" if example else "") + f"). Everything finished is kept in {run.path} "
            "(see failures.jsonl); fix the cause and re-run the same command to resume (finished rows are "
            "skipped), or raise --max-failure-rate (1 never stops).")


def print_summary(console: Console, summary: dict[str, Any], run: RunDir) -> None:
    table = Table(title=f"{summary['command']} → {run.path}", show_header=False)
    for key, value in summary.items():
        if key in ("command", "failure_reasons", "files", "engine_stats", "stopped_early"):
            continue
        if isinstance(value, dict):
            if value:
                table.add_row(key.replace("_", " "), ", ".join(f"{k}: {v}" for k, v in value.items()))
            continue
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    for name, count in summary["files"].items():
        table.add_row(f"wrote {name}", f"{count:,} rows")
    for reason, count in sorted(summary["failure_reasons"].items(), key=lambda kv: -kv[1])[:10]:
        table.add_row(f"[red]failed: {reason}", str(count))
    console.print(table)
