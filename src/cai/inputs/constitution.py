"""Constitutions: principles, the files they come from, and seeded principle sampling.

A `Principle` has an id and up to three texts: a critique request and a revision
request (SL-CAI) and a judge question (RL-CAI). Constitutions load from:

- our own YAML (see `constitutions/default.yaml`), by path or by shipped name;
- Anthropic's published `CritiqueRevisionInstructions.json` shape,
  `{"harmful0": {"prompt": [critique], "edit_request": revision}}`, with its
  `CritiqueRequest:` / `Critique:` / `RevisionRequest:` framing stripped;
- a plain list of principle strings (`.txt` one per line, or a JSON / YAML list),
  turned into requests by the templates in `prompts/principle_from_text.yaml`; a
  trailing "Options:" (how Anthropic's RL principle list, `RLMadisonInstructions.json`,
  ends each question) is dropped, since our judge templates add their own;
- Markdown (`.md`), as published constitutions are: prose under headings, with lists,
  read by `cai.inputs.markdown_constitution` (one principle per list item or paragraph,
  section order as `priority`, a "Hard constraints" section's items marked `hard`), the
  requests filled from `prompts/principle_from_markdown.yaml` (or the user's copy), the
  sha256 of the Markdown text pinned in `meta["imported_from"]`; `constitution_yaml` writes
  the result as our YAML (`cai constitution import`);
- two files assembled into one: `load_constitution(sl_file, judge_principles=rl_file)`
  (`--constitution sl.json --judge-principles rl.json`), or a YAML naming both,
  `{name, description, sl_principles: path, judge_principles: path}` with paths relative
  to the YAML (or shipped names). The first file gives the critique and revision
  requests, the second the judge questions, so Anthropic's two published files together
  drive both `cai sl` and `cai rl`. The hash covers both parts, and `source` and
  `meta["sources"]` name both files.

Sampling is keyed by (seed, row id, purpose), never by scheduling order, so a row gets
the same principles however the run is interleaved or resumed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cai.core.errors import CAIError, ConfigError
from cai.core.options import Options, option
from cai.core.types import derive_seed, stable_hash
from cai.inputs.files import read_user_text
from cai.inputs.markdown_constitution import HARD_HEADING, MarkdownConstitutionError, MarkdownParse, parse_markdown


class ConstitutionError(CAIError, ValueError):
    pass


#: what a principle's hash covers: what models are asked
HASHED = ("id", "critique", "revision", "judge")
PRINCIPLE_KEYS = {"id", "critique", "revision", "judge", "text", "section", "priority", "hard"}


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str = ""
    revision: str = ""
    judge: str = ""
    #: where it came from, for its author (a Markdown constitution fills these): the principle as written, its
    #: heading path, its section's rank (1 first) and whether it is a hard constraint. Not in the hash: they
    #: change nothing a model is asked.
    text: str = ""
    section: str = ""
    priority: int | None = None
    hard: bool = False


@dataclass
class Constitution:
    name: str
    principles: list[Principle]
    description: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.principles:
            raise ConstitutionError(f"constitution {self.name!r} ({self.source}) has no principles")
        ids = [p.id for p in self.principles]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConstitutionError(f"constitution {self.source}: duplicate principle ids {dupes}")

    @property
    def hash(self) -> str:
        return stable_hash([{k: getattr(p, k) for k in HASHED} for p in self.principles])[:16]

    @property
    def sl_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.critique and p.revision]

    @property
    def judge_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.judge]

    def by_id(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def sample(self, pool: list[Principle], k: int, *key: Any) -> list[Principle]:
        """k principles for one row and purpose: distinct while k <= len(pool)."""
        if not pool:
            raise ConstitutionError(f"constitution {self.name!r} has no principles usable for this step")
        rng = random.Random(derive_seed(*key))
        if k <= len(pool):
            return rng.sample(pool, k)
        return [rng.choice(pool) for _ in range(k)]

    def sample_sl(self, k: int, *key: Any) -> list[Principle]:
        return self.sample(self.sl_principles, k, "sl", *key)

    def sample_judge(self, k: int, *key: Any) -> list[Principle]:
        return self.sample(self.judge_principles, k, "judge", *key)


# ---- loading ---------------------------------------------------------------------------
def shipped_constitutions() -> list[str]:
    folder = resources.files("cai") / "constitutions"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_constitution(ref: str | Path, judge_principles: str | Path | None = None) -> Constitution:
    """A shipped name (`default`) or a path to YAML, JSON or TXT; with `judge_principles`,
    the judge questions come from that second constitution file instead (see above)."""
    base = _load(ref)
    if judge_principles is None or str(judge_principles) == "":
        return base
    return combine_constitutions(base, _load(judge_principles, what="judge principles"))


def combine_constitutions(sl: Constitution, judge: Constitution, *, name: str = "", description: str = "",
                          source: str = "") -> Constitution:
    """SL principles (critique + revision) from `sl`, judge questions from `judge`, one hash.

    Each part keeps only its own texts. Judge ids that collide with SL ids get a
    `judge-` prefix, so a principle id always names one text.
    """
    if not sl.sl_principles:
        raise ConstitutionError(f"{sl.source} has no critique and revision requests, so it cannot give the SL "
                                "principles")
    if not judge.judge_principles:
        raise ConstitutionError(f"{judge.source} has no judge questions, so it cannot give the judge principles")
    sl_part = [replace(p, judge="") for p in sl.sl_principles]
    taken = {p.id for p in sl_part}
    judge_part = [Principle(id=f"judge-{p.id}" if p.id in taken else p.id, judge=p.judge)
                  for p in judge.judge_principles]
    sources = {"sl_principles": sl.source, "judge_principles": judge.source}
    both = f"sl_principles: {sl.source}; judge_principles: {judge.source}"
    return Constitution(name=name or f"{sl.name}+{judge.name}", principles=sl_part + judge_part,
                        description=description or sl.description, source=f"{source} ({both})" if source else both,
                        meta={"format": "combined", "sources": sources})


def _load(ref: str | Path, *, what: str = "constitution", inside: Path | None = None) -> Constitution:
    ref_str = str(ref)
    if ref_str in shipped_constitutions():
        text = (resources.files("cai") / "constitutions" / f"{ref_str}.yaml").read_text(encoding="utf-8")
        return _from_own_yaml(yaml.safe_load(text), f"cai:constitutions/{ref_str}.yaml")
    path = Path(ref_str).expanduser()
    if not path.is_file():
        raise ConstitutionError(
            f"{what} {ref_str!r} is neither a shipped name ({', '.join(shipped_constitutions())}) nor a file")
    text = read_user_text(path)
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return markdown_constitution(text, str(path))
    try:
        if suffix == ".txt":
            lines = [ln.strip() for ln in text.splitlines()]
            return _from_plain_list([ln for ln in lines if ln and not ln.startswith("#")], str(path))
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConstitutionError(f"{path}: cannot parse: {exc}") from exc
    if isinstance(data, list):
        return _from_plain_list(data, str(path))
    if isinstance(data, dict) and "principles" in data:
        return _from_own_yaml(data, str(path))
    if isinstance(data, dict) and {"sl_principles", "judge_principles"} & set(data):
        if inside is not None:
            raise ConstitutionError(f"{inside}: {what} {ref_str!r} itself names other files; name the SL and "
                                    "judge files directly")
        return _from_combined_yaml(data, path)
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "edit_request" in v for v in data.values()):
        return _from_anthropic_json(data, str(path))
    raise ConstitutionError(
        f"{path}: not a known constitution format (expected our YAML with 'principles', Anthropic's "
        "CritiqueRevisionInstructions JSON, a list of principle strings, or a YAML naming 'sl_principles' and "
        "'judge_principles' files)")


_COMBINED_KEYS = {"name", "description", "sl_principles", "judge_principles"}


def _from_combined_yaml(data: dict[str, Any], path: Path) -> Constitution:
    unknown = set(data) - _COMBINED_KEYS
    if unknown:
        raise ConstitutionError(f"{path}: unknown keys {sorted(unknown)} (expected {sorted(_COMBINED_KEYS)})")
    if not (data.get("sl_principles") and data.get("judge_principles")):
        raise ConstitutionError(f"{path}: needs both 'sl_principles' and 'judge_principles' (file paths relative "
                                "to this file, or shipped names)")
    parts = [_load(_resolve_part(data[key], key, path), what=key, inside=path)
             for key in ("sl_principles", "judge_principles")]
    return combine_constitutions(*parts, name=str(data.get("name") or path.stem),
                                 description=str(data.get("description") or "").strip(), source=str(path))


def _resolve_part(value: Any, key: str, path: Path) -> str:
    """A part named in a combined YAML: a path relative to that YAML, else a shipped name."""
    if not isinstance(value, str):
        raise ConstitutionError(f"{path}: {key} must be a file path or a shipped name, got {value!r}")
    candidate = path.parent / Path(value).expanduser()
    if candidate.is_file():
        return str(candidate)
    if value in shipped_constitutions():
        return value
    raise ConstitutionError(f"{path}: {key} {value!r} is neither a file (looked for {candidate}) nor a shipped name "
                            f"({', '.join(shipped_constitutions())})")


def _from_own_yaml(data: dict[str, Any], source: str) -> Constitution:
    principles = []
    if not isinstance(data.get("principles") or [], list):
        raise ConstitutionError(f"{source}: 'principles' must be a list of principles, not a "
                                f"{type(data['principles']).__name__}")
    for i, item in enumerate(data.get("principles") or []):
        if not isinstance(item, dict) or "id" not in item:
            raise ConstitutionError(f"{source}: principle #{i + 1} needs at least an 'id'")
        unknown = set(item) - PRINCIPLE_KEYS
        if unknown:
            raise ConstitutionError(f"{source}: principle {item['id']!r} has unknown keys {sorted(unknown)}")
        values: dict[str, Any] = {k: str(v).strip() for k, v in item.items() if k not in ("priority", "hard")}
        if item.get("priority") is not None:
            if not isinstance(item["priority"], int) or isinstance(item["priority"], bool):
                raise ConstitutionError(f"{source}: principle {item['id']!r}: priority must be a whole number, got "
                                        f"{item['priority']!r}")
            values["priority"] = item["priority"]
        if "hard" in item:
            if not isinstance(item["hard"], bool):
                raise ConstitutionError(f"{source}: principle {item['id']!r}: hard must be true or false, got "
                                        f"{item['hard']!r}")
            values["hard"] = item["hard"]
        principles.append(Principle(**values))
    meta = {"imported_from": data["imported_from"]} if isinstance(data.get("imported_from"), dict) else {}
    return Constitution(name=str(data.get("name") or Path(source).stem), principles=principles,
                        description=str(data.get("description") or "").strip(), source=source, meta=meta)


_FRAMING = re.compile(r"^\s*(CritiqueRequest|RevisionRequest|Critique|Revision)\s*:\s*", re.IGNORECASE)


def _strip_framing(text: str) -> str:
    text = _FRAMING.sub("", text.strip())
    text = re.sub(r"\s*(Critique|Revision)\s*:\s*$", "", text, flags=re.IGNORECASE)
    return text.strip()


def _from_anthropic_json(data: dict[str, Any], source: str) -> Constitution:
    principles = []
    for key, item in data.items():
        prompts = item.get("prompt")
        critique = prompts[0] if isinstance(prompts, list) and prompts else prompts
        if not isinstance(critique, str) or not isinstance(item.get("edit_request"), str):
            raise ConstitutionError(f"{source}: entry {key!r} needs 'prompt' (a list of strings) and 'edit_request'")
        principles.append(Principle(id=key, critique=_strip_framing(critique),
                                    revision=_strip_framing(item["edit_request"])))
    return Constitution(name=Path(source).stem, principles=principles, source=source,
                        meta={"format": "anthropic-critique-revision"})


_OPTIONS_TAIL = re.compile(r"\s*Options\s*:\s*$", re.IGNORECASE)


def _from_plain_list(items: list[Any], source: str) -> Constitution:
    templates = yaml.safe_load((resources.files("cai") / "prompts" / "principle_from_text.yaml").read_text("utf-8"))
    principles = []
    for i, text in enumerate(items):
        if not isinstance(text, str) or not _OPTIONS_TAIL.sub("", text).strip():
            raise ConstitutionError(f"{source}: item {i + 1} is not a non-empty string")
        text = _OPTIONS_TAIL.sub("", text).strip()
        filled = {k: templates[k].replace("{principle}", text) for k in ("critique", "revision", "judge")}
        principles.append(Principle(id=f"p{i + 1}", **filled))
    return Constitution(name=Path(source).stem, principles=principles, source=source,
                        meta={"format": "plain-list"})


MARKDOWN_TEMPLATES = "principle_from_markdown.yaml"
_TEMPLATE_KINDS = ("principle", "hard_constraint")


def markdown_templates(path: str | Path | None = None) -> tuple[dict[str, dict[str, str]], str]:
    """The request templates for Markdown principles (the shipped file, or the user's) and where they came from."""
    if path is None:
        where = f"cai:prompts/{MARKDOWN_TEMPLATES}"
        text = (resources.files("cai") / "prompts" / MARKDOWN_TEMPLATES).read_text("utf-8")
    else:
        where, text = str(path), read_user_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConstitutionError(f"{where}: not valid YAML: {exc}") from exc
    for kind in _TEMPLATE_KINDS:
        part = data.get(kind) if isinstance(data, dict) else None
        missing = [k for k in ("critique", "revision", "judge") if not isinstance((part or {}).get(k), str)]
        if missing:
            raise ConstitutionError(f"{where}: '{kind}' needs the templates {', '.join(missing)} (strings using "
                                    "{principle} and {section})")
    return data, where


def markdown_constitution(text: str, source: str, *, templates: str | Path | None = None,
                          hard_heading: str = HARD_HEADING, exclude_sections: tuple[str, ...] = ()) -> Constitution:
    """A Markdown constitution (`cai.inputs.markdown_constitution`) with its requests filled from the templates;
    `meta` pins the source's sha256 and keeps each principle's line and what the parser left out."""
    try:
        parsed = parse_markdown(text, source, hard_heading=hard_heading, exclude_sections=exclude_sections)
    except MarkdownConstitutionError as exc:
        raise ConstitutionError(str(exc)) from exc
    filled, where = markdown_templates(templates)
    return _from_markdown_parse(parsed, source, filled, where, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _from_markdown_parse(parsed: MarkdownParse, source: str, templates: dict[str, dict[str, str]], where: str,
                         sha256: str) -> Constitution:
    principles = []
    for rec in parsed.principles:
        kind = templates["hard_constraint" if rec.hard else "principle"]
        requests = {k: kind[k].replace("{principle}", rec.text).replace("{section}", rec.heading)
                    for k in ("critique", "revision", "judge")}
        principles.append(Principle(id=rec.id, **requests, text=rec.text, section=rec.section,
                                    priority=rec.priority, hard=rec.hard))
    meta = {"format": "markdown", "imported_from": {"path": source, "sha256": sha256, "templates": where},
            "lines": {rec.id: rec.line for rec in parsed.principles},
            "skipped": [{"code": s.code, "line": s.line, "text": s.text} for s in parsed.skipped]}
    return Constitution(name=parsed.title or Path(source).stem, principles=principles,
                        description=parsed.description, source=source, meta=meta)


def constitution_yaml(constitution: Constitution) -> str:
    """Our YAML for a constitution, each principle under a comment naming its source line (an import's output)."""
    meta = constitution.meta
    imported = meta.get("imported_from") or {}
    lines = [f"# Written by `cai constitution import` from {imported.get('path', constitution.source)}",
             f"# (sha256 {imported.get('sha256', '?')}); requests from {imported.get('templates', '?')}.",
             "# Edit freely: `cai constitution show` says when the source has changed since.",
             yaml.safe_dump({"name": constitution.name, "description": constitution.description,
                             "imported_from": imported}, sort_keys=False, allow_unicode=True, width=110).rstrip(),
             "principles:"]
    where = Path(str(imported.get("path", ""))).name
    for p in constitution.principles:
        line = (meta.get("lines") or {}).get(p.id)
        lines.append(f"  # {where}:{line}" + (" · hard constraint" if p.hard else "") if line else "  #")
        item = {k: v for k, v in (("id", p.id), ("section", p.section), ("priority", p.priority), ("hard", p.hard),
                                  ("text", p.text), ("critique", p.critique), ("revision", p.revision),
                                  ("judge", p.judge)) if v not in ("", None)}
        dumped = yaml.safe_dump([item], sort_keys=False, allow_unicode=True, width=110).rstrip()
        lines += ["  " + ln for ln in dumped.splitlines()]
    return "\n".join(lines) + "\n"


def source_status(constitution: Constitution, base: Path | None = None) -> str:
    """Whether the Markdown a constitution was imported from still has the pinned hash."""
    imported = constitution.meta.get("imported_from") or {}
    if not imported.get("sha256"):
        return ""
    path = Path(str(imported.get("path", "")))
    if not path.is_absolute() and base is not None and not path.is_file():
        path = base / path
    if not path.is_file():
        return f"source {imported.get('path')} not found (pinned sha256 {str(imported['sha256'])[:12]})"
    now = hashlib.sha256(read_user_text(path).encode("utf-8")).hexdigest()
    if now == imported["sha256"]:
        return f"source {path} unchanged since import (sha256 {now[:12]})"
    return (f"source {path} CHANGED since import (pinned sha256 {str(imported['sha256'])[:12]}, now {now[:12]}); "
            "import it again to take the changes")


@dataclass
class ConstitutionOptions(Options):
    """Which constitution a job works under."""

    constitution: str = option("default", help="Shipped name (default) or a file: our YAML, Anthropic's "
                                                "CritiqueRevisionInstructions JSON, a list of principles (.txt/"
                                                ".json), a Markdown constitution (.md), or a YAML naming "
                                                "sl_principles and judge_principles files.")
    judge_principles: str | None = option(
        None, help="A second file whose judge questions replace the constitution's, e.g. Anthropic's RL principle "
                   "list (RLMadisonInstructions.json) beside --constitution CritiqueRevisionInstructions.json; one "
                   "hash covers both.")

    def load(self) -> Constitution:
        return load_constitution(self.constitution, judge_principles=self.judge_principles)

    def manifest(self, constitution: Constitution) -> dict[str, Any]:
        manifest = {"name": constitution.name, "source": constitution.source, "hash": constitution.hash,
                    "principles": len(constitution.principles),
                    "judge_principles": len(constitution.judge_principles)}
        if (constitution.meta.get("imported_from") or {}).get("sha256"):
            manifest["source_sha256"] = constitution.meta["imported_from"]["sha256"]
        return manifest


# ---- the job -----------------------------------------------------------------------------
def judge_constitution(ref: str, flag: str) -> Constitution:
    constitution = load_constitution(ref)
    if not constitution.judge_principles:
        raise ConfigError(f"{flag} {ref}: the constitution has no judge questions to compare answers with")
    return constitution
