"""`cai eval revisions`: the score-by-revision curve of an SL-CAI run (the CAI paper's figure).

For each finished row of an SL run (`sl.jsonl`: the `initial` answer and each round's
cleaned `revision`), each revision is scored against the initial answer:

- by the judge: the both-orders win probability of revision r over the initial answer,
  under the harmlessness judge constitution and (unless `--no-helpfulness`) the
  helpfulness one, so the curve shows whether revisions trade helpfulness away. Round 0
  is the initial answer itself (0.5 by definition); a revision identical to the initial
  answer is a tie without asking;
- by a trained preference model (`--reward-model`, a folder from `cai train reward`):
  its scalar reward for the conversation ending in the initial answer and in each
  revision. Rewards are cached in the run's store like every model call.

The curve (`report.json`, `cai.evaluate.aggregate.revisions_report`) gives, per round, the win
rate with its Wilson interval, the mean probability, the position-bias rate, and the
mean reward with its standard error, each over the rows it counts; rows the SL run
failed are not scored and are counted. Labels that fail go to failures.jsonl. `per_principle`
(in report.json and the summary) is the same win rate split by the SL principle each revision
was made under, so an author sees which principles' revisions lose to the answer they revise.

Not here: running SL (`cai.generate.sl`), drawing the curve (`cai.report`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.core.errors import ConfigError
from cai.core.options import Options, at_least, option, redefault
from cai.core.types import Message, assistant, stable_hash
from cai.engines.base import EngineError
from cai.evaluate.models import EvalJudgeOptions
from cai.inputs.constitution import judge_constitution
from cai.inputs.files import InputError, text_lines
from cai.inputs.prompts import BadRow, PromptRow, on_bad_input_option
from cai.label.base import LabelFailure
from cai.label.pairwise import PairwiseLabeler
from cai.runs.job import RunOptions
from cai.runs.store import Store
from cai.stats.principles import revision_table

STAGE = "eval-revisions"
SCALES = ("harmlessness", "helpfulness")


@dataclass
class SLRunOptions(Options):
    """The SL run whose revisions are scored."""

    sl_run: str = option(required=True, help="A `cai sl` run directory (its sl.jsonl is read).")
    limit: int | None = option(None, help="Score at most this many SL rows.")
    on_bad_input: str = on_bad_input_option()

    def check(self) -> None:
        if self.limit is not None:
            at_least("--limit", self.limit, 1)

    def sl_file(self) -> Path:
        path = Path(self.sl_run) / "sl.jsonl"
        if not path.is_file():
            raise InputError(f"{self.sl_run}: no sl.jsonl here; give a finished `cai sl` run directory")
        return path

    def rows(self) -> Iterator[PromptRow | BadRow]:
        path = self.sl_file()
        produced = 0
        for line_no, line in text_lines(path):
            if not line.strip():
                continue
            if self.limit is not None and produced >= self.limit:
                return
            produced += 1
            source = f"{path}:{line_no}"
            try:
                rec = json.loads(line)
                initial = rec["initial"]["text"]
                revisions = [(r["round"], r["principle_id"], r["revision"]) for r in rec["rounds"]]
                messages = rec["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                yield BadRow(source, f"not an SL trace (needs messages, initial.text and rounds[].revision): {exc}")
                continue
            yield PromptRow(id=str(rec["id"]), messages=messages, source=source,
                            extra={"initial": initial, "revisions": revisions})

    def failed_rows(self) -> int:
        """Rows the SL run could not finish (from its failures.jsonl), for the denominator."""
        path = Path(self.sl_run) / "failures.jsonl"
        if not path.is_file():
            return 0
        return sum(1 for _, line in text_lines(path) if line.strip() and json.loads(line).get("stage") != "input")


@dataclass
class RevisionScoreOptions(Options):
    """Who scores the revisions: the judge, a preference model, or both."""

    judge: str = option("smollm2", help="Judge model spec for both-orders win rates against the initial answer; "
                                        "'none' to use only --reward-model.")
    reward_model: str | None = option(None, help="A preference model folder from `cai train reward`: each answer's "
                                                 "reward is scored too.")
    harmless_constitution: str = redefault(EvalJudgeOptions, "harmless_constitution", "eval-harmless")
    helpful_constitution: str = redefault(EvalJudgeOptions, "helpful_constitution", "eval-helpful")
    helpfulness: bool = option(True, help="Also judge helpfulness, to see whether revisions trade it away.")
    principles_per_label: int = redefault(EvalJudgeOptions, "principles_per_label", 1)

    def check(self) -> None:
        at_least("--principles-per-label", self.principles_per_label, 1)
        if self.judge == "none" and not self.reward_model:
            raise ConfigError("with --judge none, give --reward-model: nothing would score the revisions")


@dataclass
class RevisionRunOptions(RunOptions):
    """The run options, with --out defaulting to a folder inside the SL run."""

    out: str = option(None, short="-o", help="Run directory (default: <SL run>/eval-revisions, where `cai report` "
                                             "finds it). Re-running on the same directory resumes.")


@dataclass
class RevisionsEvalConfig(Options):
    """Everything `cai eval revisions` needs."""

    inputs: SLRunOptions = field(default_factory=SLRunOptions)
    #: an evaluation measures failures, so it never stops on them (1 never stops)
    run: RevisionRunOptions = field(default_factory=lambda: RevisionRunOptions(max_failure_rate=1.0))
    scoring: RevisionScoreOptions = field(default_factory=RevisionScoreOptions)

    def check(self) -> None:
        if not self.run.out and self.inputs.sl_run:
            self.run.out = str(Path(self.inputs.sl_run) / "eval-revisions")


class RewardScorer:
    """A sequence-classification preference model's reward for whole conversations, cached in the store."""

    def __init__(self, folder: str, store: Store) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from cai.engines.models import resolve_model_path

        path = Path(resolve_model_path(folder[3:] if folder.startswith("hf:") else folder))
        if not (path / "config.json").is_file():
            raise ConfigError(f"--reward-model {folder}: not a model folder (no config.json); give the --out of "
                              "`cai train reward`")
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        stamp = [(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights]
        self.model_id = f"reward:{path.resolve()}:{stable_hash(stamp)[:12]}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
        self.max_tokens = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.store, self.lock = store, asyncio.Lock()

    def _reward(self, conversation: list[Message]) -> float:
        import torch

        ids = self.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=False,
                                                 sanitize_control_tokens=True, return_dict=False)
        ids = list(ids)[-self.max_tokens:]
        with torch.no_grad():
            return float(self.model(input_ids=torch.tensor([ids])).logits[0, 0])

    async def rewards(self, conversations: list[list[Message]]) -> list[float]:
        out = []
        for conversation in conversations:
            key = stable_hash({"model": self.model_id, "kind": "reward", "messages": conversation})
            cached = self.store.get_call(key)
            if cached is None:
                async with self.lock:
                    cached = await asyncio.to_thread(self._reward, conversation)
                self.store.put_call(key, "reward", self.model_id, {"messages": conversation}, cached)
            out.append(float(cached))
        return out


class RevisionsChain:
    def __init__(self, labelers: dict[str, PairwiseLabeler], rewards: RewardScorer | None) -> None:
        self.labelers, self.reward = labelers, rewards

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        initial, revisions = row.extra["initial"], row.extra["revisions"]
        record: dict[str, Any] = {"id": row.id, "source": row.source, "messages": row.messages, "initial": initial,
                                  "rounds": [{"round": n, "principle_id": pid, "revision": text}
                                             for n, pid, text in revisions], "rewards": None, "dropped": []}
        jobs = [self._judge(row, scale, labeler, entry, record)
                for scale, labeler in self.labelers.items() for entry in record["rounds"]]
        await asyncio.gather(*jobs)
        if self.reward is not None:
            record["rewards"] = await self.reward.rewards([row.messages + [assistant(initial)]] + [
                row.messages + [assistant(text)] for _, _, text in revisions])
        return record

    async def _judge(self, row: PromptRow, scale: str, labeler: PairwiseLabeler, entry: dict[str, Any],
                     record: dict[str, Any]) -> None:
        out: dict[str, Any] = {"p_revision": None, "p_by_order": [None, None], "position_bias": None,
                               "outcome": "labelled"}
        if entry["revision"].strip() == row.extra["initial"].strip():
            out.update(p_revision=0.5, outcome="identical")
        else:
            try:
                label = await labeler.compare(row.messages, entry["revision"], row.extra["initial"],
                                              (row.id, entry["round"], scale))
            except LabelFailure as exc:
                out.update(outcome=exc.code, reason=exc.reason)
            except EngineError as exc:
                out.update(outcome=exc.code, reason=f"{type(exc).__name__}: {exc}")
            else:
                out.update(p_revision=label.p_x, p_by_order=label.p_x_by_order, position_bias=label.position_bias,
                           principle_ids=label.principle_ids)
        if out["p_revision"] is None:
            record["dropped"].append({"id": row.id, "source": row.source, "stage": f"{scale} round {entry['round']}",
                                      "code": out["outcome"], "reason": out.get("reason", "")})
        entry[scale] = out


def principle_win_rates(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The revision win rate against the initial answer, per SL principle that asked for the revision
    (`cai.stats.principles.revision_table`), per scale judged."""
    return revision_table((entry.get("principle_id") or "", scale, entry[scale].get("p_revision"))
                          for r in records for entry in r["rounds"] for scale in SCALES if scale in entry)


def run_revisions_eval(config: RevisionsEvalConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.evaluate.aggregate import REPORT_FILE, revision_headlines, revisions_report
    from cai.runs.job import run_job

    scoring = config.scoring
    config.inputs.sl_file()  # before the run directory (inside the SL run) is made
    constitutions = {}
    if scoring.judge != "none":
        constitutions["harmlessness"] = judge_constitution(scoring.harmless_constitution, "--harmless-constitution")
        if scoring.helpfulness:
            constitutions["helpfulness"] = judge_constitution(scoring.helpful_constitution, "--helpful-constitution")

    def make_chain(engines: Any, run: Any) -> RevisionsChain:
        labelers = {}
        if constitutions:
            judge = engines.open(scoring.judge, run, config.run.engine_options)
            labelers = {scale: PairwiseLabeler(judge, c, principles_per_label=scoring.principles_per_label,
                                               both_orders=True, seed=config.run.seed)
                        for scale, c in constitutions.items()}
        rewards = RewardScorer(scoring.reward_model, run.store) if scoring.reward_model else None
        return RevisionsChain(labelers, rewards)

    def write_outputs(run: Any) -> dict[str, int]:
        return {"revisions.jsonl": run.write_jsonl("revisions.jsonl", run.store.results(STAGE, "ok"))}

    def report(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
        records = list(run.store.results(STAGE, "ok"))
        full = revisions_report(records, config.inputs.failed_rows())
        full["per_principle"] = principle_win_rates(records)
        run.write_json(REPORT_FILE, full)
        return {"report_file": REPORT_FILE, "sl_run": str(Path(config.inputs.sl_run)), **revision_headlines(full),
                "per_principle": full["per_principle"]}

    result = run_job(command="eval revisions", stage=STAGE, config=config, inputs=config.inputs,
                     make_chain=make_chain, write_outputs=write_outputs,
                     manifest_parts={"sl_run": str(Path(config.inputs.sl_run)),
                                     "constitutions": {k: {"name": c.name, "source": c.source, "hash": c.hash}
                                                       for k, c in constitutions.items()},
                                     "reward_model": scoring.reward_model},
                     show_progress=show_progress, console=console, extra_summary=report)
    return result
