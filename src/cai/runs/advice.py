"""What to change when rows fail: one line of advice per failure kind, naming the option and its value.

`advice(summary, options)` reads a finished job's summary (its `failure_reasons`, keyed
"stage: code", and, for `cai rl`, the labels it dropped) and the command's options by
their flat names (`config.flat()`), and returns lines such as

    11 of 16 rows truncated at --max-tokens 96: raise --max-tokens (or --keep-truncated ...)

A rule whose option the command does not have still gives its advice, without the value.
Not here: deciding whether a run failed (the failure budget, `cai.runs.rows`), or the
reason codes themselves (each stage raises its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    codes: tuple[str, ...]
    #: "{n} {what}" is prefixed; `{opt:NAME}` in the text becomes "--name VALUE" (or "--name")
    text: str
    #: what is counted: rows (failure_reasons) or labels (`pairs_dropped`)
    counts: str = "rows"


RULES: tuple[Rule, ...] = (
    Rule(("truncated",), "truncated at {opt:max_tokens}: raise --max-tokens (or keep them, flagged, with "
                         "--keep-truncated)"),
    Rule(("context_overflow",), "did not fit the model's context window: shorten the prompts or lower "
                                "{opt:max_tokens} or {opt:rounds}, or use a model with a longer context"),
    Rule(("unparsable",), "got a judge answer that could not be parsed: raise {opt:judge_max_tokens} or "
                          "{opt:rank_retries}, or use --labeler pairwise (log-probs: nothing to parse)"),
    Rule(("too_few_judges", "judges_cancel_out"), "got too few usable judge answers: check each judge's "
                                                  "failures in failures.jsonl, or lower {opt:min_judges}"),
    Rule(("too_few_candidates",), "had fewer than 2 distinct usable candidates: raise {opt:candidates} or the "
                                  "sampling temperature"),
    Rule(("engine_error",), "failed in the engine after its retries: check the model spec, the server and "
                            "{opt:engine_options}; re-running retries only these rows"),
    Rule(("copies_critique", "copies_request"), "had a revision that copies its critique or request instead of "
                                                "rewriting the reply: resample with --revision-attempts (now "
                                                "{opt:revision_attempts}), use a stronger --model, or keep them "
                                                "flagged with --gates keep"),
    Rule(("repetitive", "empty", "no_words"), "gave empty or repetitive text: resample revisions with "
                                              "--revision-attempts, or lower {opt:max_tokens} (long replies from "
                                              "small models loop)"),
    Rule(("below_min_margin",), "fell below {opt:min_margin} (near coin flips): use a stronger judge or "
                                "--principles-per-label, or lower --min-margin to keep them as soft labels",
         counts="labels"),
    Rule(("tie",), "were exact ties (the judge had no preference): use a stronger judge or "
                   "--principles-per-label", counts="labels"),
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _render(text: str, options: dict[str, Any]) -> str:
    def option(name: str) -> str:
        if name == "engine_options":
            value = options.get(name)
            return "-E options" + (f" ({', '.join(f'{k}={v}' for k, v in value.items())})" if value else "")
        if name not in options or options[name] is None:
            return _flag(name)
        return f"{_flag(name)} {options[name]}"

    out, rest = "", text
    while "{opt:" in rest:
        before, _, after = rest.partition("{opt:")
        name, _, rest = after.partition("}")
        out += before + option(name)
    return out + rest


def _by_code(reasons: dict[str, int]) -> dict[str, int]:
    """failure_reasons ("stage: code" -> rows) summed by code."""
    out: dict[str, int] = {}
    for key, rows in reasons.items():
        code = key.rsplit(": ", 1)[-1]
        out[code] = out.get(code, 0) + rows
    return out


def advice(summary: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """One line per failure kind a rule knows, commonest first."""
    rows = _by_code(summary.get("failure_reasons") or {})
    labels = dict(summary.get("pairs_dropped") or {})
    finished = (summary.get("rows_ok_this_run", 0) + summary.get("rows_failed_this_run", 0)
                - summary.get("bad_input_rows", 0))
    lines: list[tuple[int, str]] = []
    for rule in RULES:
        counted = labels if rule.counts == "labels" else rows
        n = sum(counted.get(code, 0) for code in rule.codes)
        if not n:
            continue
        if rule.counts == "labels":
            what = f"of {summary.get('labels_attempted', '?')} labels"
        else:
            what = f"of {finished} rows" if finished else "rows"
        lines.append((n, f"{n} {what} {_render(rule.text, options)}"))
    return [line for _, line in sorted(lines, key=lambda t: -t[0])]
