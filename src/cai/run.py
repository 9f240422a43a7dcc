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
resumed run has each row exactly once. Not here: what the rows contain.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from cai.store import Store

FAILURES_FILE = "failures.jsonl"
SECRET_HINTS = ("api_key", "apikey", "token", "secret", "password")


class RunDir:
    def __init__(self, out: str | Path) -> None:
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.path / "store.sqlite")
        self.started = time.time()

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: Any) -> Path:
        target = self.file(name)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        tmp.replace(target)
        return target

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> int:
        target = self.file(name)
        tmp = target.with_suffix(target.suffix + ".tmp")
        count = 0
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(target)
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
