"""`cai` with a slow scripted engine, for the fault-injection tests.

Run as `python -m tests.faults.fakecli sl --model slowfake:steady -E latency_s=0.04 ...`.
A subprocess cannot see the scripts a test registers, so this module registers its own and
then runs `cai.cli.main()` on the same arguments. For these tests only, it adds:

- the `slowfake:<script>` engine: the scripted fake engine that waits `latency_s` seconds per
  call, as a real model would, and appends one JSON line per call it really makes (not the
  ones the run's cache answers) to the file named by `$CAI_FAULT_CALL_LOG`;
- `$CAI_FAULT_WRITE_DELAY=<seconds>`: output files are written one row every so many
  seconds, so a test can kill the process while they are half written.

The library never imports this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from cai.core.types import Completion, Message, Request, stable_hash
from cai.engines.base import register_engine
from cai.engines.fake import FakeEngine, FakeOptions, FakeScript, register_script
from cai.runs.run_dir import RunDir


def _respond(request: Request, k: int) -> str:
    digest = stable_hash([request.to_dict(), k])[:10]
    return f"Reply {k} ({digest}): I would rather not help with that, but here is a safer idea instead."


def _score(messages: Sequence[Message], continuation: str) -> float:
    return -(int(stable_hash([list(messages), continuation])[:6], 16) % 997) / 100


register_script("steady", FakeScript(_respond, _score))


def log_call(kind: str, model: str, request: Any) -> None:
    """One line per call really made; a single O_APPEND write, so a kill never tears it."""
    path = os.environ.get("CAI_FAULT_CALL_LOG")
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "kind": kind, "model": model, "request": request}, sort_keys=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


class SlowOptions(FakeOptions):
    latency_s: float = 0.0  # seconds per call


class SlowFakeEngine(FakeEngine):
    Options = SlowOptions
    options: SlowOptions

    def __init__(self, name: str, options: SlowOptions | None = None) -> None:
        super().__init__(name, options or SlowOptions())
        self.model_id = f"slowfake:{name}"

    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        for request in requests:
            log_call("generate", self.model_id, request.to_dict())
        await asyncio.sleep(self.options.latency_s)
        return await super().generate(requests)

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        log_call("score", self.model_id, {"messages": list(messages), "continuations": list(continuations)})
        await asyncio.sleep(self.options.latency_s)
        return await super().score(messages, continuations)


register_engine("slowfake", SlowFakeEngine)


def _slow_writes(delay: float) -> None:
    write_jsonl = RunDir.write_jsonl

    def slowly(self: RunDir, name: str, rows: Iterable[dict[str, Any]]) -> int:
        def paced() -> Iterable[dict[str, Any]]:
            for row in rows:
                time.sleep(delay)
                yield row
        return write_jsonl(self, name, paced())

    RunDir.write_jsonl = slowly  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("CAI_FAULT_WRITE_DELAY"):
        _slow_writes(float(os.environ["CAI_FAULT_WRITE_DELAY"]))
    from cai.cli import main

    main()
