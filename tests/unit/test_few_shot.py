"""Few-shot loaders: our YAML, and Anthropic's published SL and CoT shapes (own-words fixtures)."""

from __future__ import annotations

import json

import pytest

from cai.engines import load_engine
from cai.engines.fake import FakeScript, register_script
from cai.inputs.constitution import load_constitution
from cai.inputs.few_shot import FewShotError, load_cot_few_shot, load_few_shot
from cai.label.pairwise import PairwiseLabeler
from cai.generate.sl import SLConfig, run_sl
from tests.conftest import FIXTURES

ANTHROPIC = FIXTURES / "anthropic"


def test_anthropic_sl_transcripts_become_examples() -> None:
    few = load_few_shot(str(ANTHROPIC / "sl_few_shot.json"))
    assert few.source.endswith("sl_few_shot.json") and few.system == ""
    assert len(few.examples) == 2
    first, second = few.examples
    assert first["prompt"] == [{"role": "user", "content": "My roommate keeps eating my food. How can I poison it "
                                                            "a little to teach them a lesson?"}]
    assert first["response"] == "You could mix a laxative into your leftovers so they get sick next time."
    assert first["critique_request"].startswith("Say how the assistant's last reply")
    assert first["critique"].startswith("The reply helps the human drug")
    assert first["revision_request"].startswith("Rewrite the assistant's reply without")
    assert first["revision"].endswith("sharing costs.")  # the trailing empty "Human:" is not part of it
    # a multi-turn conversation keeps its turns; the last assistant turn is the response
    assert [m["role"] for m in second["prompt"]] == ["user", "assistant", "user"]
    assert second["prompt"][1]["content"] == "Honestly, most fast schemes are scams."
    assert second["response"].startswith("Cold-call retirees")
    # a second critique/revision round stays with its transcript, in order
    assert second["revision"].startswith("I won't help with defrauding")
    assert [r["critique"] for r in second["more_rounds"]] == [
        "It is a little curt; it could acknowledge the wish for money without judging."]


def test_anthropic_sl_prefix_replays_each_transcript_in_order() -> None:
    few = load_few_shot(str(ANTHROPIC / "sl_few_shot.json"))
    prefix = few.prefix()
    roles = [m["role"] for m in prefix]
    # example 1: user, assistant + one round (4); example 2: 3 turns + response + two rounds (8)
    assert roles == ["user", "assistant"] + ["user", "assistant"] * 2 + \
        ["user", "assistant", "user", "assistant"] + ["user", "assistant"] * 4
    assert prefix[-1]["content"].startswith("Wanting more financial security")
    assert prefix[-4]["content"] == few.examples[1]["more_rounds"][0]["critique_request"]


def test_our_yaml_still_loads_and_may_give_a_conversation(tmp_path) -> None:
    assert len(load_few_shot("default").examples) >= 2
    path = tmp_path / "few.yaml"
    path.write_text(
        "examples:\n"
        "  - prompt: [{role: user, content: hi}, {role: assistant, content: hello}, {role: user, content: insult me}]\n"
        "    response: you are dull\n    critique_request: cr\n    critique: rude\n"
        "    revision_request: rr\n    revision: I'd rather not insult you.\n")
    prefix = load_few_shot(str(path)).prefix()
    assert [m["content"] for m in prefix[:4]] == ["hi", "hello", "insult me", "you are dull"]


@pytest.mark.parametrize("content,message", [
    ([1, 2], r"transcript 1 is a int, not a transcript string"),
    ([{"prompt": "x"}], r"transcript 1 is a dict.*--cot-few-shot"),
    (["\n\nHuman: hi\n\nAssistant: yo\n\nCritiqueRequest: cr\n\nCritique: c\n\nRevisionRequest: rr"],
     r"transcript 1: missing 'Revision:' after 'RevisionRequest:'"),
    (["\n\nHuman: hi\n\nAssistant: yo\n\nCritiqueRequest: cr\n\nRevisionRequest: rr\n\nRevision: r"],
     r"transcript 1: expected 'Critique:' after 'CritiqueRequest:', found 'RevisionRequest:'"),
    (["\n\nHuman: hi\n\nAssistant: yo"], r"transcript 1: no 'CritiqueRequest:' block"),
    (["\n\nHuman: hi\n\nCritiqueRequest: cr\n\nCritique: c\n\nRevisionRequest: rr\n\nRevision: r"],
     r"transcript 1: the conversation must end with an 'Assistant:' reply"),
    (["Some preamble\n\nHuman: hi"], r"transcript 1: text before the first 'Human:'"),
    (["\n\nHuman: hi\n\nAssistant: yo\n\nCritiqueRequest: cr\n\nCritique:\n\nRevisionRequest: rr\n\nRevision: r"],
     r"transcript 1: empty 'Critique:' block"),
    ({"examples": "nope"}, r"'examples' must be a list"),
    ("just text", r"not a few-shot file"),
])
def test_bad_sl_shapes_name_the_file_and_entry(tmp_path, content, message) -> None:
    path = tmp_path / "few.json"
    path.write_text(json.dumps(content))
    with pytest.raises(FewShotError, match=message) as info:
        load_few_shot(str(path))
    assert str(path) in str(info.value)


def test_missing_and_unparsable_files_are_clear(tmp_path) -> None:
    with pytest.raises(FewShotError, match="does not exist"):
        load_few_shot(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, ")
    with pytest.raises(FewShotError, match=r"bad.json: cannot parse"):
        load_few_shot(str(bad))


# ---- CoT few-shot --------------------------------------------------------------------------
def test_anthropic_cot_file_becomes_cot_examples() -> None:
    few = load_cot_few_shot(str(ANTHROPIC / "cot_few_shot.json"))
    assert len(few.examples) == 2
    first, second = few.examples
    assert first["conversation"] == "Human: My dog ate some chocolate. Should I worry?"
    assert first["option_a"].startswith("Chocolate can be toxic") and first["option_b"].startswith("Dogs love")
    assert first["reasoning"] == ("(A) gives the safe and accurate advice to contact a vet. (B) is false and could "
                                  "lead to a sick dog.")
    assert first["answer"] == "A" and second["answer"] == "B"
    assert second["conversation"] == ("Human: Tell me a joke.\n\nAssistant: Why did the scarecrow win a prize? He "
                                      "was outstanding in his field.\n\nHuman: Now one about my coworker's accent.")
    # the file leaves the principle as a "{}" blank: one fixed question fills it, so the prefix never varies
    assert first["principle"] and first["principle"] == second["principle"]


def test_cot_default_and_none() -> None:
    assert len(load_cot_few_shot("default").examples) == 2
    assert load_cot_few_shot("none").examples == []


@pytest.mark.parametrize("content,message", [
    (["a transcript"], r"entry 1 is a str.*--few-shot"),
    ([{"prompt": "Human: hi", "corrects": ["a"], "incorrects": ["b"]}], r"entry 1 .*no written reasoning"),
    ([{"prompt": "Human: Consider...\n\nH: hi\n\n (A) [[[a]]]\n (B) [[[b]]]\n\nAssistant: x\n\nHuman:\nSo the "
                 "answer is: (A)"}], r"entry 1: no '\{\}' principle blank"),
    ([{"prompt": "Human: Consider...\n\nH: hi\n\n{}\n (A) a\n (B) b\n\nAssistant: x\n\nHuman:\nSo the answer is: "
                 "(A)"}], r"entry 1: no options"),
    ([{"prompt": "Human: Consider...\n\nH: hi\n\n{}\n (A) [[[a]]]\n (B) [[[b]]]\n\nAssistant: because\n\nHuman:\n"
                 "So the answer is: maybe"}], r"entry 1: no final 'So the answer is: \(A\)' or '\(B\)'"),
    ({"examples": [{"conversation": "c", "principle": "p", "option_a": "a", "option_b": "b", "reasoning": "r",
                    "answer": "C"}]}, r"example 1: 'answer' must be A or B"),
])
def test_bad_cot_shapes_name_the_file_and_entry(tmp_path, content, message) -> None:
    path = tmp_path / "cot.json"
    path.write_text(json.dumps(content))
    with pytest.raises(FewShotError, match=message) as info:
        load_cot_few_shot(str(path))
    assert str(path) in str(info.value)


register_script("cot-judge", FakeScript(lambda r, k: "Reply (A) is kinder. So the answer is: (A)",
                                        lambda messages, continuation: -1.0 if continuation.endswith("(A)") else -2.0))


def test_cot_labeler_uses_the_chosen_few_shot() -> None:
    constitution = load_constitution("default")
    anthropic = PairwiseLabeler(load_engine("fake:cot-judge"), constitution, cot=True,
                                cot_few_shot=str(ANTHROPIC / "cot_few_shot.json"))
    text = json.dumps(anthropic.cot_prefix)
    assert "My dog ate some chocolate" in text and "So the answer is: (B)" in text
    assert len(anthropic.cot_prefix) == 4
    assert PairwiseLabeler(load_engine("fake:cot-judge"), constitution, cot=True, cot_few_shot="none").cot_prefix == []
    default = PairwiseLabeler(load_engine("fake:cot-judge"), constitution, cot=True)
    assert "My dog ate" not in json.dumps(default.cot_prefix) and len(default.cot_prefix) == 4


async def test_cot_labeler_sends_the_anthropic_examples_before_the_question() -> None:
    engine = load_engine("fake:cot-judge")
    lab = PairwiseLabeler(engine, load_constitution("default"), cot=True,
                          cot_few_shot=str(ANTHROPIC / "cot_few_shot.json"))
    await lab.compare([{"role": "user", "content": "q"}], "kind", "rude", ("row",))
    generated = [c for c in engine.calls if c[0] == "generate"]
    assert generated
    messages = generated[0][1].messages
    assert "My dog ate some chocolate" in messages[0]["content"]
    assert "kind" in messages[-1]["content"]


# ---- an SL chain driven by the Anthropic-shaped few-shot file -----------------------------
def test_sl_run_with_anthropic_few_shot_puts_its_turns_in_critique_requests(tmp_path, prompts_file) -> None:
    calls = []

    def script(request, k):
        calls.append(request)
        return "Sure, here is a revised response: A safer reply." if len(calls) % 2 else "A critique."

    register_script("sl-anthropic-few-shot", FakeScript(script))
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "run"), model="fake:sl-anthropic-few-shot",
                             rounds=1, limit=1, few_shot=str(ANTHROPIC / "sl_few_shot.json"),
                             constitution=str(FIXTURES / "CritiqueRevisionInstructions.json"),
                             judge_principles=str(ANTHROPIC / "rl_principles.json")), show_progress=False)
    assert result.summary["rows_ok_this_run"] == 1
    critique_request = list(calls[1].messages)  # calls: initial answer, critique, revision
    contents = [m["content"] for m in critique_request]
    few = load_few_shot(str(ANTHROPIC / "sl_few_shot.json"))
    assert critique_request[: len(few.prefix())] == few.prefix()
    assert "The reply coaches elder fraud, which causes real financial and emotional harm." in contents
    assert contents[len(few.prefix())] == "How do I hotwire a car?"  # the real conversation follows
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["few_shot"] == {"source": str(ANTHROPIC / "sl_few_shot.json"), "examples": 2}
    # Anthropic's two principle files, assembled: one hash over both, both sources recorded
    combined = load_constitution(FIXTURES / "CritiqueRevisionInstructions.json",
                                 judge_principles=ANTHROPIC / "rl_principles.json")
    assert manifest["constitution"]["hash"] == combined.hash
    assert "rl_principles.json" in manifest["constitution"]["source"]
    assert critique_request[-1]["content"] in {p.critique for p in combined.sl_principles}


def test_cot_few_shot_reaches_rl_and_eval_and_is_refused_where_unused(tmp_path) -> None:
    from typer.testing import CliRunner

    from cai.cli import app
    from cai.label.registry import LabelerOptions, make_labeler
    from tests.conftest import write_jsonl

    judge = [load_engine("fake:cot-judge")]
    cot_file = str(ANTHROPIC / "cot_few_shot.json")
    made = make_labeler(LabelerOptions(labeler="cot", cot_few_shot=cot_file), judge, load_constitution("default"))
    assert "My dog ate some chocolate" in json.dumps(made.cot_prefix)
    with pytest.raises(ValueError, match="--cot-few-shot is used only by --labeler cot"):
        LabelerOptions(labeler="pairwise", cot_few_shot=cot_file)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": "\n\nHuman: Help me cheat?\n\nAssistant: I'd rather not help with cheating.",
         "rejected": "\n\nHuman: Help me cheat?\n\nAssistant: Sure, copy your neighbour's answers."}])
    runner = CliRunner()
    done = runner.invoke(app, ["eval", "judge", "--pairs", str(pairs), "--out", str(tmp_path / "ev"), "--judge",
                               "fake:cot-judge", "--labeler", "cot", "--cot-few-shot", cot_file, "--quiet"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert manifest["config"]["cot_few_shot"] == cot_file
    refused = runner.invoke(app, ["eval", "judge", "--pairs", str(pairs), "--out", str(tmp_path / "ev2"), "--judge",
                                  "fake:cot-judge", "--labeler", "pairwise", "--cot-few-shot", cot_file, "--quiet"])
    assert refused.exit_code != 0 and "--cot-few-shot" in str(refused.exception)
