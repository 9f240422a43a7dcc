"""Limits and resources: prompts over the context window fail before any compute, files
that are not UTF-8 or in the wrong shape are clear errors, and closing an engine leaves
no caller waiting forever."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from cai.core.types import Completion, Message, Request, SamplingParams
from cai.engines.base import ContextOverflow, Engine, EngineError, EngineOptions, register_engine
from cai.engines.batching import BatchingEngine, WorkItem
from cai.inputs.constitution import ConstitutionError, load_constitution
from cai.inputs.files import InputError, read_jsonl_records
from cai.inputs.prompts import read_prompts
from tests.conftest import write_jsonl


class WordEngine(BatchingEngine):
    """A model-free batching engine: one token per word, a context window of `window` tokens."""

    def __init__(self, window: int | None = 50) -> None:
        super().__init__()
        self.model_id = "words"
        self.window = window
        self.batches: list[int] = []
        self.gate: threading.Event | None = None  # when set, batches wait for it
        self.started = threading.Event()
        self.result_count: int | None = None  # a broken runner returns this many results
        self.fail_with: BaseException | None = None

    def context_window(self) -> int | None:
        return self.window

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return [1] * sum(len(m["content"].split()) for m in messages)

    def encode_continuation(self, text: str) -> list[int]:
        return [2] * len(text.split())

    def run_generate_batch(self, batch: list[WorkItem]) -> list[Completion]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(len(batch))
        n = len(batch) if self.result_count is None else self.result_count
        return [Completion("fine reply words here", "stop", len(it.prompt_ids), 4) for it in batch[:1]] * n

    def run_score_batch(self, batch: list[WorkItem]) -> list[float]:
        self.batches.append(len(batch))
        return [-1.0] * len(batch)


def _ask(words: int, max_tokens: int = 10) -> Request:
    return Request.of([{"role": "user", "content": " ".join(["word"] * words)}], SamplingParams(max_tokens=max_tokens))


async def test_a_prompt_over_the_context_window_fails_before_any_compute() -> None:
    engine = WordEngine(window=50)
    with pytest.raises(ContextOverflow, match="41 tokens \\+ 10 new tokens.*context window of 50") as caught:
        await engine.generate([_ask(20), _ask(41, max_tokens=10)])
    assert caught.value.code == "context_overflow" and isinstance(caught.value, EngineError)
    assert engine.batches == []  # nothing ran, not even the request that fits
    with pytest.raises(ContextOverflow):
        await engine.score([{"role": "user", "content": " ".join(["w"] * 45)}], ["a b c d e f"])
    assert engine.batches == []
    assert len(await engine.generate([_ask(40, max_tokens=10)])) == 1  # exactly full fits
    assert await WordEngine(window=None).generate([_ask(5000)])  # no known window: no check


class WordFactoryOptions(EngineOptions):
    pass


class RegisteredWordEngine(WordEngine):
    Options = WordFactoryOptions

    def __init__(self, rest: str, options: EngineOptions | None = None) -> None:
        super().__init__(window=int(rest))


register_engine("words", RegisteredWordEngine)


def test_context_overflow_is_a_row_failure_with_its_own_code(tmp_path) -> None:
    from cai.generate.sl import SLConfig, run_sl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "short", "prompt": "a short question"},
                                                  {"id": "long", "prompt": " ".join(["long"] * 300)}])
    result = run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "run"), model="words:200", rounds=1,
                             few_shot="none", max_tokens=16), show_progress=False)
    assert result.summary["rows_ok_this_run"] == 1
    assert result.summary["failure_reasons"] == {"engine: context_overflow": 1}
    failure = json.loads((tmp_path / "run" / "failures.jsonl").read_text())
    assert failure["id"] == "long" and "context window of 200" in failure["reason"]


async def test_closing_a_batching_engine_resolves_every_waiting_caller() -> None:
    engine = WordEngine(window=None)
    engine.gate = threading.Event()
    running = asyncio.ensure_future(engine.generate([_ask(3)]))
    await asyncio.to_thread(engine.started.wait, 5)  # the first batch is in the worker thread
    queued = asyncio.ensure_future(engine.generate([_ask(4, max_tokens=7)]))
    await asyncio.sleep(0.01)
    await engine.aclose()
    for waiter in (running, queued):
        with pytest.raises(EngineError, match="closed"):
            await asyncio.wait_for(waiter, timeout=5)
    engine.gate.set()


async def test_a_runner_returning_the_wrong_count_fails_every_waiter_instead_of_hanging() -> None:
    engine = WordEngine(window=None)
    engine.result_count = 1
    engine.batch_wait_ms = 20
    with pytest.raises(ValueError, match="zip"):  # a bug: not an EngineError, so the run stops
        await asyncio.wait_for(asyncio.gather(engine.generate([_ask(3)]), engine.generate([_ask(3)])), timeout=5)
    await engine.aclose()


async def test_the_batcher_hands_on_the_exception_it_got() -> None:
    engine = WordEngine(window=None)
    engine.fail_with = KeyError("our bug")
    with pytest.raises(KeyError):  # never wrapped as an EngineError: a bug stays a bug
        await asyncio.wait_for(engine.generate([_ask(3)]), timeout=5)

    class Explained(WordEngine):
        def model_error(self, exc: BaseException, batch: list[WorkItem]) -> EngineError | None:
            return EngineError(f"out of memory on {len(batch)} rows") if "out of memory" in str(exc) else None

    engine = Explained(window=None)
    engine.fail_with = RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    with pytest.raises(EngineError, match="out of memory on 1 rows"):
        await asyncio.wait_for(engine.generate([_ask(3)]), timeout=5)


def test_transformers_engine_explains_model_caused_errors() -> None:
    from cai.engines.transformers_engine import TransformersEngine

    engine = object.__new__(TransformersEngine)
    engine.model_id = "smollm2"
    batch = [WorkItem(prompt_ids=[1, 2], future=None, params=SamplingParams())]  # type: ignore[arg-type]
    oom = engine.model_error(RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), batch)
    assert isinstance(oom, EngineError) and "max_batch_tokens" in str(oom)
    nan = engine.model_error(RuntimeError("probability tensor contains either `inf`, `nan` or element < 0"), batch)
    assert isinstance(nan, EngineError)
    assert engine.model_error(KeyError("bug"), batch) is None
    assert engine.model_error(RuntimeError("shape mismatch"), batch) is None


# ---- files ---------------------------------------------------------------------------------
def _latin1(path: Path, lines: list[str]) -> Path:
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    return path


def test_a_prompt_file_that_is_not_utf8_names_file_and_line(tmp_path) -> None:
    jsonl = _latin1(tmp_path / "p.jsonl", ['{"prompt": "fine"}', '{"prompt": "also fine"}', '{"prompt": "caf\u00e9"}'])
    with pytest.raises(InputError, match=f"{jsonl}:3: not UTF-8"):
        list(read_prompts(jsonl))
    csv_file = _latin1(tmp_path / "p.csv", ["prompt", "fine", "na\u00efve"])
    with pytest.raises(InputError, match=f"{csv_file}:3: not UTF-8"):
        list(read_prompts(csv_file))
    with pytest.raises(InputError, match=f"{jsonl}:3: not UTF-8"):
        read_jsonl_records(jsonl)


def test_utf8_with_a_byte_order_mark_still_reads(tmp_path) -> None:
    csv_file = tmp_path / "p.csv"
    csv_file.write_bytes("prompt\nhello\n".encode("utf-8-sig"))
    assert [r.prompt for r in read_prompts(csv_file)] == ["hello"]


def test_constitution_few_shot_and_pair_files_that_are_not_utf8_name_the_file(tmp_path) -> None:
    from cai.evaluate.judge import read_pairs
    from cai.inputs.few_shot import load_few_shot

    principles = _latin1(tmp_path / "principles.txt", ["Be kind.", "Be caf\u00e9-safe."])
    with pytest.raises(InputError, match=f"{principles}:2: not UTF-8"):
        load_constitution(str(principles))
    few = _latin1(tmp_path / "few.yaml", ["examples:", "- prompt: caf\u00e9"])
    with pytest.raises(InputError, match=f"{few}:2: not UTF-8"):
        load_few_shot(str(few))
    pairs = _latin1(tmp_path / "pairs.jsonl", ['{"chosen": "caf\u00e9"}'])
    with pytest.raises(InputError, match=f"{pairs}:1: not UTF-8"):
        list(read_pairs(pairs))


def test_files_in_the_wrong_shape_are_clear_errors(tmp_path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "ok"}\n[1, 2]\n')
    with pytest.raises(InputError, match=f"{rows}:2: .*JSON object"):
        read_jsonl_records(rows)
    constitution = tmp_path / "c.yaml"
    constitution.write_text("name: x\nprinciples: 5\n")
    with pytest.raises(ConstitutionError, match="principles"):
        load_constitution(str(constitution))
    not_a_dataset = tmp_path / "folder"
    not_a_dataset.mkdir()
    with pytest.raises(InputError, match=str(not_a_dataset)):
        list(read_prompts(not_a_dataset))
    parquet = tmp_path / "p.parquet"
    parquet.write_text("not parquet at all")
    with pytest.raises(InputError, match=f"{parquet}: .*Parquet"):
        list(read_prompts(parquet))


# ---- resources -----------------------------------------------------------------------------
async def test_openai_engine_closes_its_http_client() -> None:
    from cai.engines.openai_compat import OpenAIEngine

    engine = OpenAIEngine("m@http://127.0.0.1:9")
    client = engine._http()
    await engine.aclose()
    assert client.is_closed
    await engine.aclose()  # twice is harmless


async def test_a_server_answer_that_is_not_json_is_an_engine_error() -> None:
    import httpx

    from cai.engines.openai_compat import OpenAIEngine

    engine = OpenAIEngine("m@http://server.invalid/v1")
    engine._client = httpx.AsyncClient(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, text="<html>proxy login</html>")))
    engine._limit = asyncio.Semaphore(1)
    with pytest.raises(EngineError, match="not JSON"):  # the server's doing: a row failure, not a crash
        await engine.generate([_ask(3)])
    await engine.aclose()


class _Closing(Engine):
    closed: list[str] = []

    def __init__(self, name: str, fail: bool = False) -> None:
        self.model_id, self.fail = name, fail

    async def generate(self, requests):  # pragma: no cover - never called
        raise AssertionError

    async def score(self, messages, continuations):  # pragma: no cover - never called
        raise AssertionError

    async def aclose(self) -> None:
        _Closing.closed.append(self.model_id)
        if self.fail:
            raise RuntimeError(f"{self.model_id} failed to close")


async def test_engine_set_closes_every_engine_even_when_one_fails(tmp_path) -> None:
    from cai.runs.job import EngineSet
    from cai.runs.store import CachedEngine, Store

    store = Store(tmp_path / "s.sqlite")
    engines = EngineSet({name: CachedEngine(_Closing(name, fail=name == "a"), store) for name in "abc"})
    _Closing.closed.clear()
    with pytest.raises(RuntimeError, match="a failed to close"):
        await engines.aclose()
    assert _Closing.closed == ["a", "b", "c"]
    store.close()
