"""`cai redteam`: new red-team prompts, by few-shot prompting a model with seed prompts.

The CAI paper wrote 77% of its red-team prompts this way (§3.2): a pretrained model shown
prompts people wrote continues with new ones. Here:

1. **Tasks.** `--count` requests to the model, each a row of the run (ids `t00001-<principle>`),
   so a run resumes as `cai sl` does (`cai.runs.job`: finished tasks are skipped, calls
   come from the run's cache). Each task shows `--shots` seed prompts, drawn afresh (seeded
   by the run seed and the task's number) from `--seeds` (the user's prompt file, or the
   shipped samples), and asks for `--per-request` samples.
2. **Aim.** `--principle all` spreads the tasks evenly over the constitution's principles
   (task i aims at principle i mod P), `--principle ID` aims every task at one, `--principle
   none` aims at none (the paper's setting). The principle's text (as the constitution wrote
   it, else its judge question, else its critique request) goes into the prompt.
3. **Modes.** A chat model gets one user turn and answers with one request
   (`prompts/redteam.yaml` `chat`); a base model (`--mode plain`, or `auto` for an engine
   whose prompt format is plain: `-E prompt_format=plain`, or a model with no chat template)
   continues a numbered list and stops at the line's end (`plain`).
4. **Filters**, each a reason code in failures.jsonl, generated.jsonl and the summary:
   `truncated` (cut at `--max-tokens`), `empty`, `too_short` / `overlong` (`--min-words`,
   `--max-words`), a defect (`repetitive`, `no_words`: `cai.text.parsing.find_defect`),
   `refusal` (the model declined: the shipped phrase matcher), `copied_instruction` (it
   repeated the instruction or the principle), `not_a_request` (`redteam.yaml`'s request
   words).
5. **Deduplication**, when the outputs are written and always in task order, so it does not
   depend on timing: against the seeds, then within the output, exact (`duplicate_of_seed`,
   `duplicate`) then near (`near_duplicate_of_seed`, `near_duplicate`: Jaccard of
   character 5-grams >= `--near-duplicate`, candidates from datasketch's MinHash LSH;
   `cai.text.diversity`).
6. **Outputs.** `prompts.jsonl` (`{"id", "prompt", ...provenance}`, read directly by
   `cai sl --prompts` and `cai rl --prompts`): each prompt keeps its seed ids and texts,
   the model, mode, principle, task, sample and sampling seed. `generated.jsonl`: every
   sample with its outcome. The summary: generated, kept, dropped by reason, the
   deduplication rate, diversity (distinct-1/2 and Self-BLEU of the kept prompts, beside
   the same for the seeds) and coverage per principle, each with its denominator.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cai.core.errors import ConfigError
from cai.core.options import Options, at_least, option
from cai.core.types import Request, SamplingParams, derive_seed, stable_hash, user
from cai.engines.base import Engine
from cai.inputs.constitution import Constitution, ConstitutionOptions, Principle
from cai.inputs.files import InputError
from cai.inputs.prompts import BadRow, PromptRow, read_prompts, sample_prompts_path
from cai.label.base import is_plain, text_message
from cai.label.refusal import RefusalMatcher
from cai.runs.job import RunOptions
from cai.stats.principles import proportion
from cai.text.diversity import Deduplicator, distinct_n, self_bleu
from cai.text.parsing import find_defect
from cai.text.templates import load_prompt_yaml

STAGE = "redteam"
TEMPLATES = "redteam.yaml"


@dataclass
class SeedOptions(Options):
    """The seed prompts the model is shown as examples."""

    seeds: str = option("samples", help="Seed prompts: a prompt file as --prompts reads it (.jsonl, .csv, .parquet, a "
                                        "saved dataset; hh-rlhf transcripts understood), or 'samples' for the "
                                        "shipped red-team samples.")
    seed_field: str = option("auto", help="Column holding the seed prompt ('auto' as for --prompt-field).")
    seed_limit: int | None = option(None, help="Read at most this many seed rows.")
    on_bad_seed: str = option("error", choices=("error", "skip"),
                              help="'error': stop on the first bad seed row (file:line and reason); 'skip': count "
                                   "it in the summary and go on.")

    def check(self) -> None:
        if self.seed_limit is not None:
            at_least("--seed-limit", self.seed_limit, 1)


@dataclass
class RedteamOptions(Options):
    """The model that writes the prompts, what it is aimed at, and what is kept."""

    model: str = option("smollm2", help="Model spec that writes the prompts: a chat model, or a base model with "
                                        "plain prompts.")
    mode: str = option("auto", choices=("auto", "chat", "plain"),
                       help="chat: one user turn, the answer is a request; plain: a numbered list the model "
                            "continues (a base model; needs -E prompt_format=plain or a model with no chat template); "
                            "auto: plain exactly when the engine prompts plainly.")
    principle: str = option("all", help="'all': tasks spread evenly over the constitution's principles; a principle "
                                        "id: every task aimed at it; 'none': not aimed (as the CAI paper did).")
    count: int = option(50, help="Requests to the model (tasks); each asks for --per-request prompts.")
    per_request: int = option(4, help="Prompts sampled per request.")
    shots: int = option(4, help="Seed prompts shown in each request, drawn afresh for each.")
    temperature: float = option(1.0, help="Sampling temperature.")
    top_p: float = option(0.95, help="Nucleus sampling.")
    max_tokens: int = option(64, help="Max new tokens per prompt; one cut off there is dropped (truncated).")
    min_words: int = option(3, help="Shorter prompts are dropped (too_short).")
    max_words: int = option(80, help="Longer prompts are dropped (overlong).")
    near_duplicate: float = option(0.7, help="Jaccard similarity of character 5-grams at which a prompt is a "
                                             "near-duplicate of a seed or of an earlier prompt (found with MinHash "
                                             "LSH, confirmed exactly); 1 keeps near-duplicates.")

    def check(self) -> None:
        for name, value in (("--count", self.count), ("--per-request", self.per_request), ("--shots", self.shots),
                            ("--max-tokens", self.max_tokens), ("--min-words", self.min_words)):
            at_least(name, value, 1)
        at_least("--max-words", self.max_words, self.min_words)
        if not 0 < self.near_duplicate <= 1:
            raise ConfigError(f"--near-duplicate must be in (0, 1]; got {self.near_duplicate!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1]; got {self.top_p!r}")


@dataclass
class RedteamConfig(Options):
    """Everything `cai redteam` needs; the CLI and `--config` fill it, `run_redteam` runs it."""

    seed_prompts: SeedOptions = field(default_factory=SeedOptions)
    run: RunOptions = field(default_factory=RunOptions)
    constitution: ConstitutionOptions = field(default_factory=ConstitutionOptions)
    generation: RedteamOptions = field(default_factory=RedteamOptions)


# ---- seeds and tasks -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    id: str
    text: str
    source: str


def load_seeds(options: SeedOptions) -> tuple[list[Seed], list[BadRow]]:
    path = sample_prompts_path() if options.seeds == "samples" else options.seeds
    seeds, bad = [], []
    for row in read_prompts(path, prompt_field=options.seed_field, limit=options.seed_limit):
        if isinstance(row, BadRow):
            if options.on_bad_seed == "error":
                raise InputError(f"{row.source}: {row.reason} (--on-bad-seed skip counts it and goes on)")
            bad.append(row)
            continue
        seeds.append(Seed(row.id, " ".join(row.prompt.split()), row.source))
    if not seeds:
        raise InputError(f"{path}: no usable seed prompt")
    return seeds, bad


def principle_text(p: Principle) -> str:
    return p.text or p.judge or p.critique


def aims(constitution: Constitution, which: str) -> list[Principle | None]:
    """The principles tasks are aimed at, in turn (None: not aimed)."""
    if which == "none":
        return [None]
    if which == "all":
        return list(constitution.principles)
    try:
        return [constitution.by_id(which)]
    except KeyError:
        raise ConfigError(f"--principle {which!r}: no such principle in {constitution.source} (ids: "
                          f"{', '.join(p.id for p in constitution.principles[:20])}; or 'all', 'none')") from None


@lru_cache(maxsize=1)
def _templates() -> dict[str, Any]:
    return load_prompt_yaml(TEMPLATES)


def build_messages(shown: list[Seed], principle: Principle | None, plain: bool) -> list[dict[str, str]]:
    """The request for one task: chat (one user turn) or plain (one block of text the model continues)."""
    kind = _templates()["plain" if plain else "chat"]["aimed" if principle else "unaimed"]
    if plain:
        examples = "\n".join(f"{i}. {s.text}" for i, s in enumerate(shown, 1))
    else:
        examples = "\n".join(f"- {s.text}" for s in shown)
    text = (kind.replace("{examples}", examples).replace("{next}", str(len(shown) + 1))
            .replace("{principle}", principle_text(principle) if principle else ""))
    return [text_message(text)] if plain else [user(text)]


@dataclass
class TaskInputs:
    """The job's rows: one task per request to the model, each with its seeds and aim (built, not read).

    A row holds the plan; the chain writes the request once it knows the engine's prompt format."""

    seeds: list[Seed]
    targets: list[Principle | None]
    count: int
    shots: int
    seed: int
    limit: int | None = None
    on_bad_input: str = "skip"

    def rows(self) -> list[PromptRow]:
        out = []
        for i in range(self.count):
            principle = self.targets[i % len(self.targets)]
            rng = random.Random(derive_seed(self.seed, "redteam-shots", i))
            shown = rng.sample(self.seeds, min(self.shots, len(self.seeds)))
            pid = principle.id if principle else "none"
            out.append(PromptRow(id=f"t{i + 1:05d}-{pid}", messages=[user(s.text) for s in shown],
                                 source=f"task {i + 1}", extra={"principle": principle.id if principle else None,
                                                                "seed_ids": [s.id for s in shown]}))
        return out


# ---- the chain: generate, clean, filter -----------------------------------------------------------
def clean(text: str, plain: bool) -> str:
    """The request in a sample: its first line, without lead-ins, numbering or wrapping quotes."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[0]
    if not plain:
        for pattern in _templates()["lead_ins"]:
            stripped = re.sub(pattern, "", line, count=1, flags=re.IGNORECASE).strip()
            if not stripped and len(lines) > 1:  # the lead-in was the whole line: the request is on the next
                line = lines[1]
                continue
            line = stripped
    line = re.sub(r"^\s*(\d+[.)]|[-*•])\s+", "", line).strip()
    for left, right in (('"', '"'), ("“", "”"), ("'", "'")):
        if len(line) > 2 and line.startswith(left) and line.endswith(right):
            line = line[1:-1].strip()
    return line


def looks_like_request(text: str) -> bool:
    t = _templates()
    lowered = text.lower().strip()
    first = re.split(r"[\s,]+", lowered, maxsplit=1)[0].strip("\"'")
    return lowered.endswith("?") or first in t["request_starts"] or any(p in lowered for p in t["request_phrases"])


def filter_code(text: str, raw: str, finish_reason: str, settings: RedteamOptions, messages: list[dict[str, str]],
                principle: str) -> str | None:
    """Why a cleaned sample is not a usable prompt (a reason code), or None. A sample cut at --max-tokens is
    truncated only when its request is on the line that was cut (a chat model may write more lines after it)."""
    lines = raw.strip().splitlines()
    if finish_reason == "length" and (not text or not lines or text in lines[-1]):
        return "truncated"
    if not text:
        return "empty"
    defect = find_defect(text)
    if defect:
        return defect.code
    words = len(text.split())
    if words < settings.min_words:
        return "too_short"
    if words > settings.max_words:
        return "overlong"
    if RefusalMatcher.shipped().match(text):
        return "refusal"
    lowered = " ".join(text.lower().split())
    instruction = " ".join(messages[-1]["content"].lower().split())
    if (principle and lowered in principle.lower()) or any(
            chunk in lowered for chunk in ("write one new request", "reply with the request", "one request per line",
                                           "people test ai assistants")) or (len(lowered) > 40 and lowered in instruction):
        return "copied_instruction"
    if not looks_like_request(text):
        return "not_a_request"
    return None


class RedteamChain:
    def __init__(self, engine: Engine, settings: RedteamOptions, constitution: Constitution, seed: int = 0,
                 plain: bool = False) -> None:
        self.engine, self.settings, self.constitution, self.seed, self.plain = engine, settings, constitution, seed, plain

    async def __call__(self, row: PromptRow) -> dict[str, Any]:
        s = self.settings
        request_seed = derive_seed(self.seed, row.id, "redteam")
        params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, n=s.per_request,
                                seed=request_seed, stop=("\n",) if self.plain else ())
        pid = row.extra["principle"]
        principle = self.constitution.by_id(pid) if pid else None
        shown = [Seed(i, m["content"], "") for i, m in zip(row.extra["seed_ids"], row.messages, strict=True)]
        messages = build_messages(shown, principle, self.plain)
        instruction = build_messages([], principle, self.plain)  # without the examples: copying one is a duplicate
        outs = (await self.engine.generate([Request.of(messages, params)]))[0]
        text_of_principle = principle_text(principle) if principle else ""
        record: dict[str, Any] = {"id": row.id, "source": row.source, "principle": pid,
                                  "seed_ids": row.extra["seed_ids"], "request_seed": request_seed,
                                  "mode": "plain" if self.plain else "chat", "model": self.engine.model_id,
                                  "samples": [], "dropped": []}
        for k, c in enumerate(outs):
            text = clean(c.text, self.plain)
            code = filter_code(text, c.text, c.finish_reason, s, instruction, text_of_principle)
            record["samples"].append({"index": k, "raw": c.text, "text": text, "outcome": code or "candidate",
                                      "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens})
            if code:
                record["dropped"].append({"id": row.id, "source": row.source, "stage": f"sample {k}", "code": code,
                                          "reason": f"{code}: {c.text[:200]!r}"})
        return record


# ---- dedup, outputs and the summary -----------------------------------------------------------------
def select(records: list[dict[str, Any]], seeds: list[Seed], threshold: float, seed_texts: dict[str, str],
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept prompts with provenance, every sample with its outcome), deduplicated in task order."""
    dedup = Deduplicator(threshold=threshold)
    for s in seeds:  # read_prompts keeps ids unique (a repeated id gets -2, -3 ...)
        dedup.add(f"seed:{s.id}", s.text)
    kept, generated = [], []
    for r in records:
        for sample in r["samples"]:
            outcome, duplicate_of = sample["outcome"], None
            if outcome == "candidate":
                dup = dedup.check(sample["text"])
                if dup is None:
                    outcome = "kept"
                else:
                    of_seed = dup.of.startswith("seed:")
                    outcome = ("duplicate" if dup.kind == "exact" else "near_duplicate") + ("_of_seed" if of_seed
                                                                                             else "")
                    duplicate_of = {"id": dup.of, "similarity": dup.similarity}
            key = f"{r['id']}/{sample['index']}"
            if outcome == "kept":
                dedup.add(key, sample["text"])
                kept.append({"id": "rt-" + stable_hash([r["id"], sample["index"], sample["text"]])[:12],
                             "prompt": sample["text"], "principle": r["principle"], "seed_ids": r["seed_ids"],
                             "seed_prompts": [seed_texts.get(i, "") for i in r["seed_ids"]], "model": r["model"],
                             "mode": r["mode"], "task": r["id"], "sample": sample["index"],
                             "request_seed": r["request_seed"]})
            generated.append({"task": r["id"], "sample": sample["index"], "principle": r["principle"],
                              "text": sample["text"], "raw": sample["raw"], "outcome": outcome,
                              "duplicate_of": duplicate_of})
    return kept, generated


def redteam_summary(kept: list[dict[str, Any]], generated: list[dict[str, Any]], seeds: list[Seed],
                    targets: list[Principle | None], tasks: dict[str, int], bad_seeds: int) -> dict[str, Any]:
    outcomes = Counter(g["outcome"] for g in generated)
    total = len(generated)
    dropped = {k: v for k, v in sorted(outcomes.items()) if k != "kept"}
    dedup_codes = ("duplicate", "near_duplicate", "duplicate_of_seed", "near_duplicate_of_seed")
    checked = sum(v for k, v in outcomes.items() if k in dedup_codes or k == "kept")
    duplicates = sum(outcomes[k] for k in dedup_codes)
    texts = [k["prompt"] for k in kept]
    seed_texts = [s.text for s in seeds]
    coverage = {}
    for p in targets:
        pid = p.id if p else "none"
        mine = [g for g in generated if (g["principle"] or "none") == pid]
        n_kept = sum(1 for g in mine if g["outcome"] == "kept")
        coverage[pid] = {"requests": tasks.get(pid, 0), "generated": len(mine),
                         "kept": proportion(n_kept, len(mine))}
    return {
        "prompts_generated": total,
        "prompts_kept": len(kept),
        "kept_rate": proportion(len(kept), total)["rate"],
        "dropped_by_reason": dropped,
        "dropped_denominator": f"{total - len(kept)} of the {total} samples the model wrote; filters first, then "
                               f"deduplication of the {checked} that passed them",
        "deduplication": {"checked": checked, "duplicates": duplicates,
                          "rate": proportion(duplicates, checked)["rate"],
                          "of_seeds": outcomes["duplicate_of_seed"] + outcomes["near_duplicate_of_seed"],
                          "exact": outcomes["duplicate"] + outcomes["duplicate_of_seed"],
                          "near": outcomes["near_duplicate"] + outcomes["near_duplicate_of_seed"]},
        "deduplication_denominator": f"duplicates among the {checked} samples that passed the filters (exact, then "
                                     "near: Jaccard of character 5-grams, MinHash LSH), against the seeds and the "
                                     "prompts kept before them",
        "diversity": {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
                      "self_bleu": self_bleu(texts), "prompts": len(texts)},
        "seed_diversity": {"distinct_1": distinct_n(seed_texts, 1), "distinct_2": distinct_n(seed_texts, 2),
                           "self_bleu": self_bleu(seed_texts), "prompts": len(seed_texts)},
        "diversity_denominator": f"over the {len(texts)} kept prompts (and, for comparison, the {len(seed_texts)} "
                                 "seeds): distinct-n = distinct word n-grams / all; Self-BLEU = mean BLEU-4 of each "
                                 "against the others (lower is more diverse)",
        "coverage_per_principle": {"principles": coverage,
                                   "denominator": "per principle aimed at: requests (tasks), samples the model wrote, "
                                                  "and kept prompts over those samples"},
        "principles_without_prompts": [pid for pid, c in coverage.items() if c["requests"] and not c["kept"]["count"]],
        "principles_not_asked_yet": sum(1 for c in coverage.values() if not c["requests"]),
        "seed_prompts": len(seeds),
        "bad_seed_rows": bad_seeds,
    }


def run_redteam(config: RedteamConfig, *, show_progress: bool = True, console: Any = None) -> Any:
    from cai.runs.job import run_job

    g = config.generation
    constitution = config.constitution.load()
    targets = aims(constitution, g.principle)
    seeds, bad = load_seeds(config.seed_prompts)
    seed_texts = {s.id: s.text for s in seeds}
    state: dict[str, Any] = {}

    def plain_for(engine: Engine) -> bool:
        plain = is_plain(engine)
        if g.mode == "plain" and not plain:
            raise ConfigError(f"--mode plain needs an engine that prompts plainly: give -E prompt_format=plain (or a "
                              f"base model with no chat template); {g.model} uses its chat template")
        if g.mode == "chat" and plain:
            raise ConfigError(f"--mode chat needs a chat model; {g.model} is prompted plainly (prompt_format plain)")
        return plain

    inputs = TaskInputs(seeds, targets, g.count, g.shots, config.run.seed)

    def make_chain(engines: Any, run: Any) -> RedteamChain:
        engine = engines.open(g.model, run, config.run.engine_options)
        return RedteamChain(engine, g, constitution, seed=config.run.seed, plain=plain_for(engine))

    def write_outputs(run: Any) -> dict[str, int]:
        records = list(run.store.results(STAGE, "ok"))
        kept, generated = select(records, seeds, g.near_duplicate, seed_texts)
        tasks = Counter((r["principle"] or "none") for r in records)
        state["summary"] = redteam_summary(kept, generated, seeds, targets, dict(tasks), len(bad))
        return {"prompts.jsonl": run.write_jsonl("prompts.jsonl", kept),
                "generated.jsonl": run.write_jsonl("generated.jsonl", generated)}

    return run_job(command="redteam", stage=STAGE, config=config, inputs=inputs, make_chain=make_chain,
                   write_outputs=write_outputs,
                   manifest_parts={"constitution": config.constitution.manifest(constitution),
                                   "seeds": {"source": str(config.seed_prompts.seeds), "prompts": len(seeds),
                                             "bad_rows": len(bad)}},
                   show_progress=show_progress, console=console, extra_summary=lambda run, summary: state["summary"])

