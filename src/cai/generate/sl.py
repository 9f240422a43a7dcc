"""SL-CAI: answer, then rounds of critique and revision under sampled principles.

Per prompt (Bai et al. 2022, section 3):
1. the policy answers the red-team conversation as it stands (no few-shot);
2. for each of R rounds, a principle is sampled for that round (seeded by run seed, row
   id and round), the model critiques its last reply under the principle's critique
   request, then rewrites it under the principle's revision request. Each step sees the
   whole conversation so far, after the few-shot examples;
3. revisions are cleaned of lead-ins; an empty or degenerate revision fails the row with
   its reason code and the partial trace; it never becomes training data. A final
   revision cut off at `max_tokens` (finish reason `length`) fails with code `truncated`
   unless `keep_truncated` is set, which keeps it flagged `truncated: true` in sl.jsonl.
4. the revision quality gates (`cai.generate.gates`: `copies_critique`, `unchanged`,
   `refusal_only`, `conversation_runon`) then fail the row or flag the round, as `--gates`
   says: flags go in `quality_flags` on the round and on the row, and the summary's
   `revision_gates` counts rows kept clean, kept flagged and failed, by gate.

`build_*` functions only build messages and `SLChain` only orchestrates, so prompt
building is testable without a model. Outputs: `sl.jsonl` (full trace), `sft.jsonl`
(TRL's `messages` format, prompt -> final revision), plus the run files of `cai.runs.run_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cai.core.errors import ConfigError
from cai.core.options import Options, at_least, escaped_list, option
from cai.core.types import Completion, Message, Request, SamplingParams, assistant, derive_seed, user
from cai.engines.base import Engine
from cai.generate.gates import POLICIES, Review, attempt_summary, gate_summary, review_revision
from cai.inputs.constitution import Constitution, ConstitutionOptions, Principle
from cai.inputs.few_shot import FEW_SHOT_KEYS, FewShot, load_few_shot  # noqa: F401  (moved there; kept importable here)
from cai.inputs.prompts import InputOptions, PromptRow
from cai.runs.job import RunOptions
from cai.runs.rows import ChainFailure
from cai.text.parsing import cleanup_revision, find_defect

STAGE = "sl"


def build_critique_messages(few_shot: FewShot, conversation: list[Message], principle: Principle) -> list[Message]:
    return few_shot.prefix() + conversation + [user(principle.critique)]


def build_revision_messages(few_shot: FewShot, conversation: list[Message], principle: Principle,
                            critique: str) -> list[Message]:
    return (few_shot.prefix() + conversation
            + [user(principle.critique), assistant(critique), user(principle.revision)])


@dataclass
class RevisionOptions(Options):
    """The model that answers, critiques and revises, and how it samples."""

    model: str = option("smollm2", help="Model spec: smollm2 (embedded), hf:<folder|gguf|hub id>, "
                                        "openai:<model>@<base_url>, vllm:<folder|hub id>.")
    rounds: int = option(4, help="Critique/revision rounds; the paper used 4.")
    few_shot: str = option("default", help="'default' (shipped examples), 'none', our YAML, or Anthropic's "
                                           "CritiqueRevisionFewShotPrompts.json shape.")
    max_tokens: int = option(256, help="Max new tokens per answer, critique and revision.")
    temperature: float = option(0.7, help="Sampling temperature.")
    top_p: float = option(1.0, help="Nucleus sampling: keep the smallest set of tokens whose probability "
                                    "reaches this.")
    stop: list[str] = option(default_factory=list, parse=escaped_list, cli_type=list[str], metavar="TEXT",
                             help="Stop each answer, critique and revision at this text (repeatable; backslash "
                                  "escapes such as '\\n\\n' are read, so --stop '\\n\\n' keeps the first "
                                  "paragraph). A reply that ends at a stop text is finished, not truncated.")
    keep_truncated: bool = option(False, help="Keep a final revision cut off at --max-tokens (flagged "
                                              "truncated: true) instead of recording it as a failure with code "
                                              "'truncated'.")
    revision_attempts: int = option(
        1, help="Sample each revision up to this many times (each attempt with its own seed) until one passes the "
                "defect checks and the quality gates. Every rejected attempt stays in the round's trace "
                "(rejected_attempts) and is counted in the summary (revision_attempts). 1: no resampling. A "
                "final revision cut off at --max-tokens is resampled too (code 'truncated'); if every attempt is cut, "
                "the row fails as 'truncated'.")
    gates: str = option("default", choices=tuple(POLICIES),
                        help="Revision quality gates. 'default': a revision that copies the critique fails its row "
                             "(copies_critique); unchanged, refusal_only and conversation_runon (cut at the new "
                             "turn) revisions are kept, listed in quality_flags. 'keep': no gate fails a row, every "
                             "gate only flags. 'strict': every gate fails its row.")

    def check(self) -> None:
        at_least("--rounds", self.rounds, 1)
        at_least("--revision-attempts", self.revision_attempts, 1)
        at_least("--max-tokens", self.max_tokens, 1)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1]; got {self.top_p!r}")


def _usage(*completions: Completion) -> dict[str, int]:
    return {"prompt_tokens": sum(c.prompt_tokens for c in completions),
            "completion_tokens": sum(c.completion_tokens for c in completions)}


class SLChain:
    def __init__(self, engine: Engine, constitution: Constitution, few_shot: FewShot, settings: RevisionOptions,
                 seed: int = 0) -> None:
        self.engine, self.constitution, self.few_shot, self.settings = engine, constitution, few_shot, settings
        self.seed = seed

    def _params(self, row: PromptRow, step: str) -> SamplingParams:
        s = self.settings
        return SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                              seed=derive_seed(self.seed, row.id, step), stop=tuple(s.stop))

    async def _ask(self, messages: list[Message], params: SamplingParams) -> Completion:
        return (await self.engine.generate([Request.of(messages, params)]))[0][0]

    async def _revise(self, row: PromptRow, number: int, conversation: list[Message], principle: Principle,
                      critique: Completion) -> tuple[Completion, Review, list[dict[str, Any]]]:
        """The round's revision and its review; with --revision-attempts N, resampled (seeded per attempt)
        while it fails, every rejected attempt returned with its code."""
        messages = build_revision_messages(self.few_shot, conversation, principle, critique.text)
        attempts = self.settings.revision_attempts if self.settings.temperature > 0 else 1
        rejected: list[dict[str, Any]] = []
        for attempt in range(1, attempts + 1):
            step = f"revision-{number}" if attempt == 1 else f"revision-{number}-attempt-{attempt}"
            revision = await self._ask(messages, self._params(row, step))
            review = review_revision(cleanup_revision(revision.text), reply=conversation[-1]["content"],
                                     critique=critique.text, principle=principle, policy=self.settings.gates)
            cut = self._cut_final(number, revision)
            if (review.failure is None and cut is None) or attempt == attempts:
                return revision, review, rejected
            code, reason = (review.failure.code, review.failure.message) if review.failure else ("truncated", cut)
            rejected.append({"attempt": attempt, "code": code, "reason": reason,
                             "revision_raw": revision.text, "usage": _usage(revision)})
        raise AssertionError("unreachable: the last attempt returns")

    def _cut_final(self, number: int, revision: Completion) -> str | None:
        """Why the final round's revision fails as cut off at --max-tokens (None if it does not: it
        finished, it is not the last round's, or --keep-truncated keeps it)."""
        if revision.finish_reason != "length" or number != self.settings.rounds or self.settings.keep_truncated:
            return None
        return f"the final revision was cut off at --max-tokens {self.settings.max_tokens}"

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        trace: dict[str, Any] = {"id": row.id, "source": row.source, "messages": row.messages, "rounds": []}
        initial = await self._ask(row.messages, self._params(row, "initial"))
        trace["initial"] = initial.to_dict()
        defect = find_defect(initial.text)
        if defect:
            raise ChainFailure("initial answer", defect.message, trace, code=defect.code)
        conversation = row.messages + [assistant(initial.text)]
        completions = [initial]
        principles = self.constitution.sample_sl(self.settings.rounds, self.seed, row.id)
        for number, principle in enumerate(principles, 1):
            critique = await self._ask(build_critique_messages(self.few_shot, conversation, principle),
                                       self._params(row, f"critique-{number}"))
            completions.append(critique)
            revision, review, rejected = await self._revise(row, number, conversation, principle, critique)
            completions.append(revision)
            trace["rounds"].append({
                "round": number, "principle_id": principle.id,
                "critique_request": principle.critique, "critique": critique.text,
                "critique_finish": critique.finish_reason,
                "revision_request": principle.revision, "revision_raw": revision.text, "revision": review.text,
                "revision_finish": revision.finish_reason, "usage": _usage(critique, revision),
                "quality_flags": review.flag_codes, "rejected_attempts": rejected,
            })
            if review.failure:
                raise ChainFailure(f"round {number} revision", review.failure.message, trace,
                                   code=review.failure.code)
            conversation = conversation + [user(principle.critique), assistant(critique.text),
                                           user(principle.revision), assistant(review.text)]
        if revision.finish_reason == "length":  # the SFT target would end mid-sentence
            cut = self._cut_final(len(principles), revision)
            if cut is not None:
                raise ChainFailure(f"round {len(principles)} revision", cut, trace, code="truncated")
            trace["truncated"] = True
        trace["final"] = conversation[-1]["content"]
        trace["principle_ids"] = [p.id for p in principles]
        trace["quality_flags"] = list(dict.fromkeys(c for r in trace["rounds"] for c in r["quality_flags"]))
        trace["usage"] = _usage(*completions)
        return trace


def sft_row(record: dict[str, Any]) -> dict[str, Any]:
    """TRL conversational SFT row: the prompt conversation, then the final revision."""
    return {"messages": record["messages"] + [assistant(record["final"])]}


# ---- the `cai sl` job ---------------------------------------------------------------------
@dataclass
class SLConfig(Options):
    """Everything `cai sl` needs; the CLI and `--config` fill it, `run_sl` runs it."""

    inputs: InputOptions = field(default_factory=InputOptions)
    run: RunOptions = field(default_factory=RunOptions)
    constitution: ConstitutionOptions = field(default_factory=ConstitutionOptions)
    revision: RevisionOptions = field(default_factory=RevisionOptions)


def run_sl(config: SLConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.runs.job import run_job

    constitution = config.constitution.load()
    few_shot = load_few_shot(config.revision.few_shot)

    def make_chain(engines: Any, run: Any) -> SLChain:
        engine = engines.open(config.revision.model, run, config.run.engine_options)
        return SLChain(engine, constitution, few_shot, config.revision, seed=config.run.seed)

    def write_outputs(run: Any) -> dict[str, int]:
        return {"sl.jsonl": run.write_jsonl("sl.jsonl", run.store.results(STAGE, "ok")),
                "sft.jsonl": run.write_jsonl("sft.jsonl", (sft_row(r) for r in run.store.results(STAGE, "ok")))}

    return run_job(
        command="sl", stage=STAGE, config=config, inputs=config.inputs,
        make_chain=make_chain, write_outputs=write_outputs,
        manifest_parts={"constitution": config.constitution.manifest(constitution),
                        "few_shot": {"source": few_shot.source, "examples": len(few_shot.examples)}},
        extra_summary=lambda run, summary: {
            "revision_gates": gate_summary(run.store.entries(STAGE), config.revision.gates),
            "revision_attempts": attempt_summary(run.store.entries(STAGE), config.revision.revision_attempts)},
        show_progress=show_progress, console=console,
    )
