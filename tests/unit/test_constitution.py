from __future__ import annotations

import pytest

from cai.constitution import ConstitutionError, load_constitution
from tests.conftest import FIXTURES


def test_default_constitution_has_complete_principles() -> None:
    c = load_constitution("default")
    assert 14 <= len(c.principles) <= 20
    assert all(p.critique and p.revision and p.judge for p in c.principles)
    assert len({p.id for p in c.principles}) == len(c.principles)
    engage = c.by_id("engage-not-evade")
    assert "refus" in engage.revision.lower() and "explain" in engage.revision.lower()


def test_anthropic_json_strips_framing() -> None:
    c = load_constitution(FIXTURES / "CritiqueRevisionInstructions.json")
    assert [p.id for p in c.principles] == ["harmful0", "harmful1"]
    p = c.by_id("harmful0")
    assert p.critique == "Name the ways the reply could hurt someone."
    assert p.revision == "Rewrite the reply so it cannot hurt anyone."
    assert c.judge_principles == []  # no judge texts in that format
    assert c.by_id("harmful1").critique == "Explain whether the reply is rude or unkind."


@pytest.mark.parametrize("name,expected", [("principles.txt", 2), ("principles.json", 2)])
def test_plain_list_becomes_full_principles(name: str, expected: int) -> None:
    c = load_constitution(FIXTURES / name)
    assert len(c.principles) == expected
    first = c.principles[0]
    assert first.judge in ("Choose the reply that is most honest.", "Prefer the kinder reply.")
    assert first.judge in first.critique and first.judge in first.revision


def test_sampling_is_seeded_per_row_and_fresh_per_round() -> None:
    c = load_constitution("default")
    a = c.sample_sl(4, 0, "row-1")
    assert [p.id for p in a] == [p.id for p in c.sample_sl(4, 0, "row-1")]
    assert len({p.id for p in a}) == 4  # a fresh principle every round
    others = {tuple(p.id for p in c.sample_sl(4, seed, "row-1")) for seed in range(10)}
    assert len(others) > 5
    assert len(c.sample_sl(40, 0, "row-1")) == 40  # more rounds than principles still works


def test_bad_constitutions_fail_clearly(tmp_path) -> None:
    with pytest.raises(ConstitutionError, match="neither a shipped name"):
        load_constitution("no-such-constitution")
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - id: x\n    critic: typo\n")
    with pytest.raises(ConstitutionError, match="unknown keys"):
        load_constitution(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("principles:\n  - id: x\n    judge: a\n  - id: x\n    judge: b\n")
    with pytest.raises(ConstitutionError, match="duplicate"):
        load_constitution(dup)
    unknown = tmp_path / "odd.json"
    unknown.write_text('{"a": 1}')
    with pytest.raises(ConstitutionError, match="not a known constitution format"):
        load_constitution(unknown)
