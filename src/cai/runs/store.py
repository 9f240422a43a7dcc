"""The run's memory: a SQLite (WAL) file that makes every run resumable.

Two tables:
- `calls`: every engine call, keyed by a hash of the engine's identity (the model id,
  and what else changes its answers: a plain prompt format, the dtype), the kind of
  call, the messages and the sampling parameters. `CachedEngine` wraps any engine and answers from
  here first, so a re-run never recomputes a finished call.
- `results`: one record per (stage, row id) with status `ok` or `failed`. A re-run skips
  rows that are `ok` and retries failed ones (their finished calls replay from `calls`).
  Output files are written from this table, so a killed run never leaves duplicates.

SQLite in WAL mode keeps every committed call and row through a `kill -9` (the next
open replays or discards the log). Whatever SQLite reports as wrong with the file (not a
database, malformed, disk full, read-only) becomes a `StoreError` that names the file
and what to do; a store that fails SQLite's quick check on open is never reused.

Not here: what a record contains (the pipelines decide), file formats and the run's
lock (`cai.runs.run_dir`).
"""

from __future__ import annotations

import errno
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cai.core.errors import CAIError
from cai.core.types import Completion, Message, Request, stable_hash
from cai.engines.base import Engine

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL,
    request TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    stage TEXT NOT NULL, row_id TEXT NOT NULL, idx INTEGER NOT NULL, status TEXT NOT NULL,
    record TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (stage, row_id));
"""


class StoreError(CAIError, RuntimeError):
    """The run directory or its store cannot be used (corrupt, locked, full, read-only)."""


def explain(path: Path, exc: BaseException) -> str:
    """One line naming the file, what went wrong and what to do about it."""
    text = str(exc)
    lowered = text.lower()
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "disk is full" in lowered or "no space" in lowered:
        return (f"{path}: disk full ({text}); everything finished so far is kept. "
                "Free some space, then re-run the same command to resume.")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in lowered or "unable to open" in lowered:
        return f"{path}: cannot write here ({text}); cai needs a writable --out to record progress."
    if "malformed" in lowered or "not a database" in lowered:
        return (f"{path}: the store is corrupt ({text}); it will not be reused. Move it aside to start "
                "this run again from nothing (its cached calls are lost), or restore it from a backup.")
    return f"{path}: {text}"


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(explain(self.path, exc)) from exc
        try:
            with self._errors():
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                problems = [r[0] for r in self.conn.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError("database disk image is malformed: " + "; ".join(problems))
                self.conn.executescript(_SCHEMA)
        except StoreError:
            self.conn.close()
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's errors into a StoreError that names this store."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(explain(self.path, exc)) from exc

    def close(self) -> None:
        self.conn.close()

    # ---- calls ---------------------------------------------------------------------
    def get_call(self, key: str) -> Any | None:
        with self._errors():
            row = self.conn.execute("SELECT response FROM calls WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_call(self, key: str, kind: str, model: str, request: Any, response: Any) -> None:
        with self._errors():
            self.conn.execute(
                "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?)",
                (key, kind, model, json.dumps(request, ensure_ascii=False),
                 json.dumps(response, ensure_ascii=False), time.time()),
            )

    def count_calls(self, kind: str | None = None) -> int:
        with self._errors():
            if kind is None:
                return self.conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
            return self.conn.execute("SELECT COUNT(*) FROM calls WHERE kind=?", (kind,)).fetchone()[0]

    # ---- results -------------------------------------------------------------------
    def put_result(self, stage: str, row_id: str, idx: int, status: str, record: dict[str, Any]) -> None:
        with self._errors():
            self.conn.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?)",
                (stage, row_id, idx, status, json.dumps(record, ensure_ascii=False), time.time()),
            )

    def done_ids(self, stage: str) -> set[str]:
        with self._errors():
            rows = self.conn.execute("SELECT row_id FROM results WHERE stage=? AND status='ok'", (stage,))
            return {r[0] for r in rows}

    def entries(self, stage: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(status, record) for every row of a stage, in input order."""
        with self._errors():
            for status, record in self.conn.execute(
                    "SELECT status, record FROM results WHERE stage=? ORDER BY idx", (stage,)):
                yield status, json.loads(record)

    def results(self, stage: str, status: str | None = None) -> Iterator[dict[str, Any]]:
        sql, args = "SELECT record FROM results WHERE stage=?", [stage]
        if status:
            sql += " AND status=?"
            args.append(status)
        with self._errors():
            for (record,) in self.conn.execute(sql + " ORDER BY idx", args):
                yield json.loads(record)

    def count_results(self, stage: str, status: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM results WHERE stage=?", [stage]
        if status:
            sql += " AND status=?"
            args.append(status)
        with self._errors():
            return self.conn.execute(sql, args).fetchone()[0]


class CachedEngine(Engine):
    """Wraps an engine: answers from the store, records every new answer."""

    def __init__(self, engine: Engine, store: Store) -> None:
        self.inner = engine
        self.store = store
        self.model_id = engine.model_id
        self.prompt_format = getattr(engine, "prompt_format", "chat")
        self.identity = engine.cache_identity()
        self.stats = {"calls_made": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def cache_identity(self) -> dict[str, str]:
        return self.inner.cache_identity()

    def _key(self, kind: str, payload: dict[str, Any]) -> str:
        return stable_hash({**self.identity, "kind": kind, **payload})

    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        keys = [self._key("generate", r.to_dict()) for r in requests]
        answers: list[list[Completion] | None] = []
        for key in keys:
            cached = self.store.get_call(key)
            answers.append([Completion.from_dict(c) for c in cached] if cached is not None else None)
        missing = [i for i, a in enumerate(answers) if a is None]
        self.stats["cache_hits"] += len(requests) - len(missing)
        if missing:
            fresh = await self.inner.generate([requests[i] for i in missing])
            for i, completions in zip(missing, fresh):
                self.store.put_call(keys[i], "generate", self.model_id, requests[i].to_dict(),
                                    [c.to_dict() for c in completions])
                answers[i] = completions
                self.stats["calls_made"] += 1
                for c in completions:
                    self.stats["prompt_tokens"] += c.prompt_tokens
                    self.stats["completion_tokens"] += c.completion_tokens
        return [a for a in answers if a is not None]

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        payload = {"messages": list(messages), "continuations": list(continuations)}
        key = self._key("score", payload)
        cached = self.store.get_call(key)
        if cached is not None:
            self.stats["cache_hits"] += 1
            return list(cached)
        scores = await self.inner.score(messages, continuations)
        self.store.put_call(key, "score", self.model_id, payload, scores)
        self.stats["calls_made"] += 1
        return scores

    async def token_ids(self, text: str) -> list[int]:
        return await self.inner.token_ids(text)

    async def aclose(self) -> None:
        await self.inner.aclose()
