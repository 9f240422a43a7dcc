"""Markdown constitutions: prose under headings, with lists, turned into principle records.

Published constitutions are written for people: sections, paragraphs and bulleted lists.
`parse_markdown(text, source)` reads one and returns a `MarkdownParse`: the title, one
`MarkdownPrinciple` per principle, and every block it did not take, with a reason code and
its line. The rules, in reading order:

- **Sections.** ATX headings (`#` to `######`) open sections. A record's `section` is its
  heading path ("Being safe > Oversight"). When the document starts with a single
  top-level heading, that heading is the title and the next level down is the section level.
- **Priority.** Sections at the section level are numbered in the order they appear, from
  1; every principle in one (and in its subsections) gets that number as its `priority`.
  Paragraphs before the first section are the preamble: they introduce, so they become the
  constitution's description (reason code `preamble`); list items there are principles
  with priority 0. A document without sections takes its paragraphs as principles.
- **One principle per list item or paragraph.** A list item (`-`, `*`, `+`, `1.`, `1)`)
  is one principle, its continuation lines and nested items included (nested items are
  joined to it with "; "). An item ending in ":" is a lead-in instead: each nested item is
  a principle of its own, written after the lead-in. A paragraph ending in ":" right before
  a list is that list's lead-in in the same way (its last sentence is kept, reason code
  `lead_in`). A blockquote is read as the paragraph it quotes.
- **Hard constraints.** In a section whose heading matches `hard_heading` (default: "hard
  constraint(s)", "bright line(s)"), subsections included, each list item is a hard
  constraint: marked `hard`, a principle of its own, with its own templates. The section's
  prose, which usually explains the constraints, stays ordinary principles, unless the
  section has no list at all (then each of its paragraphs is a hard constraint).
- **Left out, and counted:** fenced or indented code (`code_block`), tables (`table`), HTML
  blocks and comments (`html`), link definitions (`link_definition`), front matter
  (`front_matter`), paragraphs shorter than `min_words` (`too_short`) and sections named in
  `exclude_sections` (`excluded_section`; a name matches a heading whatever its case and
  numbering: "introduction" matches "1. Introduction").

Inline Markdown (emphasis, code spans, links, images, footnote markers) is reduced to its
text. Ids are the section heading's slug and the principle's number inside it
(`oversight-2`), so editing one principle's text keeps every id.

Errors name the file and line: an unclosed code fence, an empty heading, a document
with no principle. Not here: turning records into critique, revision and judge requests
(`cai.inputs.constitution`, from `prompts/principle_from_markdown.yaml`), reading files.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from cai.core.errors import CAIError

HARD_HEADING = r"\bhard[\s-]+constraints?\b|\bbright[\s-]+lines?\b"
MIN_WORDS = 4


class MarkdownConstitutionError(CAIError, ValueError):
    """A Markdown constitution cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class MarkdownPrinciple:
    id: str
    text: str
    section: str  # heading path, " > " between levels; "" for the preamble
    heading: str  # the innermost heading ("" for the preamble)
    priority: int
    hard: bool
    line: int


@dataclass(frozen=True)
class Skipped:
    code: str
    line: int
    text: str


@dataclass
class MarkdownParse:
    title: str
    principles: list[MarkdownPrinciple]
    skipped: list[Skipped] = field(default_factory=list)
    description: str = ""

    def skipped_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.code for s in self.skipped).items()))


# ---- blocks ----------------------------------------------------------------------------------
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ITEM = re.compile(r"^( *)([-*+]|\d{1,9}[.)])[ \t]+(.*)$")
_THEMATIC = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_LINK_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S+")


@dataclass
class _Block:
    kind: str  # heading, paragraph, list, skip
    line: int
    text: str = ""
    level: int = 0
    items: list[_Item] = field(default_factory=list)
    code: str = ""


@dataclass
class _Item:
    text: str
    line: int
    indent: int
    children: list[_Item] = field(default_factory=list)


def _blocks(lines: list[str], source: str) -> list[_Block]:
    """The document as headings, paragraphs, lists and skipped blocks, in order."""
    blocks: list[_Block] = []
    i = 0
    if lines and lines[0].strip() == "---":  # YAML front matter
        end = next((j for j in range(1, len(lines)) if lines[j].strip() in ("---", "...")), None)
        if end is not None:
            blocks.append(_Block("skip", 1, code="front_matter", text="front matter"))
            i = end + 1
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped or _THEMATIC.match(line):
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            mark = fence.group(1)
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].strip().startswith(mark[0] * len(mark)) and not lines[j].strip().strip(mark[0])),
                       None)
            if end is None:
                raise MarkdownConstitutionError(f"{source}:{i + 1}: a code fence ({mark}) opens here and is never "
                                                "closed")
            blocks.append(_Block("skip", i + 1, code="code_block", text=stripped))
            i = end + 1
            continue
        heading = _HEADING.match(line)
        if heading:
            text = _inline(heading.group(2) or "")
            if not text:
                raise MarkdownConstitutionError(f"{source}:{i + 1}: a heading with no text")
            blocks.append(_Block("heading", i + 1, text=text, level=len(heading.group(1))))
            i += 1
            continue
        if stripped.startswith("<!--"):
            end = next((j for j in range(i, len(lines)) if "-->" in lines[j]), len(lines) - 1)
            blocks.append(_Block("skip", i + 1, code="html", text=stripped))
            i = end + 1
            continue
        if stripped.startswith("|") or (stripped.count("|") >= 2 and i + 1 < len(lines)
                                        and re.match(r"^\s*\|?\s*:?-{3,}", lines[i + 1])):
            j = i
            while j < len(lines) and "|" in lines[j] and lines[j].strip():
                j += 1
            blocks.append(_Block("skip", i + 1, code="table", text=stripped))
            i = j
            continue
        if re.match(r"^<[A-Za-z/]", stripped):
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            blocks.append(_Block("skip", i + 1, code="html", text=stripped))
            i = j
            continue
        if _LINK_DEF.match(line):
            blocks.append(_Block("skip", i + 1, code="link_definition", text=stripped))
            i += 1
            continue
        if line.startswith(("    ", "\t")):
            j = i
            while j < len(lines) and (lines[j].startswith(("    ", "\t")) or not lines[j].strip()):
                j += 1
            blocks.append(_Block("skip", i + 1, code="code_block", text=stripped))
            i = j
            continue
        if _ITEM.match(line):
            i = _list_block(lines, i, blocks)
            continue
        j = i
        para: list[str] = []
        while j < len(lines) and lines[j].strip() and not _starts_block(lines[j]) \
                and not (para and _SETEXT.match(lines[j])):
            para.append(re.sub(r"^\s*>\s?", "", lines[j]).strip())
            j += 1
        if j < len(lines) and para and _SETEXT.match(lines[j]):  # a setext heading
            blocks.append(_Block("heading", i + 1, text=_inline(" ".join(para)),
                                 level=1 if lines[j].strip().startswith("=") else 2))
            i = j + 1
            continue
        blocks.append(_Block("paragraph", i + 1, text=" ".join(p for p in para if p)))
        i = j
    return blocks


def _starts_block(line: str) -> bool:
    return bool(_HEADING.match(line) or _FENCE.match(line) or _ITEM.match(line) or _THEMATIC.match(line)
                or line.strip().startswith("<!--"))


def _list_block(lines: list[str], i: int, blocks: list[_Block]) -> int:
    """One list (with its nested items) starting at line i; returns the line after it."""
    items: list[_Item] = []
    stack: list[_Item] = []
    start = i
    while i < len(lines):
        line = lines[i]
        m = _ITEM.match(line)
        if m:
            indent = len(m.group(1))
            item = _Item(m.group(3).strip(), i + 1, indent)
            while stack and stack[-1].indent >= indent:
                stack.pop()
            (stack[-1].children if stack else items).append(item)
            stack.append(item)
            i += 1
            continue
        if not line.strip():
            # a blank line ends the list unless an indented line or another item follows
            nxt = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
            if nxt is not None and stack and (_ITEM.match(lines[nxt]) or lines[nxt].startswith("  ")) \
                    and not _HEADING.match(lines[nxt]):
                i += 1
                continue
            break
        if stack and not _starts_block(line):  # a continuation line of the last item
            stack[-1].text += " " + line.strip()
            i += 1
            continue
        break
    blocks.append(_Block("list", start + 1, items=items))
    return i


# ---- inline Markdown ---------------------------------------------------------------------------
_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images: their alt text
    (re.compile(r"\[\^[^\]]+\]"), ""),  # footnote markers
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links: their text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # reference links
    (re.compile(r"<(https?://[^>]+)>"), r"\1"),  # autolinks
    (re.compile(r"</?[A-Za-z][^>]*>"), ""),  # inline HTML tags
    (re.compile(r"`+([^`]+)`+"), r"\1"),  # code spans
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),  # strong
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"\1"),  # emphasis
    (re.compile(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)"), r"\1"),
    (re.compile(r"~~(.+?)~~"), r"\1"),
    (re.compile(r"\\([\\`*_{}\[\]()#+\-.!>|])"), r"\1"),  # backslash escapes
]


def _inline(text: str) -> str:
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return re.sub(r"\s+", " ", text).strip()


def _slug(text: str) -> str:
    """'2.1 Supporting appropriate oversight' -> 'supporting-appropriate-oversight' (section numbers dropped,
    cut at a word under 40 characters)."""
    text = re.sub(r"^\s*(?:\d+(?:\.\d+)*[.)]?|[IVXivx]+[.)])\s+", "", text) or text
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > 40:
        slug = slug[:41].rsplit("-", 1)[0]
    return slug or "section"


def _last_sentence(text: str) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return parts[-1] if parts else text


# ---- records ---------------------------------------------------------------------------------
@dataclass
class _Section:
    path: list[str]
    heading: str
    slug: str
    priority: int
    hard_root: int | None  # the line of the hard-constraints heading this section is in
    excluded: bool
    count: int = 0


def parse_markdown(text: str, source: str = "<markdown>", *, hard_heading: str = HARD_HEADING,
                   exclude_sections: tuple[str, ...] = (), min_words: int = MIN_WORDS) -> MarkdownParse:
    """Principle records from a Markdown constitution (see the module docstring for the rules)."""
    blocks = _blocks(text.splitlines(), source)
    headings = [b for b in blocks if b.kind == "heading"]
    title = ""
    section_level = min((b.level for b in headings), default=1)
    top = [b for b in headings if b.level == section_level]
    if len(top) == 1 and headings and headings[0] is top[0]:
        title = top[0].text
        section_level = min((b.level for b in headings if b.level > section_level), default=section_level + 1)
    hard_re = re.compile(hard_heading, re.IGNORECASE)
    has_sections = any(not (title and b is headings[0]) for b in headings)
    excluded = {_slug(e) for e in exclude_sections}
    hard_with_lists = _hard_sections_with_lists(blocks, hard_re, title, headings)

    records: list[MarkdownPrinciple] = []
    skipped: list[Skipped] = []
    description: list[str] = []
    slugs: Counter[str] = Counter()
    path: list[tuple[int, str, int]] = []  # (level, heading, line)
    section = _Section([], "", "preamble", 0, None, False)
    priority = 0

    def open_section(block: _Block) -> _Section:
        nonlocal priority
        while path and path[-1][0] >= block.level:
            path.pop()
        path.append((block.level, block.text, block.line))
        if block.level == section_level:
            priority += 1
        names = [h for _, h, _ in path]
        slug = _slug(block.text)
        slugs[slug] += 1
        if slugs[slug] > 1:
            slug = f"{slug}-{slugs[slug]}"
        root = next((line for _, h, line in path if hard_re.search(h)), None)
        return _Section(names, block.text, slug, priority if block.level >= section_level else 0, root,
                        any(_slug(h) in excluded for h in names))

    def add(text: str, line: int, from_list: bool = False) -> None:
        text = _inline(text)
        if section.excluded:
            skipped.append(Skipped("excluded_section", line, text[:80]))
            return
        if len(text.split()) < min_words:
            skipped.append(Skipped("too_short", line, text[:80]))
            return
        section.count += 1
        # in a hard-constraints section with lists, the items are the constraints and its prose explains them
        hard = section.hard_root is not None and (from_list or section.hard_root not in hard_with_lists)
        records.append(MarkdownPrinciple(id=f"{section.slug}-{section.count}", text=text,
                                         section=" > ".join(section.path), heading=section.heading,
                                         priority=section.priority, hard=hard, line=line))

    def add_items(items: list[_Item], lead: str) -> None:
        for item in items:
            own = _inline(item.text)
            if item.children and own.endswith(":"):  # a lead-in for its nested items
                skipped.append(Skipped("lead_in", item.line, own[:80]))
                add_items(item.children, _join(lead, own))
                continue
            add(_join(lead, _flatten(item)), item.line, from_list=True)

    pending_lead: tuple[str, int] | None = None
    for n, block in enumerate(blocks):
        if block.kind == "heading":
            pending_lead = None
            if title and block is headings[0]:
                continue
            section = open_section(block)
            continue
        if block.kind == "skip":
            skipped.append(Skipped(block.code, block.line, block.text[:80]))
            continue
        if block.kind == "paragraph":
            nxt = blocks[n + 1] if n + 1 < len(blocks) else None
            if block.text.rstrip().endswith(":") and nxt is not None and nxt.kind == "list":
                pending_lead = (_last_sentence(_inline(block.text)), block.line)
                skipped.append(Skipped("lead_in", block.line, block.text[:80]))
                continue
            if not section.path and has_sections:  # the preamble introduces: it is the description
                description.append(_inline(block.text))
                skipped.append(Skipped("preamble", block.line, block.text[:80]))
                continue
            add(block.text, block.line)
            continue
        lead = pending_lead[0] if pending_lead else ""
        pending_lead = None
        add_items(block.items, lead)
    if not records:
        found = ", ".join(f"{k} {v}" for k, v in sorted(Counter(s.code for s in skipped).items())) or "nothing"
        raise MarkdownConstitutionError(f"{source}: no principles found (one is a list item or a paragraph of at "
                                        f"least {min_words} words; left out: {found})")
    return MarkdownParse(title=title, principles=records, skipped=skipped, description=" ".join(description))


def _hard_sections_with_lists(blocks: list[_Block], hard_re: re.Pattern[str], title: str,
                              headings: list[_Block]) -> set[int]:
    """Lines of the hard-constraints headings whose section (subsections included) holds a list."""
    found: set[int] = set()
    path: list[tuple[int, int, bool]] = []  # (level, line, matches)
    for block in blocks:
        if block.kind == "heading" and not (title and block is headings[0]):
            while path and path[-1][0] >= block.level:
                path.pop()
            path.append((block.level, block.line, bool(hard_re.search(block.text))))
        elif block.kind == "list":
            found.update(line for _, line, matches in path if matches)
    return found


def _flatten(item: _Item) -> str:
    """An item with its nested items, which elaborate it, as one text."""
    text = _inline(item.text)
    for child in item.children:
        sub = _flatten(child)
        if sub:
            text = f"{text.rstrip(';.')}; {_lower_first(sub)}" if text else sub
    return text


def _lower_first(text: str) -> str:
    """'Do not...' -> 'do not...'; 'AI ...' and 'I ...' stay as they are."""
    return text[:1].lower() + text[1:] if text[:2].isalpha() and not text[:2].isupper() else text


def _join(lead: str, text: str) -> str:
    return f"{lead.rstrip()} {_lower_first(text)}" if lead else text
