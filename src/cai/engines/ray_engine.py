"""`ray:<inner spec>`: N replicas of any engine as Ray actors on a cluster.

`ray:smollm2`, `ray:hf:/models/judge`, `ray:vllm:Qwen/Qwen2.5-7B-Instruct`, `ray:openai:...`:
each replica is one Ray actor that builds the inner engine once (weights loaded once per
replica, again only when Ray restarts it) and answers requests with the inner engine's own
batching. Everything else stays on the driver, this process: the chains, the run's store
(`cai.runs.store.CachedEngine` wraps this engine like any other, and the cache keys use the
inner engine's identity, so a run started locally resumes on Ray and back when the
replicas run the same dtype and prompt format; replicas that differ are refused), the outputs
and the failure accounting.

- **Connecting.** `-E address=...`, else `RAY_ADDRESS`, else the latest cluster started on
  this machine with `ray start`, else a local cluster started for this run (and stopped
  when the engine closes).
- **Resources.** Each replica asks `num_cpus` and `num_gpus`; with `placement_strategy`
  (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD) the replicas' resources are reserved as one
  placement group, one bundle per replica (a bundle always sits on one node, so a
  tensor-parallel vLLM replica with `num_gpus=TP` gets its GPUs on one node).
- **Dispatch.** Requests that arrive within `batch_wait_ms` of each other are sent
  together, each batch to the replica with the fewest requests in flight, split evenly
  over the replicas that are up, at most `max_batch_requests` per batch and
  `max_in_flight_per_replica` per replica. `score` goes the same way. Inside a replica
  every request is its own call of the inner engine, so the inner batcher groups them
  and one bad request (a prompt over the context window) fails only its own row.
- **Failures.** Ray restarts a dead replica (kill -9, lost node) up to `max_restarts`
  times. Its requests in flight are sent again to the replicas that are up (each request
  at most `max_request_retries` times; then its row fails with `engine_error`); the
  replica takes work again once it has restarted and reloaded its model. When every
  replica is gone for good, the waiting rows fail with `engine_error` and a re-run
  resumes. Nothing is answered twice: each request has one future on the driver, set
  once. `stats` counts restarts, deaths, retried requests and requests per replica.
- **Model files.** A GGUF (the embedded `smollm2` included) is converted into the cache
  folder (`cai.engines.models`) under a file lock, so replicas on one machine convert it
  once and the others load the converted folder. `CAI_CACHE_DIR`, where set on the
  driver, is passed to the replicas.

Inner engine options go in the same `-E key=value` list: every option that is not one
of `RayOptions`' own is handed to the inner engine, which validates it in each replica
(an unknown one stops the run before any model call, as it would locally).

Not here: Ray Data whole-dataset sharding (`cai.runs.sharded`), autoscaling (Ray's own), and
request timeouts (a replica that hangs without dying holds its requests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import pickle
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from cai.core.errors import CAIError
from cai.core.types import Completion, Message, Request
from cai.engines.base import Engine, EngineError, EngineOptions, load_engine, parse_spec, register_engine

NAMESPACE = "cai"  # replicas are named actors here: `ray list actors` shows them


class RayOptions(EngineOptions):
    """The `ray:` engine's own options; any other option goes to the inner engine."""

    model_config = ConfigDict(extra="allow")

    replicas: int = Field(2, ge=1, description="Replicas of the inner engine (Ray actors).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each replica (the tensor-parallel "
                                                   "size for a tensor-parallel vLLM replica).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = Field(
        None, description="Reserve every replica's resources as one placement group with this strategy; "
                          "none: Ray places each replica on its own.")
    max_restarts: int = Field(3, ge=-1, description="Times Ray restarts a replica that died (-1: always).")
    max_request_retries: int = Field(3, ge=0, description="Times one request is sent again after the replica "
                                                         "holding it died; then its row fails (engine_error).")
    max_batch_requests: int = Field(64, ge=1, description="Requests sent to a replica in one call.")
    max_in_flight_per_replica: int = Field(256, ge=1, description="Requests one replica may hold at once; more "
                                                                  "wait on the driver.")
    batch_wait_ms: float = Field(2.0, ge=0, description="How long the driver gathers requests before sending.")
    address: str | None = Field(None, description="Ray cluster address; default: RAY_ADDRESS, else the latest "
                                                  "local `ray start` cluster, else a new local cluster.")
    start_timeout_s: float = Field(900.0, gt=0, description="How long replicas may take to start and load "
                                                            "their model.")
    restart_timeout_s: float = Field(900.0, gt=0, description="How long a dead replica may take to come back "
                                                              "before it is given up.")

    @model_validator(mode="after")
    def _bundles_need_resources(self) -> RayOptions:
        if self.placement_strategy and not (self.num_cpus or self.num_gpus):
            raise ValueError("placement_strategy needs num_cpus or num_gpus > 0 (a bundle must hold something)")
        return self

    def inner(self) -> dict[str, Any]:
        """The options meant for the inner engine."""
        return dict(self.model_extra or {})


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise EngineError("the ray: engine needs Ray: pip install 'constitutional-ai[ray]'") from exc
    return ray


# ---- the replica: runs inside a Ray actor ------------------------------------------------
def prepare_model_files(spec: str, options: dict[str, Any]) -> bool:
    """Convert the inner engine's GGUF (and its tokenizer's) once per machine; True if this call did.

    A file lock in the cache folder makes concurrent replicas wait for the first one's
    conversion instead of each converting (and racing to rename) the same folder.
    """
    from filelock import FileLock

    from cai.engines.models import cache_dir, resolve_model_path

    prefix, ref = parse_spec(spec)
    refs = [ref] if prefix in ("hf", "vllm") else []
    if isinstance(options.get("tokenizer"), str):
        refs.append(options["tokenizer"])
    if not refs:
        return False
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / ".convert.lock")):
        before = set(os.listdir(models))
        for one in refs:
            resolve_model_path(one)
        return bool(set(os.listdir(models)) - before)


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (so the driver gets the same class), else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class Replica:
    """One replica: the inner engine, built once when Ray starts (or restarts) this actor."""

    def __init__(self, spec: str, options: dict[str, Any]) -> None:
        started = time.perf_counter()
        self.incarnation = uuid.uuid4().hex
        self.engine: Engine | None = None
        self.error: tuple[BaseException, str] | None = None
        self.converted = False
        try:
            self.converted = prepare_model_files(spec, options)
            self.engine = load_engine(spec, options)
        except Exception as exc:  # noqa: BLE001 - handed to the driver by ready(), raised there
            self.error = (_portable(exc), traceback.format_exc())
        self.load_s = round(time.perf_counter() - started, 3)

    async def ready(self) -> dict[str, Any]:
        import ray

        info: dict[str, Any] = {"incarnation": self.incarnation, "pid": os.getpid(),
                                "node": ray.get_runtime_context().get_node_id(), "error": self.error,
                                "converted": self.converted, "load_s": self.load_s}
        if self.engine is not None:
            info.update(model_id=self.engine.model_id, context_window=self.engine.context_window(),
                        describe=self.engine.describe(), prompt_format=getattr(self.engine, "prompt_format", "chat"),
                        cache_identity=self.engine.cache_identity())
        return info

    async def run(self, items: list[tuple[str, Any]]) -> tuple[str, int, list[tuple[bool, Any, str]]]:
        """(incarnation, pid, answers): each item is its own call of the inner engine, answered
        (True, answer, "") or (False, error, traceback)."""
        outcomes = await asyncio.gather(*(self._one(kind, payload) for kind, payload in items),
                                        return_exceptions=True)
        return self.incarnation, os.getpid(), [(False, _portable(o), "".join(traceback.format_exception(o)))
                                  if isinstance(o, BaseException) else (True, o, "") for o in outcomes]

    async def _one(self, kind: str, payload: Any) -> Any:
        assert self.engine is not None
        if kind == "generate":
            return (await self.engine.generate([payload]))[0]
        if kind == "token_ids":
            return await self.engine.token_ids(payload)
        messages, continuations = payload
        return await self.engine.score(messages, continuations)

    async def stats(self) -> dict[str, Any]:
        return dict(getattr(self.engine, "stats", None) or {})

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.aclose()


# ---- the driver ---------------------------------------------------------------------------
@dataclass
class _Item:
    kind: Literal["generate", "score", "token_ids"]
    payload: Any
    future: asyncio.Future
    tries: int = 0  # replicas that died holding it


@dataclass
class _ReplicaState:
    index: int
    handle: Any
    incarnation: str
    pid: int
    state: Literal["up", "restarting", "dead"] = "up"
    in_flight: int = 0
    answered: int = 0
    restarts: int = 0


@dataclass
class _Cluster:
    """This process's Ray connection: whether we started it, and how many engines use it."""

    started_here: bool = False
    users: int = 0


_CLUSTER = _Cluster()


class RayEngine(Engine):
    Options = RayOptions

    def __init__(self, rest: str, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        self.spec = rest
        if not rest:
            raise EngineError("ray: needs the engine to replicate, e.g. ray:smollm2 or ray:vllm:<model>")
        if parse_spec(rest)[0] == "ray":
            raise EngineError(f"ray:{rest}: a ray: engine inside a ray: engine is not supported")
        self._ray = _import_ray()
        self.replicas: list[_ReplicaState] = []
        self._pending: list[_Item] = []
        self._tasks: set[asyncio.Task] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._placement_group: Any = None
        self._closed = False
        self.stats: dict[str, Any] = {
            "replicas": self.options.replicas, "replicas_up": 0, "restarts": 0, "replica_deaths": 0,
            "replicas_lost": 0, "requests": 0, "requests_retried": 0, "requests_given_up": 0, "dispatches": 0,
            "requests_by_replica": [0] * self.options.replicas, "max_requests_in_flight": 0,
            "gguf_conversions": 0, "replica_load_s": [], "replica_pids": [],
        }
        self._connect()
        try:
            self._start_replicas()
        except BaseException:
            self._teardown()
            raise

    # ---- starting ---------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.options.address, logging_level=logging.WARNING)
            _CLUSTER.started_here = True
        _CLUSTER.users += 1
        self.address = ray.get_runtime_context().gcs_address

    def _start_replicas(self) -> None:
        ray, o = self._ray, self.options
        actor = ray.remote(Replica)
        env = {k: os.environ[k] for k in ("CAI_CACHE_DIR",) if os.environ.get(k)}
        common: dict[str, Any] = {"num_cpus": o.num_cpus, "num_gpus": o.num_gpus, "max_restarts": o.max_restarts,
                                  "max_task_retries": 0, "namespace": NAMESPACE, "max_concurrency": 10_000}
        if env:
            common["runtime_env"] = {"env_vars": env}
        if o.placement_strategy:
            from ray.util.placement_group import placement_group
            bundle = {k: v for k, v in (("CPU", o.num_cpus), ("GPU", o.num_gpus)) if v}
            self._placement_group = placement_group([bundle] * o.replicas, strategy=o.placement_strategy)
        token = uuid.uuid4().hex[:8]
        for i in range(o.replicas):
            extra: dict[str, Any] = {}
            if self._placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
                extra["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=self._placement_group, placement_group_bundle_index=i)
            handle = actor.options(name=f"cai-replica-{token}-{i}", **common, **extra).remote(self.spec, o.inner())
            self.replicas.append(_ReplicaState(i, handle, "", 0))
        try:
            infos = ray.get([r.handle.ready.remote() for r in self.replicas], timeout=o.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EngineError(
                f"ray:{self.spec}: {o.replicas} replicas did not start within {o.start_timeout_s:g} s; each asks "
                f"num_cpus={o.num_cpus:g} num_gpus={o.num_gpus:g}, and the cluster at {self.address} has "
                f"{ray.cluster_resources()} (-E replicas / num_cpus / num_gpus, or -E start_timeout_s)") from None
        except ray.exceptions.RayActorError as exc:
            raise EngineError(f"ray:{self.spec}: a replica died while starting: {exc}") from exc
        for info in infos:
            if info["error"] is not None:
                error, remote_tb = info["error"]
                if not isinstance(error, CAIError):
                    _add_note(error, f"raised in a ray:{self.spec} replica while it started:\n{remote_tb}")
                raise error
        for replica, info in zip(self.replicas, infos):
            replica.incarnation, replica.pid = info["incarnation"], info["pid"]
        self.model_id = infos[0]["model_id"]  # the inner engine's: cached calls are shared with local runs
        self.prompt_format = infos[0]["prompt_format"]
        identities = {json.dumps(info["cache_identity"], sort_keys=True) for info in infos}
        if len(identities) > 1:  # e.g. dtype=auto on a GPU node and a CPU node
            raise EngineError(f"ray:{self.spec}: the replicas would compute different answers "
                              f"({', '.join(sorted(identities))}); pin them with -E dtype=... (and -E num_gpus=...) "
                              "so that every replica is the same")
        self._cache_identity = infos[0]["cache_identity"]
        self._context_window = infos[0]["context_window"]
        self._inner_describe = infos[0]["describe"]
        self.stats["replicas_up"] = len(self.replicas)
        self.stats["gguf_conversions"] = sum(bool(info["converted"]) for info in infos)
        self.stats["replica_load_s"] = [info["load_s"] for info in infos]
        self.stats["replica_pids"] = [info["pid"] for info in infos]

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"engine": type(self).__name__, "model_id": self.model_id, "inner": self.spec,
                "inner_engine": self._inner_describe, "replicas": o.replicas, "num_cpus": o.num_cpus,
                "num_gpus": o.num_gpus, "placement_strategy": o.placement_strategy, "max_restarts": o.max_restarts,
                "ray_address": self.address, "ray_version": self._ray.__version__}

    def cache_identity(self) -> dict[str, str]:
        return dict(self._cache_identity)

    def context_window(self) -> int | None:
        return self._context_window

    # ---- the engine interface ---------------------------------------------------------
    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        return await self._submit([("generate", request) for request in requests])

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        return (await self._submit([("score", (list(messages), list(continuations)))]))[0]

    async def token_ids(self, text: str) -> list[int]:
        """Asked of a replica: the inner engine's tokenizer lives there."""
        return (await self._submit([("token_ids", text)]))[0]

    async def _submit(self, work: list[tuple[str, Any]]) -> list[Any]:
        loop = self._bind_loop()
        items = [_Item(kind, payload, loop.create_future()) for kind, payload in work]  # type: ignore[arg-type]
        self._pending.extend(items)
        if self._closed or all(r.state == "dead" for r in self.replicas):
            self._fail_pending()
        self._schedule_flush(self.options.batch_wait_ms / 1000)
        answers = await asyncio.gather(*(it.future for it in items), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return list(answers)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a second asyncio.run): nothing of the old one is alive
            self._loop, self._pending, self._tasks, self._flush_handle = loop, [], set(), None
            for replica in self.replicas:
                replica.in_flight = 0
                if replica.state == "restarting":  # its watcher went with the old loop
                    self._spawn(self._await_restart(replica))
        return loop

    # ---- dispatch ---------------------------------------------------------------------
    def _schedule_flush(self, delay: float) -> None:
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        """Send what waits, in batches, each to the least-loaded replica that is up."""
        self._flush_handle = None
        self._pending = [it for it in self._pending if not it.future.done()]  # rows cancelled meanwhile
        cap = self.options.max_in_flight_per_replica
        while self._pending:
            up = [r for r in self.replicas if r.state == "up" and r.in_flight < cap]
            if not up:
                return  # an answer or a restart flushes again
            replica = min(up, key=lambda r: r.in_flight)
            size = min(self.options.max_batch_requests, cap - replica.in_flight, math.ceil(len(self._pending) / len(up)))
            batch, self._pending = self._pending[:size], self._pending[size:]
            replica.in_flight += len(batch)
            self._spawn(self._send(replica, batch))
        in_flight = sum(r.in_flight for r in self.replicas)
        self.stats["max_requests_in_flight"] = max(self.stats["max_requests_in_flight"], in_flight)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, replica: _ReplicaState, batch: list[_Item]) -> None:
        ray = self._ray
        self.stats["dispatches"] += 1
        try:
            incarnation, pid, outcomes = await replica.handle.run.remote([(it.kind, it.payload) for it in batch])
        except ray.exceptions.RayActorError:  # the replica died (or is unreachable) holding the batch
            replica.in_flight -= len(batch)
            self._replica_down(replica)
            self._retry(batch)
            return
        except ray.exceptions.ObjectLostError:  # answered, but its node went before the answer came back
            replica.in_flight -= len(batch)
            self._retry(batch)
            return
        except asyncio.CancelledError:  # the engine is closing
            replica.in_flight -= len(batch)
            for it in batch:
                it.future.cancel()
            raise
        except Exception as exc:  # a bug: every caller of the batch hears of it
            replica.in_flight -= len(batch)
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        replica.in_flight -= len(batch)
        if incarnation != replica.incarnation and replica.state == "up":  # it died and came back unseen
            self.stats["replica_deaths"] += 1
            self._restarted(replica, incarnation, pid, converted=False)
        replica.answered += len(batch)
        self.stats["requests"] += len(batch)
        self.stats["requests_by_replica"][replica.index] += len(batch)
        for it, (ok, value, remote_tb) in zip(batch, outcomes, strict=True):
            if it.future.done():
                continue
            if ok:
                it.future.set_result(value)
            else:
                if not isinstance(value, EngineError):  # a bug in the replica: keep where it happened
                    _add_note(value, f"raised in ray:{self.spec} replica {replica.index} (pid {replica.pid}):\n"
                                     f"{remote_tb}")
                it.future.set_exception(value)
        self._schedule_flush(0)

    def _retry(self, batch: list[_Item]) -> None:
        """Send a dead replica's requests again, first in line; give up on one after its retries."""
        again = []
        for it in batch:
            if it.future.done():
                continue
            it.tries += 1
            if it.tries > self.options.max_request_retries:
                self.stats["requests_given_up"] += 1
                it.future.set_exception(EngineError(
                    f"ray:{self.spec}: the replica answering this request died {it.tries} times; given up "
                    f"(-E max_request_retries={self.options.max_request_retries})"))
            else:
                again.append(it)
        self.stats["requests_retried"] += len(again)
        self._pending = again + self._pending
        if all(r.state == "dead" for r in self.replicas):
            self._fail_pending()
        self._schedule_flush(0)

    # ---- replicas that die --------------------------------------------------------------
    def _replica_down(self, replica: _ReplicaState) -> None:
        if replica.state != "up":
            return
        replica.state = "restarting"
        self.stats["replica_deaths"] += 1
        self.stats["replicas_up"] -= 1
        self._spawn(self._await_restart(replica))

    async def _await_restart(self, replica: _ReplicaState) -> None:
        """Wait until Ray has restarted the replica (it reloads its model), or it is gone for good."""
        ray = self._ray
        try:
            ping = replica.handle.ready.options(max_task_retries=-1).remote()  # waits while Ray restarts it
            info = await asyncio.wait_for(asyncio.wrap_future(ping.future()), self.options.restart_timeout_s)
        except (ray.exceptions.RayActorError, asyncio.TimeoutError):
            info = None
        if info is None or info["error"] is not None or self._closed:
            self._replica_lost(replica)
            return
        self.stats["replicas_up"] += 1
        replica.state = "up"
        self._restarted(replica, info["incarnation"], info["pid"], converted=info["converted"])
        self._schedule_flush(0)

    def _restarted(self, replica: _ReplicaState, incarnation: str, pid: int, *, converted: bool) -> None:
        """Count a restart once, whether the watcher or an answer from the new incarnation saw it first."""
        if incarnation == replica.incarnation:
            return
        replica.incarnation, replica.pid = incarnation, pid
        replica.restarts += 1
        self.stats["restarts"] += 1
        self.stats["gguf_conversions"] += int(converted)
        self.stats["replica_pids"][replica.index] = pid

    def _replica_lost(self, replica: _ReplicaState) -> None:
        replica.state = "dead"
        self.stats["replicas_lost"] += 1
        try:
            self._ray.kill(replica.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - it is already gone
            pass
        if all(r.state == "dead" for r in self.replicas):
            self._fail_pending()
        else:
            self._schedule_flush(0)

    def _fail_pending(self) -> None:
        why = ("the engine was closed" if self._closed else
               f"every replica died and Ray restarts them no more (-E max_restarts={self.options.max_restarts}); "
               "everything finished is in the run's store, re-run to resume")
        for it in self._pending:
            if not it.future.done():
                it.future.set_exception(EngineError(f"ray:{self.spec}: {why}"))
        self._pending = []

    # ---- closing ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Collect each replica's own stats, close and kill the replicas, leave Ray if we started it."""
        if self._closed:
            return
        self._closed = True
        self._fail_pending()
        live = [r for r in self.replicas if r.state == "up"]
        outcomes = await asyncio.gather(*(r.handle.stats.remote() for r in live), return_exceptions=True)
        self.stats["replica_engine_stats"] = {str(r.index): s for r, s in zip(live, outcomes)
                                              if not isinstance(s, BaseException)}
        await asyncio.gather(*(r.handle.close.remote() for r in live), return_exceptions=True)
        mine = [t for t in self._tasks if t.get_loop() is asyncio.get_running_loop()]
        for task in mine:
            task.cancel()
        await asyncio.gather(*mine, return_exceptions=True)
        self._teardown()

    def _teardown(self) -> None:
        ray = self._ray
        for replica in self.replicas:
            try:
                ray.kill(replica.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._placement_group is not None:
            from ray.util.placement_group import remove_placement_group
            remove_placement_group(self._placement_group)
            self._placement_group = None
        for replica in self.replicas:
            replica.state = "dead"
        _CLUSTER.users -= 1
        if _CLUSTER.users == 0 and _CLUSTER.started_here:
            ray.shutdown()
            _CLUSTER.started_here = False


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)


register_engine("ray", RayEngine)
