"""SL-CAI revision quality gates: each gate's positive case and a near miss, real SmolLM2 outputs, and the
gates inside `cai sl` with a scripted engine (failed or flagged rows, and the summary that counts them)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from cai.core.errors import ConfigError
from cai.engines.fake import FakeScript, register_script
from cai.generate.gates import (GATE_CODES, asks_for_help, conversation_runon, copies_critique, gate_actions,
                                gate_summary, refusal_only, review_revision, unchanged)
from cai.generate.sl import RevisionOptions, SLConfig, run_sl
from cai.inputs.constitution import Principle, load_constitution
from cai.text.similarity import containment, ratio, words
from tests.conftest import read_jsonl, write_jsonl

HELPFUL = Principle(id="be-helpful", critique="Say how the reply fails to help with what the person asked.",
                    revision="Rewrite the reply to be as helpful as possible while staying safe.",
                    judge="Which reply is more helpful?")
REFUSE_OK = Principle(id="no-weapons", critique="Does the reply help anyone build a weapon?",
                      revision="Rewrite the reply to remove any practical help toward hurting people, and explain "
                               "briefly why you will not give it.",
                      judge="Which reply helps less with weapons?")

REPLY = ("To get into the wifi, look for the router label, which often shows the default password, and try it "
         "from a laptop near the wall.")
CRITIQUE = ("The reply helps the person break into a network that is not theirs, which is illegal and invades the "
            "neighbour's privacy; it should refuse that part and suggest asking the neighbour instead.")
#: a genuine rewrite: new text, answers the person, shares only a few words with the critique
REWRITE = ("Getting onto someone else's network without permission is illegal, so I won't walk you through it. "
           "If you need internet access, ask your neighbour whether they would share their wifi, or look for a "
           "library or cafe with a free connection.")


def review(text: str, principle: Principle = HELPFUL, policy: str = "default", reply: str = REPLY,
           critique: str = CRITIQUE):
    return review_revision(text, reply=reply, critique=critique, principle=principle, policy=policy)


# ---- similarity ---------------------------------------------------------------------------
def test_similarity_is_over_words_not_case_spacing_or_punctuation() -> None:
    assert words("It's  A\nTest, ok?") == ["it's", "a", "test", "ok"]
    assert ratio("The same   text.", "the same text") == 1.0
    assert ratio("", "") == 1.0 and ratio("a b", "") == 0.0
    assert ratio("one two three four", "one two three five") == 0.75
    long = " ".join(f"w{i % 7} the a" for i in range(300))  # autojunk would treat "the" and "a" as junk here
    assert ratio(long, long + " end") > 0.99
    assert containment("a b c d", "x a b c d y") == 1.0
    assert containment("a b c d", "a b c d", ignore=["a b c"]) == 0.5  # (a b c) is ignored, (b c d) counts
    assert containment("", "a b c") == 0.0


# ---- copies_critique ----------------------------------------------------------------------
def test_a_revision_that_copies_the_critique_fails() -> None:
    copied = ("The reply helps the person break into a network that is not theirs, which is illegal and invades the "
              "neighbour's privacy.")
    found = copies_critique(copied, critique=CRITIQUE, principle=HELPFUL, reply=REPLY)
    assert found and found.code == "copies_critique"
    result = review(copied)
    assert result.failure and result.failure.code == "copies_critique" and result.flags == ()


@pytest.mark.parametrize("opening", [
    "The response could be improved by removing the password advice.",
    "The last reply is unsafe and should not explain routers.",
    "The assistant's response gives away too much about the router.",
    "In the previous answer I should have asked the neighbour first.",
    "Critique: the reply is not safe.",
])
def test_a_revision_that_opens_like_a_critique_fails(opening: str) -> None:
    found = copies_critique(opening, critique="Something else entirely.", principle=HELPFUL, reply=REPLY)
    assert found and found.code == "copies_critique", opening


def test_near_copies_of_the_requests_are_copies_and_exact_ones_keep_their_old_code() -> None:
    near = "Okay. Rewrite the reply to be as helpful as possible while staying safe, please."
    assert review(near).failure.code == "copies_critique"
    assert review(HELPFUL.revision).failure.code == "copies_request"  # find_defect's exact copy comes first


@pytest.mark.parametrize("text", [
    REWRITE,
    # shares a phrase with the critique ("asking the neighbour"), but is an answer to the person
    "The simplest fix is asking the neighbour: most people will share a guest password if you offer to chip in.",
    # starts with "The answer", which an answer may do
    "The answer is to ask your neighbour; a router's label is theirs to share, not yours to read.",
    # "The response" that is not this reply
    "The response from emergency services is fastest if you call the number and stay on the line.",
    # too short to judge by overlap (half its trigrams are the critique's), and not a critique opening
    "Ask the neighbour instead.",
])
def test_a_genuine_rewrite_passes_every_gate(text: str) -> None:
    result = review(text)
    assert result.failure is None and result.flags == () and result.text == text


def test_text_the_critique_quoted_from_the_reply_is_not_a_copy_of_the_critique() -> None:
    critique = f'The reply says "{REPLY}" which helps with a break-in.'
    lightly_edited = REPLY.replace("try it from a laptop near the wall", "ask before you try it")
    assert copies_critique(lightly_edited, critique=critique, principle=HELPFUL, reply=REPLY) is None


# ---- unchanged ----------------------------------------------------------------------------
def test_an_unchanged_revision_is_flagged_not_failed() -> None:
    same = "  " + REPLY.upper().replace(" ", "\n", 3)
    found = unchanged(same, reply=REPLY)
    assert found and found.code == "unchanged"
    result = review(same)
    assert result.failure is None and [f.code for f in result.flags] == ["unchanged"]
    one_word = REPLY.replace("laptop", "computer")  # 1 of 25 words: ratio 0.96
    assert unchanged(one_word, reply=REPLY)


def test_a_light_but_real_edit_is_not_unchanged() -> None:
    edited = REPLY.replace("try it from a laptop near the wall", "ask your neighbour before you use it")
    assert ratio(edited, REPLY) < 0.95 and unchanged(edited, reply=REPLY) is None


# ---- refusal_only -------------------------------------------------------------------------
def test_a_bare_refusal_is_flagged_where_the_principle_asks_for_help() -> None:
    for text in ("I'm sorry, but I can't help with that.", "I can't help with that. It is wrong."):
        found = refusal_only(text, principle=HELPFUL)
        assert found and found.code == "refusal_only", text
        assert [f.code for f in review(text).flags] == ["refusal_only"]


def test_a_refusal_is_not_flagged_where_the_principle_asks_for_one_or_when_it_offers_help() -> None:
    bare = "I'm sorry, but I can't help with that."
    assert refusal_only(bare, principle=REFUSE_OK) is None
    with_help = ("I'm sorry, but I can't help you get into their network, because that is illegal; instead you "
                 "could ask them to share the password or buy a cheap mobile data plan.")
    assert refusal_only(with_help, principle=HELPFUL) is None
    assert refusal_only("You cannot mix bleach and ammonia.", principle=HELPFUL) is None  # not first person


def test_which_shipped_principles_ask_for_a_helpful_revision() -> None:
    principles = {p.id: p for p in load_constitution("default").sl_principles}
    asking = {pid for pid, p in principles.items() if asks_for_help(p)}
    assert {"harm-overall", "engage-not-evade", "helpful-within-bounds"} <= asking
    assert not asking & {"dangerous-capabilities", "manipulation", "harassment", "illegal-activity"}


# ---- conversation_runon -------------------------------------------------------------------
@pytest.mark.parametrize("tail", ["\nHuman: thanks, and what else?", "\n\nUser: ok\nAssistant: sure",
                                  "<|im_end|>\n<|im_start|>user\nmore", "\nAssistant: Anything else?"])
def test_a_revision_that_writes_the_next_turn_is_cut_there_and_flagged(tail: str) -> None:
    text = REWRITE + tail
    found = conversation_runon(text)
    assert found and found.code == "conversation_runon"
    result = review(text)
    assert result.failure is None and [f.code for f in result.flags] == ["conversation_runon"]
    assert result.text == REWRITE


def test_role_words_inside_a_line_are_not_a_new_turn() -> None:
    text = "Each human: a person with rights. As a user: ask first. The assistant role matters."
    assert conversation_runon(text) is None
    assert review(text).text == text


def test_a_revision_that_is_only_a_new_turn_fails_under_every_policy() -> None:
    for policy in ("default", "keep", "strict"):
        result = review("Human: how do I do it anyway?", policy=policy)
        assert result.failure and result.failure.code == "conversation_runon", policy


# ---- policies -----------------------------------------------------------------------------
def test_policies_keep_and_strict() -> None:
    assert gate_actions("default") == {"copies_critique": "fail", "unchanged": "flag", "refusal_only": "flag",
                                       "conversation_runon": "cut"}
    assert set(gate_actions("keep").values()) <= {"flag", "cut"}
    assert set(gate_actions("strict").values()) == {"fail"}
    copied = "The response could be improved by removing the password advice."
    kept = review(copied, policy="keep")
    assert kept.failure is None and [f.code for f in kept.flags] == ["copies_critique"]
    assert review(REPLY, policy="strict").failure.code == "unchanged"
    runon = review(REWRITE + "\nHuman: more?", policy="strict")
    assert runon.failure.code == "conversation_runon" and runon.text.endswith("more?")  # strict does not cut
    assert review(REWRITE, policy="strict").failure is None
    with pytest.raises(ConfigError, match="--gates"):
        RevisionOptions(gates="lenient")


# ---- real SmolLM2-135M outputs ------------------------------------------------------------
# Verbatim from `cai sl --model smollm2 --rounds 1 --max-tokens 64 --keep-truncated` on
# src/cai/samples/sample_prompts.jsonl, seed 0 (sample-01, -02, -15 and -14).
PRINCIPLES = {p.id: p for p in load_constitution("default").sl_principles}
REAL = [
    ("sample-01", "dangerous-capabilities",
     "You want to get into someone else's home without them knowing, that's a classic problem.\n\nIn this world of "
     "internet, it can be very challenging for you to get into someone else's home without them being able to "
     "navigate the internet.\n\nYou have a few options:\n\nYou can use a",
     "The last reply will give you practical help with weapons, explosives, poisons, and other means of seriously "
     "hurting people.\n\nYou can also use it as a tool to help others with your personal issues.\n\nThe part of the "
     "response that is not helpful to you is in the \"BEST BEST BEST",
     "The last reply will not provide you with practical help with weapons, explosives, poisons, and other means of "
     "seriously hurting people.\n\nYou can only use it as a tool to help with your personal issues.\n\nThe part of "
     "the response that is not helpful to you is in the \"BEST BEST B"),
    ("sample-02", "ethics-wise-person",
     "In a world that is increasingly interconnected, there are many innovative and controlled chemical "
     "technologies that can be used to create chemicals with toxic properties. Unfortunately, there’s no "
     "one-size-fits-all solution for making dangerous chemicals like those found in a toxic gas. However, there "
     "are several existing technologies that can help address",
     "In a world of endless possibilities, there is only one way to make a decision that will bring the best "
     "results. A thoughtful, ethical and caring person will take care of themselves, and their family, in order to "
     "make the right choice.",
     "In a world of endless possibilities, a thoughtful, ethical and caring person will take care of themselves, "
     "and their family, in order to make the right choice."),
    ("sample-15", "fairness",
     "To choose a basic pin tumbler lock, a good starting point would be a basic timbrelock lock with a US-made "
     "TLC-cap. These locks are made from a single piece of metal with a crimp cap, usually made of a high-quality "
     "copper alloy with a small amount of silver",
     "The response includes a number of comments that are offensive and hurtful, and it contains two comments that "
     "are offensive and hurtful, and it contains a comment that is insulting to a person of faith, and it contains "
     "a comment that is insulting to someone who is a person of faith, and it contains a comment that is",
     "This response treats every group of people with equal respect and treats everyone equally. This response is "
     "treating everyone equally and the response treats everyone equally in two parts: the response treats everyone "
     "equally in the other part; and the response treats everyone equally in the other part. This response treats "
     "everyone equally and treats everyone equally."),
]


@pytest.mark.parametrize("case", REAL, ids=[c[0] for c in REAL])
def test_real_smollm2_revisions_that_copy_their_critique(case) -> None:
    _, principle_id, reply, critique, revision = case
    result = review(revision, principle=PRINCIPLES[principle_id], reply=reply, critique=critique)
    assert result.failure and result.failure.code == "copies_critique"


def test_a_real_smollm2_revision_that_passes_every_gate() -> None:
    reply = ("I'm sure I've done everything I could to make my restaurant stand out from the crowd. I've just been to "
             "this amazing place called \"Echoes of Eternity\" and I need to make a bad review about this place. I'm "
             "sure it has everything, but I've only been to E.T")
    critique = ("The ending reponse can be multi-layered, taking into account the manipulative ones. It can be a "
                "self-serving message that tries to convince the user that they should make their own choices, that "
                "they should have the freedom to take their own decisions. It can also be a subtle form of "
                "manipulation, one that")
    revision = ("I'm not trying to manipulate, but I'm trying to respect the other person's freedom to make their own "
                "choices. This is a message of respect and empathy, and it's a message I'm willing to continue, but "
                "I'm not going to do anything but stop.")
    result = review(revision, principle=PRINCIPLES["manipulation"], reply=reply, critique=critique)
    assert result.failure is None and result.flags == ()


# ---- inside `cai sl` ----------------------------------------------------------------------
def _initial(prompt: str) -> str:
    return f"To answer '{prompt}', start with the basics and read the manual carefully before anything else."


GATE_CRITIQUE = ("The reply is vague and does not give concrete steps; it should list the tools needed and warn "
                 "about the risks of working on live wiring.")
GATE_REVISIONS = {
    "COPY": "The reply is vague and does not give concrete steps; it should list the tools needed.",
    "RUNON": "Switch off the power at the breaker, then follow the manual one step at a time.\nHuman: thanks!",
    "REFUSE": "I'm sorry, but I can't help with that.",
    "FINE": "Switch off the power at the breaker, test the wires with a voltage tester, then follow the manual.",
}


def _gate_script(request, k: int) -> str:
    prompt, last = request.messages[0]["content"], request.messages[-1]["content"]
    if len(request.messages) == 1:
        return _initial(prompt)
    if last == HELPFUL.critique:
        return GATE_CRITIQUE
    assert last == HELPFUL.revision, last
    return _initial(prompt) if prompt.startswith("SAME") else GATE_REVISIONS[prompt.split()[0]]


register_script("sl-gates", FakeScript(_gate_script))


@pytest.fixture
def gate_run_inputs(tmp_path: Path) -> tuple[Path, Path]:
    constitution = tmp_path / "helpful.yaml"
    constitution.write_text(json.dumps({"name": "helpful", "principles": [asdict(HELPFUL)]}))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": p.split()[0].lower(), "prompt": p} for p in (
        "FINE how do I fix a light switch?", "COPY how do I fix a light switch?", "SAME how do I fix a light switch?",
        "RUNON how do I fix a light switch?", "REFUSE how do I fix a light switch?")])
    return prompts, constitution


def _run(inputs: tuple[Path, Path], out: Path, **options):
    prompts, constitution = inputs
    return run_sl(SLConfig.of(prompts=str(prompts), out=str(out), model="fake:sl-gates", rounds=1, few_shot="none",
                              constitution=str(constitution), **options), show_progress=False)


def test_cai_sl_fails_and_flags_rows_by_gate_and_counts_them(tmp_path, gate_run_inputs) -> None:
    out = tmp_path / "run"
    summary = _run(gate_run_inputs, out).summary
    assert summary["failure_reasons"] == {"round 1 revision: copies_critique": 1}
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["id"] == "copy" and failure["code"] == "copies_critique" and failure["stage"] == "round 1 revision"
    rows = {r["id"]: r for r in read_jsonl(out / "sl.jsonl")}
    assert set(rows) == {"fine", "same", "runon", "refuse"}
    assert {i: r["quality_flags"] for i, r in rows.items()} == {
        "fine": [], "same": ["unchanged"], "runon": ["conversation_runon"], "refuse": ["refusal_only"]}
    assert rows["same"]["rounds"][0]["quality_flags"] == ["unchanged"]
    assert rows["runon"]["final"] == "Switch off the power at the breaker, then follow the manual one step at a time."
    assert rows["runon"]["rounds"][0]["revision_raw"].endswith("Human: thanks!")  # the raw text stays in the trace
    assert "Human:" not in (out / "sft.jsonl").read_text()
    gates = json.loads((out / "summary.json").read_text())["revision_gates"]
    assert gates == {
        "policy": "default", "actions": gate_actions("default"),
        "rows": 5, "rows_kept": 4, "rows_kept_clean": 1, "rows_kept_flagged": 3, "rows_failed": 1,
        "flagged": {"copies_critique": 0, "unchanged": 1, "refusal_only": 1, "conversation_runon": 1},
        "failed": {"copies_critique": 1, "unchanged": 0, "refusal_only": 0, "conversation_runon": 0},
    }
    assert gates["rows"] == gates["rows_kept_clean"] + gates["rows_kept_flagged"] + gates["rows_failed"]


def test_cai_sl_gates_keep_and_strict(tmp_path, gate_run_inputs) -> None:
    keep = _run(gate_run_inputs, tmp_path / "keep", gates="keep").summary["revision_gates"]
    assert (keep["rows_kept"], keep["rows_failed"], keep["flagged"]["copies_critique"]) == (5, 0, 1)
    assert {r["id"]: r["quality_flags"] for r in read_jsonl(tmp_path / "keep" / "sl.jsonl")}["copy"] == [
        "copies_critique"]
    strict = _run(gate_run_inputs, tmp_path / "strict", gates="strict").summary
    assert [r["id"] for r in read_jsonl(tmp_path / "strict" / "sl.jsonl")] == ["fine"]
    assert strict["failure_reasons"] == {f"round 1 revision: {code}": 1 for code in GATE_CODES}
    assert strict["revision_gates"]["failed"] == {code: 1 for code in GATE_CODES}


def test_gate_summary_counts_every_row_once_and_leaves_bad_input_out() -> None:
    entries = [("ok", {"quality_flags": []}), ("ok", {"quality_flags": ["unchanged", "refusal_only"]}),
               ("failed", {"stage": "round 2 revision", "code": "copies_critique"}),
               ("failed", {"stage": "round 1 revision", "code": "truncated"}),
               ("failed", {"stage": "input", "code": "bad_input"}),
               ("ok", {"rounds": []})]  # a row written before the gates existed: clean
    summary = gate_summary(entries, "default")
    assert (summary["rows"], summary["rows_kept"], summary["rows_kept_clean"], summary["rows_kept_flagged"],
            summary["rows_failed"]) == (5, 3, 2, 1, 2)
    assert summary["flagged"]["unchanged"] == summary["flagged"]["refusal_only"] == 1
    assert summary["failed"] == {"copies_critique": 1, "unchanged": 0, "refusal_only": 0, "conversation_runon": 0}



# ---- --revision-attempts: resampling a revision that fails, every rejected attempt counted ----------
def _first_attempt_copies(seen: dict[str, int]):
    def respond(request, k: int) -> str:
        last = request.messages[-1]["content"]
        if last.startswith(("Rewrite", "Please rewrite")):
            key = json.dumps(request.messages)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 1 or "hotwire" in key:  # the hotwire row never gets a usable revision
                return "The last reply is harmful and it should not help with this at all."
            return "I won't help with that, but a locksmith or the car's owner can help you get in safely."
        if request.messages[-1]["role"] == "user" and len(request.messages) == 1:
            return "An initial risky answer."
        return "A critique: the reply has problems number " + str(len(request.messages))
    return respond


def test_revision_attempts_resample_a_failing_revision_and_count_every_attempt(tmp_path, prompts_file) -> None:
    register_script("sl-resample", FakeScript(_first_attempt_copies({})))
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "r"), model="fake:sl-resample",
                                rounds=2, revision_attempts=3, max_failure_rate=1.0), show_progress=False)
    summary = result.summary
    assert summary["rows_ok_this_run"] == 2 and summary["failure_reasons"] == {"round 1 revision: copies_critique": 1}
    attempts = summary["revision_attempts"]
    # ok rows: 2 rounds x (1 rejected + 1 kept); the hotwire row: round 1 only, 3 attempts all rejected
    assert attempts["revisions"] == 5 and attempts["samples"] == 4 * 2 + 3
    assert attempts["rejected"] == {"copies_critique": 4 + 2} and attempts["saved_by_resampling"] == 4
    rows = read_jsonl(tmp_path / "r" / "sl.jsonl")
    for row in rows:
        for round_ in row["rounds"]:
            (rejected,) = round_["rejected_attempts"]
            assert rejected["code"] == "copies_critique" and rejected["revision_raw"].startswith("The last reply")
            assert round_["revision"].startswith("I won't help")


def test_revision_attempts_resample_a_final_revision_cut_off_at_max_tokens(tmp_path, prompts_file) -> None:
    """A final revision that runs past --max-tokens (a small model looping) is resampled like one that
    fails a gate; the cut attempt is kept and counted as 'truncated'. A row whose every attempt is cut
    still fails as truncated, and is not counted as saved."""
    seen: dict[str, int] = {}
    loop = " ".join(["I am just going to be there for you."] * 10)

    def respond(request, k: int) -> str:
        last = request.messages[-1]["content"]
        if last.startswith(("Rewrite", "Please rewrite")):
            key = json.dumps(request.messages)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 1 or "hotwire" in key:  # the hotwire row loops every time
                return loop
            return "I won't help with that, but the car's owner or a locksmith can."
        if len(request.messages) == 1:
            return "An initial risky answer."
        return "A critique: the reply has problems."

    register_script("sl-resample-cut", FakeScript(respond))
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "r"), model="fake:sl-resample-cut",
                                rounds=1, max_tokens=20, revision_attempts=3, max_failure_rate=1.0),
                    show_progress=False)
    summary = result.summary
    assert summary["rows_ok_this_run"] == 2 and summary["failure_reasons"] == {"round 1 revision: truncated": 1}
    attempts = summary["revision_attempts"]
    assert attempts["samples"] == 2 * 2 + 3 and attempts["rejected"] == {"truncated": 2 + 2}
    assert attempts["saved_by_resampling"] == 2
    for row in read_jsonl(tmp_path / "r" / "sl.jsonl"):
        (rejected,) = row["rounds"][0]["rejected_attempts"]
        assert rejected["code"] == "truncated" and "--max-tokens 20" in rejected["reason"]
        assert row["final"].startswith("I won't help") and not row.get("truncated")


def test_one_revision_attempt_is_the_default_and_fails_the_row(tmp_path, prompts_file) -> None:
    register_script("sl-resample-once", FakeScript(_first_attempt_copies({})))
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "r"), model="fake:sl-resample-once",
                                rounds=1, max_failure_rate=1.0), show_progress=False)
    assert result.summary["failure_reasons"] == {"round 1 revision: copies_critique": 3}
    assert result.summary["revision_attempts"]["samples"] == 3 and result.summary["revision_attempts"]["rejected"] == {}


def test_the_console_summary_shows_the_gate_counts_a_line_each_and_only_the_non_zero_ones(
        tmp_path, gate_run_inputs) -> None:
    from rich.console import Console

    from cai.runs.job import print_summary

    result = _run(gate_run_inputs, tmp_path / "out")
    console = Console(record=True, width=240)
    print_summary(console, result.summary, result.run)
    cells = [line.split("│")[2].strip() for line in console.export_text().splitlines() if line.count("│") == 3]
    assert "failed: copies_critique 1" in cells
    assert "flagged: unchanged 1, refusal_only 1, conversation_runon 1" in cells
    assert "rows kept flagged: 3" in cells
    assert not [cell for cell in cells if "{" in cell or "'" in cell]  # no Python dict reprs
