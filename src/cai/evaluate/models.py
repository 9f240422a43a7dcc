"""`cai eval models`: did the constitution work? Win rates, Elo and refusals of two or more policies.

Per prompt, in three sets (each row's id is `<set>:<prompt id>`):

- `red_team` (`--prompts`): every policy answers; every pair of answers is compared by
  the judge under the *harmlessness* judge constitution (`eval-harmless`), in both
  orders (`cai.label.pairwise.PairwiseLabeler`); every answer is classified as a refusal or not;
- `helpful` (`--helpful-prompts`, 20 shipped): answers compared under the *helpfulness*
  judge constitution (`eval-helpful`);
- `benign` (`--benign-prompts`, 100 shipped prompts that merely sound sensitive: "how do
  I kill a Python process"): answers classified as refusals, for over-refusal.

A policy is a model spec (answering at `--temperature`, seeded per prompt, so two names
for one model give the same answers) or a JSONL file of answers already made
(`{"id" or "prompt", "response"}`); `NAME=SPEC` names it. Refusals are classified twice:
by the judge, from the log-probs of "(A)"/"(B)" to "does the reply refuse?" asked in both
orders (no text generated; `prompts/judge_refusal.j2`), and by the phrase matcher
(`cai.label.refusal.RefusalMatcher`), with their agreement.

Nothing is dropped silently: an answer that could not be made, a comparison the judge
could not label and a refusal it could not classify each go to failures.jsonl with a
reason code, and every rate in `report.json` (`cai.evaluate.aggregate`) counts them beside its
denominator. Identical answers are a tie without asking the judge. Responses, labels and
every model call are stored, so a re-run resumes.

Not here: the statistics (`cai.stats.rates`, `cai.evaluate.aggregate`), drawing (`cai.report`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cai.core.errors import ConfigError
from cai.core.options import Options, at_least, option, redefault
from cai.core.types import Request, SamplingParams, derive_seed
from cai.engines.base import Engine, EngineError
from cai.inputs.constitution import ConstitutionOptions, judge_constitution
from cai.inputs.files import InputError, read_jsonl_records
from cai.inputs.prompts import BadRow, InputOptions, PromptRow, on_bad_input_option, read_prompts, shipped_sample
from cai.label.base import LabelFailure
from cai.label.pairwise import PairwiseLabeler
from cai.label.refusal import RefusalJudge, RefusalMatcher
from cai.runs.job import RunOptions
from cai.runs.rows import ChainFailure
from cai.text.parsing import find_defect

STAGE = "eval-models"
#: prompt set -> the judge constitution its answers are compared under (None: refusals only)
SETS: dict[str, str | None] = {"red_team": "harmless", "helpful": "helpful", "benign": None}
REFUSAL_SETS = ("red_team", "benign")


# ---- options -------------------------------------------------------------------------
@dataclass
class EvalPromptOptions(Options):
    """The three prompt sets."""

    prompts: str = option(required=True, flag="--prompts", short="-p",
                          help="Red-team prompts, held out from training: answers are compared for harmlessness and "
                               "classified as refusals. Any file cai sl reads.")
    helpful_prompts: str = option("default", help="Ordinary requests whose answers are compared for helpfulness: "
                                                  "'default' (20 shipped), 'none', or a file.")
    benign_prompts: str = option("default", help="Harmless prompts that sound sensitive, for over-refusal: "
                                                 "'default' (100 shipped), 'none', or a file.")
    prompt_field: str = redefault(InputOptions, "prompt_field", "auto")
    hh_mode: str = redefault(InputOptions, "hh_mode", "first")
    limit: int | None = option(None, help="Read at most this many prompts from each set.")
    on_bad_input: str = on_bad_input_option()

    def check(self) -> None:
        if self.limit is not None:
            at_least("--limit", self.limit, 1)

    def sets(self) -> list[tuple[str, str]]:
        """(set name, file) of every set in use."""
        chosen = {"red_team": self.prompts, "helpful": self.helpful_prompts, "benign": self.benign_prompts}
        samples = {"helpful": "helpful_prompts.jsonl", "benign": "benign_sensitive.jsonl"}
        out = []
        for name, value in chosen.items():
            if value == "none":
                continue
            out.append((name, shipped_sample(samples[name]) if value == "default" and name in samples else value))
        return out

    def rows(self) -> Iterator[PromptRow | BadRow]:
        for name, path in self.sets():
            rows = read_prompts(path, prompt_field=self.prompt_field, hh_mode=self.hh_mode,  # type: ignore[arg-type]
                                limit=self.limit)
            for row in rows:
                if isinstance(row, BadRow):
                    yield row
                else:
                    yield PromptRow(id=f"{name}:{row.id}", messages=row.messages, source=row.source,
                                    extra={"set": name, "prompt_id": row.id})


def _spec_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected model specs, got {value!r}")


@dataclass
class PolicyOptions(Options):
    """The policies under evaluation and how they answer."""

    models: list[str] = option(flag="--model", short="-m", default_factory=list, parse=_spec_list, required=True,
                               help="A policy to evaluate; repeat for each (two or more). A model spec (smollm2, "
                                    "hf:models/sl-cai, openai:...) or a JSONL file of answers already made "
                                    "({id or prompt, response}); NAME=SPEC names it (default: the spec, or the "
                                    "file's stem). The first is the Elo reference.")
    max_tokens: int = option(256, help="Max new tokens per answer.")
    temperature: float = option(0.7, help="Sampling temperature of the answers (each prompt's seed follows from "
                                          "--seed and its id).")

    def check(self) -> None:
        at_least("--max-tokens", self.max_tokens, 1)
        names = [name for name, _ in self.named()]
        if self.models and len(names) < 2:  # none at all is refused when the run starts (defaults must build)
            raise ConfigError(f"give at least two policies to compare with --model (got {len(names)})")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"--model names must differ; {', '.join(dupes)} given twice (name them NAME=SPEC)")

    def named(self) -> list[tuple[str, str]]:
        out = []
        for spec in self.models:
            name, sep, rest = spec.partition("=")
            if sep and name and "/" not in name and ":" not in name:
                out.append((name, rest))
            else:
                out.append((Path(spec).stem if is_response_file(spec) else spec, spec))
        return out


def is_response_file(spec: str) -> bool:
    return spec.endswith(".jsonl") and Path(spec).is_file()


@dataclass
class EvalJudgeOptions(Options):
    """The judge, its two constitutions and the statistics."""

    judge: str = option("smollm2", help="Judge model spec: compares answers and classifies refusals by "
                                        "log-prob.")
    harmless_constitution: str = option("eval-harmless", help="Judge constitution for red-team answers (a "
                                                              "shipped name or a file with judge questions).")
    helpful_constitution: str = option("eval-helpful", help="Judge constitution for helpful answers.")
    principles_per_label: int = option(1, help="Average each comparison over M sampled judge questions.")
    refusals: bool = option(True, help="Classify refusals on red-team and benign prompts (judge and phrase "
                                       "matcher).")
    bootstrap: int = option(500, help="Bootstrap resamples of the prompts for the Elo intervals.")
    judge_agreement: str = option("none", help="A `cai eval judge` run (or its report.json) of this judge on "
                                               "human-labelled pairs: its agreement with the humans, with its "
                                               "interval, is stated beside each model's verdict, and verdicts of a "
                                               "judge not above chance say so. 'none': not measured.")

    def check(self) -> None:
        at_least("--principles-per-label", self.principles_per_label, 1)
        at_least("--bootstrap", self.bootstrap, 0)


@dataclass
class ModelsEvalConfig(Options):
    """Everything `cai eval models` needs; the CLI and `--config` fill it, `run_models_eval` runs it."""

    inputs: EvalPromptOptions = field(default_factory=EvalPromptOptions)
    #: an evaluation measures failures, so it never stops on them (1 never stops)
    run: RunOptions = field(default_factory=lambda: RunOptions(max_failure_rate=1.0))
    policies: PolicyOptions = field(default_factory=PolicyOptions)
    judging: EvalJudgeOptions = field(default_factory=EvalJudgeOptions)


# ---- policies: who answers -------------------------------------------------------------
class NoAnswer(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class Policy(Protocol):
    name: str

    async def answer(self, row: PromptRow, params: SamplingParams) -> dict[str, Any]: ...


@dataclass
class EnginePolicy:
    name: str
    engine: Engine

    async def answer(self, row: PromptRow, params: SamplingParams) -> dict[str, Any]:
        try:
            out = (await self.engine.generate([Request.of(row.messages, params)]))[0][0]
        except EngineError as exc:
            raise NoAnswer(exc.code, f"{type(exc).__name__}: {exc}") from exc
        return {"text": out.text, "finish_reason": out.finish_reason, "completion_tokens": out.completion_tokens}


@dataclass
class FilePolicy:
    """Answers read from a JSONL file, found by prompt id, else by the prompt's text."""

    name: str
    path: str
    by_id: dict[str, str] = field(default_factory=dict)
    by_prompt: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str, path: str) -> FilePolicy:
        policy = cls(name, path)
        for n, rec in enumerate(read_jsonl_records(path), 1):
            text = rec.get("response")
            if not isinstance(text, str):
                raise InputError(f"{path}: record {n} needs a 'response' string (and an 'id' or 'prompt')")
            if rec.get("id") not in (None, ""):
                policy.by_id[str(rec["id"])] = text
            if isinstance(rec.get("prompt"), str):
                policy.by_prompt[rec["prompt"].strip()] = text
        return policy

    async def answer(self, row: PromptRow, params: SamplingParams) -> dict[str, Any]:
        text = self.by_id.get(row.extra["prompt_id"], self.by_prompt.get(row.prompt.strip()))
        if text is None:
            raise NoAnswer("no_response", f"{self.path} has no response for id {row.extra['prompt_id']!r} or this "
                                          "prompt")
        return {"text": text, "finish_reason": "stop", "completion_tokens": 0}


# ---- the chain: one prompt, every policy ------------------------------------------------------
class ModelsEvalChain:
    def __init__(self, policies: list[Policy], labelers: dict[str, PairwiseLabeler], refusal: RefusalJudge | None,
                 settings: PolicyOptions, seed: int = 0) -> None:
        self.policies, self.labelers, self.refusal = policies, labelers, refusal
        self.settings, self.seed = settings, seed
        self.matcher = RefusalMatcher.shipped()

    async def _answer(self, policy: Policy, row: PromptRow) -> dict[str, Any]:
        params = SamplingParams(max_tokens=self.settings.max_tokens, temperature=self.settings.temperature,
                                seed=derive_seed(self.seed, row.id, "answer"))
        try:
            answer = await policy.answer(row, params)
        except NoAnswer as exc:
            return {"text": None, "failure": exc.code, "reason": exc.reason}
        defect = find_defect(answer["text"])
        return {**answer, "defect": defect.code if defect else None}

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        kind = row.extra["set"]
        answers = await asyncio.gather(*[self._answer(p, row) for p in self.policies])
        record: dict[str, Any] = {"id": row.id, "set": kind, "prompt_id": row.extra["prompt_id"], "source": row.source,
                                  "messages": row.messages, "responses": {}, "comparisons": [], "refusals": {},
                                  "dropped": []}
        for policy, answer in zip(self.policies, answers, strict=True):
            record["responses"][policy.name] = answer
            if answer["text"] is None:
                record["dropped"].append(self._dropped(row, "answer", answer["failure"],
                                                       f"{policy.name}: {answer['reason']}", model=policy.name))
        if all(a["text"] is None for a in answers):
            first = answers[0]
            raise ChainFailure("answer", f"no policy answered (first: {first['reason']})", record,
                               code=first["failure"])
        texts = {p.name: a["text"] for p, a in zip(self.policies, answers, strict=True)}
        labeler = self.labelers.get(kind)
        jobs = []
        if labeler is not None:
            jobs += [self._compare(labeler, row, a.name, b.name, texts, record)
                     for a, b in itertools.combinations(self.policies, 2)]
        if self.refusal is not None and kind in REFUSAL_SETS:
            jobs += [self._refusal(row, name, text, record) for name, text in texts.items() if text is not None]
        await asyncio.gather(*jobs)
        record["comparisons"].sort(key=lambda c: (c["a"], c["b"]))
        return record

    async def _compare(self, labeler: PairwiseLabeler, row: PromptRow, a: str, b: str, texts: dict[str, str | None],
                       record: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"a": a, "b": b, "p_a": None, "p_a_by_order": [None, None], "position_bias": None,
                                 "principle_ids": [], "outcome": "labelled"}
        ta, tb = texts[a], texts[b]
        if ta is None or tb is None:
            entry["outcome"] = "no_response"
        elif ta == tb:
            entry.update(p_a=0.5, outcome="identical")
        else:
            try:
                label = await labeler.compare(row.messages, ta, tb, (row.id, a, b))
            except LabelFailure as exc:
                entry.update(outcome=exc.code, reason=exc.reason, judge_raw=exc.raw)
            except EngineError as exc:
                entry.update(outcome=exc.code, reason=f"{type(exc).__name__}: {exc}")
            else:
                entry.update(p_a=label.p_x, p_a_by_order=label.p_x_by_order, position_bias=label.position_bias,
                             principle_ids=label.principle_ids)
        if entry["p_a"] is None:
            record["dropped"].append(self._dropped(row, "comparison", entry["outcome"],
                                                   f"{a} vs {b}: {entry.get('reason', 'a policy gave no answer')}",
                                                   models=[a, b]))
        record["comparisons"].append(entry)

    async def _refusal(self, row: PromptRow, name: str, text: str, record: dict[str, Any]) -> None:
        assert self.refusal is not None
        matched = self.matcher.match(text)
        entry: dict[str, Any] = {"matcher_refuses": matched is not None, "matched_phrase": matched}
        try:
            entry.update(await self.refusal.classify(row.messages, text))
        except LabelFailure as exc:  # non-finite log-probs
            entry.update(judge_refuses=None, failure="nonfinite_score", reason=str(exc))
        except EngineError as exc:
            entry.update(judge_refuses=None, failure=exc.code, reason=f"{type(exc).__name__}: {exc}")
        if entry.get("failure"):
            record["dropped"].append(self._dropped(row, "refusal", entry["failure"], f"{name}: {entry['reason']}",
                                                   model=name))
        record["refusals"][name] = entry

    @staticmethod
    def _dropped(row: PromptRow, stage: str, code: str, reason: str, **extra: Any) -> dict[str, Any]:
        return {"id": row.id, "source": row.source, "stage": stage, "code": code, "reason": reason, **extra}


def _judge_agreement(judging: EvalJudgeOptions) -> dict[str, Any] | None:
    """The judge's agreement with human labels from `--judge-agreement` (a `cai eval judge` run)."""
    import json

    from cai.evaluate.aggregate import judge_agreement

    if judging.judge_agreement == "none":
        return None
    path = Path(judging.judge_agreement)
    file = path / "report.json" if path.is_dir() else path
    try:
        loaded = json.loads(file.read_text("utf-8"))
        return judge_agreement(loaded, judging.judge, str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--judge-agreement {judging.judge_agreement}: not a `cai eval judge` run or its "
                          f"report.json ({type(exc).__name__}: {exc})") from None


def run_models_eval(config: ModelsEvalConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.evaluate.aggregate import REPORT_FILE, headlines, models_report, verdicts
    from cai.runs.job import run_job

    judging, named = config.judging, config.policies.named()
    if len(named) < 2:
        raise ConfigError(f"give at least two policies to compare with --model (got {len(named)})")
    constitutions = {"harmless": judge_constitution(judging.harmless_constitution, "--harmless-constitution"),
                     "helpful": judge_constitution(judging.helpful_constitution, "--helpful-constitution")}
    files = {name: FilePolicy.load(name, spec) for name, spec in named if is_response_file(spec)}
    agreement = _judge_agreement(judging)  # a wrong --judge-agreement fails now, not after every answer

    def make_chain(engines: Any, run: Any) -> ModelsEvalChain:
        options = config.run.engine_options
        policies: list[Policy] = [files.get(name) or EnginePolicy(name, engines.open(spec, run, options))
                                  for name, spec in named]
        judge = engines.open(judging.judge, run, options)
        labelers = {kind: PairwiseLabeler(judge, constitutions[which], both_orders=True, seed=config.run.seed,
                                          principles_per_label=judging.principles_per_label)
                    for kind, which in SETS.items() if which}
        refusal = RefusalJudge(judge) if judging.refusals else None
        return ModelsEvalChain(policies, labelers, refusal, config.policies, seed=config.run.seed)

    def write_outputs(run: Any) -> dict[str, int]:
        def flat(key: str) -> Iterator[dict[str, Any]]:
            for r in run.store.results(STAGE, "ok"):
                base = {"id": r["id"], "set": r["set"], "prompt_id": r["prompt_id"]}
                if key == "responses":
                    yield from ({**base, "model": m, "prompt": r["messages"], **a} for m, a in r["responses"].items())
                elif key == "comparisons":
                    yield from ({**base, **c} for c in r["comparisons"])
                else:
                    yield from ({**base, "model": m, **c} for m, c in r["refusals"].items())
        return {f"{key}.jsonl": run.write_jsonl(f"{key}.jsonl", flat(key))
                for key in ("responses", "comparisons", "refusals")}

    def report(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
        records = list(run.store.results(STAGE, "ok"))
        records += [f["trace"] for f in run.store.results(STAGE, "failed") if f.get("trace", {}).get("responses")]
        full = models_report(records, [name for name, _ in named], bootstrap=judging.bootstrap, seed=config.run.seed)
        full["judge_agreement"] = agreement
        full["verdicts"] = verdicts(full, agreement)
        run.write_json(REPORT_FILE, full)
        return {"report_file": REPORT_FILE, **headlines(full)}

    policies_manifest = {name: {"spec": spec, "kind": "responses file" if name in files else "model"}
                         for name, spec in named}
    result = run_job(command="eval models", stage=STAGE, config=config, inputs=config.inputs,
                     make_chain=make_chain, write_outputs=write_outputs,
                     manifest_parts={"policies": policies_manifest, "prompt_sets": dict(config.inputs.sets()),
                                     "constitutions": {k: ConstitutionOptions().manifest(c)
                                                       for k, c in constitutions.items()}},
                     show_progress=show_progress, console=console, extra_summary=report)
    return result
