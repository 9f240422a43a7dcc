from __future__ import annotations

import pytest

from cai.parsing import cleanup_revision, degenerate_reason, first_json_object


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
