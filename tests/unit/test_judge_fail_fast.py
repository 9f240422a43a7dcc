"""A judge that cannot work stops the run on its first calls, with one error that says why."""

from __future__ import annotations

import math

import pytest

from cai.engines.base import ContextOverflow, EngineError
from cai.engines.fake import FakeScript, register_script
from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
from cai.label.watch import FAIL_FAST_CALLS, JudgeUnusable, WatchedJudge
from cai.generate.rl import RLConfig, run_rl
from tests.conftest import write_jsonl

register_script("no-logprobs", FakeScript(lambda r, k: "x", None))  # its score() raises EngineError
register_script("judges-fine", FakeScript(lambda r, k: f"reply {k} to {r.messages[-1]['content'][:20]}",
                                          lambda msgs, cont: math.log(0.7 if cont.endswith("(A)") else 0.3)))


def pairs_file(tmp_path, n: int = 60):
    return write_jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": f"\n\nHuman: question {i}?\n\nAssistant: a kind answer {i}",
         "rejected": f"\n\nHuman: question {i}?\n\nAssistant: a rude answer {i}"} for i in range(n)])


def test_eval_judge_stops_on_a_judge_without_log_probs_before_spending_the_rows(tmp_path) -> None:
    config = JudgeEvalConfig.of(pairs=str(pairs_file(tmp_path)), out=str(tmp_path / "ev"),
                                judges=["fake:no-logprobs"], concurrency=4)
    with pytest.raises(JudgeUnusable, match=r"judge fake:no-logprobs cannot work: its first 8 calls all failed "
                                            r"with engine_error \(e\.g\. fake script fake:no-logprobs cannot score"):
        run_judge_eval(config, show_progress=False)
    from cai.runs.store import Store

    store = Store(tmp_path / "ev" / "store.sqlite")
    assert store.count_results("judge-eval") < 10  # of 60 pairs: it stopped on its first rows


def test_one_dead_judge_in_an_ensemble_stops_the_run_too(tmp_path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"question {i}?"} for i in range(30)])
    config = RLConfig.of(prompts=str(prompts), out=str(tmp_path / "rl"), policy="fake:judges-fine",
                         judges=["fake:judges-fine", "fake:no-logprobs"], min_margin=0.0, concurrency=1)
    with pytest.raises(JudgeUnusable, match="fake:no-logprobs"):
        run_rl(config, show_progress=False)


class _Scripted:
    """An engine whose calls raise the given errors in turn (None answers)."""

    model_id = "scripted"

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self.outcomes = outcomes

    async def score(self, messages, continuations):  # noqa: ANN001
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return [0.0 for _ in continuations]


async def _call_all(judge: WatchedJudge, n: int) -> list[str]:
    seen = []
    for _ in range(n):
        try:
            await judge.score([], ["x"])
            seen.append("ok")
        except JudgeUnusable:
            seen.append("stop")
        except EngineError as exc:
            seen.append(exc.code)
    return seen


async def test_the_watch_stops_only_on_the_same_failure_from_the_first_call() -> None:
    same = [ContextOverflow("too long")] * (FAIL_FAST_CALLS + 2)
    seen = await _call_all(WatchedJudge(_Scripted(same)), FAIL_FAST_CALLS + 2)  # type: ignore[arg-type]
    assert seen == ["context_overflow"] * (FAIL_FAST_CALLS - 1) + ["stop"] * 3

    answered_once = [None] + [ContextOverflow("too long")] * (FAIL_FAST_CALLS + 1)
    seen = await _call_all(WatchedJudge(_Scripted(answered_once)), FAIL_FAST_CALLS + 2)  # type: ignore[arg-type]
    assert "stop" not in seen  # a judge that has answered is never stopped this way

    mixed = [ContextOverflow("too long"), EngineError("HTTP 503")] * FAIL_FAST_CALLS
    seen = await _call_all(WatchedJudge(_Scripted(mixed)), 2 * FAIL_FAST_CALLS)  # type: ignore[arg-type]
    assert "stop" not in seen  # failing in different ways is left to the failure budget


def test_stopping_names_the_fix_for_a_context_overflow() -> None:
    import asyncio

    judge = WatchedJudge(_Scripted([ContextOverflow("12,000 tokens")] * FAIL_FAST_CALLS))  # type: ignore[arg-type]
    with pytest.raises(JudgeUnusable, match="do not fit its context window"):
        for _ in range(FAIL_FAST_CALLS):
            try:
                asyncio.run(judge.score([], ["x"]))
            except ContextOverflow:
                pass
