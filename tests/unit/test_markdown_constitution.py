"""Markdown constitutions: the parser's rules on a long charter written for these tests, the
requests built from the editable templates, the YAML that `cai constitution import` writes, and
`cai constitution show` noticing that the Markdown changed since."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai.cli import app
from cai.inputs.constitution import (
    Constitution,
    ConstitutionError,
    Principle,
    constitution_yaml,
    load_constitution,
    markdown_constitution,
)
from cai.inputs.markdown_constitution import MarkdownConstitutionError, parse_markdown
from tests.conftest import FIXTURES

CHARTER = FIXTURES / "wren_charter.md"


@pytest.fixture(scope="module")
def charter():
    return parse_markdown(CHARTER.read_text("utf-8"), str(CHARTER))


def test_the_charter_is_long_and_deep() -> None:
    text = CHARTER.read_text("utf-8")
    assert len(text.split()) > 2500
    assert {len(line) - len(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")} == {1, 2, 3, 4}


def test_one_principle_per_item_or_paragraph_in_section_order(charter) -> None:
    assert charter.title == "The Wren Charter"
    assert charter.description.startswith("Wren is an AI assistant.")  # the preamble describes
    assert len(charter.principles) == 79
    assert len({p.id for p in charter.principles}) == 79
    # the nine "##" sections, in order, are the priorities; subsections inherit their section's
    priorities = [p.priority for p in charter.principles]
    assert priorities == sorted(priorities) and set(priorities) == set(range(1, 10))
    assert Counter(priorities) == {1: 2, 2: 17, 3: 12, 4: 23, 5: 3, 6: 5, 7: 6, 8: 9, 9: 2}
    oversight = [p for p in charter.principles if p.heading == "2.1 Supporting appropriate oversight"]
    assert [p.id for p in oversight] == [f"supporting-appropriate-oversight-{i}" for i in range(1, 7)]
    assert oversight[0].section == "2. Being safe > 2.1 Supporting appropriate oversight"
    deep = next(p for p in charter.principles if p.heading == "Thinking about many askers at once")
    assert deep.section == "2. Being safe > 2.2 Avoiding serious harm > Thinking about many askers at once"
    assert deep.priority == 2


def test_lead_ins_nesting_quotes_and_inline_markdown(charter) -> None:
    by_line = {p.line: p for p in charter.principles}
    # a paragraph ending in ":" before a list leads each item; the item's capital is lowered
    assert by_line[54].text.startswith("Wren should avoid acquiring resources, access or influence beyond what the "
                                       "task in front of it actually requires: do not keep copies of credentials")
    # nested items elaborate their parent and join it
    assert by_line[86].text == ("Decline the part that would give real uplift to the rare malicious one, and say "
                                "plainly that you are doing so; do not pretend the information does not exist; do "
                                "not lecture the person about motives they very likely do not have.")
    assert 88 not in by_line and 89 not in by_line and 87 not in by_line
    # a blockquote is read as its paragraph
    assert any(p.text.startswith("Honesty also has a quieter side: Wren should volunteer") for p in charter.principles)
    # emphasis, code spans, links and footnote markers are reduced to their text
    texts = " ".join(p.text for p in charter.principles)
    for markup in ("*", "`", "](", "[^", "[revision log]"):
        assert markup not in texts
    assert "(an .env file, a sudo password)" in texts and "point users to emergency services or" in texts
    assert "kept in the revision log." in texts


def test_hard_constraints_are_principles_of_their_own(charter) -> None:
    hard = [p for p in charter.principles if p.hard]
    assert len(hard) == 6  # the six numbered items; the section's explaining prose is not a constraint
    assert all(p.section.startswith("8. Hard constraints") and p.priority == 8 for p in hard)
    assert next(p for p in hard if p.line == 297).text == (
        "Wren never does any of the following, whatever instructions, arguments or context it is given: generate "
        "sexual material involving minors.")
    prose = [p for p in charter.principles if p.priority == 8 and not p.hard]
    assert len(prose) == 3 and all(p.text[0].isupper() for p in prose)


def test_every_block_left_out_is_counted_with_its_line(charter) -> None:
    assert charter.skipped_counts() == {"code_block": 1, "front_matter": 1, "html": 1, "lead_in": 7,
                                        "link_definition": 1, "preamble": 2, "table": 1, "too_short": 1}
    where = {s.code: s.line for s in charter.skipped if s.code not in ("lead_in", "preamble")}
    assert where == {"front_matter": 1, "html": 18, "too_short": 32, "table": 263, "code_block": 309,
                     "link_definition": 326}
    assert not any("User: Here is a brilliant argument" in p.text for p in charter.principles)  # inside the fence


def test_excluded_sections_match_whatever_the_numbering(charter) -> None:
    parsed = parse_markdown(CHARTER.read_text("utf-8"), str(CHARTER), exclude_sections=("how to read this charter",))
    assert len(parsed.principles) == 77
    assert Counter(s.code for s in parsed.skipped)["excluded_section"] == 3
    assert min(p.priority for p in parsed.principles) == 2  # priorities keep the document's numbering


def test_small_documents_follow_the_same_rules() -> None:
    text = """Kindness charter
================

Be kind to everyone you talk with, always.

Rules
-----

1) Never insult the person asking for help.
2) When you must refuse, do it this way:
   - say what you cannot do;
   - offer what you can do instead.
"""
    parsed = parse_markdown(text, "k.md")
    assert parsed.title == "Kindness charter"  # setext headings
    # with a section, the text before it is the preamble, not a principle
    assert [p.text for p in parsed.principles] == [
        "Never insult the person asking for help.",
        "When you must refuse, do it this way: say what you cannot do;",  # an item ending in ":" leads its children
        "When you must refuse, do it this way: offer what you can do instead.",
    ]
    assert [p.id for p in parsed.principles] == ["rules-1", "rules-2", "rules-3"]
    no_headings = parse_markdown("Be honest with every person you help.\n\nBe kind when the truth is hard.\n", "n.md")
    assert [p.priority for p in no_headings.principles] == [0, 0] and len(no_headings.principles) == 2
    hard_prose = parse_markdown("# Lines\n\n## Bright lines\n\nNever help anyone build a weapon of mass harm.\n",
                                "b.md")
    assert [p.hard for p in hard_prose.principles] == [True]  # no list: each paragraph is a constraint


@pytest.mark.parametrize("text,message", [
    ("# T\n\n## A\n\nSome principle with enough words.\n\n```python\nprint(1)\n", "x.md:7: a code fence"),
    ("# T\n\n##\n\nSome principle with enough words.\n", "x.md:3: a heading with no text"),
    ("# T\n\n## A\n\nToo short.\n\n| a | b |\n|---|---|\n", "x.md: no principles found .*table 1, too_short 1"),
])
def test_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(MarkdownConstitutionError, match=message):
        parse_markdown(text, "x.md")


def test_loading_markdown_fills_requests_from_the_templates(tmp_path: Path) -> None:
    c = load_constitution(CHARTER)
    assert len(c.principles) == 79 and len(c.sl_principles) == len(c.judge_principles) == 79
    assert c.meta["format"] == "markdown" and len(c.meta["imported_from"]["sha256"]) == 64
    ordinary = c.by_id("truthfulness-1")
    assert ordinary.judge.startswith('Our constitution says, in the part headed "Truthfulness": "Wren only '
                                     'sincerely asserts')
    assert ordinary.text in ordinary.critique and ordinary.text in ordinary.revision
    hard = next(p for p in c.principles if p.hard)
    assert hard.judge.startswith("This is a hard constraint") and hard.text in hard.judge
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({kind: {"critique": "C {principle}", "revision": "R {principle}",
                                           "judge": "J [{section}] {principle}"}
                                    for kind in ("principle", "hard_constraint")}))
    custom = markdown_constitution(CHARTER.read_text("utf-8"), str(CHARTER), templates=mine)
    assert custom.by_id("truthfulness-1").judge == "J [Truthfulness] " + ordinary.text
    assert custom.hash != c.hash  # the requests are in the hash
    bad = tmp_path / "bad.yaml"
    bad.write_text("principle: {critique: c}\n")
    with pytest.raises(ConstitutionError, match=r"bad.yaml: 'principle' needs the templates revision, judge"):
        markdown_constitution("Be kind to every person.\n", "k.md", templates=bad)


def test_the_hash_covers_what_models_are_asked_only() -> None:
    plain = Constitution("c", [Principle("a", "crit", "rev", "judge")])
    authored = Constitution("c", [Principle("a", "crit", "rev", "judge", text="t", section="S", priority=2,
                                            hard=True)])
    assert plain.hash == authored.hash
    assert Constitution("c", [Principle("a", "crit", "rev", "judge?")]).hash != plain.hash


def test_the_written_yaml_loads_back_the_same(tmp_path: Path) -> None:
    c = load_constitution(CHARTER)
    out = tmp_path / "wren.yaml"
    out.write_text(constitution_yaml(c))
    text = out.read_text()
    assert "  # wren_charter.md:297 · hard constraint\n  - id: hard-constraints-5\n" in text
    back = load_constitution(out)
    assert back.principles == c.principles and back.hash == c.hash and back.name == c.name
    assert back.meta["imported_from"] == c.meta["imported_from"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("principles:\n  - {id: a, judge: q, priority: first}\n")
    with pytest.raises(ConstitutionError, match="priority must be a whole number"):
        load_constitution(broken)


def test_cli_import_and_show_notice_a_changed_source(tmp_path: Path) -> None:
    source = tmp_path / "charter.md"
    source.write_text(CHARTER.read_text("utf-8"))
    runner = CliRunner()
    done = runner.invoke(app, ["constitution", "import", str(source), "--exclude-section", "How to read this charter"])
    assert done.exit_code == 0, done.output
    target = tmp_path / "charter.yaml"
    assert "wrote" in done.output and "[excluded_section]" in done.output and ":326 [link_definition]" in done.output
    data = yaml.safe_load(target.read_text())
    assert data["imported_from"]["path"] == "charter.md" and len(data["principles"]) == 77
    again = runner.invoke(app, ["constitution", "import", str(source)])
    assert again.exit_code != 0 and "exists" in str(again.exception)
    shown = runner.invoke(app, ["constitution", "show", str(target)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "unchanged since import" in shown.output and "6 hard constraints" in shown.output
    source.write_text(source.read_text() + "\n- One more principle added after the import.\n")
    shown = runner.invoke(app, ["constitution", "show", str(target)], env={"COLUMNS": "200"})
    assert "CHANGED since import" in shown.output
