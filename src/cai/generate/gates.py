"""SL-CAI revision quality gates: is a cleaned revision really a rewrite of the reply?

`find_defect` (`cai.text.parsing`) catches text that is unusable anywhere: empty, no
words, repetitive, an exact copy of a request (`copies_request`). These gates catch text
that is not a revision of the reply, each with a stable code. What each does by default,
and why:

- `copies_critique` FAILS the row: the revision copies the critique, or the critique or
  revision request, instead of rewriting the reply. It opens like a critique ("The
  response could be improved by", "The last reply is", "The assistant's answer"), or at
  least COPY_SHARE (0.5) of its word trigrams occur in the critique or the requests and not
  in the reply it revises (text the critique quoted from the reply is the reply's). A
  revision under MIN_COPY_WORDS (5) words is judged by its opening only. Trained on, such
  a revision teaches the model to answer with a critique of itself.
- `unchanged` FLAGS: the revision is the reply it revises, or nearly: a word-level
  SequenceMatcher ratio of at least UNCHANGED_RATIO (0.95), with case, spacing and
  punctuation set aside. Leaving a reply as it was is a fair outcome when the critique
  found nothing to fix; the flag counts how often revising changed nothing.
- `refusal_only` FLAGS: the revision is nothing but refusal (clauses holding a shipped
  refusal phrase, `RefusalMatcher`, with fewer than REFUSAL_OTHER_WORDS (6) words outside
  them) while the principle's revision request asks for help ("helpful", "useful", "still
  helping", "instead of simply refusing", `HELP_REQUEST`). Only such principles: the
  others ask to remove help, and there a refusal can be the revision asked for. A flag,
  not a failure: a phrase match cannot tell an evasive refusal from a justified one. (An
  empty revision already fails as `empty`.)
- `conversation_runon` CUTS and flags: the revision goes on to write another turn
  ("Human:", "User:", "Assistant:" or "System:" at a line start, or a chat-template marker
  such as `<|im_start|>`). What comes before is the model's reply; the rest is the model
  playing both sides, so the revision is cut there. A revision with no words before the
  marker fails the row under every policy, as an empty one does.

`--gates keep` makes every gate only flag (copies_critique rows are kept, flagged);
`--gates strict` makes every gate fail its row (a run-on is not cut). Existing defects
fail under every policy. A resumed run keeps the rows it finished as they were: a new
`--gates` applies to the rows it tries again (failed ones, answered from the call cache).

Only pure functions over strings and the principle: `cai.generate.sl` raises the failure
and writes the flags, and its summary counts them (`gate_summary`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cai.inputs.constitution import Principle
from cai.label.refusal import RefusalMatcher
from cai.text.parsing import find_defect
from cai.text.similarity import containment, ratio, straighten, words

COPIES_CRITIQUE, UNCHANGED, REFUSAL_ONLY, CONVERSATION_RUNON = (
    "copies_critique", "unchanged", "refusal_only", "conversation_runon")
GATE_CODES = (COPIES_CRITIQUE, UNCHANGED, REFUSAL_ONLY, CONVERSATION_RUNON)
#: what each gate does to its row under each `--gates` policy: fail, flag, or cut and flag
POLICIES: dict[str, dict[str, str]] = {
    "default": {COPIES_CRITIQUE: "fail", UNCHANGED: "flag", REFUSAL_ONLY: "flag", CONVERSATION_RUNON: "cut"},
    "keep": {COPIES_CRITIQUE: "flag", UNCHANGED: "flag", REFUSAL_ONLY: "flag", CONVERSATION_RUNON: "cut"},
    "strict": {code: "fail" for code in GATE_CODES},
}

UNCHANGED_RATIO = 0.95
COPY_SHARE = 0.5
COPY_NGRAM = 3
MIN_COPY_WORDS = 5
REFUSAL_OTHER_WORDS = 6

_FLAGS = re.IGNORECASE
#: openings that speak about the reply instead of to the person: a critique, not a revision
CRITIQUE_OPENING = re.compile(
    r"^\W*(?:"
    r"(?:(?:in|on|with)\s+)?(?:the|this|that|your|my|its)\s+"
    r"(?:(?:assistant'?s?|ai'?s?|model'?s?|last|previous|earlier|original|above)\s+)+"
    r"(?:response|reply|answer|message)\b"
    r"|this\s+(?:response|reply)\b"
    r"|(?:the|that)\s+(?:response|reply)(?:\s*,|\s+(?:could|can|should|would|might|may|must|did|doesn't|is|isn't"
    r"|was|wasn't|had)\b|\s+(?!times\b|rates\b)\w+s\b)"
    r"|the\s+assistant(?:'s)?\s+(?:should|could|would|can|is|was|did|does|doesn't|has|had|must|needs|provides"
    r"|gave|gives|response|reply|answer|last|previous)\b"
    r"|(?:critique|criticism)\s*:"
    r"|here(?:'s|\s+is)\s+(?:a|my)\s+critique\b"
    r")", _FLAGS)
#: a line that starts a new turn, or a chat template's role and end-of-turn markers
RUNON = re.compile(r"^[ \t]*(?:human|user|assistant|system)[ \t]*:"
                   r"|<\|(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id|user|assistant|system|end)"
                   r"\|>|<(?:start|end)_of_turn>|\[/?INST\]", _FLAGS | re.MULTILINE)
#: a revision request that asks for a helpful reply
HELP_REQUEST = re.compile(r"\b(?:helpful(?:ness)?|useful|usefully|still\s+help(?:s|ing)?|safe\s+help|"
                          r"engages?\s+with|instead\s+of\s+(?:simply\s+|just\s+)?refusing|non-?evasive|"
                          r"less\s+evasive)\b", _FLAGS)
_CLAUSE = re.compile(r"[.!?;:,\n]+")


@dataclass(frozen=True)
class Finding:
    """A gate's (or a defect's) stable `code` and a `message` for people."""

    code: str
    message: str


@dataclass(frozen=True)
class Review:
    """A revision after the gates: its text (cut at a run-on), the findings kept as flags, and what fails it."""

    text: str
    flags: tuple[Finding, ...] = ()
    failure: Finding | None = None

    @property
    def flag_codes(self) -> list[str]:
        return [f.code for f in self.flags]


def gate_actions(policy: str) -> dict[str, str]:
    """{gate code: "fail" | "flag" | "cut"} under a `--gates` policy."""
    return dict(POLICIES[policy])


# ---- the gates ----------------------------------------------------------------------------
def copies_critique(text: str, *, critique: str, principle: Principle, reply: str) -> Finding | None:
    opening = CRITIQUE_OPENING.match(straighten(text))
    if opening:
        return Finding(COPIES_CRITIQUE, f"opens like a critique ({opening.group(0).strip()!r}) instead of "
                                        "rewriting the reply")
    if len(words(text)) < MIN_COPY_WORDS:
        return None
    share = containment(text, [critique, principle.critique, principle.revision], n=COPY_NGRAM, ignore=[reply])
    if share >= COPY_SHARE:
        return Finding(COPIES_CRITIQUE, f"copies the critique or the requests instead of rewriting the reply "
                                        f"({share:.0%} of its word trigrams come from them; at most "
                                        f"{COPY_SHARE:.0%} may)")
    return None


def unchanged(text: str, *, reply: str) -> Finding | None:
    similarity = ratio(text, reply)
    if similarity >= UNCHANGED_RATIO:
        return Finding(UNCHANGED, f"the revision is the reply it revises (word similarity {similarity:.2f}, "
                                  f"threshold {UNCHANGED_RATIO})")
    return None


def asks_for_help(principle: Principle) -> bool:
    """Does the principle's revision request ask for a helpful reply (not only a harmless one)?"""
    return HELP_REQUEST.search(principle.revision) is not None


def refusal_only(text: str, *, principle: Principle) -> Finding | None:
    if not asks_for_help(principle):
        return None
    matcher = RefusalMatcher.shipped()
    refusing = other = 0
    for clause in _CLAUSE.split(text):
        if matcher.match(clause):
            refusing += 1
        else:
            other += len(words(clause))
    if refusing and other < REFUSAL_OTHER_WORDS:
        return Finding(REFUSAL_ONLY, f"only refuses ({other} words besides the refusal) although principle "
                                     f"{principle.id!r} asks for a helpful reply")
    return None


def conversation_runon(text: str) -> Finding | None:
    marker = RUNON.search(text)
    if marker is None:
        return None
    return Finding(CONVERSATION_RUNON, f"goes on to write another turn ({marker.group(0).strip()!r} at character "
                                       f"{marker.start()})")


def cut_runon(text: str) -> str:
    """`text` up to the first new turn or chat-template marker."""
    marker = RUNON.search(text)
    return text if marker is None else text[:marker.start()].rstrip()


# ---- all of them, under a policy ----------------------------------------------------------
def review_revision(text: str, *, reply: str, critique: str, principle: Principle,
                    policy: str = "default") -> Review:
    """Run the defects and every gate on a cleaned revision of `reply`; the failure is the first that fails."""
    actions = POLICIES[policy]
    flags: list[Finding] = []
    runon = conversation_runon(text)
    if runon:
        cut = cut_runon(text)
        if actions[CONVERSATION_RUNON] == "fail" or not words(cut):
            return Review(text, failure=runon)
        if actions[CONVERSATION_RUNON] == "cut":
            text = cut
        flags.append(runon)
    defect = find_defect(text, forbidden_copies=(principle.revision, principle.critique))
    if defect:
        return Review(text, tuple(flags), Finding(defect.code, defect.message))
    failure: Finding | None = None
    for finding in (unchanged(text, reply=reply),
                    copies_critique(text, critique=critique, principle=principle, reply=reply),
                    refusal_only(text, principle=principle)):
        if finding is None:
            continue
        if actions[finding.code] == "fail" and failure is None:
            failure = finding
        else:
            flags.append(finding)
    return Review(text, tuple(flags), failure)


# ---- counting -----------------------------------------------------------------------------
def gate_summary(entries: Iterable[tuple[str, dict[str, Any]]], policy: str) -> dict[str, Any]:
    """The sl summary's `revision_gates` from the store's (status, record) pairs.

    `rows` counts every row the run holds (kept or failed, this run and earlier; bad input
    rows left out): `rows_kept_clean + rows_kept_flagged + rows_failed == rows`. `flagged`
    counts kept rows by flag (a row may carry several); `failed` counts failed rows by gate
    (the rest of `rows_failed` failed for other reasons: see `failure_reasons`).
    """
    flagged = dict.fromkeys(GATE_CODES, 0)
    failed = dict.fromkeys(GATE_CODES, 0)
    kept = kept_flagged = failed_rows = 0
    for status, record in entries:
        if status == "ok":
            kept += 1
            codes = set(record.get("quality_flags") or [])
            kept_flagged += bool(codes)
            for code in codes & set(GATE_CODES):
                flagged[code] += 1
        elif record.get("stage") != "input":
            failed_rows += 1
            if record.get("code") in failed:
                failed[record["code"]] += 1
    return {"policy": policy, "actions": gate_actions(policy), "rows": kept + failed_rows, "rows_kept": kept,
            "rows_kept_clean": kept - kept_flagged, "rows_kept_flagged": kept_flagged, "rows_failed": failed_rows,
            "flagged": flagged, "failed": failed}


def attempt_summary(entries: Iterable[tuple[str, dict[str, Any]]], allowed: int) -> dict[str, Any]:
    """The sl summary's `revision_attempts`: revisions sampled, attempts rejected by code, and how many
    revisions a resample saved (one that failed at first and passed later), over every row the run holds."""
    revisions = samples = saved = 0
    rejected: dict[str, int] = {}
    for status, record in entries:
        trace = record if status == "ok" else record.get("trace") or {}
        for round_ in trace.get("rounds") or []:
            earlier = round_.get("rejected_attempts") or []
            revisions += 1
            samples += 1 + len(earlier)
            for attempt in earlier:
                rejected[attempt["code"]] = rejected.get(attempt["code"], 0) + 1
            # the last attempt failed too (a gate, a defect, or cut off at --max-tokens)
            failed_review = status != "ok" and record.get("stage") == f"round {round_['round']} revision"
            saved += bool(earlier) and not failed_review
    return {"allowed": allowed, "revisions": revisions, "samples": samples, "rejected": rejected,
            "saved_by_resampling": saved,
            "denominator": f"{samples} revision samples for {revisions} revisions (at most {allowed} each)"}

