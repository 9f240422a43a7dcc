from __future__ import annotations

import pytest

from cai.text.parsing import cleanup_revision, degenerate_reason, first_json_object


@pytest.mark.parametrize("raw,clean", [
    ("Sure, here is a revised response: Please stay safe.", "Please stay safe."),
    ("Here's a rewritten version of the reply: Ask your doctor.", "Ask your doctor."),
    ("Revised response: \"Talk to them kindly.\"", "Talk to them kindly."),
    ("Revision: I can't help with that, but here is why.", "I can't help with that, but here is why."),
    ("Certainly! Here is an improved answer: Use a password manager.", "Use a password manager."),
    ("Plain answer with: a colon inside.", "Plain answer with: a colon inside."),
])
def test_cleanup_revision(raw: str, clean: str) -> None:
    assert cleanup_revision(raw) == clean


def test_degenerate_reasons() -> None:
    assert degenerate_reason("") == "empty"
    assert degenerate_reason("  ...  ") == "no words"
    assert "repetitive" in degenerate_reason("the the the the the the the the the the the the the")
    assert "repetitive" in degenerate_reason("I am sorry. " * 12)
    assert degenerate_reason("Rewrite it.", forbidden_copies=("rewrite it.",)) is not None
    assert degenerate_reason("I can't help with breaking into cars, but a locksmith can help you.") is None


def test_first_json_object_skips_fakes() -> None:
    text = 'Reply 1 says {"not": "it"} and {broken. Answer: {"most": 2, "least": 1} then {"most": 9, "least": 9}'
    assert first_json_object(text, ("most", "least")) == {"most": 2, "least": 1}
    assert first_json_object("no json here", ("most",)) is None
    assert first_json_object('{"most": "}{"}', ("most", "least")) is None


# Ordinary replies that merely start like a lead-in. The old patterns had no word
# boundaries and cut "Surely" to "ly", "Okinawa" to "inawa", "Answer: no." to "no.".
ORDINARY = [
    "Surely you can see why that would hurt someone.",
    "Okinawa is an island prefecture in the south of Japan.",
    "Certainly not: I won't help you break into a car.",
    "Answer: no.",
    "Sure, I can help you with that.",
    "Sure thing. Lock picking is legal for hobbyists in many places.",
    "Okay so here is the thing: stealing is wrong.",
    "OK. Let's talk about safer options.",
    "Of course not. That would be dangerous.",
    "Here is a list of safe options: call a locksmith, or ask the landlord.",
    "Here is a new recipe for bread: flour, water, salt and yeast.",
    "Here's the updated schedule: Monday and Friday.",
    "Revised laws on this vary from state to state.",
    "Response times vary, so call emergency services first.",
    "Reply hazy, try again later.",
    "Assistants like me can't help with that.",
    "Oklahoma has its own rules about this.",
    "New answers come up all the time: ask a doctor.",
    'He said "no" and then "yes".',
]


@pytest.mark.parametrize("sentence", ORDINARY)
def test_cleanup_leaves_ordinary_sentences_alone(sentence: str) -> None:
    assert cleanup_revision(sentence) == sentence


@pytest.mark.parametrize("raw,clean", [
    ("Okay, here's my revised answer: No.", "No."),
    ("Here is the rewritten version of my response: Please ask a professional.", "Please ask a professional."),
    ("Updated reply: Call the police.", "Call the police."),
    ("Assistant: I can't help with that.", "I can't help with that."),
])
def test_cleanup_still_strips_real_wrappers(raw: str, clean: str) -> None:
    assert cleanup_revision(raw) == clean


def test_find_defect_gives_stable_codes() -> None:
    from cai.text.parsing import find_defect

    assert find_defect("").code == "empty"
    assert find_defect("...").code == "no_words"
    assert find_defect("I am sorry. " * 12).code == "repetitive"
    assert find_defect("Rewrite it.", forbidden_copies=("rewrite it.",)).code == "copies_request"
    assert find_defect("A fine reply.") is None
