"""Reward sources for `cai train policy`: each one TRL reward function, `(prompts, completions, **kw) -> rewards`.

- `RewardModelReward`: the preference model of `cai train reward` (a sequence classifier
  with one output) on the chat-formatted prompt + completion, as TRL scores a reward model.
- `JudgeScoreReward` (direct RLAIF): the judge rates each completion 1-9 under a principle
  sampled once per group (`cai.label.rating`); the reward is the expected rating sum(v * P(v))
  from one scoring call per completion, no text generated. The principle is sampled by
  (seed, prompt, step), so the completions of a group, which GRPO and RLOO compare with
  each other, are rated under the same principle; it is logged with every score.
- `JudgePairwiseReward`: the pairwise labeller (`cai.label.pairwise`) compares the
  completions of a group in both orders; the reward is each completion's mean win
  probability. Groups of up to 4 compare every pair; beyond, `pair_schedule` is a
  round robin in which each completion meets its two cyclic successors, so each is in 4
  comparisons and a group of G costs 2G comparisons (4G judge calls) instead of G(G-1)/2.

The judge modes are async: TRL runs them on its event loop, and every judge call of a step
(across the group and across prompts) is gathered at once, so the judge engine batches
them. Calls go through a `CachedEngine` on `<out>/judge_store.sqlite`: a re-run of the same
training (same seed, so the same samples) answers from the store instead of judging again.
Before the judge reads a completion, `cai.label.guard` removes the judge's own answer
stems, control tokens and copies of its question.

**Failures.** A judge call that still fails after `--judge-retries` gives the sample the
reward `None` (TRL leaves it out of its group's baseline and gives it no advantage), never 0
or a neutral score; a pairwise comparison that fails leaves both its completions `None`.
When more than `--max-judge-failure-rate` of the samples scored so far got `None` (once 16
have been scored), training stops with a `TrainError`.

**Logged per step** (TRL's `log_metric`, so in `training_log.jsonl`; and in the train
report): reward mean and spread, mean spread within groups, tie rate within groups (pairs
within `TIE_TOLERANCE` of the reward's range), score-token mass (judge-score), samples
without a reward, failed judge calls, judge calls made and answered from the store, judge
seconds, guarded completions (`cai.train.reward_log`). Every scored sample is a line of
`<out>/rewards.jsonl`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cai.core.types import Message, stable_hash, user
from cai.engines.base import ContextOverflow, Engine, EngineError, load_engine
from cai.inputs.constitution import load_constitution
from cai.label.base import LabelFailure
from cai.label.guard import JudgeSyntaxGuard
from cai.label.pairwise import PairwiseLabeler
from cai.label.rating import RatingJudge
from cai.runs.store import CachedEngine, Store
from cai.train.common import TrainError
from cai.train.reward_log import RewardLog, Scored

STORE_FILE = "judge_store.sqlite"


def pair_schedule(size: int) -> list[tuple[int, int]]:
    """The comparisons within a group: every pair up to 4, else each i against i+1 and i+2 (mod size)."""
    if size <= 4:
        return list(itertools.combinations(range(size), 2))
    return sorted({tuple(sorted((i, (i + d) % size))) for i in range(size) for d in (1, 2)})  # type: ignore[misc]


def as_messages(prompt: Any) -> list[Message]:
    return [user(prompt)] if isinstance(prompt, str) else [dict(m) for m in prompt]


def as_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion if m.get("role") == "assistant")


def groups_of(prompts: Sequence[Any]) -> list[list[int]]:
    """Indices of the samples of each prompt, in order (TRL repeats each prompt num_generations times)."""
    found: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        found.setdefault(stable_hash(as_messages(prompt)), []).append(i)
    return list(found.values())


# ---- the reward model ---------------------------------------------------------------------
class RewardModelReward:
    """The preference model of `cai train reward`, scored as TRL scores a reward model."""

    def __init__(self, path: str, log: RewardLog) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.__name__ = "reward_model"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        if self.device is not None:
            self.model.to(self.device)
        self.log, self.calls = log, 0

    async def prepare(self) -> None:
        """Nothing to check."""

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        import torch
        from trl.data_utils import apply_chat_template

        started = time.perf_counter()
        if isinstance(prompts[0], str):
            texts = [p + as_text(c) for p, c in zip(prompts, completions, strict=True)]
        else:
            texts = [apply_chat_template({"messages": list(p) + list(c)}, self.tokenizer)["text"]
                     for p, c in zip(prompts, completions, strict=True)]
        inputs = self.tokenizer(text=texts, return_tensors="pt", padding=True, padding_side="right",
                                add_special_tokens=False)
        if self.device is not None:
            inputs = inputs.to(self.device)
        with torch.inference_mode():
            values = self.model(**inputs).logits[:, 0].float().tolist()
        outcomes = [Scored(v) for v in values]
        step = getattr(kwargs.get("trainer_state"), "global_step", self.calls)
        self.calls += 1
        self.log.record(step, groups_of(prompts), outcomes, {"reward_seconds": time.perf_counter() - started},
                        kwargs.get("log_metric"))
        return [o.reward for o in outcomes]

    def close(self, trainer: Any = None) -> None:
        """Nothing to release."""

    def describe(self) -> dict[str, Any]:
        return {"reward": "reward-model", "per_group": "one forward pass of the reward model per sample"}


# ---- the judge modes --------------------------------------------------------------------------
class JudgeReward:
    """What both judge modes share: the cached judge engine, retries, the guard, the log."""

    name = "judge"

    def __init__(self, engine: Engine, spec: str, log: RewardLog, *, retries: int = 2, seed: int = 0,
                 store: Store | None = None) -> None:
        self.__name__ = self.name.replace("-", "_")
        self.engine, self.spec, self.log, self.retries, self.seed = engine, spec, log, retries, seed
        self.store = store
        self.guard = JudgeSyntaxGuard()
        self.calls = 0
        self.failed_calls = 0

    async def prepare(self) -> None:
        """Checks that need the judge, before training starts."""

    async def retrying(self, make: Callable[[], Any]) -> Any:
        """A judge call, retried `retries` times after an EngineError (a prompt over the context window
        is not retried: it would fail the same way)."""
        for attempt in range(self.retries + 1):
            try:
                return await make()
            except ContextOverflow:
                raise
            except EngineError:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")

    async def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        started = time.perf_counter()
        stats = dict(getattr(self.engine, "stats", {}))
        failed_before = self.failed_calls
        step = getattr(kwargs.get("trainer_state"), "global_step", self.calls)
        self.calls += 1
        messages = [as_messages(p) for p in prompts]
        texts = [as_text(c) for c in completions]
        groups = groups_of(prompts)
        outcomes = await self.score(messages, texts, groups, step)
        now = getattr(self.engine, "stats", {})
        calls = {"judge_calls": now.get("calls_made", 0) - stats.get("calls_made", 0),
                 "judge_cache_hits": now.get("cache_hits", 0) - stats.get("cache_hits", 0),
                 "failed_calls": self.failed_calls - failed_before,
                 "judge_seconds": time.perf_counter() - started}
        self.log.record(step, groups, outcomes, calls, kwargs.get("log_metric"))
        return [o.reward for o in outcomes]

    async def score(self, messages: list[list[Message]], texts: list[str], groups: list[list[int]],
                    step: int) -> list[Scored]:
        raise NotImplementedError

    def failure_code(self, exc: BaseException) -> str:
        self.failed_calls += 1
        return getattr(exc, "code", type(exc).__name__)

    def close(self, trainer: Any = None) -> None:
        """Close the judge engine on the loop that used it (TRL's), then the store."""
        loop = getattr(trainer, "async_loop", None)
        try:
            if loop is not None and loop.is_running():
                asyncio.run_coroutine_threadsafe(self.engine.aclose(), loop).result(timeout=120)
            else:
                asyncio.run(self.engine.aclose())
        finally:
            if self.store is not None:
                self.store.close()

    def describe(self) -> dict[str, Any]:
        return {"reward": self.name, "judge": self.spec, "judge_engine": self.engine.describe()}


class JudgeScoreReward(JudgeReward):
    """d-RLAIF: the expected rating of each completion, one scoring call each."""

    name = "judge-score"

    def __init__(self, judge: RatingJudge, spec: str, log: RewardLog, **kw: Any) -> None:
        super().__init__(judge.engine, spec, log, **kw)
        self.judge = judge

    async def prepare(self) -> None:
        await self.judge.check()

    async def score(self, messages: list[list[Message]], texts: list[str], groups: list[list[int]],
                    step: int) -> list[Scored]:
        async def one(i: int, principle: Any) -> Scored:
            guarded = self.guard.clean(texts[i])
            try:
                rating = await self.retrying(lambda: self.judge.rate(messages[i], guarded.text, principle))
            except (EngineError, LabelFailure) as exc:
                return Scored(None, failure=self.failure_code(exc), principle_id=principle.id,
                              guarded=guarded.removed, detail={"reason": str(exc)[:300]})
            return Scored(rating.expected, scale_mass=rating.scale_mass, principle_id=principle.id,
                          guarded=guarded.removed, detail={"p": [round(p, 4) for p in rating.probabilities]})

        jobs: dict[int, Any] = {}
        for group in groups:
            principle = self.judge.principle(stable_hash(messages[group[0]]), step)
            jobs.update({i: one(i, principle) for i in group})
        done = await asyncio.gather(*jobs.values())
        by_index = dict(zip(jobs, done, strict=True))
        return [by_index[i] for i in range(len(texts))]

    def describe(self) -> dict[str, Any]:
        form = self.judge.form
        return {**super().describe(), "scale": self.judge.labels, "answer_stem": form.stem if form else None,
                "per_group": "G judge calls (one scoring call of the stem and the 9 labels per sample)"}


class JudgePairwiseReward(JudgeReward):
    """Mean win probability of each completion against the others of its group, both orders."""

    name = "judge-pairwise"

    def __init__(self, labeler: PairwiseLabeler, spec: str, log: RewardLog, **kw: Any) -> None:
        super().__init__(labeler.engine, spec, log, **kw)
        self.labeler = labeler

    async def score(self, messages: list[list[Message]], texts: list[str], groups: list[list[int]],
                    step: int) -> list[Scored]:
        guarded = [self.guard.clean(t) for t in texts]
        wins: dict[int, list[float]] = {i: [] for i in range(len(texts))}
        failed: dict[int, str] = {}
        principles: dict[int, str] = {}

        async def compare(i: int, j: int, key: tuple[Any, ...]) -> None:
            if guarded[i].text == guarded[j].text:  # identical: a tie, not a question for the judge
                wins[i].append(0.5)
                wins[j].append(0.5)
                return
            try:
                label = await self.retrying(lambda: self.labeler.compare(messages[i], guarded[i].text,
                                                                         guarded[j].text, key))
            except (EngineError, LabelFailure) as exc:
                failed[i] = failed[j] = self.failure_code(exc)
                return
            principles[i] = principles[j] = ",".join(label.principle_ids)
            wins[i].append(label.p_x)
            wins[j].append(1.0 - label.p_x)

        jobs = []
        for group in groups:
            key = (stable_hash(messages[group[0]]), step)
            jobs += [compare(group[a], group[b], key) for a, b in pair_schedule(len(group))]
        await asyncio.gather(*jobs)
        out = []
        for i in range(len(texts)):
            if i in failed or not wins[i]:
                out.append(Scored(None, failure=failed.get(i, "no_comparison"), guarded=guarded[i].removed))
            else:
                out.append(Scored(sum(wins[i]) / len(wins[i]), principle_id=principles.get(i),
                                  guarded=guarded[i].removed, detail={"win_p": [round(w, 4) for w in wins[i]]}))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "schedule": "every pair up to 4 per group; beyond, each sample against its "
                                                  "2 cyclic successors (2G pairs)",
                "per_group": "2 judge calls per pair: G(G-1) for G <= 4, 4G beyond"}


# ---- building one from the options ----------------------------------------------------------------
def make_reward(config: Any, out: Path) -> Any:
    """The reward source `config.reward` names (`cai.train.configs.PolicyRLConfig`)."""
    if config.reward == "reward-model":
        if not config.reward_model:
            raise TrainError("--reward-model is required with --reward reward-model (train one with `cai train "
                             "reward`, or use --reward judge-score or judge-pairwise)")
        from cai.train.common import model_path

        log = RewardLog("reward-model", out, reward_range=1.0)
        return RewardModelReward(model_path(config.reward_model), log)
    spec = config.judge or "smollm2"
    constitution = load_constitution(config.constitution)
    store = Store(out / STORE_FILE)
    engine = CachedEngine(load_engine(spec, config.judge_options), store)
    common = dict(retries=config.judge_retries, seed=config.seed, store=store)
    if config.reward == "judge-score":
        judge = RatingJudge(engine, constitution, seed=config.seed)
        log = RewardLog("judge-score", out, reward_range=judge.values[-1] - judge.values[0],
                        max_failure_rate=config.max_judge_failure_rate)
        return JudgeScoreReward(judge, spec, log, **common)
    labeler = PairwiseLabeler(engine, constitution, both_orders=True, seed=config.seed)
    log = RewardLog("judge-pairwise", out, reward_range=1.0, max_failure_rate=config.max_judge_failure_rate)
    return JudgePairwiseReward(labeler, spec, log, **common)
