"""What every data-generating command shares: inputs, engines, the run loop, the summary.

A job (`cai sl`, `cai rl`, `cai eval judge`) is a config made of option groups (the two
every job has, `InputOptions` and `RunOptions`, are here; see `cai.core.options`) plus a
chain. `run_job` opens the run
directory, validates the input, wraps each engine in the run's call cache, runs the
chain over every row, rewrites the output files from the store and writes
`summary.json`, then prints a summary table. Engines and the run directory are closed
however the job ends. A run whose every row is already finished (`ok` in the store)
opens no engine at all: resuming it only rewrites the outputs, and the manifest keeps the
engines the last run described (so a changed `--model` on a finished run is not checked). A row that failed is
tried again, so a run with failures opens its engines (their answers may still come
from the call cache).

When more than `max_failure_rate` of the rows fail (`cai.runs.rows.FailureBudget`), the
job stops early, still writes its outputs and summary (with `stopped_early`), and then
raises `FailureBudgetExceeded`, naming the commonest failure and how to go on. A bug
stops it at once: the outputs are not rewritten, everything finished stays in the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cai.core.errors import FailureBudgetExceeded
from cai.core.options import Options, at_least, in_unit_interval, option
from cai.engines.base import load_engine, parse_option_pairs
from cai.inputs.prompts import BadRow, OnBadInput, PromptRow, check_input
from cai.runs.advice import advice
from cai.runs.rows import Chain, FailureBudget, RunCounts, run_rows
from cai.runs.run_dir import RunDir
from cai.runs.store import CachedEngine
from cai.stats.principles import display_rows


def key_value_pairs(value: Any) -> dict[str, Any]:
    """['k=v', ...] from the CLI, or a YAML mapping, -> {k: parsed v}."""
    if isinstance(value, Mapping):
        return dict(value)
    return parse_option_pairs(list(value))


@dataclass
class RunOptions(Options):
    """The run directory, seeds, concurrency, engine options and the failure budget."""

    out: str = option(required=True, short="-o", help="Run directory. Re-running on the same directory resumes.")
    seed: int = option(0, help="Seeds principle sampling, label order and generation (each row's seed follows "
                               "from it and the row's id, so a row's output never depends on its batch).")
    concurrency: int = option(64, help="Rows processed at once (their requests are batched together).")
    engine_options: dict[str, Any] = option(
        flag="--engine-option", short="-E", default_factory=dict, parse=key_value_pairs, cli_type=list[str],
        metavar="KEY=VALUE",
        help="Engine option key=value, repeatable (e.g. -E max_batch_size=16 -E dtype=fp32); in a config file, "
             "a mapping.")
    max_failure_rate: float = option(
        0.5, help="Stop early (exit status 3, everything finished kept) when more than this share of the rows "
                  "finished in this run failed, judged once 20 rows have finished; bad input rows do not count. "
                  "1 never stops.")

    def check(self) -> None:
        at_least("--concurrency", self.concurrency, 1)
        in_unit_interval("--max-failure-rate", self.max_failure_rate)


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


class JobInputs(Protocol):
    """What a job reads: its rows (prompts or bad rows), how many at most, what to do with a bad one."""

    limit: int | None
    on_bad_input: OnBadInput

    def rows(self) -> Iterable: ...


class JobConfig(Protocol):
    """A command's config as a job sees it: its run options and every option by name."""

    run: RunOptions

    def flat(self) -> dict[str, Any]: ...


def run_job(*, config: JobConfig, **job: Any) -> JobResult:
    """Run a job (the arguments of `_run_in`) in `config.run.out`, holding its lock until it ends."""
    budget = FailureBudget(max_rate=float(config.run.max_failure_rate))
    with RunDir(config.run.out) as run:
        return _run_in(run, config=config, budget=budget, **job)


def _run_in(run: RunDir, *, command: str, stage: str, inputs: JobInputs, config: JobConfig,
            make_chain: Callable[[EngineSet, RunDir], Chain], write_outputs: Callable[[RunDir], dict[str, int]],
            manifest_parts: dict[str, Any], show_progress: bool = True, console: Console | None = None,
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
    # nothing to compute: the engines are not even built (when the last manifest describes them)
    every_row_done = _every_row_done(inputs, run.store.done_ids(stage)) and bool(run.previous_engines())

    async def main() -> RunCounts:
        try:
            opened: dict[str, Any] = {}
            if every_row_done:
                chain: Chain = _no_row_left
                opened["engines_not_opened"] = "every row was already finished; engines as the last run described"
                described = run.previous_engines()
            else:
                chain = make_chain(engines, run)
                described = engines.describe()
            run.write_manifest(command, config.flat(), engines=described, **opened, **manifest_parts)
            return await run_rows(inputs.rows(), chain, store=run.store, stage=stage,
                                  concurrency=config.run.concurrency,
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
    summary["advice"] = advice(summary, config.flat())
    run.write_json("summary.json", summary)
    print_summary(console, summary, run)
    result = JobResult(run=run, counts=counts, summary=summary)
    if counts.stopped_early:
        raise FailureBudgetExceeded(summary["stopped_early"], result)
    return result


def _every_row_done(inputs: JobInputs, done: set[str]) -> bool:
    """True when the store holds an `ok` result for every input row (bad rows aside)."""
    return bool(done) and all(row.id in done for row in inputs.rows() if not isinstance(row, BadRow))


async def _no_row_left(row: PromptRow) -> dict[str, Any]:
    raise AssertionError(f"row {row.id!r} reached the chain although every row was finished")


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


#: summary keys holding a per-principle table (`cai.stats.principles`), printed as tables of their own
TABLES = {"per_principle": "per principle", "principles_alone": "each principle alone",
          "coverage_per_principle": "prompts per principle"}


def print_principle_table(console: Console, data: dict[str, Any], what: str) -> None:
    headers, rows = display_rows(data)
    if not rows:
        return
    table = Table(title=f"{what} ({data.get('denominator', '')})", title_justify="left")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*[escape(cell) for cell in row])
    console.print(table)


def shown(value: Any) -> str:
    """A summary value as printed: counts with thousands separators, anything else as it is."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def summary_cell(value: dict[str, Any]) -> str:
    """A nested summary entry, one `key: value` line each; a dict of counts inside it lists its
    non-zero counts only ("none" when all are zero)."""
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            item = ", ".join(f"{k} {shown(v)}" for k, v in item.items() if v != 0) or "none"
        lines.append(f"{key.replace('_', ' ')}: {shown(item)}")
    return "\n".join(lines)


def print_summary(console: Console, summary: dict[str, Any], run: RunDir) -> None:
    table = Table(title=f"{summary['command']} → {run.path}", show_header=False)
    for key, value in summary.items():
        if key in ("command", "failure_reasons", "files", "engine_stats", "stopped_early", "advice", *TABLES):
            continue
        if isinstance(value, dict):
            if value:
                table.add_row(key.replace("_", " "), escape(summary_cell(value)))
            continue
        table.add_row(key.replace("_", " "), shown(value))
    for name, count in summary["files"].items():
        table.add_row(f"wrote {name}", f"{count:,} rows")
    for reason, count in sorted(summary["failure_reasons"].items(), key=lambda kv: -kv[1])[:10]:
        table.add_row(f"[red]failed: {reason}", str(count))
    console.print(table)
    for key, what in TABLES.items():
        if summary.get(key):
            print_principle_table(console, summary[key], what)
    for line in summary.get("advice", []):
        console.print(f"[yellow]what to change:[/] {escape(line)}", highlight=False, soft_wrap=True)
