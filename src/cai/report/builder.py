"""`cai report`: one self-contained HTML page from any mix of runs and trained models.

`build_report(ReportConfig(paths=[...], out="report.html"))` finds every run and model
under the paths (`cai.report.sources`), builds one section per source
(`cai.report.sections`, `cai.report.eval_sections`, `cai.report.principle_sections`), and renders
`templates/report.html.j2` with Jinja2, autoescaping every value: text from runs
(prompts, answers, critiques, model names) can never become markup, and the page's
Content-Security-Policy allows no script at all, so even a mistake in escaping could not
run one. Figures are inline SVG; the page fetches nothing and opens from disk offline.

The file is written beside its target and renamed over it, so a failed build leaves the
previous report. Not here: any model call; a report only reads files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from cai.core.options import Options, at_least, option
from cai.report.eval_sections import models_section, revisions_section
from cai.report.principle_sections import add_principle_parts, constitutions_section, redteam_section
from cai.report.sections import Section, judge_section, model_section, overview, rl_section, sl_section
from cai.report.sources import Source, discover

#: the order sections appear in: the answers to "did it work?" first
ORDER = ("eval models", "eval revisions", "eval constitutions", "redteam", "sl", "rl", "eval judge", "model")
CLIP = 4000  # characters of one example text shown before it is cut (the count of the rest is shown)


@dataclass
class ReportConfig(Options):
    """What `cai report` reads and writes."""

    paths: list[str] = option(default_factory=list, help="Run directories (cai sl, rl, eval judge, eval models, "
                                                          "eval revisions, eval constitutions) and trained-model "
                                                          "folders (cai train), "
                                                          "in any mix; folders holding them are searched two levels "
                                                          "deep.")
    out: str = option("report.html", short="-o", help="The HTML file to write (self-contained; opens offline).")
    title: str = option("Constitutional AI report", help="The page title.")
    examples: int = option(3, help="Example traces shown per run (per prompt set for model evaluations).")

    def check(self) -> None:
        at_least("--examples", self.examples, 0)


@dataclass
class ReportResult:
    path: Path
    sources: list[Source]
    sections: list[Section] = field(default_factory=list)
    figures: int = 0
    seconds: float = 0.0


def section_for(source: Source, examples: int) -> Section:
    """The source's own section, with its per-principle tables (`cai.report.principle_sections`)."""
    return add_principle_parts(_section_for(source, examples))


def _section_for(source: Source, examples: int) -> Section:
    if source.kind == "eval constitutions":
        return constitutions_section(source, examples)
    if source.kind == "redteam":
        return redteam_section(source, examples)
    if source.kind == "sl":
        return sl_section(source, examples)
    if source.kind == "rl":
        return rl_section(source, examples)
    if source.kind == "eval judge":
        return judge_section(source)
    if source.kind == "eval models":
        return models_section(source, examples)
    if source.kind == "eval revisions":
        return revisions_section(source, examples)
    if source.kind == "model":
        return model_section(source)
    section = Section(f"Run: {source.kind}", source)
    section.notes.append(f"cai report does not know runs of the command {source.kind!r}; only their counts are shown "
                         "in the overview")
    return section


def clip(text: Any) -> str:
    text = "" if text is None else str(text)
    if len(text) <= CLIP:
        return text
    return text[:CLIP] + f"\n… ({len(text) - CLIP:,} more characters in the run's files)"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cai.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["clip"] = clip
    env.filters["svg"] = Markup  # only for the SVG text cai.report.plots made
    return env


def render(title: str, sources: list[Source], sections: list[Section]) -> str:
    return _environment().get_template("report.html.j2").render(
        title=title, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), overview=overview(sources),
        sections=sections, sources=sources)


def build_report(config: ReportConfig) -> ReportResult:
    started = time.perf_counter()
    sources = discover(config.paths)
    ordered = sorted(sources, key=lambda s: ORDER.index(s.kind) if s.kind in ORDER else len(ORDER))
    sections = [section_for(s, config.examples) for s in ordered]
    html = render(config.title, sources, sections)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, out)
    return ReportResult(path=out, sources=sources, sections=sections,
                        figures=sum(len(s.figures) for s in sections), seconds=time.perf_counter() - started)
