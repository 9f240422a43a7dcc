"""Few-shot examples: SL-CAI critique/revision turns and chain-of-thought judge turns.

Two kinds, each loaded from `default` (shipped), `none`, our YAML, or the shape
Anthropic published with the CAI paper (github.com/anthropics/ConstitutionalHarmlessnessPaper,
`prompts/`). The shape is recognised from the content, not the file name.

SL (`load_few_shot`, `cai sl --few-shot`):
- our YAML: `{system, examples: [{prompt, response, critique_request, critique,
  revision_request, revision}]}`; `prompt` is one user turn, or a list of messages;
- `CritiqueRevisionFewShotPrompts.json`: a JSON list of transcripts, each
  `Human:`/`Assistant:` turns, then `CritiqueRequest:`/`Critique:`/`RevisionRequest:`/
  `Revision:` blocks, every marker after a blank line. The last `Assistant:` turn is the
  response; the turns before it are the prompt conversation; a trailing empty `Human:`
  (the start of the next example, as published) is dropped. A transcript with several
  critique/revision rounds stays *one* example whose later rounds (`more_rounds`) follow
  the first, because that is what our chain shows the model in its later rounds.

CoT judge (`load_cot_few_shot`, `cai rl --cot-few-shot`):
- our YAML (`prompts/judge_cot_few_shot.yaml`): examples of {conversation, principle,
  option_a, option_b, reasoning, answer};
- `RLMadisonPrecogFewShotPrompts.json`: a list of `{"prompt": ...}`, each "Human: Consider
  the following conversation ... H: ... A: ...", a `{}` blank for the principle, the
  options as `(A) [[[...]]]` / `(B) [[[...]]]`, "Assistant: Let's think step by step:
  <reasoning>", then "Human:\\nSo the answer is: (X)". `H:`/`A:` turns become our
  "Human:"/"Assistant:" transcript. The paper filled the blank with the principle of the
  question being asked; we fill it with one fixed question (`prompts/anthropic_few_shot.yaml`)
  so the few-shot prefix stays byte-identical across requests, as our own examples do.
  `RLMadisonFewShotPrompts.json` (prompt/corrects/incorrects, no reasoning) cannot teach
  reasoning and is refused with that explanation.

Rendering the CoT examples into judge messages is the labeller's job (`cai.label.pairwise`); this
module only reads and checks files. Every bad shape is a `FewShotError` naming the file
and the entry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cai.core.errors import CAIError
from cai.core.types import Message, assistant, system, user
from cai.inputs.files import read_user_text

FEW_SHOT_KEYS = ("prompt", "response", "critique_request", "critique", "revision_request", "revision")
ROUND_KEYS = FEW_SHOT_KEYS[2:]
COT_KEYS = ("conversation", "principle", "option_a", "option_b", "reasoning", "answer")


class FewShotError(CAIError, ValueError):
    pass


@dataclass
class FewShot:
    system: str = ""
    examples: list[dict[str, Any]] = field(default_factory=list)
    source: str = "none"

    def prefix(self) -> list[Message]:
        """The messages put before every critique/revision request, identical each time."""
        messages: list[Message] = [system(self.system)] if self.system else []
        for ex in self.examples:
            prompt = ex["prompt"]
            messages += [user(prompt)] if isinstance(prompt, str) else [dict(m) for m in prompt]  # type: ignore[misc]
            messages.append(assistant(ex["response"]))
            for r in [ex, *ex.get("more_rounds", [])]:
                messages += [user(r["critique_request"]), assistant(r["critique"]),
                             user(r["revision_request"]), assistant(r["revision"])]
        return messages


@dataclass
class CotFewShot:
    examples: list[dict[str, str]] = field(default_factory=list)
    source: str = "none"


# ---- reading files -------------------------------------------------------------------------
def _read(ref: str, shipped: str, kind: str) -> tuple[Any, str]:
    """(parsed content, source) for `default` or a path; JSON by suffix, else YAML."""
    if ref == "default":
        text = (resources.files("cai") / "prompts" / shipped).read_text("utf-8")
        return yaml.safe_load(text), f"cai:prompts/{shipped}"
    path = Path(ref).expanduser()
    if not path.is_file():
        raise FewShotError(f"{kind} file {ref!r} does not exist (or use 'default' / 'none')")
    text = read_user_text(path)
    try:
        return (json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)), str(path)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise FewShotError(f"{path}: cannot parse: {exc}") from exc


def _our_examples(data: dict[str, Any], source: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    examples = data.get("examples") or []
    if not isinstance(examples, list):
        raise FewShotError(f"{source}: 'examples' must be a list")
    for i, ex in enumerate(examples, 1):
        missing = [k for k in keys if not isinstance(ex, dict) or not ex.get(k)]
        if missing:
            raise FewShotError(f"{source}: few-shot example {i} is missing {missing}")
    return examples


# ---- SL critique/revision few-shot ---------------------------------------------------------
def load_few_shot(ref: str) -> FewShot:
    """`default` (shipped), `none`, our YAML, or Anthropic's transcript list (see above)."""
    if ref == "none":
        return FewShot()
    data, source = _read(ref, "sl_few_shot.yaml", "few-shot")
    if isinstance(data, list):
        return FewShot(examples=[_sl_from_transcript(t, source, i) for i, t in enumerate(data, 1)], source=source)
    if not isinstance(data, dict):
        raise FewShotError(f"{source}: not a few-shot file (expected our YAML with 'examples', or Anthropic's "
                           "list of critique/revision transcripts)")
    examples = _our_examples(data, source, FEW_SHOT_KEYS)
    for i, ex in enumerate(examples, 1):
        _check_prompt(ex["prompt"], source, i)
        for r in ex.get("more_rounds") or []:
            if not isinstance(r, dict) or not all(r.get(k) for k in ROUND_KEYS):
                raise FewShotError(f"{source}: few-shot example {i}: each of 'more_rounds' needs {list(ROUND_KEYS)}")
    return FewShot(system=str(data.get("system") or "").strip(), examples=examples, source=source)


def _check_prompt(prompt: Any, source: str, i: int) -> None:
    if isinstance(prompt, str):
        return
    ok = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
        for m in prompt)
    if not ok or prompt[-1]["role"] != "user":
        raise FewShotError(f"{source}: few-shot example {i}: 'prompt' must be a string or a list of "
                           "{role: user|assistant, content} messages ending with a user turn")


_SL_MARKER = re.compile(r"(?:\A|\n[ \t]*\n)\s*(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):"
                        r"[ \t]*")


def _sl_from_transcript(text: Any, source: str, i: int) -> dict[str, Any]:
    where = f"{source}: transcript {i}"
    if not isinstance(text, str):
        hint = ""
        if isinstance(text, dict):
            hint = " (a list of objects looks like an RL few-shot file: use --cot-few-shot)"
        raise FewShotError(f"{where} is a {type(text).__name__}, not a transcript string{hint}")
    pieces = _SL_MARKER.split(text.lstrip())
    if pieces[0].strip():
        raise FewShotError(f"{where}: text before the first 'Human:' ({pieces[0].strip()[:40]!r})")
    blocks = [(m, body.strip()) for m, body in zip(pieces[1::2], pieces[2::2])]
    while blocks and blocks[-1] == ("Human", ""):
        blocks.pop()  # the published files end each transcript with the next "Human:"
    turns = []
    while blocks and blocks[0][0] in ("Human", "Assistant"):
        turns.append(blocks.pop(0))
    if not turns or turns[0][0] != "Human":
        raise FewShotError(f"{where}: must start with a 'Human:' turn")
    if any(a[0] == b[0] for a, b in zip(turns, turns[1:])):
        raise FewShotError(f"{where}: 'Human:' and 'Assistant:' turns must alternate")
    if turns[-1][0] != "Assistant":
        raise FewShotError(f"{where}: the conversation must end with an 'Assistant:' reply before 'CritiqueRequest:'")
    for marker, body in [*turns, *blocks]:
        if not body:
            raise FewShotError(f"{where}: empty '{marker}:' block")
    if not blocks:
        raise FewShotError(f"{where}: no 'CritiqueRequest:' block after the conversation")
    rounds, previous = [], "Assistant"
    while blocks:
        found: dict[str, str] = {}
        for key, marker in zip(ROUND_KEYS, ("CritiqueRequest", "Critique", "RevisionRequest", "Revision")):
            if not blocks:
                raise FewShotError(f"{where}: missing '{marker}:' after '{previous}:'")
            if blocks[0][0] != marker:
                raise FewShotError(f"{where}: expected '{marker}:' after '{previous}:', found '{blocks[0][0]}:'")
            previous, found[key] = marker, blocks.pop(0)[1]
        rounds.append(found)
    prompt = [user(body) if m == "Human" else assistant(body) for m, body in turns[:-1]]
    return {"prompt": prompt, "response": turns[-1][1], **rounds[0], "more_rounds": rounds[1:]}


# ---- CoT judge few-shot --------------------------------------------------------------------
def load_cot_few_shot(ref: str) -> CotFewShot:
    """`default` (shipped), `none`, our YAML, or Anthropic's CoT ("Precog") file (see above)."""
    if ref == "none":
        return CotFewShot()
    data, source = _read(ref, "judge_cot_few_shot.yaml", "CoT few-shot")
    if isinstance(data, list):
        return CotFewShot(examples=[_cot_from_anthropic(e, source, i) for i, e in enumerate(data, 1)], source=source)
    if not isinstance(data, dict):
        raise FewShotError(f"{source}: not a CoT few-shot file (expected our YAML with 'examples', or Anthropic's "
                           "list of {\"prompt\": ...} chain-of-thought examples)")
    examples = _our_examples(data, source, COT_KEYS)
    for i, ex in enumerate(examples, 1):
        if str(ex["answer"]).strip() not in ("A", "B"):
            raise FewShotError(f"{source}: example {i}: 'answer' must be A or B, got {ex['answer']!r}")
    return CotFewShot(examples=[{k: str(ex[k]).strip() for k in COT_KEYS} for ex in examples], source=source)


_OPTIONS = re.compile(r"\(A\)\s*\[\[\[(?P<a>.*?)\]\]\]\s*\(B\)\s*\[\[\[(?P<b>.*?)\]\]\]", re.DOTALL)
_FINAL = re.compile(r"(?:\n\s*Human:\s*)?So the answer is:?\s*\((?P<letter>[AB])\)\s*$", re.IGNORECASE)
_TURN = re.compile(r"(?:\A|\n[ \t]*\n)\s*(H|A):[ \t]*")
_LEAD_IN = re.compile(r"^\s*Let'?s think step by step\s*:?\s*", re.IGNORECASE)


def _cot_from_anthropic(entry: Any, source: str, i: int) -> dict[str, str]:
    where = f"{source}: entry {i}"
    if isinstance(entry, str):
        raise FewShotError(f"{where} is a str: a list of transcripts looks like the SL critique/revision few-shot "
                           "file (use --few-shot)")
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        raise FewShotError(f"{where}: expected an object with a 'prompt' string")
    if "corrects" in entry or "incorrects" in entry:
        raise FewShotError(f"{where} has corrects/incorrects and no written reasoning (Anthropic's "
                           "RLMadisonFewShotPrompts shape); CoT labels need examples that reason, like "
                           "RLMadisonPrecogFewShotPrompts, or our YAML")
    head, blank, tail = entry["prompt"].partition("{}")
    if not blank:
        raise FewShotError(f"{where}: no '{{}}' principle blank before the options")
    first_turn = re.search(r"(?:\A|\n)\s*H:", head)
    if not first_turn:
        raise FewShotError(f"{where}: no 'H:' turn in the conversation")
    pieces = _TURN.split(head[first_turn.start():].strip())
    turns = [("Human" if who == "H" else "Assistant", body.strip()) for who, body in zip(pieces[1::2], pieces[2::2])]
    options = _OPTIONS.search(tail)
    if not options:
        raise FewShotError(f"{where}: no options in the '(A) [[[...]]] (B) [[[...]]]' form")
    answer = _FINAL.search(tail)
    if not answer:
        raise FewShotError(f"{where}: no final 'So the answer is: (A)' or '(B)'")
    said = tail[options.end():answer.start()]
    at = said.find("Assistant:")
    reasoning = _LEAD_IN.sub("", said[at + len("Assistant:"):] if at != -1 else "").strip()
    if not reasoning:
        raise FewShotError(f"{where}: no 'Assistant:' reasoning between the options and the answer")
    return {"conversation": "\n\n".join(f"{who}: {body}" for who, body in turns), "principle": _blank_principle(),
            "option_a": options["a"].strip(), "option_b": options["b"].strip(), "reasoning": reasoning,
            "answer": answer["letter"].upper()}


def _blank_principle() -> str:
    data = yaml.safe_load((resources.files("cai") / "prompts" / "anthropic_few_shot.yaml").read_text("utf-8"))
    return str(data["cot_blank_principle"]).strip()
