"""The statistics of a reward source, per call of it (one per step), and its failure budget.

`RewardLog.record` takes one call's outcomes (a `Scored` per sample: its reward or None, why
not, the judge's score-token mass, the principle, whether the guard touched it) and the
groups of samples that share a prompt, and:

- computes the step's figures: reward mean and spread (sample standard deviation, as TRL),
  mean spread within groups, tie rate within groups (pairs of rewards within
  `TIE_TOLERANCE` of the reward's range), score-token mass, samples without a reward, and
  the judge's counters handed in (calls made, answered from the store, failed, seconds);
- hands each figure to TRL's `log_metric` as `reward/<name>` (so it is in `training_log.jsonl`);
- appends every sample to `<out>/rewards.jsonl`;
- stops training with a `TrainError` once more than `max_failure_rate` of the samples scored
  so far have no reward (judged after `BUDGET_AFTER` samples).

`report()` is what the train report holds. Not here: scoring (`cai.train.rewards`).
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.train.common import TrainError

#: rewards of one group closer than this share of the reward's range count as a tie
TIE_TOLERANCE = 0.01
#: the failure budget is judged once this many samples have been scored
BUDGET_AFTER = 16
LOG_FILE = "rewards.jsonl"


@dataclass
class Scored:
    """One sample's outcome: its reward (None: no reward), and what the judge said."""

    reward: float | None
    failure: str | None = None
    scale_mass: float | None = None
    principle_id: str | None = None
    guarded: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class RewardLog:
    """Per-call statistics (to TRL's log and the train report), rewards.jsonl and the failure budget."""

    def __init__(self, source: str, out: Path | None, reward_range: float, max_failure_rate: float = 1.0) -> None:
        self.source, self.reward_range, self.max_failure_rate = source, reward_range, max_failure_rate
        self.steps: list[dict[str, Any]] = []
        self.samples = self.unscored = 0
        self.file = out / LOG_FILE if out else None
        if self.file:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.write_text("")

    def record(self, step: int, groups: list[list[int]], outcomes: list[Scored], calls: dict[str, float],
               log_metric: Callable[[str, float], None] | None) -> dict[str, Any]:
        rewards = [o.reward for o in outcomes if o.reward is not None]
        spreads, ties, pairs = [], 0, 0
        for group in groups:
            got = [outcomes[i].reward for i in group if outcomes[i].reward is not None]
            if len(got) >= 2:
                spreads.append(statistics.stdev(got))  # type: ignore[arg-type]
            for a, b in itertools.combinations(got, 2):
                pairs += 1
                ties += abs(a - b) <= TIE_TOLERANCE * self.reward_range  # type: ignore[operator]
        masses = [o.scale_mass for o in outcomes if o.scale_mass is not None]
        unscored = len(outcomes) - len(rewards)
        stats: dict[str, Any] = {
            "step": step, "samples": len(outcomes), "groups": len(groups),
            "reward_mean": _round(statistics.fmean(rewards)) if rewards else None,
            "reward_std": _round(statistics.stdev(rewards)) if len(rewards) > 1 else None,
            "group_std_mean": _round(statistics.fmean(spreads)) if spreads else None,
            "tie_rate": _round(ties / pairs) if pairs else None, "tie_pairs": pairs,
            "scale_mass_mean": _round(statistics.fmean(masses)) if masses else None,
            "scale_mass_min": _round(min(masses)) if masses else None,
            "unscored": unscored, "failure_rate": _round(unscored / len(outcomes)) if outcomes else None,
            "guarded": sum(1 for o in outcomes if o.guarded),
            "principles": sorted({o.principle_id for o in outcomes if o.principle_id}),
            **{k: _round(v) for k, v in calls.items()}}
        self.steps.append(stats)
        self.samples += len(outcomes)
        self.unscored += unscored
        if log_metric is not None:
            for name, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
                    log_metric(f"reward/{name}", float(value))
        if self.file:
            with self.file.open("a", encoding="utf-8") as fh:
                for i, o in enumerate(outcomes):
                    fh.write(json.dumps({"step": step, "sample": i, "reward": o.reward, "failure": o.failure,
                                         "scale_mass": o.scale_mass, "principle_id": o.principle_id,
                                         "guarded": o.guarded, **o.detail}) + "\n")
        self.check_budget()
        return stats

    def check_budget(self) -> None:
        if self.samples >= BUDGET_AFTER and self.unscored > self.max_failure_rate * self.samples:
            raise TrainError(
                f"the {self.source} reward failed for {self.unscored} of the {self.samples} samples scored so far "
                f"(more than --max-judge-failure-rate {self.max_failure_rate}); training stopped. The failures are "
                f"in {self.file or 'the reward log'} with their reason codes; fix the judge (its spec, server or "
                "options) and re-run: judge answers already made come from the store")

    def report(self) -> dict[str, Any]:
        def total(key: str) -> float:
            return _round(sum(s.get(key) or 0 for s in self.steps))

        means = [s["reward_mean"] for s in self.steps if s["reward_mean"] is not None]
        masses = [s["scale_mass_mean"] for s in self.steps if s["scale_mass_mean"] is not None]
        ties = [s["tie_rate"] for s in self.steps if s["tie_rate"] is not None]
        return {"source": self.source, "calls": len(self.steps), "samples": self.samples, "unscored": self.unscored,
                "failure_rate": _round(self.unscored / self.samples) if self.samples else None,
                "reward_mean_first": means[0] if means else None, "reward_mean_last": means[-1] if means else None,
                "tie_rate_mean": _round(statistics.fmean(ties)) if ties else None,
                "scale_mass_mean": _round(statistics.fmean(masses)) if masses else None,
                "judge_calls": total("judge_calls"), "judge_cache_hits": total("judge_cache_hits"),
                "failed_calls": total("failed_calls"), "judge_seconds": total("judge_seconds"),
                "guarded": total("guarded"), "per_step": self.steps,
                "rewards_file": str(self.file) if self.file else None}


def _round(value: float) -> float:
    return round(float(value), 4)
