"""The run directory: the store, the manifest, the output files and the summary.

```
runs/sl1/
  store.sqlite      every engine call and every row's result (resume lives here)
  manifest.json     resolved config, constitution hash, engine, versions (never secrets)
  <stage>.jsonl     one record per finished row, in input order (e.g. sl.jsonl)
  failures.jsonl    every failed or skipped item with its reason
  summary.json      counts, tokens, time, tokens/s
```
Output files are rewritten from the store at the end of each run, so an interrupted and
resumed run has each row exactly once. Each file is written beside its target as
`.<name>.partial`, flushed to disk and renamed over it, so a crash mid-write leaves the
previous complete file (or none), never a truncated one; leftovers are deleted on the
next open. One process at a time: `RunDir` holds an exclusive `flock` on `<out>/.lock`
(holding its pid) until `close()`, so a second `cai` on the same `--out` stops with a
clear error, and a killed holder's lock goes with its process. Not here: what the rows
contain.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from cai.runs.store import Store, StoreError, explain

FAILURES_FILE = "failures.jsonl"
LOCK_FILE = ".lock"
PARTIAL = ".{name}.partial"
SECRET_HINTS = ("api_key", "apikey", "token", "secret", "password")


class RunLocked(StoreError):
    """Another process is using this run directory."""


class RunDir:
    def __init__(self, out: str | Path) -> None:
        self.path = Path(out)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"--out {self.path} is a file, not a run directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(explain(self.path, exc)) from exc
        self._lock = self._acquire_lock()
        try:
            for leftover in self.path.glob(PARTIAL.format(name="*")):  # from a run killed mid-write
                leftover.unlink()
            self.store = Store(self.path / "store.sqlite")
        except OSError as exc:
            os.close(self._lock)
            raise StoreError(explain(self.path, exc)) from exc
        except BaseException:
            os.close(self._lock)
            raise
        self.started = time.time()

    def _acquire_lock(self) -> int:
        lock = self.path / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(explain(self.path, exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.path} is in use by another cai process (pid {holder}); wait for it to "
                            "finish or stop it, or give this run another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def close(self) -> None:
        """Close the store and release the lock (the lock file stays; it is harmless)."""
        if self._lock < 0:
            return
        self.store.close()
        os.close(self._lock)  # closing the descriptor releases the flock
        self._lock = -1

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def _atomic(self, name: str) -> Iterator[Any]:
        """A text file handle whose content replaces `name` only once it is whole and on disk."""
        target, tmp = self.file(name), self.file(PARTIAL.format(name=name))
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(explain(target, exc) + f" {name} was left as it was.") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_json(self, name: str, data: Any) -> Path:
        with self._atomic(name) as fh:
            fh.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        return self.file(name)

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> int:
        count = 0
        with self._atomic(name) as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        return count

    def write_failures(self, stages: Iterable[str]) -> int:
        def all_failures() -> Iterable[dict[str, Any]]:
            for stage in stages:
                for status, record in self.store.entries(stage):
                    if status == "failed":  # the whole row failed
                        yield record
                    else:  # a finished row may still have dropped parts (candidates, pairs)
                        yield from record.get("dropped", [])

        return self.write_jsonl(FAILURES_FILE, all_failures())

    def previous_engines(self) -> dict[str, Any]:
        """The engines the last manifest described ({} if there is none)."""
        try:
            return dict(json.loads(self.file("manifest.json").read_text("utf-8")).get("engines") or {})
        except (json.JSONDecodeError, OSError):
            return {}

    def write_manifest(self, command: str, config: dict[str, Any], **parts: Any) -> None:
        previous = self.file("manifest.json")
        runs = []
        if previous.exists():
            try:
                runs = json.loads(previous.read_text("utf-8")).get("invocations", [])
            except (json.JSONDecodeError, OSError):
                runs = []
        runs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                     "argv": redact_argv(sys.argv)})
        self.write_json("manifest.json", {
            "command": command,
            "config": redact(config),
            **redact(parts),
            "versions": versions(),
            "invocations": runs,
        })


def redact(value: Any) -> Any:
    """Drop anything that looks like a secret from manifests and logs."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if any(h in str(k).lower() for h in SECRET_HINTS) and not str(k).endswith("_env")
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_argv(argv: list[str]) -> list[str]:
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
            continue
        lowered = arg.lower()
        if lowered.startswith("--") and any(h in lowered for h in SECRET_HINTS) and not lowered.endswith("-env"):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=<redacted>")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("constitutional-ai", "torch", "transformers", "trl", "datasets", "openai", "vllm"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found
