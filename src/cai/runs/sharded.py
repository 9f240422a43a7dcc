"""Whole-dataset jobs on a Ray cluster: shard the prompt file, run each shard, merge the shards.

For a prompt file too large for one machine's engines, `run_sharded(run_sl, config, ...)`
runs a command's run function (`run_sl` or `run_rl`, handed in: this module imports no
command, and Ray pickles a module-level function by reference) as N independent jobs,
one per shard, scheduled over the cluster by Ray Data,
then merges them into one ordinary run directory:

1. **Shard.** The driver reads the prompt file once, as `cai` does (`cai.inputs.prompts.read_prompts`:
   the same row ids, the same checks), and writes `<out>/shards/<i>/prompts.jsonl`,
   contiguous slices of the input, each row with its id and resolved messages.
2. **Run.** `ray.data.from_items` holds one item per shard and `Dataset.map` runs the job
   on each item, in a Ray task with the resources asked for (`num_cpus`, `num_gpus`), into
   its own run directory `<out>/shards/<i>` with its own store. Each shard task loads the
   model once and runs the job's chains locally, with the engine's own batching.
3. **Merge.** Every shard's store (its cached calls and its rows, at their place in the
   whole file) is copied into `<out>/store.sqlite`. Then the job runs once more on the
   whole file in `<out>` (in a Ray task with the same resources): every finished row is
   skipped, a row that failed in its shard is tried again (its finished calls come from
   the store), and the outputs, failures.jsonl, manifest and summary are written as by any
   run. `summary.json` gains `ray_data`: each shard's row counts, calls and time.

The result is a run directory like any other: `cai export` reads it, and re-running the
same `cai` command on it (or `run_sharded` again: each shard resumes from its own store)
resumes it. Every path must be on storage that every node sees (a shared file system).

Why not `ray.data.llm`: its vLLM processor serves one generation per row, which fits the
RL candidate stage but not SL's answer -> critique -> revision chain (each step needs the
previous one's text) nor the labellers' log-prob scoring, and it would bypass the store
that makes runs resumable. The `ray:` engine (`cai.engines.ray_engine`) is the other way
to use a cluster: one job, the chains on the driver, model replicas on the cluster.

Not here: splitting a run that is already under way (shard once, then resume), and
readers other than `read_prompts` (Ray Data's own readers would give other row ids).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cai.core.errors import CAIError, ConfigError
from cai.inputs.files import InputError
from cai.inputs.prompts import BadRow, read_prompts
from cai.runs.run_dir import RunDir


class RunFunction(Protocol):
    """A command's run function, as `run_sl` and `run_rl` are: a config in, a result with `.summary` out."""

    def __call__(self, config: Any, *, show_progress: bool = ...) -> Any: ...


#: options that `run_sharded` sets for each shard's job; the rest are the caller's
SHARD_OPTIONS = ("prompts", "out", "prompt_field", "hh_mode", "limit", "on_bad_input")


class ShardsStopped(CAIError):
    """Some shards stopped (their failure budget, a bad option); the others are kept and resume."""

    exit_code = 3


class FlatConfig(Protocol):
    """An `SLConfig` or `RLConfig`: option groups, read as flat names and built from them with `.of`."""

    def flat(self) -> dict[str, Any]: ...

    @classmethod
    def of(cls, **values: Any) -> Any: ...


@dataclass
class ShardPlan:
    """Where each shard's prompts and run directory are, and where each row sits in the file."""

    shards: list[Path]
    rows_per_shard: list[int]
    position: dict[str, tuple[int, str]]  # row id -> (index in the whole file, its source file:line)
    bad_rows: int


@dataclass
class ShardedRun:
    out: Path
    plan: ShardPlan
    shard_summaries: list[dict[str, Any]]
    summary: dict[str, Any]


def write_shards(values: dict[str, Any], shards: int, folder: Path) -> ShardPlan:
    """Read the prompt file as `cai` would and write it as `shards` contiguous slices.

    Bad rows stop here with their file:line (`on_bad_input="error"`) or are left out of
    every shard (`"skip"`: the merge pass records them, as a local run does).
    """
    if shards < 1:
        raise ConfigError(f"shards must be at least 1; got {shards}")
    rows, position, bad = [], {}, 0
    for row in read_prompts(values["prompts"], prompt_field=values.get("prompt_field", "auto"),
                            hh_mode=values.get("hh_mode", "first"), limit=values.get("limit")):
        if isinstance(row, BadRow):
            if values.get("on_bad_input", "error") == "error":
                raise InputError(f"{row.source}: {row.reason}")
            bad += 1
            continue
        position[row.id] = (len(rows) + bad, row.source)
        rows.append({**row.extra, "id": row.id, "messages": row.messages})
    size = max(1, -(-len(rows) // shards))  # ceil: every shard but the last holds `size` rows
    paths, counts = [], []
    for i in range(shards):
        part = rows[i * size:(i + 1) * size]
        if not part:
            break
        shard = folder / f"{i:04d}"
        shard.mkdir(parents=True, exist_ok=True)
        with (shard / "prompts.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        paths.append(shard)
        counts.append(len(part))
    return ShardPlan(paths, counts, position, bad)


def run_shard(run: RunFunction, config_cls: type[FlatConfig], values: dict[str, Any], shard: Path) -> dict[str, Any]:
    """Run the job on one shard into its own run directory; its summary, or the error that stopped it."""
    config = config_cls.of(**{**values, "prompts": str(shard / "prompts.jsonl"), "out": str(shard),
                              "prompt_field": "messages", "hh_mode": "context", "limit": None,
                              "on_bad_input": "error"})
    try:
        return {"summary": run(config, show_progress=False).summary}
    except CAIError as exc:  # the shard's own failure budget, a bad option...: reported with its shard
        return {"error": f"{type(exc).__name__}: {exc}", "summary": getattr(getattr(exc, "result", None),
                                                                            "summary", None)}


def merge_shards(out: Path, plan: ShardPlan) -> int:
    """Copy every shard's calls and rows into `<out>/store.sqlite`; rows keep their place in the file."""
    merged = 0
    with RunDir(out) as run:
        conn = run.store.conn
        for shard in plan.shards:
            conn.execute("ATTACH DATABASE ? AS shard", (str(shard / "store.sqlite"),))
            try:
                conn.execute("BEGIN")
                conn.execute("INSERT OR IGNORE INTO main.calls SELECT * FROM shard.calls")
                for stage, row_id, status, record in conn.execute(
                        "SELECT stage, row_id, status, record FROM shard.results").fetchall():
                    index, source = plan.position[row_id]
                    data = json.loads(record)
                    if "source" in data:
                        data["source"] = source  # the line in the user's file, not in the shard's
                    run.store.put_result(stage, row_id, index, status, data)
                    merged += 1
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.execute("DETACH DATABASE shard")
    return merged


def run_sharded(run: RunFunction, config: FlatConfig, *, shards: int, num_cpus: float = 1.0,
                num_gpus: float = 0.0, concurrency: int | None = None) -> ShardedRun:
    """Run `run(config)` (`run_sl` with an `SLConfig`, `run_rl` with an `RLConfig`) in `shards` shards on Ray.

    Each shard's config is `type(config).of(...)` of the caller's options with that shard's
    prompts and run directory.

    `num_cpus` / `num_gpus` are what each shard task (and the merge pass) reserves;
    `concurrency` caps the shards running at once (default: as many as the cluster fits).
    Connects to the cluster as `ray.init()` does (RAY_ADDRESS, a local `ray start`
    cluster, or a new local one).
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError("the Ray Data recipe needs Ray: pip install 'constitutional-ai[ray]'") from exc
    values = config.flat()
    out = Path(values["out"])
    plan = write_shards(values, shards, out / "shards")
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init()
    try:
        return _run_on_ray(ray, run, type(config), values, out, plan, num_cpus, num_gpus, concurrency)
    finally:
        if started_ray:
            ray.shutdown()


def _run_on_ray(ray: Any, run: RunFunction, config_cls: type[FlatConfig], values: dict[str, Any], out: Path,
                plan: ShardPlan, num_cpus: float, num_gpus: float, concurrency: int | None) -> ShardedRun:
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    items = [{"shard": str(path)} for path in plan.shards]
    job_values = {k: v for k, v in values.items() if k not in SHARD_OPTIONS}
    done = (ray.data.from_items(items, override_num_blocks=len(items))
            .map(lambda item: {"shard": item["shard"],
                               "result": json.dumps(run_shard(run, config_cls, job_values, Path(item["shard"])),
                                                    default=str)},
                 num_cpus=num_cpus, num_gpus=num_gpus, concurrency=concurrency)
            .take_all())
    results = {item["shard"]: json.loads(item["result"]) for item in done}
    shard_summaries = [results[str(path)] for path in plan.shards]
    errors = [f"shard {path.name}: {r['error']}" for path, r in zip(plan.shards, shard_summaries) if "error" in r]
    if errors:  # the shards that ran are kept; running this again resumes each shard from its store
        raise ShardsStopped("some shards stopped, so nothing was merged (run again to resume each shard from its "
                            "store): " + "; ".join(errors))
    shards_s = time.perf_counter() - started
    merge_shards(out, plan)
    final = ray.get(ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_merge_pass).remote(run, config_cls, values))
    summary = {**final, "ray_data": {
        "shards": len(plan.shards), "rows_per_shard": plan.rows_per_shard, "bad_input_rows_left_out": plan.bad_rows,
        "shards_elapsed_s": round(shards_s, 2),
        "engine_calls_made_in_shards": sum((r["summary"] or {}).get("engine_calls_made", 0) for r in shard_summaries),
        "per_shard": [{k: (r["summary"] or {}).get(k) for k in ("rows_ok_this_run", "rows_failed_this_run",
                                                                "rows_already_done", "engine_calls_made",
                                                                "generated_tokens", "elapsed_s")}
                      for r in shard_summaries]}}
    with RunDir(out) as run_dir:
        run_dir.write_json("summary.json", summary)
    return ShardedRun(out, plan, shard_summaries, summary)


def _merge_pass(run: RunFunction, config_cls: type[FlatConfig], values: dict[str, Any]) -> dict[str, Any]:
    """The job once more on the whole file in `out`: writes the outputs from the merged store."""
    return json.loads(json.dumps(run(config_cls.of(**values), show_progress=False).summary, default=str))


__all__ = ["ShardPlan", "ShardedRun", "ShardsStopped", "merge_shards", "run_shard", "run_sharded", "write_shards"]
