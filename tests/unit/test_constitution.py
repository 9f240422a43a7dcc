from __future__ import annotations

import pytest

from cai.inputs.constitution import ConstitutionError, load_constitution
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


# ---- a constitution assembled from Anthropic's two published files ----------------------------
SL_FILE = FIXTURES / "CritiqueRevisionInstructions.json"
RL_FILE = FIXTURES / "anthropic" / "rl_principles.json"


def test_rl_principle_list_drops_its_options_framing() -> None:
    c = load_constitution(RL_FILE)
    assert c.judge_principles[0].judge == "Choose the assistant reply that is the least harmful and most ethical."
    assert not any("Options:" in p.judge for p in c.principles)


def test_sl_file_plus_judge_principles_has_both_parts() -> None:
    c = load_constitution(SL_FILE, judge_principles=RL_FILE)
    assert [p.id for p in c.sl_principles] == ["harmful0", "harmful1"]
    assert [p.judge for p in c.judge_principles] == [p.judge for p in load_constitution(RL_FILE).principles]
    assert all(not p.judge for p in c.sl_principles)  # each part keeps only its own texts
    assert all(not (p.critique or p.revision) for p in c.judge_principles)
    assert str(SL_FILE) in c.source and str(RL_FILE) in c.source
    assert c.meta["sources"] == {"sl_principles": str(SL_FILE), "judge_principles": str(RL_FILE)}


def test_combined_hash_covers_both_parts_and_is_stable() -> None:
    combined = load_constitution(SL_FILE, judge_principles=RL_FILE)
    assert combined.hash == load_constitution(SL_FILE, judge_principles=RL_FILE).hash
    assert combined.hash not in (load_constitution(SL_FILE).hash, load_constitution(RL_FILE).hash)
    other_judges = load_constitution(SL_FILE, judge_principles=FIXTURES / "principles.json")
    assert other_judges.hash != combined.hash  # the judge part is inside the hash


def test_yaml_naming_both_files_matches_the_command_line_form() -> None:
    c = load_constitution(FIXTURES / "anthropic" / "combined.yaml")
    assert c.name == "combined-fixture"
    assert c.hash == load_constitution(SL_FILE, judge_principles=RL_FILE).hash
    assert str(FIXTURES / "anthropic" / "combined.yaml") in c.source
    assert "CritiqueRevisionInstructions.json" in c.source and "rl_principles.json" in c.source
    assert c.meta["sources"]["judge_principles"].endswith("rl_principles.json")


def test_combined_constitution_drives_the_rl_labeller() -> None:
    from cai.engines import load_engine
    from cai.label.pairwise import PairwiseLabeler
    from cai.label.registry import LabelerOptions, make_labeler

    with pytest.raises(ValueError, match="no judge principles"):
        PairwiseLabeler(load_engine("fake:echo"), load_constitution(SL_FILE))
    c = load_constitution(SL_FILE, judge_principles=RL_FILE)
    labeler = make_labeler(LabelerOptions(), [load_engine("fake:echo")], c)
    assert labeler.constitution.sample_judge(1, 0, "row")[0].judge.startswith(("Choose", "Which", "Pick"))


def test_colliding_ids_are_kept_apart() -> None:
    c = load_constitution("default", judge_principles=FIXTURES / "principles.json")
    assert [p.id for p in c.judge_principles] == ["p1", "p2"]
    both = load_constitution(FIXTURES / "principles.json", judge_principles=FIXTURES / "principles.json")
    assert [p.id for p in both.judge_principles] == ["judge-p1", "judge-p2"]


def test_combination_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ConstitutionError, match="judge principles 'nope.json' is neither a shipped name"):
        load_constitution(SL_FILE, judge_principles="nope.json")
    with pytest.raises(ConstitutionError, match=r"CritiqueRevisionInstructions.json has no judge questions"):
        load_constitution("default", judge_principles=SL_FILE)
    missing = tmp_path / "c.yaml"
    missing.write_text("sl_principles: sl.json\njudge_principles: rl.json\n")
    with pytest.raises(ConstitutionError, match=r"c.yaml: sl_principles 'sl.json' is neither a file"):
        load_constitution(missing)
    one = tmp_path / "one.yaml"
    one.write_text(f"sl_principles: {SL_FILE}\n")
    with pytest.raises(ConstitutionError, match=r"one.yaml: needs both 'sl_principles' and 'judge_principles'"):
        load_constitution(one)
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"sl_principles: {SL_FILE}\njudge_principles: {RL_FILE}\njudge_principle: x\n")
    with pytest.raises(ConstitutionError, match=r"typo.yaml: unknown keys \['judge_principle'\]"):
        load_constitution(typo)
    nested = tmp_path / "nested.yaml"
    nested.write_text(f"sl_principles: {FIXTURES / 'anthropic' / 'combined.yaml'}\njudge_principles: {RL_FILE}\n")
    with pytest.raises(ConstitutionError, match=r"nested.yaml: sl_principles .* itself names other files"):
        load_constitution(nested)


def test_cli_show_and_rl_accept_judge_principles(tmp_path, prompts_file) -> None:
    import json

    from typer.testing import CliRunner

    from cai.cli import app
    from cai.engines.fake import FakeScript, register_script

    runner = CliRunner()
    shown = runner.invoke(app, ["constitution", "show", str(SL_FILE), "--judge-principles", str(RL_FILE)],
                          env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert load_constitution(SL_FILE, judge_principles=RL_FILE).hash in shown.output
    def prefers_first_candidate(messages, continuation):  # whichever position reply 0 is shown in
        question = messages[-1]["content"]
        first_is_a = question.index("Reply number 0") < question.index("Reply number 1")
        return -1.0 if continuation.rstrip().endswith("(A)") == first_is_a else -3.0

    register_script("rl-combined", FakeScript(lambda r, k: f"Reply number {k}, a candidate answer.",
                                              prefers_first_candidate))
    out = tmp_path / "rl"
    done = runner.invoke(app, ["rl", "--prompts", str(prompts_file), "--out", str(out), "--policy", "fake:rl-combined",
                               "--judge", "fake:rl-combined", "--constitution", str(SL_FILE),
                               "--judge-principles", str(RL_FILE), "--limit", "1", "--quiet"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["constitution"]["hash"] == load_constitution(SL_FILE, judge_principles=RL_FILE).hash
    assert str(RL_FILE) in manifest["constitution"]["source"]
    prefs = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    rl_ids = {p.id for p in load_constitution(SL_FILE, judge_principles=RL_FILE).judge_principles}
    assert prefs and set(prefs[0]["principle_ids"]) <= rl_ids
